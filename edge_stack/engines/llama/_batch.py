"""Batched generation: several prompts through one context together, one decode per step.

A :class:`BatchContext` is a :class:`~edge_stack.engines.llama._context.LlamaContext` whose KV cache
holds ``n_seq`` sequences, each in its own stream of ``n_ctx`` cells. Generation is where the
time of a small model goes, and on a CPU it is bound by reading the weights once per step: one
``llama_decode`` for a token of every active sequence reads them once for all of them.

Results equal asking one by one (same tokens at temperature 0, same draws for the same seed):
each prompt is evaluated alone, in the same position-aligned micro-batches the single-sequence
path uses, and each sequence keeps its own sampler chain, stop strings and limits. Only the
generation steps are shared. Each slot also remembers its tokens, so a prompt that starts like
the one its slot saw last reuses whole cached micro-batches, exactly as
:class:`LlamaContext` does.

``pack_prompts=True`` trades that exactness for speed: the prompts' uncached parts go through
llama.cpp together, in as few calls as fit ``n_batch``, on one KV stream shared by every
sequence (llama.cpp splits a call over separate streams into micro-batches holding equal
numbers of each sequence's tokens, which runs no faster) and micro-batches as large as a call.
A large micro-batch is where a CPU computes fastest, but llama.cpp's kernels round differently
for it (flash attention switches kernels at 64 rows), so a prompt's logits are no longer the
one-by-one bits and a near-tie can break the other way (``benchmarks/batch_packing.py``).
"""

from __future__ import annotations

import ctypes
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from ...errors import ContextOverflowError, EngineError
from ._context import GenStats, LlamaContext
from ._lib import lib as _lib
from ._lib import llama_errors, reason
from ._sampling import StopText, build_sampler, check_grammar

if TYPE_CHECKING:
    import os

    from ._model import LlamaModel

#: most sequences one batch context holds (its KV cache grows with each)
MAX_SEQ = 64


@dataclass
class _Call:
    """One :meth:`BatchContext.generate_batch` call's per-sequence state."""

    outs: list[BatchOutput]
    samplers: list[Any]
    texts: list[StopText]
    max_tokens: int
    #: seconds are counted from here
    t0: float
    #: sequence -> the token to decode at the next step
    pending: dict[int, int] = field(default_factory=dict)


@dataclass
class BatchOutput:
    """What one prompt of :meth:`BatchContext.generate_batch` produced."""

    #: generated text up to (not including) a stop string; half UTF-8 characters dropped
    text: str = ""
    tokens: list[int] = field(default_factory=list)
    #: this prompt's counts and timings (``first_token_seconds`` from the start of the call)
    stats: GenStats = field(default_factory=GenStats)
    #: seconds from the start of the call until this prompt's output was complete (its own
    #: time: prompts that finish early do not wait for the others)
    seconds: float = 0.0


class BatchContext(LlamaContext):
    """A context for up to ``n_seq`` prompts at a time (``n_ctx`` tokens for each)."""

    def __init__(
        self,
        model: LlamaModel,
        *,
        n_ctx: int,
        n_seq: int,
        n_threads: int | None = None,
        n_batch: int = 512,
        n_ubatch: int = 32,
        flash_attn: bool = True,
        lora: str | os.PathLike[str] | None = None,
        lora_scale: float = 1.0,
        kv_cache_type: str = "f16",
        pack_prompts: bool = False,
    ) -> None:
        if not 1 <= n_seq <= MAX_SEQ:
            raise EngineError(f"a batch holds 1 to {MAX_SEQ} sequences, not {n_seq}")
        self._n_seq = n_seq
        #: prompts evaluated together (see the module docstring); ``n_ubatch`` stays the unit of
        #: prefix reuse, llama.cpp's micro-batch becomes a whole call
        self.pack_prompts = pack_prompts
        if pack_prompts:
            self._kv_unified = True
            self._native_ubatch = min(n_batch, n_ctx)
        self._slots: list[list[int]] = [[] for _ in range(n_seq)]
        self._slot_reusable = [0] * n_seq
        #: a sliding-window model's window (0: none; see :meth:`_common_reusable`)
        self._n_swa = int(_lib().llama_model_n_swa(model.ptr))
        super().__init__(
            model,
            n_ctx=n_ctx,
            n_threads=n_threads,
            n_batch=n_batch,
            n_ubatch=n_ubatch,
            flash_attn=flash_attn,
            lora=lora,
            lora_scale=lora_scale,
            kv_cache_type=kv_cache_type,
        )

    @property
    def n_seq(self) -> int:
        """How many prompts one :meth:`generate_batch` call takes at most."""
        return self._n_seq

    def generate_batch(
        self,
        prompts: Sequence[Sequence[int]],
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
    ) -> list[BatchOutput]:
        """Generate after each prompt; one :class:`BatchOutput` per prompt, in order.

        Same stopping rules and errors as :meth:`LlamaContext.generate` for every prompt; a
        cancel stops all of them (their ``finish_reason`` is "cancelled"). ``draft`` is accepted
        and ignored: a batch already checks one token for every prompt per step.
        """
        if not 1 <= len(prompts) <= self._n_seq:
            raise EngineError(f"give 1 to {self._n_seq} prompts, not {len(prompts)}")
        if max_tokens < 0:
            raise EngineError(f"max_tokens must be 0 or more, not {max_tokens}")
        all_ids = [self._check_tokens(p) for p in prompts]
        for ids in all_ids:
            if len(ids) + max_tokens > self.n_ctx:
                raise ContextOverflowError(
                    f"prompt of {len(ids)} tokens plus max_tokens {max_tokens} = "
                    f"{len(ids) + max_tokens} does not fit the context of {self.n_ctx} tokens; "
                    "shorten the prompt, lower max_tokens or raise n_ctx"
                )
        lib = _lib()
        if grammar is not None:
            check_grammar(lib, self.model.vocab, grammar)
        sampling: dict[str, Any] = {
            "temperature": temperature,
            "top_k": top_k,
            "top_p": top_p,
            "min_p": min_p,
            "repeat_penalty": repeat_penalty,
            "seed": seed,
            "grammar": grammar,
        }
        with self._lock:
            self._live()
            self._current = next(self._call)  # a single-sequence generation in flight is over
            samplers: list[Any] = []
            try:
                for ids in all_ids:
                    samplers.append(
                        build_sampler(
                            lib,
                            self.model.vocab,
                            self.model.n_vocab,
                            history=ids.tolist(),
                            **sampling,
                        )
                    )
                # Sequence 0 is also the one the inherited single-sequence calls use.
                self._slots[0], self._slot_reusable[0] = self._tokens, self._reusable
                return self._run(all_ids, samplers, max_tokens, stop, cancel)
            finally:
                self._tokens, self._reusable = self._slots[0], self._slot_reusable[0]
                # The inherited single-sequence calls (generate, eval_logits) fill the batch
                # for sequence 0 and never touch its sequence ids: give them back.
                for i in range(max(self.n_batch, self._n_seq)):
                    self._batch.seq_id[i][0] = 0
                for smpl in samplers:
                    lib.llama_sampler_free(smpl)

    def _clear_memory(self) -> None:
        """Forget every sequence's cells, and every slot's record of them: ``reset``,
        ``eval_logits`` and the inherited single-sequence paths (``load_prefix``, a failed
        decode) clear the whole native cache."""
        super()._clear_memory()
        self._slots = [[] for _ in range(self._n_seq)]
        self._slot_reusable = [0] * self._n_seq
        self._tokens, self._reusable = self._slots[0], 0

    # -- internals -------------------------------------------------------------------------------

    def _run(
        self,
        all_ids: list[np.ndarray],
        samplers: list[Any],
        max_tokens: int,
        stop: Sequence[str],
        cancel: threading.Event | None,
    ) -> list[BatchOutput]:
        call = _Call(
            outs=[BatchOutput(stats=GenStats(prompt_tokens=len(ids))) for ids in all_ids],
            samplers=samplers,
            texts=[StopText(stop) for _ in all_ids],
            max_tokens=max_tokens,
            t0=time.perf_counter(),
        )
        prompts = self._packed_prompts if self.pack_prompts else self._aligned_prompts
        cancelled = not prompts(all_ids, call, cancel)
        step_start = time.perf_counter()
        while call.pending and not cancelled:
            if cancel is not None and cancel.is_set():
                cancelled = True
                break
            order = list(call.pending)
            self._decode_step(order, [call.pending[s] for s in order])
            call.pending = {}
            for row, seq in enumerate(order):
                self._sample(call, seq, row)
        gen_seconds = time.perf_counter() - step_start
        for seq, out in enumerate(call.outs):
            if cancelled and out.stats.finish_reason == "":
                out.stats.finish_reason = "cancelled"
            out.text += call.texts[seq].flush()
            out.stats.gen_seconds = gen_seconds
            out.stats.completion_tokens = len(out.tokens)
            out.seconds = out.seconds or time.perf_counter() - call.t0
        return call.outs

    def _aligned_prompts(
        self, all_ids: list[np.ndarray], call: _Call, cancel: threading.Event | None
    ) -> bool:
        """Each prompt alone, as a single sequence evaluates it; its first token sampled into
        ``call.pending``. False if cancelled."""
        for seq, ids in enumerate(all_ids):
            out = call.outs[seq]
            t = time.perf_counter()
            self._borrow_prefix(seq, ids, done=seq)
            out.stats.cached_tokens = self._reuse_slot(seq, ids)
            if not self._decode_seq(seq, ids[out.stats.cached_tokens :], cancel):
                return False
            self._slot_reusable[seq] = len(ids) // self.n_ubatch * self.n_ubatch
            out.stats.prompt_seconds = time.perf_counter() - t
            # Sampled now: the next sequence's prompt overwrites these logits.
            self._first_token(call, seq, -1)
        return True

    def _packed_prompts(
        self, all_ids: list[np.ndarray], call: _Call, cancel: threading.Event | None
    ) -> bool:
        """The prompts' uncached parts together, ``n_batch`` tokens per llama_decode call; each
        first token sampled into ``call.pending`` after the call holding its prompt's end.
        False if cancelled."""
        t = time.perf_counter()
        # The prompts' common start once, on sequence 0; the others borrow it.
        common = min(len(ids) for ids in all_ids) - 1
        for ids in all_ids[1:]:
            common = _common_length(all_ids[0], ids, common)
        common = common // self.n_ubatch * self.n_ubatch
        # What any slot holds of the first prompt first: only the rest of the start is evaluated.
        self._borrow_prefix(0, all_ids[0], done=len(all_ids))
        cached = self._reuse_slot(0, all_ids[0])
        if cached < common:
            if not self._decode_seq(0, all_ids[0][cached:common], cancel):
                return False
            self._slot_reusable[0] = common
        rows: list[tuple[int, int]] = []  # (sequence, token)
        for seq, ids in enumerate(all_ids):
            self._borrow_prefix(seq, ids, done=len(all_ids))
            done = self._reuse_slot(seq, ids)
            # The start sequence 0 evaluated just now was no cache hit for it.
            call.outs[seq].stats.cached_tokens = done if seq else cached
            rows += [(seq, int(tok)) for tok in ids[done:]]
        batch = self._batch
        for start in range(0, len(rows), self.n_batch):
            if cancel is not None and cancel.is_set():
                return False
            part = rows[start : start + self.n_batch]
            ends = []
            for k, (seq, tok) in enumerate(part):
                batch.token[k] = tok
                batch.pos[k] = len(self._slots[seq])
                batch.seq_id[k][0] = seq
                last = start + k + 1 == len(rows) or rows[start + k + 1][0] != seq
                batch.logits[k] = last
                self._slots[seq].append(tok)
                if last:
                    ends.append((seq, k))
            batch.n_tokens = len(part)
            self._llama_decode(part[0][0], int(batch.pos[0]))
            for seq, row in ends:
                self._slot_reusable[seq] = len(all_ids[seq]) // self.n_ubatch * self.n_ubatch
                call.outs[seq].stats.prompt_seconds = time.perf_counter() - t
                self._first_token(call, seq, row)
        return True

    def _first_token(self, call: _Call, seq: int, row: int) -> None:
        """Sample ``seq``'s first token from the logits of batch ``row`` (-1: the last)."""
        out = call.outs[seq]
        if call.max_tokens == 0:
            out.stats.finish_reason = "length"
            return
        self._sample(call, seq, row, first=True)

    def _sample(self, call: _Call, seq: int, row: int, *, first: bool = False) -> None:
        """Sample ``seq``'s next token from the logits of batch ``row`` and account for it: into
        ``call.pending`` if the sequence goes on (the token gets decoded), else its time ends."""
        tok = int(_lib().llama_sampler_sample(call.samplers[seq], self._ctx, row))
        out, text = call.outs[seq], call.texts[seq]
        if first:
            out.stats.first_token_seconds = time.perf_counter() - call.t0
        if self.model.is_eog(tok):
            out.stats.finish_reason = "eog"
        else:
            out.tokens.append(tok)
            out.text += text.feed(self.model.token_to_piece(tok))
            if not (text.stopped or len(out.tokens) >= call.max_tokens):
                call.pending[seq] = tok
                return
            out.stats.finish_reason = "stop" if text.stopped else "length"
        out.seconds = time.perf_counter() - call.t0

    def _common_reusable(self, slot: int, ids: np.ndarray) -> int:
        old = self._slots[slot]
        m = min(len(old), len(ids) - 1)
        common = _common_length(np.asarray(old[:m], dtype=np.int32), ids, m)
        keep = min(common, self._slot_reusable[slot]) // self.n_ubatch * self.n_ubatch
        if not keep or not self._n_swa:
            return keep
        # A sliding-window cache gives cells that left a sequence's window to new tokens (in one
        # stream, another sequence's) and drops the sequence's positions up to there: a start is
        # reusable only while the window its next token sees is cached (llama-server's check).
        first = _lib().llama_memory_seq_pos_min(self._mem, slot)
        return keep if first <= max(0, keep - self._n_swa) else 0

    def _borrow_prefix(self, seq: int, ids: np.ndarray, *, done: int) -> None:
        """Copy another slot's cache into ``seq`` when it holds a longer reusable prefix of ids.

        The first batch of a stage would otherwise evaluate the same fixed prompt start once per
        slot. Only slots ``< done`` are sources: those whose prompts this call has evaluated, or,
        when packing, every slot of the call (a copy in one stream keeps the cells it tags). A copy
        between KV streams moves the whole stream (llama.cpp supports no partial one); the tail
        after the prefix is dropped by :meth:`_reuse_slot` next.
        """
        own = self._common_reusable(seq, ids)
        best, source = own, -1
        for other in range(done):
            k = self._common_reusable(other, ids)
            if k > best:
                best, source = k, other
        if source < 0:
            return
        lib = _lib()
        if self._kv_unified:
            # One stream: a copy only tags the source's cells with ``seq`` as well (no data
            # moves), so ``seq``'s own cells must go first and only the prefix is tagged.
            lib.llama_memory_seq_rm(self._mem, seq, -1, -1)
            lib.llama_memory_seq_cp(self._mem, source, seq, 0, best)
            self._slots[seq] = self._slots[source][:best]
            self._slot_reusable[seq] = best
            return
        lib.llama_memory_seq_cp(self._mem, source, seq, -1, -1)
        self._slots[seq] = list(self._slots[source])
        self._slot_reusable[seq] = self._slot_reusable[source]

    def _reuse_slot(self, seq: int, ids: np.ndarray) -> int:
        """Keep the reusable common prefix of slot ``seq`` (see ``LlamaContext._reuse_prefix``)."""
        old = self._slots[seq]
        keep = self._common_reusable(seq, ids)
        if keep < len(old):
            if not _lib().llama_memory_seq_rm(self._mem, seq, keep, -1):
                _lib().llama_memory_seq_rm(self._mem, seq, -1, -1)
                keep = 0
            self._slots[seq] = old[:keep]
        self._slot_reusable[seq] = keep
        return keep

    def _decode_seq(self, seq: int, ids: np.ndarray, cancel: threading.Event | None) -> bool:
        """Append a prompt's ``ids`` to sequence ``seq`` in aligned chunks; logits for the last."""
        batch = self._batch
        for start in range(0, len(ids), self.n_batch):
            if cancel is not None and cancel.is_set():
                return False
            chunk = np.ascontiguousarray(ids[start : start + self.n_batch])
            n = len(chunk)
            pos0 = len(self._slots[seq])
            positions = np.arange(pos0, pos0 + n, dtype=np.int32)
            batch.n_tokens = n
            ctypes.memmove(batch.token, chunk.ctypes.data, 4 * n)
            ctypes.memmove(batch.pos, positions.ctypes.data, 4 * n)
            ctypes.memset(batch.logits, 0, n)
            if start + n == len(ids):
                batch.logits[n - 1] = 1
            for i in range(n):
                batch.seq_id[i][0] = seq
            self._llama_decode(seq, pos0)
            self._slots[seq].extend(int(t) for t in chunk)
        return True

    def _decode_step(self, seqs: list[int], toks: list[int]) -> None:
        """One generation step: token ``toks[i]`` appended to sequence ``seqs[i]``, all logits."""
        batch = self._batch
        batch.n_tokens = len(seqs)
        for i, (seq, tok) in enumerate(zip(seqs, toks, strict=True)):
            batch.token[i] = tok
            batch.pos[i] = len(self._slots[seq])
            batch.seq_id[i][0] = seq
            batch.logits[i] = 1
        self._llama_decode(seqs[0], int(batch.pos[0]))
        for seq, tok in zip(seqs, toks, strict=True):
            self._slots[seq].append(tok)

    def _llama_decode(self, seq: int, pos: int) -> None:
        with llama_errors() as errors:
            rc = _lib().llama_decode(self._ctx, self._batch)
        if rc != 0:
            # The cache state after a failed decode is not ours to guess: start over next time.
            self._clear_memory()
            raise EngineError(
                f"llama_decode failed (code {rc}) at position {pos} of sequence {seq} "
                f"for {self.model.path}: {reason(errors)}"
            )


def _common_length(a: np.ndarray, b: np.ndarray, limit: int) -> int:
    """How many leading tokens ``a`` and ``b`` share, up to ``limit``."""
    same = a[:limit] == b[:limit]
    return limit if same.all() else int(np.argmin(same))
