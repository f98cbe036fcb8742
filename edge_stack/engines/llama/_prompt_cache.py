"""Each stage's fixed prompt start, kept on disk between runs.

A stage prompt usually starts with fixed text (an instruction, a few examples) before the first
placeholder. Within one process its KV entries stay in the stage's context; this module keeps
them across processes too, as llama.cpp's ``--prompt-cache`` does for one prompt, so a fresh
``edgestack ask`` evaluates only what follows the fixed start.

A file holds llama.cpp's sequence state of those tokens, saved once after the first evaluation.
Its name is a hash of everything the state depends on: edgestack's and llama.cpp's versions, the
model and adapter files (path, size, inode, modification and change times), the adapter scale,
the context's KV cache type, micro-batch and attention settings, its number of KV streams (one
per stage when stages share a context), and the tokens. A changed file
gets a new name; stale files are deleted oldest first beyond :data:`MAX_BYTES`. Only whole
aligned micro-batches are saved (see :class:`~edge_stack.engines.llama._context.LlamaContext`), so a
restored prefix gives bit for bit what evaluating it gives. ``EDGESTACK_NO_PROMPT_CACHE=1``
turns it off.

Damage to the cache can only cost time, never an answer. It is not a defence against deliberate
edits: the data folder is trusted as the user's home is (edgestack creates its folders ``0700``),
and someone who can write there as the user can also recompute a checksum, or change the
programs the user runs. llama.cpp never reads these files: its own
loader (``llama_state_seq_load_file``) aborts the process on a truncated file and trusts the
bytes of the KV data, so flipped bits gave wrong answers. Instead a file is our own format
(:data:`HEADER`: magic, format version, token count, the key hash, payload length, and a sha256
of all of that plus the payload) around llama.cpp's in-memory sequence state
(``llama_state_seq_get_data``). A restore reads the whole file into memory (a regular file
only: anything else at that name, a FIFO say, is treated as damaged instead of blocking the
ask), checks every header field against what it expects and the sha256, and hands llama.cpp
those same verified bytes
(``llama_state_seq_set_data``, which bounds every read by the buffer's length); the context
then checks that llama.cpp consumed exactly that many bytes and holds positions ``0..n-1``. As
the bytes checked are the bytes loaded, a file replaced meanwhile cannot slip through (files
are also write-once names, written to a temporary name and renamed, so no reader ever sees a
half-written one). A file that fails any check, or that llama.cpp refuses, is deleted and the
prompt is evaluated (and saved again); if llama_decode fails on top of a restored state the
stage drops the file and evaluates the whole prompt instead (see :mod:`edge_stack.engines.llama._engine`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from ...errors import EdgeStackError
from ...util._atomic import atomic_output
from ...util._datafile import UnusableFile, private_folder, read_regular

if TYPE_CHECKING:
    from ._context import LlamaContext

logger = logging.getLogger(__name__)

#: the folder's size limit, and so the largest entry; the least recently used files go first
MAX_BYTES = 512 * 1024 * 1024
SUFFIX = ".kv"
MAGIC = b"ESPROMPT"
#: bumped whenever the layout below or the meaning of the payload changes
FORMAT_VERSION = 1
#: magic, version, n_tokens, key sha256, payload length, sha256 (of the fields before it and
#: the payload), little-endian
HEADER = struct.Struct("<8sII32sQ32s")
_DIGEST_AT = HEADER.size - 32


class _Damaged(Exception):
    """A cache file that must not be used (the message says why, for the debug log)."""


def _remove(path: Path) -> None:
    """Delete a damaged entry: a file, FIFO or socket; a folder in its place is left alone."""
    try:
        if path.is_dir():
            logger.info("prompt cache: %s is a folder, not a cache file; move it away", path)
        else:
            path.unlink(missing_ok=True)
    except OSError as exc:
        logger.debug("prompt cache: %s", exc)


def _identity(path: Path | None) -> list[object] | None:
    if path is None:
        return None
    st = path.stat()
    # ctime too: a file rewritten in place with its old mtime put back still gets a new key.
    return [str(path.resolve()), st.st_size, st.st_ino, st.st_mtime_ns, st.st_ctime_ns]


def _pack(key: bytes, n_tokens: int, payload: bytes | bytearray | memoryview) -> bytes:
    """The header of an entry (its sha256 covers the header fields and the payload)."""
    fields = HEADER.pack(MAGIC, FORMAT_VERSION, n_tokens, key, len(payload), bytes(32))
    digest = hashlib.sha256(fields[:_DIGEST_AT])
    digest.update(payload)
    return fields[:_DIGEST_AT] + digest.digest()


def _unpack(data: bytearray, key: bytes, n_tokens: int, limit: int) -> memoryview:
    """The payload of an entry read whole into ``data``; raises _Damaged if anything is off."""
    if len(data) < HEADER.size:
        raise _Damaged(f"{len(data)} bytes, shorter than the {HEADER.size}-byte header")
    magic, version, count, got_key, length, digest = HEADER.unpack_from(data)
    if magic != MAGIC:
        raise _Damaged("not an edgestack prompt cache file (wrong magic)")
    if version != FORMAT_VERSION:
        raise _Damaged(f"format version {version}, expected {FORMAT_VERSION}")
    if got_key != key or count != n_tokens:
        raise _Damaged("made for other tokens, model or settings (key mismatch)")
    if length > limit or HEADER.size + length != len(data):
        raise _Damaged(f"payload of {len(data) - HEADER.size} bytes, header says {length}")
    view = memoryview(data)
    check = hashlib.sha256(view[:_DIGEST_AT])
    check.update(view[HEADER.size :])
    if check.digest() != digest:
        raise _Damaged("sha256 mismatch (flipped or overwritten bytes)")
    return view[HEADER.size :]


class PromptCache:
    """Saved KV states of fixed prompt starts, in one folder (at most ``max_bytes`` of files)."""

    def __init__(self, folder: Path, *, max_bytes: int = MAX_BYTES) -> None:
        self.folder = folder
        self.max_bytes = max_bytes

    def key_for(self, context: LlamaContext, tokens: Sequence[int]) -> bytes:
        """The sha256 of everything the state of ``tokens`` in ``context`` depends on."""
        import llama_cpp

        from ..._version import __version__

        key = {
            "edgestack": __version__,
            "llama_cpp": llama_cpp.__version__,
            "format": FORMAT_VERSION,
            "model": _identity(context.model.path),
            "lora": _identity(context.lora),
            "lora_scale": context.lora_scale,
            "kv_cache_type": context.kv_cache_type,
            "n_ubatch": context.n_ubatch,
            "flash_attn": context.flash_attn,
            "tokens": [int(t) for t in tokens],
        }
        # llama.cpp's sequence state records how many KV streams its context has and loads
        # only into as many: a stage on a shared context (one stream per stage) has its own file.
        streams = getattr(context, "_n_seq", 1)
        if streams != 1:
            key["kv_streams"] = streams
        return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).digest()

    def path_for(self, context: LlamaContext, tokens: Sequence[int]) -> Path:
        """Where the state of ``tokens`` in ``context`` is (or would be) kept."""
        return self.folder / f"{self.key_for(context, tokens).hex()[:32]}{SUFFIX}"

    def restore(self, context: LlamaContext, tokens: Sequence[int]) -> bool:
        """Load the saved state of ``tokens`` into ``context``; False if there is none.

        A file that does not verify or that llama.cpp refuses is deleted (the caller evaluates
        the prompt and :meth:`store` saves it again).
        """
        try:
            key = self.key_for(context, tokens)
            path = self.folder / f"{key.hex()[:32]}{SUFFIX}"
            # A regular file only (a FIFO here would block the ask forever), read whole.
            data = read_regular(path, HEADER.size + self.max_bytes)
            payload = _unpack(data, key, len(tokens), self.max_bytes)
            if not context.load_prefix(payload, tokens):
                raise _Damaged("llama.cpp refused the state")
            os.utime(path)  # recently used: pruned last
        except FileNotFoundError:
            return False
        except (_Damaged, UnusableFile) as exc:
            why = exc.reason if isinstance(exc, UnusableFile) else exc
            logger.info("prompt cache: %s is damaged (%s); deleted, evaluating instead", path, why)
            _remove(path)
            return False
        except OSError as exc:
            logger.debug("prompt cache: %s", exc)
            return False
        logger.debug("prompt cache: %d tokens restored from %s", len(tokens), path.name)
        return True

    def discard(self, context: LlamaContext, tokens: Sequence[int]) -> None:
        """Delete the saved state of ``tokens`` (it loaded, but llama.cpp failed on top of it)."""
        try:
            path = self.path_for(context, tokens)
            path.unlink(missing_ok=True)
        except OSError as exc:
            logger.debug("prompt cache: %s", exc)
            return
        logger.info("prompt cache: llama_decode failed after restoring %s; deleted", path)

    def store(self, context: LlamaContext, tokens: Sequence[int]) -> bool:
        """Save the state of ``tokens`` (cached at the start of ``context``); True if saved."""
        try:
            key = self.key_for(context, tokens)
            path = self.folder / f"{key.hex()[:32]}{SUFFIX}"
            if path.is_file():  # write-once: another process saved the same state
                return True
            payload = context.save_prefix(len(tokens))
            if payload is None:
                raise OSError(f"llama.cpp could not give the state of {len(tokens)} tokens")
            if len(payload) > self.max_bytes:
                raise OSError(f"a state of {len(payload)} bytes is more than the cache may hold")
            private_folder(self.folder)
            # No fsync: a file torn by a crash fails its sha256 and is rebuilt.
            with atomic_output(path, force=True) as tmp, tmp.open("wb") as fh:
                fh.write(_pack(key, len(tokens), payload))
                fh.write(payload)
            self._prune()
        except (OSError, EdgeStackError) as exc:
            logger.debug("prompt cache: %s", exc)
            return False
        logger.debug("prompt cache: %d tokens saved to %s", len(tokens), path.name)
        return True

    def _prune(self) -> None:
        files = []
        for p in self.folder.glob(f"*{SUFFIX}"):
            try:
                st = p.stat()
            except OSError:
                continue
            files.append((st.st_mtime, st.st_size, p))
        total = sum(size for _, size, _ in files)
        for _, size, p in sorted(files, key=lambda f: f[0]):
            if total <= self.max_bytes:
                break
            p.unlink(missing_ok=True)
            total -= size
