"""One llama.cpp context per base model: stages as sequences of one shared context.

The promise: a stage on a shared context computes bit for bit what it computes on a context of
its own (memory = "separate"), whatever ran on the other sequences before it, in any order of
stages and questions, and from several threads.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from edge_stack import Stack
from edge_stack.engines._backend import GenerationParams
from edge_stack.engines.llama._engine import Engine
from edge_stack.engines.llama._shared import SharedContext
from edge_stack.errors import EngineError
from edge_stack.formats._template import render
from edge_stack.manifest import load_manifest

from stack_builders import QUESTIONS, random_lora, write_stack

pytestmark = [pytest.mark.llama, pytest.mark.torch]

#: a fixed instruction long enough that the stages using it pass 256 tokens (llama.cpp then
#: reads 512 cells and splits its attention over the threads: the case most sensitive to layout)
INSTRUCTION = " ".join(
    f"Rule {i}: read the numbers, keep them as written, and answer on one line." for i in range(24)
)

FOUR_STAGES = f"""
name = "four"
version = 1
[defaults]
model = "base.gguf"
max_tokens = 6
[[stages]]
name = "long"
lora = "a.lora.gguf"
prompt = "{INSTRUCTION}\\nQ: {{question}}\\nA:"
[[stages]]
name = "second"
lora = "b.lora.gguf"
prompt = "Q: {{question}}\\nFirst: {{long}}\\nB:"
[[stages]]
name = "plain"
prompt = "Plain: {{second}}\\nC:"
[[stages]]
name = "third"
lora = "c.lora.gguf"
lora_scale = 0.5
prompt = "{INSTRUCTION}\\nQ: {{question}}\\nPrev: {{plain}}\\nD:"
"""


@pytest.fixture(scope="module", params=["f32", "q8_0"])
def four_stack(
    request: pytest.FixtureRequest,
    tiny_gguf: Callable[..., Path],
    tmp_path_factory: pytest.TempPathFactory,
) -> Path:
    base = tiny_gguf("gptneox", request.param)
    root = tmp_path_factory.mktemp(f"four-{request.param}")
    files = {"base.gguf": base}
    for seed, name in enumerate("abc", start=40):
        files[f"{name}.lora.gguf"] = random_lora(base, root / f"src-{name}.gguf", seed=seed)
    return write_stack(root / "stack", FOUR_STAGES, files)


@pytest.fixture
def engines(four_stack: Path) -> Iterator[dict[str, Engine]]:
    spec = load_manifest(four_stack)
    loaded = {m: Engine(spec, threads=1, memory=m) for m in ("separate", "shared")}
    try:
        yield loaded
    finally:
        for engine in loaded.values():
            engine.close()


def _params(max_tokens: int) -> GenerationParams:
    return GenerationParams(
        max_tokens=max_tokens,
        temperature=0.0,
        top_k=40,
        top_p=1.0,
        min_p=0.05,
        repeat_penalty=1.0,
        seed=None,
        stop=(),
        grammar=None,
    )


def _reference_values(engine: Engine, questions: list[str]) -> dict[str, dict[str, str]]:
    """Each question's placeholder values (its stages' outputs), asked the usual way."""
    stack = Stack(engine.spec, engine)
    values = {}
    for q in questions:
        answer = stack.ask(q)
        values[q] = {"question": q, **{t.name: t.output for t in answer.stages}}
    return values


def _run_pairs(
    engine: Engine, pairs: list[tuple[str, str]], values: dict[str, dict[str, str]]
) -> dict[tuple[str, str], tuple[str, bytes, int]]:
    """Run each (question, stage) with the reference values; text, last logits, cached."""
    out = {}
    for q, name in pairs:
        runner = engine.runner(name)
        tokens = runner.tokenize(render(runner.stage.template, values[q]))
        chunks = list(runner.generate(tokens, _params(6), threading.Event()))
        logits = runner.context.last_logits().tobytes()
        out[(q, name)] = ("".join(c.text for c in chunks), logits, len(tokens))
    return out


ORDERS = ["in-order", "stage-major", "reversed", "shuffled-1", "shuffled-2"]


@pytest.mark.parametrize("order", ORDERS)
def test_shared_context_computes_what_separate_contexts_compute(
    engines: dict[str, Engine], order: str
) -> None:
    questions = QUESTIONS[:4]
    separate, shared = engines["separate"], engines["shared"]
    values = _reference_values(separate, questions)
    names = [s.name for s in separate.spec.stages]
    natural = [(q, n) for q in questions for n in names]
    reference = _run_pairs(separate, natural, values)
    if order == "stage-major":
        pairs = [(q, n) for n in names for q in questions]
    elif order == "reversed":
        pairs = natural[::-1]
    elif order.startswith("shuffled"):
        pairs = list(natural)
        random.Random(order).shuffle(pairs)
    else:
        pairs = natural
    got = _run_pairs(shared, pairs, values)
    assert got == reference  # text, every logit's bits, prompt length
    # The long stages passed 256 tokens (512 cells in view), and the context really is shared.
    assert max(length for _, _, length in reference.values()) > 256
    (context,) = shared.shared.values()
    assert isinstance(context, SharedContext) and context.n_seq == 4
    assert shared.adapter_switches > 0


def test_answers_equal_from_several_threads(four_stack: Path) -> None:
    questions = QUESTIONS[:6]
    with Stack.load(four_stack, threads=1, memory="separate") as separate:
        expected = {q: [t.output for t in separate.ask(q).stages] for q in questions}
    with Stack.load(four_stack, threads=1) as shared:
        assert isinstance(shared._backend, Engine) and shared._backend.shared

        def ask(q: str) -> tuple[str, list[str]]:
            return q, [t.output for t in shared.ask(q).stages]

        with ThreadPoolExecutor(4) as pool:
            got = list(pool.map(ask, questions * 2))
    assert all(outputs == expected[q] for q, outputs in got)


def test_fixed_prefix_survives_other_stages(engines: dict[str, Engine]) -> None:
    shared = engines["shared"]
    stack = Stack(shared.spec, shared)
    stack.ask(QUESTIONS[0])
    stack.ask(QUESTIONS[1])
    for name in ("long", "third"):  # same instruction, their own sequences and adapters
        assert shared.runner(name).context.last_stats.cached_tokens >= 256


@pytest.mark.parametrize(
    ("case", "extra", "expected"),
    [
        # (stages sharing, by context) for stack variants
        ("one base", "", [["long", "second", "plain", "third"]]),
        ("separate", 'memory = "separate"', []),
        ("tiny n_ctx", "n_ctx_plain", [["long", "second", "third"]]),
        ("two bases", "model_third", [["long", "second", "plain"]]),
    ],
)
def test_which_stages_share_a_context(
    four_stack: Path, tmp_path: Path, case: str, extra: str, expected: list[list[str]]
) -> None:
    text = four_stack.read_text()
    if extra.startswith("memory"):
        text = text.replace("version = 1\n", f"version = 1\n{extra}\n", 1)
    elif extra == "n_ctx_plain":
        text = text.replace('prompt = "Plain:', 'n_ctx = 24\nmax_tokens = 4\nprompt = "Plain:')
    elif extra == "model_third":
        text = text.replace("lora_scale = 0.5", 'lora_scale = 0.5\nmodel = "other.gguf"')
        text = text.replace('lora = "c.lora.gguf"', "")
    files = {p.name: p for p in four_stack.parent.glob("*.gguf")}
    files["other.gguf"] = four_stack.parent / "base.gguf"
    path = write_stack(tmp_path / "variant", text, files)
    engine = Engine(load_manifest(path), threads=1)
    try:
        groups = [list(ctx_stages(engine, ctx)) for ctx in engine.shared.values()]
        assert groups == expected, case
        Stack(engine.spec, engine).ask(QUESTIONS[1])  # and it runs
    finally:
        engine.close()


def ctx_stages(engine: Engine, shared: object) -> Iterator[str]:
    for name, runner in engine.runners.items():
        if getattr(runner.context, "_share", None) is shared:
            yield name


def test_a_stage_call_inside_another_on_the_same_thread_is_refused(
    engines: dict[str, Engine],
) -> None:
    shared = engines["shared"]
    values = _reference_values(engines["separate"], QUESTIONS[:1])[QUESTIONS[0]]
    second, long = shared.runner("second"), shared.runner("long")
    outer = second.generate(
        second.tokenize(render(second.stage.template, values)), _params(6), threading.Event()
    )
    next(outer)  # the shared context is now this thread's until `outer` finishes
    inner = long.generate(
        long.tokenize(render(long.stage.template, values)), _params(6), threading.Event()
    )
    with pytest.raises(EngineError, match="already running a stage on this thread"):
        next(inner)
    outer.close()
    assert list(
        long.generate(
            long.tokenize(render(long.stage.template, values)), _params(6), threading.Event()
        )
    )


def test_prompt_cache_restores_into_a_shared_context(four_stack: Path) -> None:
    with Stack.load(four_stack, threads=1) as first:
        expected = [t.output for t in first.ask(QUESTIONS[0]).stages]
    with Stack.load(four_stack, threads=1) as again:
        answer = again.ask(QUESTIONS[0])
        engine = again._backend
        assert isinstance(engine, Engine)
        restored = engine.runner("long").context.last_stats.cached_tokens
    assert [t.output for t in answer.stages] == expected
    assert restored >= 256  # the fixed instruction came from disk, into the stage's sequence


BUNDLED = Path(__file__).resolve().parents[2] / "models" / "word-problems"


@pytest.mark.parametrize("memory", ["shared", "low"])
def test_bundled_stack_answers_equal_separate_contexts(memory: str) -> None:
    import json

    lines = (BUNDLED / "eval.jsonl").read_text().splitlines()[:40]
    questions = [json.loads(line)["question"] for line in lines]
    with Stack.load(BUNDLED, threads=1, memory="separate") as separate:
        expected = [[t.output for t in separate.ask(q).stages] for q in questions]
    with Stack.load(BUNDLED, threads=1, memory=memory) as other:
        got = [[t.output for t in other.ask(q).stages] for q in questions]
    assert got == expected
