"""Batched decoding on real llama.cpp: the same answers as one by one, from one or many threads."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge_stack import Stack
from edge_stack.engines.llama import LlamaContext, LlamaModel
from edge_stack.engines.llama._batch import BatchContext, BatchOutput
from edge_stack.errors import BadArgument, ContextOverflowError, EngineError

import stack_builders

pytestmark = [pytest.mark.llama, pytest.mark.torch]

# The engine tests' questions, plus a special token's text and non-ASCII text.
QUESTIONS = [
    *stack_builders.QUESTIONS,
    "<|endoftext|> stays text",
    "ünïcödé ✓",
]


@pytest.fixture(scope="module")
def one_by_one(stack: Stack) -> list[dict[str, object]]:
    return [_comparable(stack.ask(q).to_dict()) for q in QUESTIONS]


def _comparable(answer: dict[str, object]) -> dict[str, object]:
    """An answer without its timings."""
    stages = answer["stages"]
    assert isinstance(stages, list)
    return {
        "answer": answer["answer"],
        "question": answer["question"],
        "stages": [{k: v for k, v in s.items() if k != "seconds"} for s in stages],
    }


@pytest.mark.parametrize("batch_size", [1, 3, 8, 16])
def test_batch_equals_one_by_one(
    stack: Stack, one_by_one: list[dict[str, object]], batch_size: int
) -> None:
    answers = stack.ask_batch(QUESTIONS, batch_size=batch_size)
    assert [_comparable(a.to_dict()) for a in answers] == one_by_one


def test_batch_twice_reuses_cache_and_stays_equal(
    stack: Stack, one_by_one: list[dict[str, object]]
) -> None:
    for _ in range(2):
        answers = stack.ask_batch(list(reversed(QUESTIONS)), batch_size=4)
        assert [_comparable(a.to_dict()) for a in answers] == list(reversed(one_by_one))


def test_batch_overrides_match_ask(stack: Stack) -> None:
    kw = {"max_tokens": 5, "temperature": 0.9, "seed": 7}
    alone = [_comparable(stack.ask(q, **kw).to_dict()) for q in QUESTIONS[:4]]  # type: ignore[arg-type]
    batch = stack.ask_batch(QUESTIONS[:4], batch_size=4, **kw)  # type: ignore[arg-type]
    assert [_comparable(a.to_dict()) for a in batch] == alone


def test_batch_from_threads(stack: Stack, one_by_one: list[dict[str, object]]) -> None:
    halves = [QUESTIONS[:5], QUESTIONS[5:]]

    def work(i: int) -> list[dict[str, object]]:
        if i % 3 == 2:  # single asks interleaved with the batches
            return [_comparable(stack.ask(q).to_dict()) for q in halves[i % 2]]
        return [_comparable(a.to_dict()) for a in stack.ask_batch(halves[i % 2], batch_size=3)]

    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(work, range(6)))
    for i, got in enumerate(results):
        assert got == one_by_one[:5] if i % 2 == 0 else got == one_by_one[5:]


def test_empty_and_bad_arguments(stack: Stack) -> None:
    assert stack.ask_batch([]) == []
    with pytest.raises(BadArgument, match="batch_size"):
        stack.ask_batch(["x"], batch_size=0)
    with pytest.raises(TypeError, match="one str"):
        stack.ask_batch("a question")
    with pytest.raises(TypeError, match="str"):
        stack.ask_batch([1])  # type: ignore[list-item]


def test_batch_overflow_names_the_stage(stack: Stack) -> None:
    with pytest.raises(ContextOverflowError, match="stage extract"):
        stack.ask_batch(["short", "word " * 400])


def test_batch_context_equals_single_context(base_gguf: Path) -> None:
    with LlamaModel.load(base_gguf) as model:
        rng = np.random.default_rng(1)
        fixed = [int(t) for t in rng.integers(3, model.n_vocab - 1, 40)]
        prompts = [
            fixed + [int(t) for t in rng.integers(3, model.n_vocab - 1, 3 + i)] for i in range(5)
        ]
        single = LlamaContext(model, n_ctx=128, n_threads=1)
        want = [[g.id for g in single.generate(p, max_tokens=20) if g.id >= 0] for p in prompts]
        batch = BatchContext(model, n_ctx=128, n_seq=5, n_threads=1)
        outs = batch.generate_batch(prompts, max_tokens=20)
        assert [o.tokens for o in outs] == want
        # The first slot evaluated the shared start; the others got a copy of its cache.
        assert [o.stats.cached_tokens for o in outs] == [0, 32, 32, 32, 32]
        outs = batch.generate_batch(prompts, max_tokens=20)  # now from each slot's own cache
        assert [o.tokens for o in outs] == want
        assert all(o.stats.cached_tokens == 32 for o in outs)
        # The inherited single-sequence call still works on the batch context.
        assert [g.id for g in batch.generate(prompts[0], max_tokens=20) if g.id >= 0] == want[0]
        with pytest.raises(EngineError, match="1 to 5 prompts"):
            batch.generate_batch(prompts * 2, max_tokens=1)
        with pytest.raises(ContextOverflowError):
            batch.generate_batch([prompts[0]], max_tokens=120)
        with pytest.raises(EngineError, match="sequences"):
            BatchContext(model, n_ctx=128, n_seq=0)


def _end_logits(ctx: BatchContext, prompts: list[list[int]], outs: list[BatchOutput]) -> list:
    """The logits of each prompt's last token, left by the packed call that evaluated them (its
    outputs, one per prompt: negative indices count llama.cpp's output rows from the end)."""
    from edge_stack.engines.llama._lib import lib

    assert len(outs) == len(prompts)
    return [
        np.ctypeslib.as_array(
            lib().llama_get_logits_ith(ctx._ctx, i - len(prompts)), shape=(ctx.model.n_vocab,)
        ).copy()
        for i in range(len(prompts))
    ]


def test_packed_prompts_compute_what_one_by_one_computes_up_to_rounding(base_gguf: Path) -> None:
    """Packed prompts share one llama.cpp call and one KV stream: each prompt's logits must be
    its own (right positions, right sequence, right row). A lone prompt is split as one by one
    splits it: the same bits. Five prompts make a 65-row micro-batch, where llama.cpp's flash
    attention switches kernels: equal up to that rounding (measured: under 1% of the largest
    logit), while another prompt's logits differ by far more."""
    with LlamaModel.load(base_gguf) as model:
        rng = np.random.default_rng(1)
        fixed = [int(t) for t in rng.integers(3, model.n_vocab - 1, 40)]
        prompts = [
            fixed + [int(t) for t in rng.integers(3, model.n_vocab - 1, 3 + i)] for i in range(5)
        ]
        with LlamaContext(model, n_ctx=128, n_threads=1) as single:
            want = [single.eval_logits(p)[-1] for p in prompts]
        scale = float(np.abs(want[0]).max())
        assert min(float(np.abs(want[0] - w).max()) for w in want[1:]) > 0.2 * scale
        with BatchContext(model, n_ctx=128, n_seq=5, n_threads=1, pack_prompts=True) as batch:
            assert batch.n_ubatch == 32  # the unit of prefix reuse; llama.cpp's is a whole call
            outs = batch.generate_batch(prompts[:1], max_tokens=0)
            assert np.array_equal(_end_logits(batch, prompts[:1], outs)[0], want[0])
            for order in (prompts, prompts[::-1]):  # then each slot holds another prompt
                outs = batch.generate_batch(order, max_tokens=0)
                # The common start was evaluated once, on the first slot; the others share it.
                assert [o.stats.cached_tokens for o in outs] == [32] * 5
                assert [o.stats.finish_reason for o in outs] == ["length"] * 5
                got = _end_logits(batch, order, outs)
                for g, w in zip(got, want if order is prompts else want[::-1], strict=True):
                    assert float(np.abs(g - w).max()) <= 0.02 * scale


# (first call, then the call checked: "A" prompts share a 40-token start; expected cached
# tokens of the call checked, aligned and packed)
CACHE_CASES = {
    "fresh": ([], ["A", "A", "A"], [0, 32, 32], [0, 32, 32]),
    "again": (["A", "A", "A"], ["A", "A", "A"], [32, 32, 32], [32, 32, 32]),
    # the shared start is in slot 1 only: aligned borrows from earlier slots, packed from any
    "in another slot": (["B", "A"], ["A", "A"], [0, 32], [32, 32]),
}


@pytest.mark.parametrize("pack", [False, True], ids=["aligned", "packed"])
@pytest.mark.parametrize("case", list(CACHE_CASES))
def test_cached_tokens_are_the_prompt_tokens_not_evaluated(
    base_gguf: Path, case: str, pack: bool
) -> None:
    """A prompt's ``cached_tokens`` are what its call did not evaluate: llama.cpp evaluates
    exactly the rest of every prompt (one generated token: no generation step)."""
    first, checked, aligned, packed = CACHE_CASES[case]
    with LlamaModel.load(base_gguf) as model:
        rng = np.random.default_rng(4)

        def tokens(n: int) -> list[int]:
            return [int(t) for t in rng.integers(3, model.n_vocab - 1, n)]

        fixed = tokens(40)

        def prompts(kinds: list[str]) -> list[list[int]]:
            return [(fixed if k == "A" else []) + tokens(5 + i) for i, k in enumerate(kinds)]

        with BatchContext(model, n_ctx=128, n_seq=3, n_threads=1, pack_prompts=pack) as ctx:
            if first:
                ctx.generate_batch(prompts(first), max_tokens=1)
            rows: list[int] = []
            decode = ctx._llama_decode

            def counted(seq: int, pos: int) -> None:
                rows.append(ctx._batch.n_tokens)
                decode(seq, pos)

            ctx._llama_decode = counted  # type: ignore[method-assign]
            ps = prompts(checked)
            outs = ctx.generate_batch(ps, max_tokens=1)
        cached = [o.stats.cached_tokens for o in outs]
        assert cached == (packed if pack else aligned)
        assert sum(rows) == sum(len(p) - c for p, c in zip(ps, cached, strict=True))


class _FirstLogits(BatchContext):
    """A batch context keeping the logits each prompt's first token is sampled from."""

    rows: dict[int, np.ndarray]

    def _first_token(self, call: Any, seq: int, row: int) -> None:
        from edge_stack.engines.llama._lib import lib

        ptr = lib().llama_get_logits_ith(self._ctx, row)
        self.rows[seq] = np.ctypeslib.as_array(ptr, shape=(self.model.n_vocab,)).copy()
        super()._first_token(call, seq, row)


@pytest.mark.parametrize("pack", [False, True], ids=["aligned", "packed"])
def test_sliding_window_model_reuses_only_a_start_it_still_holds(
    tiny_gguf: Callable[..., Path], pack: bool
) -> None:
    """gemma3's layer 0 sees 4 tokens back. In one KV stream llama.cpp gives the cells that fell
    out of a sequence's window to another sequence's tokens (and drops the sequence's positions
    up to there), so a slot's cached start can lose the window its next token needs: that start
    is not reused, and every prompt's logits stay its own."""
    with LlamaModel.load(tiny_gguf("gemma3", "f32")) as model:
        rng = np.random.default_rng(5)

        def tokens(n: int) -> list[int]:
            return [int(t) for t in rng.integers(3, model.n_vocab - 1, n)]

        fixed = tokens(70)
        prompts = [fixed + tokens(10), fixed + tokens(10)]
        with LlamaContext(model, n_ctx=128, n_threads=1) as single:
            want = [single.eval_logits(p)[-1] for p in prompts]
        scale = float(np.abs(want[0]).max())
        with _FirstLogits(model, n_ctx=128, n_seq=2, n_threads=1, pack_prompts=pack) as batch:
            batch.rows = {}
            batch.generate_batch(prompts, max_tokens=1)
            batch.generate_batch([tokens(100)], max_tokens=1)  # slot 0 only, in slot 1's cells
            batch.rows = {}
            batch.generate_batch(prompts, max_tokens=0)
            got = [batch.rows[seq] for seq in range(len(prompts))]
        for g, w in zip(got, want, strict=True):
            assert float(np.abs(g - w).max()) <= 0.02 * scale


def test_ask_batch_packs_prompts_when_asked(
    stack: Stack, one_by_one: list[dict[str, object]]
) -> None:
    answers = [_comparable(a.to_dict()) for a in stack.ask_batch(QUESTIONS, pack_prompts=True)]
    first = stack.spec.stages[0].name
    assert stack.runner(first).batch_context.pack_prompts  # type: ignore[attr-defined]
    # The random test model is full of near-ties, where packing may pick another token: the
    # first stage's prompts are the same, and every stage ran for every question.
    for got, want in zip(answers, one_by_one, strict=True):
        assert got["stages"][0]["prompt_tokens"] == want["stages"][0]["prompt_tokens"]  # type: ignore[index]
        assert len(got["stages"]) == len(want["stages"])  # type: ignore[arg-type]
    # And back: a plain batch gets a context of its own again, exact.
    again = stack.ask_batch(QUESTIONS)
    assert [_comparable(a.to_dict()) for a in again] == one_by_one
    assert not stack.runner(first).batch_context.pack_prompts  # type: ignore[attr-defined]


@pytest.mark.parametrize("pack", [False, True], ids=["aligned", "packed"])
def test_a_cleared_cache_forgets_every_slot(base_gguf: Path, pack: bool) -> None:
    """The inherited single-sequence paths clear the whole native cache (load_prefix, a failed
    decode): no slot may then claim a cached start."""
    with LlamaModel.load(base_gguf) as model:
        rng = np.random.default_rng(2)
        fixed = [int(t) for t in rng.integers(3, model.n_vocab - 1, 40)]
        prompts = [
            fixed + [int(t) for t in rng.integers(3, model.n_vocab - 1, 5)] for _ in range(3)
        ]
        with BatchContext(model, n_ctx=128, n_seq=3, n_threads=1, pack_prompts=pack) as batch:
            first = batch.generate_batch(prompts, max_tokens=8)
            batch._clear_memory()
            again = batch.generate_batch(prompts, max_tokens=8)
        assert [o.stats.cached_tokens for o in again] == [o.stats.cached_tokens for o in first]
        assert [o.tokens for o in again] == [o.tokens for o in first]


def test_model_freed_after_its_last_context(base_gguf: Path, tmp_path: Path) -> None:
    """A context the model can no longer see (its weak reference cleared, as when the garbage
    collector frees a cycle) keeps the native model alive until it closes."""
    from stack_builders import random_lora

    lora = random_lora(base_gguf, tmp_path / "a.gguf", seed=3)
    model = LlamaModel.load(base_gguf)
    ctx = BatchContext(model, n_ctx=64, n_seq=2, n_threads=1, lora=lora)
    ctx.generate_batch([[5, 6, 7], [8, 9]], max_tokens=2)
    model._contexts.discard(ctx)
    model.close()
    assert model._free_pending and model._open_contexts == 1
    ctx.close()
    assert not model._free_pending and model._open_contexts == 0


def test_exit_without_close_does_not_crash(base_gguf: Path, tmp_path: Path) -> None:
    import subprocess
    import sys
    import textwrap

    from stack_builders import random_lora

    lora = random_lora(base_gguf, tmp_path / "a.gguf", seed=3)
    code = textwrap.dedent(
        f"""
        from edge_stack.engines.llama import LlamaContext, LlamaModel
        from edge_stack.engines.llama._batch import BatchContext, BatchOutput
        m = LlamaModel.load({str(base_gguf)!r})
        a = LlamaContext(m, n_ctx=64, n_threads=1, lora={str(lora)!r})
        b = BatchContext(m, n_ctx=64, n_seq=2, n_threads=1, lora={str(lora)!r})
        a.me, b.me, m.me = a, b, m  # cycles: freed by the collector, in any order, at exit
        list(a.generate([1, 2, 3], max_tokens=2))
        b.generate_batch([[1, 2], [3, 4]], max_tokens=2)
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
