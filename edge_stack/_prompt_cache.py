"""Each stage's fixed prompt start, kept on disk between runs.

A stage prompt usually starts with fixed text (an instruction, a few examples) before the first
placeholder. Within one process its KV entries stay in the stage's context; this module keeps
them across processes too, as llama.cpp's ``--prompt-cache`` does for one prompt, so a fresh
``edgestack ask`` evaluates only what follows the fixed start.

A file holds llama.cpp's sequence state of those tokens, saved once after the first evaluation.
Its name is a hash of everything the state depends on: edgestack's and llama.cpp's versions, the
model and adapter files (path, size, inode, modification time), the adapter scale, the context's
KV cache type, micro-batch and attention settings, and the tokens. A changed file gets a new
name; stale files are deleted oldest first beyond :data:`MAX_BYTES`. Only whole aligned
micro-batches are saved (see :class:`~edge_stack._llama_context.LlamaContext`), so a restored
prefix gives bit for bit what evaluating it gives. ``EDGESTACK_NO_PROMPT_CACHE=1`` turns it off.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from ._atomic import atomic_output
from .errors import EdgeStackError

if TYPE_CHECKING:
    from ._llama_context import LlamaContext

logger = logging.getLogger(__name__)

#: the folder's size limit; the least recently used files go first
MAX_BYTES = 512 * 1024 * 1024
SUFFIX = ".kv"


def _identity(path: Path | None) -> list[object] | None:
    if path is None:
        return None
    st = path.stat()
    return [str(path.resolve()), st.st_size, st.st_ino, st.st_mtime_ns]


class PromptCache:
    """Saved KV states of fixed prompt starts, in one folder."""

    def __init__(self, folder: Path, *, max_bytes: int = MAX_BYTES) -> None:
        self.folder = folder
        self.max_bytes = max_bytes

    def path_for(self, context: LlamaContext, tokens: Sequence[int]) -> Path:
        """Where the state of ``tokens`` in ``context`` is (or would be) kept."""
        import llama_cpp

        from . import __version__

        key = {
            "edgestack": __version__,
            "llama_cpp": llama_cpp.__version__,
            "model": _identity(context.model.path),
            "lora": _identity(context.lora),
            "lora_scale": context.lora_scale,
            "kv_cache_type": context.kv_cache_type,
            "n_ubatch": context.n_ubatch,
            "flash_attn": context.flash_attn,
            "tokens": [int(t) for t in tokens],
        }
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()
        return self.folder / f"{digest[:32]}{SUFFIX}"

    def restore(self, context: LlamaContext, tokens: Sequence[int]) -> bool:
        """Load the saved state of ``tokens`` into ``context``; False if there is none."""
        try:
            path = self.path_for(context, tokens)
            if not path.is_file():
                return False
            if not context.load_prefix(path, tokens):
                path.unlink(missing_ok=True)  # unusable: saved again after this evaluation
                return False
            os.utime(path)  # recently used: pruned last
        except OSError as exc:
            logger.debug("prompt cache: %s", exc)
            return False
        logger.debug("prompt cache: %d tokens restored from %s", len(tokens), path.name)
        return True

    def store(self, context: LlamaContext, tokens: Sequence[int]) -> bool:
        """Save the state of ``tokens`` (cached at the start of ``context``); True if saved."""
        try:
            path = self.path_for(context, tokens)
            if path.is_file():
                return True
            self.folder.mkdir(parents=True, exist_ok=True)
            with atomic_output(path, force=True) as tmp:
                if not context.save_prefix(tmp, len(tokens)):
                    raise OSError(f"llama.cpp could not save the state of {len(tokens)} tokens")
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
