"""One llama.cpp context: its own KV cache, optional LoRA adapter, generation and logits.

See :mod:`edge_stack.engines.llama._model` for why this does not use llama-cpp-python's ``Llama`` class.
"""

from __future__ import annotations

import ctypes
import itertools
import logging
import os
import threading
import time
from collections.abc import Generator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ...errors import ContextOverflowError, EngineError
from ...util._limits import check_threads
from ._draft import MAX_DRAFT, Drafter
from ._lib import NativeHandle, check_file, default_threads, llama_errors, reason
from ._lib import lib as _lib
from ._sampling import StopText, build_sampler, check_grammar

if TYPE_CHECKING:
    from ._model import LlamaModel

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GenToken:
    """One step of :meth:`LlamaContext.generate`.

    ``text`` is what may be shown now: it can be empty (half a UTF-8 character, or text held back
    because it may start a stop string). A last item with ``id == -1`` carries held-back text
    that turned out not to be a stop string (only after an end-of-generation token or a cancel).
    """

    id: int
    text: str


@dataclass
class GenStats:
    """Counts and timings of the current or last :meth:`LlamaContext.generate` call."""

    prompt_tokens: int = 0
    #: prompt tokens whose KV entries were reused from the previous call (not evaluated again)
    cached_tokens: int = 0
    completion_tokens: int = 0
    prompt_seconds: float = 0.0
    gen_seconds: float = 0.0
    #: seconds from the start of the call to the first sampled token (0 if none was)
    first_token_seconds: float = 0.0
    #: "length", "eog", "stop", "cancelled" or "context" ("" while running)
    finish_reason: str = ""
    #: tokens proposed by prompt-lookup drafting, and how many of them the sampler kept
    draft_tokens: int = 0
    draft_accepted: int = 0

    @property
    def seconds(self) -> float:
        """Prompt evaluation plus generation time."""
        return self.prompt_seconds + self.gen_seconds


class LlamaContext(NativeHandle):
    """A context on a shared :class:`LlamaModel`, optionally with a LoRA adapter of its own.

    The tokens currently in the KV cache are remembered: the next :meth:`generate` keeps the
    longest common prefix and evaluates only the rest. One thread at a time per context.

    Results never depend on what the context evaluated before. llama.cpp's CPU kernels round
    differently for different batch shapes (flash attention switches kernels at 64 rows; float
    and k-quant matmuls differ between one row and many), so a prompt evaluated in other pieces
    can give other logits and, at a near-tie, another greedy token. Prompts are therefore always
    evaluated in micro-batches of ``n_ubatch`` tokens aligned to absolute positions, and only
    whole prompt micro-batches are reused from the cache: a call computes bit for bit what a
    fresh context computes.
    """

    #: sequences the KV cache holds, each with ``n_ctx`` cells of its own (the batched subclass
    #: in :mod:`edge_stack.engines.llama._batch` raises it; this class only ever uses sequence 0)
    _n_seq = 1
    _kv_unified = False
    #: llama.cpp's own micro-batch when it differs from ``n_ubatch`` (the packed batches of
    #: :mod:`edge_stack.engines.llama._batch`); None: ``n_ubatch``
    _native_ubatch: int | None = None

    def __init__(
        self,
        model: LlamaModel,
        *,
        n_ctx: int,
        n_threads: int | None = None,
        n_batch: int = 512,
        n_ubatch: int = 32,
        flash_attn: bool = True,
        lora: str | os.PathLike[str] | None = None,
        lora_scale: float = 1.0,
        kv_cache_type: str = "f16",
        share: LlamaContext | None = None,
        seq: int = 0,
    ) -> None:
        lib = _lib()
        kv_type = model.kv_cache_type_id(kv_cache_type)
        if min(n_ctx, n_batch, n_ubatch) < 1:
            raise EngineError(
                f"n_ctx ({n_ctx}), n_batch ({n_batch}) and n_ubatch ({n_ubatch}) must be positive"
            )
        self.model = model
        self.n_ctx = n_ctx
        #: reuse granularity and llama.cpp's micro-batch (see the class docstring)
        self.n_ubatch = min(n_ubatch, n_batch, n_ctx)
        # Tokens per llama_decode call: whole micro-batches, so each call starts on a boundary.
        self.n_batch = min(n_batch, n_ctx) // self.n_ubatch * self.n_ubatch
        #: the context whose native llama.cpp context (and KV cache) this one is a sequence of
        #: (see :mod:`edge_stack.engines.llama._shared`); None when it has its own
        self._share = share
        #: this context's sequence in the KV cache
        self._seq = seq
        self.lora = Path(lora) if lora is not None else None
        self.kv_cache_type = kv_cache_type
        self.lora_scale = lora_scale
        self.flash_attn = flash_attn
        threads = default_threads() if n_threads is None else check_threads(n_threads, "n_threads")
        self._lock = threading.Lock()
        self._call = itertools.count(1)
        self._current = 0
        self._tokens: list[int] = []
        # Leading cached tokens that were evaluated as whole aligned prompt micro-batches, i.e.
        # exactly as a fresh context would evaluate them (generated tokens never count).
        self._reusable = 0
        self._adapter: Any = None
        self._batch: Any = None
        #: stats of the current or last generate() call
        self.last_stats = GenStats()

        if self.lora is not None:
            self._check_lora(self.lora)  # before any native allocation
        if share is not None:
            self._join(share)
            return
        params = lib.llama_context_default_params()
        params.n_ctx = n_ctx * self._n_seq
        params.n_batch = max(self.n_batch, self._n_seq)
        params.n_ubatch = self._native_ubatch or self.n_ubatch
        params.n_seq_max = self._n_seq
        if self._n_seq > 1:
            params.kv_unified = self._kv_unified
        params.n_threads = params.n_threads_batch = threads
        params.type_k = params.type_v = kv_type
        params.flash_attn_type = (
            lib.LLAMA_FLASH_ATTN_TYPE_ENABLED if flash_attn else lib.LLAMA_FLASH_ATTN_TYPE_DISABLED
        )
        params.no_perf = True  # we time calls ourselves
        with llama_errors() as errors:
            self._ctx: Any = lib.llama_init_from_model(model.ptr, params)
        if self._ctx:
            model._context_opened()
        if not self._ctx:
            self._ctx = None
            raise EngineError(
                f"llama.cpp could not create a context of {n_ctx} tokens for {model.path}: "
                f"{reason(errors, 'out of memory, or n_ctx too large?')}"
            )
        try:
            if self.lora is not None:
                self._attach_lora(self.lora, lora_scale)
            self._mem = lib.llama_get_memory(self._ctx)
            self._batch = lib.llama_batch_init(max(self.n_batch, self._n_seq), 0, 1)
            for i in range(max(self.n_batch, self._n_seq)):  # sequence 0 unless told otherwise
                self._batch.n_seq_id[i] = 1
                self._batch.seq_id[i][0] = 0
        except BaseException:
            self.close()
            raise
        model._contexts.add(self)

    def _join(self, share: LlamaContext) -> None:
        """Become sequence ``self._seq`` of ``share``'s native context, with an adapter of our own
        that :meth:`_select` sets on that context before each of our decodes."""
        lib = _lib()
        if self.n_ubatch != share.n_ubatch or self.kv_cache_type != share.kv_cache_type:
            raise EngineError(
                f"a sequence of a shared context needs its micro-batch ({share.n_ubatch}) and KV "
                f"cache type ({share.kv_cache_type}), not {self.n_ubatch} and {self.kv_cache_type}"
            )
        if not 0 <= self._seq < share._n_seq or self.n_ctx > share.n_ctx:
            raise EngineError(
                f"sequence {self._seq} of {self.n_ctx} tokens does not fit a shared context of "
                f"{share._n_seq} sequences of {share.n_ctx} tokens"
            )
        self._lock = share._lock  # one native context: one native call at a time
        self._n_seq = share._n_seq
        self._ctx = share._live()
        self._mem = share._mem
        self.model._context_opened()  # the model outlives our adapter (see LlamaModel)
        try:
            if self.lora is not None:
                self._load_lora(self.lora)
            self._batch = lib.llama_batch_init(self.n_batch, 0, 1)
            for i in range(self.n_batch):
                self._batch.n_seq_id[i] = 1
                self._batch.seq_id[i][0] = self._seq
        except BaseException:
            self.close()
            raise
        self.model._contexts.add(self)

    def _select(self) -> None:
        """Before a decode on a shared native context: set this sequence's adapter on it if another
        sequence's is set (llama.cpp then re-plans its graph once; caller holds the lock)."""
        share = self._share
        if share is None or getattr(share, "_active", None) is self:
            return
        lib = _lib()
        if self._adapter is None:
            rc = lib.llama_set_adapters_lora(self._ctx, None, 0, None)
        else:
            adapters = (lib.llama_adapter_lora_p_ctypes * 1)(self._adapter)
            scales = (ctypes.c_float * 1)(self.lora_scale)
            rc = lib.llama_set_adapters_lora(self._ctx, adapters, 1, scales)
        if rc != 0:
            raise EngineError(f"llama.cpp could not set the LoRA adapter {self.lora}")
        share._switched(self)

    def _clear_memory(self) -> None:
        """Forget this context's KV cells (only its own sequence on a shared native context)."""
        lib = _lib()
        if self._share is None:
            lib.llama_memory_clear(self._mem, True)
        else:
            lib.llama_memory_seq_rm(self._mem, self._seq, -1, -1)

    def _check_lora(self, path: Path) -> None:
        check_file(path, "adapter")
        try:
            from ...formats.gguf._check import check_adapter_fits
        except ImportError:  # pragma: no cover - only while the checker is being written
            return
        check_adapter_fits(path, self.model.path)

    def _attach_lora(self, path: Path, scale: float) -> None:
        lib = _lib()
        self._load_lora(path)
        adapters = (lib.llama_adapter_lora_p_ctypes * 1)(self._adapter)
        scales = (ctypes.c_float * 1)(scale)
        if lib.llama_set_adapters_lora(self._ctx, adapters, 1, scales) != 0:
            raise EngineError(f"llama.cpp could not attach the LoRA adapter {path}")

    def _load_lora(self, path: Path) -> None:
        lib = _lib()
        with llama_errors() as errors:
            self._adapter = lib.llama_adapter_lora_init(self.model.ptr, os.fsencode(path))
        if not self._adapter:
            raise EngineError(
                f"llama.cpp returned NULL loading the LoRA adapter {path} for {self.model.path}: "
                f"{reason(errors)}"
            )

    # -- public API ------------------------------------------------------------------------------

    @property
    def cached_tokens(self) -> list[int]:
        """The tokens whose KV entries are currently in this context."""
        return list(self._tokens)

    def reset(self) -> None:
        """Forget the KV cache (the next call evaluates its whole prompt)."""
        with self._lock:
            self._live()
            self._clear_memory()
            self._tokens = []
            self._reusable = 0

    def save_prefix(self, n_tokens: int) -> bytearray | None:
        """llama.cpp's state of the first ``n_tokens`` cached tokens (its sequence state bytes,
        for :meth:`load_prefix`); None when there is no such prefix or llama.cpp fails.

        Only a reusable prefix (whole prompt micro-batches, see the class docstring) is saved, so
        loading it gives what a fresh evaluation gives. The cache after it is dropped first.
        """
        with self._lock:
            self._live()
            if not 0 < n_tokens <= self._reusable or n_tokens % self.n_ubatch:
                return None
            lib = _lib()
            if len(self._tokens) > n_tokens:
                if not lib.llama_memory_seq_rm(self._mem, self._seq, n_tokens, -1):
                    return None
                self._tokens = self._tokens[:n_tokens]
            with llama_errors() as errors:
                size = lib.llama_state_seq_get_size(self._ctx, self._seq)
                state = bytearray(size)
                buf = (ctypes.c_uint8 * size).from_buffer(state)
                written = (
                    lib.llama_state_seq_get_data(self._ctx, buf, size, self._seq) if size else 0
                )
                del buf  # releases the bytearray for the caller
            if not size or written != size:
                log.debug(
                    "could not get the prompt state (%d of %d bytes): %s",
                    written,
                    size,
                    reason(errors),
                )
                return None
            return state

    def load_prefix(self, state: bytes | bytearray | memoryview, tokens: Sequence[int]) -> bool:
        """Replace the cache by ``state`` (from :meth:`save_prefix`) of ``tokens``; True if loaded.

        llama.cpp checks the state's shapes (layers, types, row sizes) and bounds every read by
        ``len(state)``; on top of that the state must be consumed whole, re-serialize to the same
        size and hold exactly positions ``0..len(tokens)-1``. Anything else leaves the cache
        empty and returns False. The caller vouches for the KV values (see
        :mod:`edge_stack.engines.llama._prompt_cache`, which checksums them).
        """
        n = len(tokens)
        with self._lock:
            self._live()
            lib = _lib()
            self._clear_memory()
            self._tokens, self._reusable = [], 0
            size = len(state)
            if n == 0 or n % self.n_ubatch or size == 0:
                return False
            try:  # shares a writable buffer: no copy of a state that may be large
                buf = (ctypes.c_uint8 * size).from_buffer(state)
            except TypeError:  # read-only (bytes)
                buf = (ctypes.c_uint8 * size).from_buffer_copy(state)
            with llama_errors() as errors:
                read = lib.llama_state_seq_set_data(self._ctx, buf, size, self._seq)
                del buf
                ok = (
                    read == size
                    and lib.llama_memory_seq_pos_min(self._mem, self._seq) == 0
                    and lib.llama_memory_seq_pos_max(self._mem, self._seq) == n - 1
                    and lib.llama_state_seq_get_size(self._ctx, self._seq) == size
                )
            if not ok:
                log.debug(
                    "prompt state not used (%d of %d bytes read): %s",
                    read,
                    size,
                    reason(errors, "positions or size differ"),
                )
                self._clear_memory()
                return False
            self._tokens, self._reusable = [int(t) for t in tokens], n
            return True

    def eval_logits(self, tokens: Sequence[int]) -> np.ndarray:
        """Logits for every position of ``tokens``: float32 array ``(len(tokens), n_vocab)``.

        Row ``i`` is the distribution of the token after ``tokens[: i + 1]``. Evaluates from an
        empty cache (cached positions have no logits to give).
        """
        ids = self._check_tokens(tokens)
        if len(ids) > self.n_ctx:
            raise ContextOverflowError(
                f"{len(ids)} tokens do not fit the context of {self.n_ctx} tokens; "
                "use shorter texts or a larger n_ctx"
            )
        self._current = next(self._call)
        rows: list[np.ndarray] = []
        with self._lock:
            self._live()
            self._clear_memory()
            self._tokens = []
            self._reusable = 0
            self._decode(ids, all_logits=True, rows=rows)
            self._reusable = len(ids) // self.n_ubatch * self.n_ubatch
        return np.concatenate(rows, axis=0)

    def last_logits(self) -> np.ndarray:
        """Logits (float32, ``(n_vocab,)``) of the last position evaluated with an output."""
        with self._lock:
            ptr = _lib().llama_get_logits_ith(self._live(), -1)
            if not ptr:
                raise EngineError("no logits available: nothing was evaluated in this context yet")
            return np.ctypeslib.as_array(ptr, shape=(self.model.n_vocab,)).copy()

    def generate(
        self,
        tokens: Sequence[int],
        *,
        max_tokens: int,
        temperature: float = 0.0,
        top_k: int = 40,
        top_p: float = 0.95,
        min_p: float = 0.05,
        repeat_penalty: float = 1.0,
        seed: int | None = None,
        stop: Sequence[str] = (),
        grammar: str | None = None,
        draft: int = 0,
        cancel: threading.Event | None = None,
    ) -> Generator[GenToken, None, None]:
        """Generate after the prompt ``tokens``; stream :class:`GenToken` items.

        ``draft`` > 0 turns on prompt-lookup drafting (:mod:`._draft`) with up to that many
        tokens checked per llama.cpp call: each drafted token is kept only if this call's own
        sampler picks it, so the output distribution is the sampler's (greedy picks the same
        argmax). The logits of a batch of rows may differ in the last bits from those of one
        row, so at a near-tie the text can differ from undrafted decoding (README, Performance).

        Stops at ``max_tokens`` generated tokens, an end-of-generation token (not yielded), a stop
        string (never emitted) or when ``cancel`` is set (checked between tokens). Greedy when
        ``temperature <= 0``. Raises at once, before any evaluation: :class:`ContextOverflowError`
        when the prompt plus ``max_tokens`` does not fit ``n_ctx``, :class:`EngineError` for a
        bad token id or a GBNF ``grammar`` that does not parse. Counts and timings are in
        :attr:`last_stats` (updated as it goes).
        """
        ids = self._check_tokens(tokens)
        if max_tokens < 0:
            raise EngineError(f"max_tokens must be 0 or more, not {max_tokens}")
        if len(ids) + max_tokens > self.n_ctx:
            raise ContextOverflowError(
                f"prompt of {len(ids)} tokens plus max_tokens {max_tokens} = "
                f"{len(ids) + max_tokens} does not fit the context of {self.n_ctx} tokens; "
                "shorten the prompt, lower max_tokens or raise n_ctx"
            )
        if grammar is not None:
            check_grammar(_lib(), self.model.vocab, grammar)  # now, not at the first token
        sampling = {
            "temperature": temperature,
            "top_k": top_k,
            "top_p": top_p,
            "min_p": min_p,
            "repeat_penalty": repeat_penalty,
            "seed": seed,
            "grammar": grammar,
        }
        if not isinstance(draft, int) or not 0 <= draft <= MAX_DRAFT:
            raise EngineError(f"draft must be a whole number from 0 to {MAX_DRAFT}, not {draft!r}")
        self._live()
        self._current = next(self._call)
        return self._generate(ids, self._current, max_tokens, sampling, stop, cancel, draft)

    def close(self) -> None:
        """Free the context and its adapter. Safe to call twice."""
        share = getattr(self, "_share", None)
        if share is None:
            self._close_views()
        with self._lock:
            if getattr(self, "_ctx", None) is None:
                return
            lib = _lib()
            if self._batch is not None:
                lib.llama_batch_free(self._batch)
                self._batch = None
            if share is None:
                lib.llama_free(self._ctx)
            else:  # only our sequence and adapter go; the native context is the owner's
                if share._ctx is not None:
                    lib.llama_memory_seq_rm(self._mem, self._seq, -1, -1)
                    if getattr(share, "_active", None) is self:
                        lib.llama_set_adapters_lora(self._ctx, None, 0, None)
                        share._switched(None)
            self._ctx = None
            if self._adapter is not None:
                lib.llama_adapter_lora_free(self._adapter)
                self._adapter = None
            self._tokens = []
            self._reusable = 0
            self.model._context_closed()
        self.model._contexts.discard(self)

    # -- internals -------------------------------------------------------------------------------

    def _close_views(self) -> None:
        """Close the contexts that are sequences of this one (a shared context overrides it)."""

    def _switched(self, view: LlamaContext | None) -> None:
        """``view``'s adapter is now the one set (a shared context overrides it)."""

    def _live(self) -> Any:
        if getattr(self, "_ctx", None) is None:
            raise EngineError(f"context on {self.model.path} is closed")
        return self._ctx

    def _check_tokens(self, tokens: Sequence[int]) -> np.ndarray:
        ids = np.asarray(tokens, dtype=np.int64).reshape(-1)
        if ids.size == 0:
            raise EngineError("cannot evaluate an empty prompt: give at least one token")
        bad = (ids < 0) | (ids >= self.model.n_vocab)
        if bad.any():
            raise EngineError(
                f"token id {int(ids[bad][0])} is outside the vocabulary of {self.model.path} "
                f"(0..{self.model.n_vocab - 1})"
            )
        return ids.astype(np.int32)

    def _decode(
        self,
        ids: np.ndarray,
        *,
        all_logits: bool = False,
        rows: list[np.ndarray] | None = None,
        cancel: threading.Event | None = None,
    ) -> bool:
        """Append ``ids`` to the KV cache, ``n_batch`` per llama_decode call (caller holds the lock).

        llama.cpp splits each call into ``n_ubatch`` micro-batches from its first token; callers
        start prompts on a multiple of ``n_ubatch`` so the micro-batches are aligned.

        Logits: for every position with ``all_logits`` (collected into ``rows``), else only for
        the last one. Returns False if ``cancel`` was set between chunks.
        """
        lib = _lib()
        batch = self._batch
        for start in range(0, len(ids), self.n_batch):
            if cancel is not None and cancel.is_set():
                return False
            chunk = np.ascontiguousarray(ids[start : start + self.n_batch])
            n = len(chunk)
            pos0 = len(self._tokens)
            positions = np.arange(pos0, pos0 + n, dtype=np.int32)
            batch.n_tokens = n
            ctypes.memmove(batch.token, chunk.ctypes.data, 4 * n)
            ctypes.memmove(batch.pos, positions.ctypes.data, 4 * n)
            ctypes.memset(batch.logits, 1 if all_logits else 0, n)
            if not all_logits and start + n == len(ids):
                batch.logits[n - 1] = 1
            self._decode_batch(pos0)
            self._tokens.extend(chunk.tolist())
            if rows is not None and all_logits:
                ptr = lib.llama_get_logits(self._ctx)
                rows.append(np.ctypeslib.as_array(ptr, shape=(n, self.model.n_vocab)).copy())
        return True

    def _decode_few(self, ids: list[int], *, all_logits: bool) -> None:
        """Append a generation step's few tokens (the sampled one, then any draft) to the KV
        cache: the batch :meth:`_decode` would fill, written without numpy, which costs more
        than the copy for so few tokens (caller holds the lock). Logits for every position with
        ``all_logits``, else for the last."""
        n = len(ids)
        if n > self.n_batch:  # more than one llama_decode call
            self._decode(np.array(ids, dtype=np.int32), all_logits=all_logits)
            return
        batch = self._batch
        pos0 = len(self._tokens)
        token, pos, logits = batch.token, batch.pos, batch.logits
        flag = 1 if all_logits else 0
        for i, t in enumerate(ids):
            token[i] = t
            pos[i] = pos0 + i
            logits[i] = flag
        logits[n - 1] = 1
        batch.n_tokens = n
        self._decode_batch(pos0)
        self._tokens.extend(ids)

    def _decode_batch(self, pos0: int) -> None:
        """One llama_decode call on the filled batch, whose first token is at ``pos0``."""
        self._select()
        with llama_errors() as errors:
            rc = _lib().llama_decode(self._ctx, self._batch)
        if rc != 0:
            # The cache state after a failed decode is not ours to guess: start over next time.
            self._clear_memory()
            self._tokens = []
            self._reusable = 0
            raise EngineError(
                f"llama_decode failed (code {rc}) at position {pos0} of {self.n_ctx} "
                f"for {self.model.path}: {reason(errors)}"
            )

    def _reuse_prefix(self, ids: np.ndarray) -> int:
        """Drop the cache after the reusable part of the common prefix with ``ids``.

        Returns how many leading tokens are kept: whole aligned prompt micro-batches only (see
        the class docstring), and never the last prompt token, which is evaluated again for
        its logits.
        """
        old = self._tokens
        m = min(len(old), len(ids) - 1)
        same = np.asarray(old[:m], dtype=np.int32) == ids[:m]
        common = m if same.all() else int(np.argmin(same))
        keep = min(common, self._reusable) // self.n_ubatch * self.n_ubatch
        if keep < len(old):
            lib = _lib()
            if not lib.llama_memory_seq_rm(self._mem, self._seq, keep, -1):
                self._clear_memory()
                keep = 0
            self._tokens = old[:keep]
        self._reusable = keep
        return keep

    def _generate(
        self,
        ids: np.ndarray,
        call: int,
        max_tokens: int,
        sampling: dict[str, Any],
        stop: Sequence[str],
        cancel: threading.Event | None,
        draft: int = 0,
    ) -> Generator[GenToken, None, None]:
        lib = _lib()
        model = self.model
        stats = self.last_stats = GenStats(prompt_tokens=len(ids))
        t0 = time.perf_counter()
        with self._lock:
            self._own(call)
            stats.cached_tokens = self._reuse_prefix(ids)
            done = self._decode(ids[stats.cached_tokens :], cancel=cancel)
            if done:
                self._reusable = len(ids) // self.n_ubatch * self.n_ubatch
        stats.prompt_seconds = time.perf_counter() - t0
        if not done:
            stats.finish_reason = "cancelled"
            return
        if max_tokens == 0:
            stats.finish_reason = "length"
            return
        sampler = build_sampler(lib, model.vocab, model.n_vocab, history=ids.tolist(), **sampling)
        text = StopText(stop)
        drafter = Drafter(max_len=draft) if draft else None
        history = ids.tolist()
        t1 = time.perf_counter()
        try:
            with self._lock:
                self._own(call)
                # (token, already in the KV cache): drafted tokens the sampler confirmed are
                pending = [(int(lib.llama_sampler_sample(sampler, self._ctx, -1)), False)]
            while True:
                tok, cached = pending.pop(0)
                if not stats.first_token_seconds:
                    stats.first_token_seconds = time.perf_counter() - t0
                if model.is_eog(tok):
                    stats.finish_reason = "eog"
                    break
                stats.completion_tokens += 1
                history.append(tok)
                piece = text.feed(model.token_to_piece(tok))
                if text.stopped or stats.completion_tokens >= max_tokens:
                    stats.finish_reason = "stop" if text.stopped else "length"
                    stats.gen_seconds = time.perf_counter() - t1
                    yield GenToken(tok, piece + text.flush())
                    return
                stats.gen_seconds = time.perf_counter() - t1
                yield GenToken(tok, piece)
                if cancel is not None and cancel.is_set():
                    stats.finish_reason = "cancelled"
                    break
                if cached:
                    continue  # its KV entry exists: the next pending token follows it
                if len(self._tokens) >= self.n_ctx:  # cannot happen after the check in generate()
                    stats.finish_reason = "context"
                    break
                with self._lock:
                    self._own(call)
                    pending = self._step(
                        tok, sampler, drafter, history, max_tokens - stats.completion_tokens
                    )
            stats.gen_seconds = time.perf_counter() - t1
            tail = text.flush()
            if tail:
                yield GenToken(-1, tail)
        finally:
            if drafter is not None:
                stats.draft_tokens, stats.draft_accepted = drafter.drafted, drafter.accepted
            lib.llama_sampler_free(sampler)

    def _step(
        self, tok: int, sampler: Any, drafter: Drafter | None, history: list[int], left: int
    ) -> list[tuple[int, bool]]:
        """Evaluate ``tok`` (and a draft after it) and sample what follows (caller holds the lock).

        Returns the tokens to emit next: drafted tokens the sampler picked itself (their KV
        entries kept), then the one token it picked where it disagreed or after the last draft.
        """
        lib = _lib()
        # Room: every drafted token emitted plus the one sampled after them fit max_tokens,
        # and all of them fit the context.
        room = min(left - 1, self.n_ctx - len(self._tokens) - 1)
        guess = drafter.draft(history, room) if drafter is not None else []
        if not guess:
            self._decode_few([tok], all_logits=False)
            return [(int(lib.llama_sampler_sample(sampler, self._ctx, -1)), False)]
        self._decode_few([tok, *guess], all_logits=True)
        out: list[tuple[int, bool]] = []
        for i, guessed in enumerate(guess):
            picked = int(lib.llama_sampler_sample(sampler, self._ctx, i))
            if picked != guessed:
                out.append((picked, False))
                break
            out.append((picked, True))
        else:
            out.append((int(lib.llama_sampler_sample(sampler, self._ctx, len(guess))), False))
        accepted = len(out) - 1
        assert drafter is not None
        drafter.record(len(guess), accepted)
        keep = len(self._tokens) - (len(guess) - accepted)
        if keep < len(self._tokens):
            # The rejected guesses' KV entries go; the next decode continues after the kept ones.
            if not lib.llama_memory_seq_rm(self._mem, self._seq, keep, -1):
                raise EngineError("llama.cpp could not drop rejected draft tokens from the cache")
            del self._tokens[keep:]
        return out

    def _own(self, call: int) -> None:
        """Refuse to go on when the context was closed or a newer call took it over."""
        self._live()
        if call != self._current:
            raise EngineError(
                "this generation was superseded by a newer call on the same context; "
                "finish or close a generation before starting the next"
            )
