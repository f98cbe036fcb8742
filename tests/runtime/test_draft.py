"""Prompt-lookup drafting (edge_stack.engines.llama._draft): the lookup and the adaptive length."""

from __future__ import annotations

import pytest

from edge_stack.engines.llama._draft import COOLDOWN, WINDOW, Drafter, find_draft


@pytest.mark.parametrize(
    ("history", "limit", "draft"),
    [
        # the last 3-gram [7, 8, 9] occurred before, followed by 10, 11
        ([1, 7, 8, 9, 10, 11, 2, 7, 8, 9], 4, [10, 11, 2, 7]),
        ([1, 7, 8, 9, 10, 11, 2, 7, 8, 9], 2, [10, 11]),
        # no 3-gram or 2-gram match, but the last token occurred: its follower
        ([5, 6, 1, 2, 3, 4, 6], 3, [1, 2, 3]),
        # the most recent earlier occurrence wins
        ([4, 1, 4, 2, 4], 1, [2]),
        # nothing to match
        ([1, 2, 3], 4, []),
        ([], 4, []),
        ([1], 4, []),
        ([3, 3, 3], 2, [3]),
        ([1, 2, 1, 2], 0, []),
    ],
)
def test_find_draft(history: list[int], limit: int, draft: list[int]) -> None:
    assert find_draft(history, limit) == draft


def test_lookup_is_bounded_to_the_window() -> None:
    history = [1, 2, 3] + [0] * WINDOW + [1, 2]
    # the only earlier [1, 2] lies before the window: not found
    assert find_draft(history, 2) == []
    assert find_draft(history[-WINDOW:], 2) == []
    assert find_draft([1, 2, 3, *[0] * 10, 1, 2], 2) == [3, 0]


def test_length_grows_on_full_acceptance_and_shrinks_to_a_cooldown() -> None:
    d = Drafter(max_len=8, length=2)
    d.record(2, 2)
    assert d.length == 4
    d.record(4, 4)
    d.record(8, 8)
    assert d.length == 8  # capped
    d.record(8, 3)
    assert d.length == 4  # the accepted run plus one
    for _ in range(3):
        d.record(d.length or 1, 0)
    assert d.length == 0 and d.cooldown == COOLDOWN
    history = [1, 2, 1, 2]
    assert all(d.draft(history, 10) == [] for _ in range(COOLDOWN))
    assert d.draft(history, 10) == [1]  # tries again with one token
    assert (d.drafted, d.accepted) == (2 + 4 + 8 + 8 + 4 + 2 + 1, 2 + 4 + 8 + 3)


def test_room_and_off() -> None:
    assert Drafter(length=8).draft([1, 2, 3, 1, 2], room=1) == [3]
    assert Drafter(max_len=0).draft([1, 2, 3, 1, 2], room=5) == []


# --- drafting inside real llama.cpp generation ------------------------------------------------

from collections.abc import Callable, Iterator  # noqa: E402
from pathlib import Path  # noqa: E402

from stack_builders import QUESTIONS  # noqa: E402


@pytest.fixture(scope="module")
def ctx(tiny_gguf: Callable[..., Path]) -> Iterator[object]:
    from edge_stack.engines.llama import LlamaContext, LlamaModel

    model = LlamaModel.load(tiny_gguf("gptneox", "q8_0"))
    context = LlamaContext(model, n_ctx=512, n_threads=1)
    yield context
    context.close()
    model.close()


def _run(ctx: object, prompt: str, **kw: object) -> tuple[str, object]:
    model = ctx.model  # type: ignore[attr-defined]
    tokens = model.tokenize(prompt, add_bos=model.add_bos, special=False)
    out = "".join(t.text for t in ctx.generate(tokens, **kw))  # type: ignore[attr-defined]
    return out, ctx.last_stats  # type: ignore[attr-defined]


@pytest.mark.llama
@pytest.mark.parametrize("question", QUESTIONS)
def test_drafted_text_equals_plain_decoding_at_temperature_0(ctx: object, question: str) -> None:
    prompt = f"Question: {question}\nRepeat the question: {question}\nAgain:"
    plain, _ = _run(ctx, prompt, max_tokens=40)
    drafted, stats = _run(ctx, prompt, max_tokens=40, draft=8)
    assert drafted == plain
    assert stats.completion_tokens <= 40  # type: ignore[attr-defined]


COPY = "alpha beta gamma delta epsilon zeta eta theta"


@pytest.mark.llama
def test_a_stage_that_copies_accepts_drafts(ctx: object) -> None:
    # The grammar makes the random model copy the text, which the prompt also holds.
    grammar = f'root ::= " {COPY}"'
    plain, plain_stats = _run(ctx, f"{COPY}\n{COPY}\n", max_tokens=60, grammar=grammar)
    drafted, stats = _run(ctx, f"{COPY}\n{COPY}\n", max_tokens=60, grammar=grammar, draft=8)
    assert drafted == plain == f" {COPY}"
    assert stats.draft_accepted > 0  # type: ignore[attr-defined]
    assert stats.draft_accepted <= stats.draft_tokens  # type: ignore[attr-defined]
    assert stats.completion_tokens == plain_stats.completion_tokens  # type: ignore[attr-defined]


@pytest.mark.llama
@pytest.mark.parametrize(
    "kw",
    [
        {"max_tokens": 1},
        {"max_tokens": 7},
        {"max_tokens": 30, "stop": ["gamma"]},
        {"max_tokens": 30, "stop": [" "]},
        {"max_tokens": 30, "grammar": 'root ::= " alpha beta" [a-z ]*'},
    ],
)
def test_limits_stops_and_grammars_behave_the_same_with_drafting(ctx: object, kw: dict) -> None:
    prompt = f"{COPY}\n{COPY}\n{COPY}"
    plain, plain_stats = _run(ctx, prompt, **kw)
    drafted, stats = _run(ctx, prompt, draft=8, **kw)
    assert drafted == plain
    assert stats.finish_reason == plain_stats.finish_reason  # type: ignore[attr-defined]
    assert stats.completion_tokens == plain_stats.completion_tokens  # type: ignore[attr-defined]


@pytest.mark.llama
def test_cancel_stops_a_drafted_generation_within_a_step(ctx: object) -> None:
    import threading

    cancel = threading.Event()
    model = ctx.model  # type: ignore[attr-defined]
    tokens = model.tokenize(f"{COPY}\n{COPY}\n", add_bos=False, special=False)
    seen = 0
    for _ in ctx.generate(
        tokens, max_tokens=200, grammar='root ::= "a" root', draft=8, cancel=cancel
    ):  # type: ignore[attr-defined]
        seen += 1
        if seen == 3:
            cancel.set()
    assert seen == 3
    assert ctx.last_stats.finish_reason == "cancelled"  # type: ignore[attr-defined]


@pytest.mark.llama
def test_draft_out_of_range_is_refused(ctx: object) -> None:
    from edge_stack.errors import EngineError

    with pytest.raises(EngineError, match="draft must be a whole number from 0 to 16"):
        _run(ctx, "x", max_tokens=2, draft=17)
