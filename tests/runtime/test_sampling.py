"""Sampling samples: draws from a real llama.cpp model with known logits follow the distribution
that temperature, top_k, top_p, min_p and repeat_penalty define (tests/logit_builders.py), through
the context, the batched context and a whole stack.

Every draw is seeded, so each test is deterministic; the bounds (5 standard deviations over
thousands of draws) are what makes a sampler that stays greedy, ignores a setting or applies the
settings in another order fail.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from edge_stack import Stack
from edge_stack.engines.llama import LlamaContext, LlamaModel
from edge_stack.engines.llama._batch import BatchContext

from logit_builders import (
    LOGITS,
    check_margins,
    expected_distribution,
    known_logits_gguf,
    penalized_greedy,
    within_bound,
)
from stack_builders import write_stack

pytestmark = [pytest.mark.llama, pytest.mark.torch]

#: draws per case: two generations of DRAWS // 2 tokens, two seeds
DRAWS = 2000


@pytest.fixture(scope="module")
def known(
    tmp_path_factory: pytest.TempPathFactory, tiny_model: Callable[[str], Path]
) -> tuple[Path, dict[str, int]]:
    return known_logits_gguf(tmp_path_factory, tiny_model("gptneox"))


@pytest.fixture(scope="module")
def model(known: tuple[Path, dict[str, int]]) -> Iterator[LlamaModel]:
    with LlamaModel.load(known[0]) as loaded:
        yield loaded


@pytest.fixture(scope="module")
def letters(known: tuple[Path, dict[str, int]]) -> dict[int, str]:
    return {token: letter for letter, token in known[1].items()}


def _draw(ctx: LlamaContext, prompt: list[int], n: int, seed: int, **params: Any) -> list[int]:
    out = [t.id for t in ctx.generate(prompt, max_tokens=n, seed=seed, **params) if t.id >= 0]
    assert len(out) == n and ctx.last_stats.finish_reason == "length"
    return out


def test_the_model_has_the_designed_logits(
    model: LlamaModel, known: tuple[Path, dict[str, int]]
) -> None:
    import numpy as np

    ids = known[1]
    with LlamaContext(model, n_ctx=64, n_threads=1) as ctx:
        rows = ctx.eval_logits([ids["c"], ids["a"], 7, 9, 11])
    for row in rows:
        for letter, token in ids.items():
            assert row[token] == pytest.approx(LOGITS[letter], abs=1e-4)
        others = np.delete(row, list(ids.values()))
        assert others.max() < -29.0


# id -> sampling settings (temperature, top_k, top_p, min_p)
CASES: dict[str, dict[str, Any]] = {
    "greedy": {"temperature": 0.0, "top_k": 40, "top_p": 1.0, "min_p": 0.05},
    "top_k=1": {"temperature": 1.0, "top_k": 1, "top_p": 1.0, "min_p": 0.0},
    "top_k=2": {"temperature": 1.0, "top_k": 2, "top_p": 1.0, "min_p": 0.0},
    "top_p=0.9": {"temperature": 1.0, "top_k": 0, "top_p": 0.9, "min_p": 0.0},
    "top_p=0.8": {"temperature": 1.0, "top_k": 0, "top_p": 0.8, "min_p": 0.0},
    "top_p=0.5": {"temperature": 1.0, "top_k": 0, "top_p": 0.5, "min_p": 0.0},
    "min_p=0.1": {"temperature": 1.0, "top_k": 0, "top_p": 1.0, "min_p": 0.1},
    "min_p=0.3": {"temperature": 1.0, "top_k": 0, "top_p": 1.0, "min_p": 0.3},
    "temperature=0.5": {"temperature": 0.5, "top_k": 0, "top_p": 1.0, "min_p": 0.0},
    "temperature=2": {"temperature": 2.0, "top_k": 0, "top_p": 1.0, "min_p": 0.0},
    # the order: top-p before temperature (after it, a flat distribution would keep d and e)
    "top_p=0.9,temperature=3": {"temperature": 3.0, "top_k": 0, "top_p": 0.9, "min_p": 0.0},
    # top-k first, then top-p over what is left (renormalized), then the temperature
    "top_k=3,top_p=0.85,temperature=0.7": {
        "temperature": 0.7,
        "top_k": 3,
        "top_p": 0.85,
        "min_p": 0.0,
    },
    # the manifest's defaults at temperature 1 (top_k 40, top_p 1, min_p 0.05)
    "manifest defaults": {"temperature": 1.0, "top_k": 40, "top_p": 1.0, "min_p": 0.05},
}


@pytest.mark.parametrize("case", list(CASES))
def test_draws_follow_the_distribution(
    model: LlamaModel, known: tuple[Path, dict[str, int]], letters: dict[int, str], case: str
) -> None:
    params = CASES[case]
    check_margins(top_p=params["top_p"], min_p=params["min_p"], top_k=params["top_k"])
    expected = expected_distribution(**params)
    prompt = [known[1]["e"], 7, 9]
    half = DRAWS // 2
    with LlamaContext(model, n_ctx=half + 8, n_threads=1) as ctx:
        drawn = _draw(ctx, prompt, half, 11, **params) + _draw(ctx, prompt, half, 12, **params)
    counts = Counter(letters.get(t, f"<{t}>") for t in drawn)
    assert set(counts) <= set(expected), counts  # nothing outside the kept set, ever
    assert within_bound(counts, expected, DRAWS) == [], (case, counts, expected)


def test_seed_repeats_and_other_seeds_differ(
    model: LlamaModel, known: tuple[Path, dict[str, int]]
) -> None:
    prompt = [known[1]["a"], 5]
    params = CASES["manifest defaults"]
    with LlamaContext(model, n_ctx=128, n_threads=1) as ctx:
        first = _draw(ctx, prompt, 100, 7, **params)
        assert _draw(ctx, prompt, 100, 7, **params) == first
        assert _draw(ctx, prompt, 100, 8, **params) != first
        unseeded = [
            [t.id for t in ctx.generate(prompt, max_tokens=100, **params)] for _ in range(2)
        ]
        assert unseeded[0] != unseeded[1]  # no seed: a random one per call


@pytest.mark.parametrize(
    ("prompt", "penalty"),
    [("ac", 1.5), ("c" * 40 + "a", 2.0), ("ab", 1.0), ("edcba", 10.0)],
)
def test_repeat_penalty_follows_llama_cpp_rule(
    model: LlamaModel,
    known: tuple[Path, dict[str, int]],
    letters: dict[int, str],
    prompt: str,
    penalty: float,
) -> None:
    ids = [known[1][c] for c in prompt]
    with LlamaContext(model, n_ctx=256, n_threads=1) as ctx:
        out = [t.id for t in ctx.generate(ids, max_tokens=100, repeat_penalty=penalty)]
    got = [letters[t] for t in out]
    want = penalized_greedy(list(prompt), 100, penalty=penalty)
    assert got == want
    if penalty != 1.0:
        assert set(want) != {"a"}  # the rule changes the greedy choice on these prompts


def test_batched_draws_equal_single_draws_and_sample(
    model: LlamaModel, known: tuple[Path, dict[str, int]], letters: dict[int, str]
) -> None:
    params = CASES["top_k=2"]
    prompts = [[known[1]["e"], 7 + i] for i in range(4)]
    n = 400
    with LlamaContext(model, n_ctx=n + 8, n_threads=1) as single:
        want = [_draw(single, p, n, 21, **params) for p in prompts]
    with BatchContext(model, n_ctx=n + 8, n_seq=4, n_threads=1) as batch:
        outs = batch.generate_batch(prompts, max_tokens=n, seed=21, **params)
    assert [o.tokens for o in outs] == want
    counts = Counter(letters[t] for o in outs for t in o.tokens)
    # 4 prompts x 400 draws of the same seed are 4 copies of one sequence: bound over 400
    assert (
        within_bound({k: v // 4 for k, v in counts.items()}, expected_distribution(**params), n)
        == []
    )


STAGES = """
version = 1
[defaults]
model = "known.gguf"
n_ctx = 700
max_tokens = 600
top_k = 0
top_p = 1.0
min_p = 0.0
[[stages]]
name = "greedy"
prompt = "{question}"
[[stages]]
name = "topk"
prompt = "{question}"
temperature = 1.0
top_k = 2
seed = 3
[[stages]]
name = "topp"
prompt = "{question}"
temperature = 1.0
top_p = 0.9
seed = 4
[[stages]]
name = "hot"
prompt = "{question}"
temperature = 2.0
min_p = 0.1
seed = 5
"""


@pytest.fixture(scope="module")
def sampling_stack(
    tmp_path_factory: pytest.TempPathFactory, known: tuple[Path, dict[str, int]]
) -> Path:
    return write_stack(tmp_path_factory.mktemp("sampling-stack"), STAGES, {"known.gguf": known[0]})


def test_stack_keys_reach_the_sampler(sampling_stack: Path) -> None:
    """Each stage's temperature, top_k, top_p, min_p and seed from stack.toml take effect."""
    with Stack.load(sampling_stack, threads=1) as stack:
        answer = stack.ask("x")
        again = stack.ask("x")
        batch = stack.ask_batch(["x"], batch_size=2)
    outputs = {t.name: t.output for t in answer.stages}
    assert outputs["greedy"] == "a" * 600
    settings = {
        "topk": {"temperature": 1.0, "top_k": 2, "top_p": 1.0, "min_p": 0.0},
        "topp": {"temperature": 1.0, "top_k": 0, "top_p": 0.9, "min_p": 0.0},
        "hot": {"temperature": 2.0, "top_k": 0, "top_p": 1.0, "min_p": 0.1},
    }
    for name, params in settings.items():
        text = outputs[name]
        assert len(text) == 600, name
        assert within_bound(Counter(text), expected_distribution(**params), 600) == [], name
    # Seeds from stack.toml: the same answer every time, one by one or in a batch.
    assert [t.output for t in again.stages] == [t.output for t in answer.stages]
    assert [t.output for t in batch[0].stages] == [t.output for t in answer.stages]


def test_call_overrides_reach_the_sampler(sampling_stack: Path) -> None:
    with Stack.load(sampling_stack, threads=1) as stack:
        greedy = stack.ask("x", temperature=0.0, max_tokens=200)
        hot = stack.ask("x", temperature=1.0, seed=1, max_tokens=200)
        same = stack.ask("x", temperature=1.0, seed=1, max_tokens=200)
        other = stack.ask("x", temperature=1.0, seed=2, max_tokens=200)
        batch = stack.ask_batch(["x"], temperature=1.0, seed=2, max_tokens=200)
    assert all(t.output == "a" * 200 for t in greedy.stages)
    assert [t.output for t in hot.stages] == [t.output for t in same.stages]
    assert all(h.output != o.output for h, o in zip(hot.stages, other.stages, strict=True))
    assert [t.output for t in batch[0].stages] == [t.output for t in other.stages]
    assert all(set(t.output) - {"a"} for t in hot.stages)  # sampled, not greedy


def test_cancel_a_generation_that_never_ends(sampling_stack: Path) -> None:
    """The known model never ends a text: a cancel from another thread is what stops it."""
    from edge_stack.errors import Cancelled

    with Stack.load(sampling_stack, threads=1) as stack:
        context = stack._backend.runner("greedy").context  # type: ignore[attr-defined]
        cancel = threading.Event()
        errors: list[BaseException] = []

        def ask() -> None:
            try:
                stack.ask("x", cancel=cancel)
            except BaseException as exc:
                errors.append(exc)

        before = context.last_stats
        worker = threading.Thread(target=ask)
        worker.start()
        while context.last_stats is before or context.last_stats.completion_tokens < 5:
            assert worker.is_alive()
            time.sleep(0.001)
        cancel.set()
        at_cancel = context.last_stats.completion_tokens
        worker.join(timeout=60)
        assert not worker.is_alive()
    assert len(errors) == 1 and isinstance(errors[0], Cancelled), errors
    assert "stage greedy" in str(errors[0])
    assert at_cancel <= context.last_stats.completion_tokens <= at_cancel + 1 < 600
