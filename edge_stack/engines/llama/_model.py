"""Our thin layer over llama.cpp's C API (llama-cpp-python's low-level ``llama_cpp.llama_cpp``).

Why not the high-level ``llama_cpp.Llama``: its ``lora_path`` turns mmap off (every stage would
hold its own copy of the base), and ``create_completion`` neither guarantees ``max_tokens`` nor
survives a full context (docs/architecture.md). Here one :class:`LlamaModel` per GGUF file is
memory-mapped and shared; each :class:`LlamaContext` has its own KV cache and, optionally, its
own LoRA adapter. A context is used by one thread at a time (the runtime serializes calls).
"""

from __future__ import annotations

import ctypes
import logging
import os
import threading
import unicodedata
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from ...errors import EngineError
from ...formats.gguf._keys import TOKENIZER_NORMALIZER, TOKENIZER_SPACE_PREFIX
from ._kernels import use_extra_bufts
from ._lib import NativeHandle, check_file, llama_errors, reason, set_llama_logging
from ._lib import lib as _lib
from ._sampling import check_grammar

log = logging.getLogger(__name__)


class _Context(Protocol):
    """What a model needs of the contexts made on it (they import the model, not the reverse)."""

    def close(self) -> None: ...


class LlamaModel(NativeHandle):
    """One memory-mapped GGUF model; any number of :class:`LlamaContext` objects share it."""

    def __init__(self, ptr: Any, path: Path) -> None:
        lib = _lib()
        self._ptr: Any = ptr
        self.path = path
        self._vocab = lib.llama_model_get_vocab(ptr)
        self.n_vocab: int = lib.llama_vocab_n_tokens(self._vocab)
        self.n_ctx_train: int = lib.llama_model_n_ctx_train(ptr)
        self.bos: int = lib.llama_vocab_bos(self._vocab)
        self.eos: int = lib.llama_vocab_eos(self._vocab)
        self.add_bos: bool = bool(lib.llama_vocab_get_add_bos(self._vocab))
        self._contexts: weakref.WeakSet[_Context] = weakref.WeakSet()
        # Native contexts still open on this model, counted apart from the WeakSet: when the
        # garbage collector frees a cycle (at interpreter exit, everything), weak references are
        # cleared first and finalizers run in any order, so the model may be finalized before
        # a context it can no longer see. llama.cpp's context destructor reads the model, and
        # the model's destructor deletes the adapters contexts still own: the native model is
        # therefore freed only once the last context is closed.
        self._open_contexts = 0
        self._free_pending = False
        self._free_ptr: Any = None
        self._count_lock = threading.Lock()
        self._special: dict[str, int] | None = None
        # Per-token answers cached: generation asks them once per token, through ctypes.
        self._pieces: dict[tuple[int, bool], bytes] = {}
        self._eog: dict[int, bool] = {}
        self._metadata: dict[str, str] | None = None
        # llama.cpp does not normalize byte-level BPE input; the converter records when the
        # Hugging Face tokenizer did (NFC), and tokenize() does it first, as transformers would.
        self._normalizer: str | None = self.metadata().get(TOKENIZER_NORMALIZER) or None
        # SentencePiece tokenizers whose Hugging Face side puts no "▁" in front of a text that
        # starts with a space (llama.cpp always does): that space is dropped before llama.cpp's.
        self._space_first = self.metadata().get(TOKENIZER_SPACE_PREFIX) == "first"

    @classmethod
    def load(
        cls, path: str | os.PathLike[str], *, verbose: bool = False, vocab_only: bool = False
    ) -> LlamaModel:
        """Check and memory-map the GGUF file at ``path``; with ``vocab_only``, read only its
        vocabulary (for tokenizing: no weights are loaded, no context can be made on it)."""
        path = Path(path)
        summary = check_file(path, "model")
        # Before llama.cpp's first use of the kernels: a probe child may have to run.
        extra_bufts = not vocab_only and use_extra_bufts({t.type for t in summary.tensors}, path)
        lib = _lib()
        if verbose:
            set_llama_logging(True)
        params = lib.llama_model_default_params()
        params.n_gpu_layers = 0
        params.vocab_only = vocab_only
        params.use_extra_bufts = extra_bufts
        params.load_mode = lib.LLAMA_LOAD_MODE_MMAP  # shared pages between models and processes
        with llama_errors() as errors:
            ptr = lib.llama_model_load_from_file(os.fsencode(path), params)
        if not ptr:
            raise EngineError(f"llama.cpp returned NULL loading {path}: {reason(errors)}")
        log.debug("loaded %s", path)
        return cls(ptr, path)

    @property
    def ptr(self) -> Any:
        if self._ptr is None:
            raise EngineError(f"model {self.path} is closed")
        return self._ptr

    @property
    def vocab(self) -> Any:
        self.ptr  # noqa: B018  raises once closed
        return self._vocab

    def tokenize(self, text: str, *, add_bos: bool, special: bool) -> list[int]:
        """Token ids of ``text``; ``special`` parses special-token text (e.g. ``<|im_end|>``)."""
        lib = _lib()
        if self._normalizer == "NFC":
            text = unicodedata.normalize("NFC", text)
        if self._space_first and text.startswith(" "):
            text = text[1:]
        data = text.encode("utf-8")
        size = len(data) + 8
        for _ in range(2):
            buf = (lib.llama_token * size)()
            n = lib.llama_tokenize(self.vocab, data, len(data), buf, size, add_bos, special)
            if n >= 0:
                return list(buf[:n])
            size = -n
        raise EngineError(f"llama.cpp could not tokenize a text of {len(data)} bytes")

    def token_to_piece(self, tok: int, *, special: bool = False) -> bytes:
        """The bytes of one token (may be part of a UTF-8 character); control tokens are empty
        unless ``special``."""
        piece = self._pieces.get((tok, special))
        if piece is not None:
            return piece
        lib = _lib()
        size = 64
        for _ in range(2):
            buf = ctypes.create_string_buffer(size)
            n = lib.llama_token_to_piece(self.vocab, tok, buf, size, 0, special)
            if n >= 0:
                self._pieces[(tok, special)] = piece = buf.raw[:n]
                return piece
            size = -n
        raise EngineError(f"llama.cpp could not render token {tok}")

    def detokenize(self, tokens: Sequence[int], *, special: bool = False) -> str:
        """Text of ``tokens``; invalid or unfinished UTF-8 becomes U+FFFD."""
        lib = _lib()
        arr = (lib.llama_token * max(len(tokens), 1))(*tokens)
        size = 16 * len(tokens) + 16
        for _ in range(2):
            buf = ctypes.create_string_buffer(size)
            n = lib.llama_detokenize(self.vocab, arr, len(tokens), buf, size, False, special)
            if n >= 0:
                return buf.raw[:n].decode("utf-8", errors="replace")
            size = -n
        raise EngineError(f"llama.cpp could not detokenize {len(tokens)} tokens")

    def is_eog(self, tok: int) -> bool:
        """True for end-of-generation tokens (EOS, EOT, ...)."""
        eog = self._eog.get(tok)
        if eog is None:
            eog = self._eog[tok] = bool(_lib().llama_vocab_is_eog(self.vocab, tok))
        return eog

    def check_grammar(self, grammar: str) -> None:
        """Raise :class:`GrammarError` (line, column, reason) if the GBNF ``grammar`` is not safe."""
        check_grammar(_lib(), self.vocab, grammar)

    def special_tokens(self) -> dict[str, int]:
        """Text -> id of every control and user-defined token (for splitting templates)."""
        if self._special is None:
            lib = _lib()
            mask = lib.LLAMA_TOKEN_ATTR_CONTROL | lib.LLAMA_TOKEN_ATTR_USER_DEFINED
            found: dict[str, int] = {}
            for tok in range(self.n_vocab):
                if lib.llama_vocab_get_attr(self.vocab, tok) & mask:
                    text = lib.llama_vocab_get_text(self.vocab, tok)
                    if text:
                        found.setdefault(text.decode("utf-8", errors="replace"), tok)
            self._special = found
        return dict(self._special)

    def metadata(self) -> dict[str, str]:
        """The GGUF key/value metadata as llama.cpp renders it (arrays are summarised)."""
        if self._metadata is None:
            lib = _lib()
            out: dict[str, str] = {}
            for i in range(lib.llama_model_meta_count(self.ptr)):
                key = _read_str(
                    lambda b, n, i=i: lib.llama_model_meta_key_by_index(self.ptr, i, b, n)
                )
                out[key] = _read_str(
                    lambda b, n, i=i: lib.llama_model_meta_val_str_by_index(self.ptr, i, b, n)
                )
            self._metadata = out
        return dict(self._metadata)

    def head_dims(self) -> tuple[int, int]:
        """Size of one attention head's key and value vectors (what a KV cache row holds)."""
        import gguf

        meta = self.metadata()
        arch = meta.get(gguf.Keys.General.ARCHITECTURE, "")
        lib = _lib()
        default = lib.llama_model_n_embd(self.ptr) // max(1, lib.llama_model_n_head(self.ptr))
        dims = []
        for key in (gguf.Keys.Attention.KEY_LENGTH, gguf.Keys.Attention.VALUE_LENGTH):
            value = meta.get(key.format(arch=arch), "")
            dims.append(int(value) if value.isdigit() else default)
        return dims[0], dims[1]

    def kv_cache_type_id(self, name: str) -> int:
        """The ggml type id of KV cache type ``name`` ("f16", "q8_0", ...) for this model.

        llama.cpp aborts the process when a quantized cache row is not a whole number of
        blocks, so head sizes are checked here first.
        """
        import gguf

        from ...manifest import KV_CACHE_TYPES

        if name not in KV_CACHE_TYPES:
            raise EngineError(
                f"unknown KV cache type {name!r}; use one of {', '.join(KV_CACHE_TYPES)}"
            )
        qtype = gguf.GGMLQuantizationType[name.upper()]
        block = gguf.GGML_QUANT_SIZES[qtype][0]
        if block > 1:
            for what, dim in zip(("key", "value"), self.head_dims(), strict=True):
                if dim % block:
                    raise EngineError(
                        f"KV cache type {name} stores rows in blocks of {block} values, but "
                        f"{self.path.name} has attention heads of {dim} {what} values; "
                        'use kv_cache_type = "f16" for this model'
                    )
        return int(qtype)

    def close(self) -> None:
        """Free the model (and first every context still using it). Safe to call twice."""
        if self._ptr is None:
            return
        for ctx in list(self._contexts):
            ctx.close()
        with self._count_lock:
            ptr, self._ptr = self._ptr, None
            if self._open_contexts:
                self._free_ptr, self._free_pending = ptr, True
                return
        _lib().llama_model_free(ptr)

    def _context_opened(self) -> None:
        with self._count_lock:
            self._open_contexts += 1

    def _context_closed(self) -> None:
        """A context on this model was freed; free the model if it is closed and unused now."""
        with self._count_lock:
            self._open_contexts -= 1
            if not (self._free_pending and self._open_contexts == 0):
                return
            self._free_pending = False
            ptr = self._free_ptr
        _lib().llama_model_free(ptr)


def _read_str(call: Any, size: int = 256) -> str:
    buf = ctypes.create_string_buffer(size)
    n = call(buf, size)
    if n >= size:
        buf = ctypes.create_string_buffer(n + 1)
        n = call(buf, n + 1)
    return buf.raw[: max(n, 0)].decode("utf-8", errors="replace")


__all__ = ["LlamaModel", "set_llama_logging"]
