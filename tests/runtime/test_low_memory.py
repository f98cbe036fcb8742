"""Low-memory mode: only the running stage's context exists, one base model at a time."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from edge_stack import Stack, StageFinished, StageStarted, Token
from edge_stack.engines.llama._engine import Engine
from edge_stack.engines.llama._lowmem import LowMemoryRunner, Residency

from cli_support import run
from stack_builders import QUESTIONS, random_lora, write_stack

pytestmark = [pytest.mark.llama, pytest.mark.torch]

INSTRUCTION = "Read the question, keep every number as written and answer in one line. " * 3

# Two bases (the same tiny model as f32 and as q8_0): stages alternate between them.
TWO_BASES = f"""
name = "two-bases"
version = 1
[defaults]
max_tokens = 6
[[stages]]
name = "first"
model = "base.f32.gguf"
lora = "a.lora.gguf"
prompt = "{INSTRUCTION}\\nQ: {{question}}\\nA:"
[[stages]]
name = "second"
model = "base.q8_0.gguf"
lora = "b.lora.gguf"
prompt = "{INSTRUCTION}\\nQ: {{question}}\\nFirst: {{first}}\\nB:"
[[stages]]
name = "third"
model = "base.f32.gguf"
prompt = "Second: {{second}}\\nC:"
[[stages]]
name = "fourth"
model = "base.q8_0.gguf"
lora = "c.lora.gguf"
prompt = "{INSTRUCTION}\\nQ: {{question}}\\nThird: {{third}}\\nD:"
"""


@pytest.fixture(scope="module")
def two_bases(tiny_gguf: Callable[..., Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    f32, q8 = tiny_gguf("gptneox", "f32"), tiny_gguf("gptneox", "q8_0")
    root = tmp_path_factory.mktemp("two-bases")
    files = {"base.f32.gguf": f32, "base.q8_0.gguf": q8}
    for seed, name in enumerate("abc", start=60):
        files[f"{name}.lora.gguf"] = random_lora(q8, root / f"src-{name}.gguf", seed=seed)
    return write_stack(root / "stack", TWO_BASES, files)


def _outputs(stack: Stack, questions: list[str]) -> list[list[str]]:
    return [[t.output for t in stack.ask(q).stages] for q in questions]


@pytest.mark.parametrize("prompt_cache", [True, False])
def test_low_memory_answers_equal_shared(
    two_bases: Path, prompt_cache: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    from edge_stack.util._env import settings

    if not prompt_cache:
        monkeypatch.setenv("EDGESTACK_NO_PROMPT_CACHE", "1")
        settings.cache_clear()
    questions = QUESTIONS[:4]
    with Stack.load(two_bases, threads=1) as shared:
        expected = _outputs(shared, questions)
    with Stack.load(two_bases, threads=1, memory="low") as low:
        assert _outputs(low, questions) == expected
        engine = low._backend
        assert isinstance(engine, Engine) and engine.memory == "low"
        cached = engine.runner("first").context.last_stats.cached_tokens
    # Each call makes a fresh context: the fixed start comes back from disk, or is evaluated.
    assert (cached >= 32) == prompt_cache


@pytest.mark.parametrize("pack", [False, True], ids=["aligned", "packed"])
def test_low_memory_batches_free_their_context(two_bases: Path, pack: bool) -> None:
    questions = QUESTIONS[:3]
    with Stack.load(two_bases, threads=1, memory="low") as low:
        answers = low.ask_batch(questions, batch_size=3, pack_prompts=pack)
        assert [a.question for a in answers] == questions
        assert all(len(a.stages) == len(low.spec.stages) for a in answers)
        engine = low._backend
        assert isinstance(engine, Engine)
        assert all(r.batch_context is None for r in engine.runners.values())


def test_only_the_running_stage_has_a_context(two_bases: Path) -> None:
    with Stack.load(two_bases, threads=1, memory="low") as low:
        engine = low._backend
        assert isinstance(engine, Engine)
        residency = engine._residency
        assert isinstance(residency, Residency)
        assert all(isinstance(r, LowMemoryRunner) for r in engine.runners.values())
        seen: list[tuple[str, int]] = []
        for event in low.stream(QUESTIONS[0], max_tokens=4):
            model = residency._model
            open_now = model._open_contexts if model is not None else 0
            if isinstance(event, (StageStarted, StageFinished, Token)):
                seen.append((type(event).__name__, open_now))
        # Before and after each stage nothing is open; while it generates, its context only.
        assert {n for kind, n in seen if kind != "Token"} == {0}
        assert {n for kind, n in seen if kind == "Token"} <= {1}


def test_one_base_at_a_time(two_bases: Path) -> None:
    with Stack.load(two_bases, threads=1, memory="low") as low:
        engine = low._backend
        assert isinstance(engine, Engine)
        residency = engine._residency
        assert isinstance(residency, Residency)
        loaded: list[object] = []
        models: list[object] = []
        for event in low.stream(QUESTIONS[1], max_tokens=4):
            if isinstance(event, StageStarted):
                models.append(residency._model)
            if isinstance(event, StageFinished):
                loaded.append(residency._model)
        # Stages alternate bases: each stage found the other base in memory and replaced it.
        paths = [m.path.name for m in loaded]  # type: ignore[attr-defined]
        assert paths == ["base.f32.gguf", "base.q8_0.gguf", "base.f32.gguf", "base.q8_0.gguf"]
        assert all(m._ptr is None for m in loaded[:-1])  # type: ignore[attr-defined]
        assert residency.loads == 4
        assert engine.models == {}  # the engine itself holds no model in this mode


def test_low_memory_flag_on_the_command_line(
    two_bases: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["ask", QUESTIONS[1], "--stack", str(two_bases), "--no-log", "--threads", "1"]
    code, plain, _ = run(argv, capsys)
    assert code == 0
    code, low, err = run([*argv, "--low-memory"], capsys)
    assert (code, low) == (0, plain), err


def test_memory_low_in_the_manifest(two_bases: Path, tmp_path: Path) -> None:
    text = two_bases.read_text().replace("version = 1\n", 'version = 1\nmemory = "low"\n', 1)
    path = write_stack(tmp_path / "low", text, {p.name: p for p in two_bases.parent.glob("*.gguf")})
    with Stack.load(path, threads=1) as low:
        engine = low._backend
        assert isinstance(engine, Engine) and engine.memory == "low"
        assert low.ask(QUESTIONS[0]).text


def test_memory_override_is_checked(two_bases: Path) -> None:
    from edge_stack.errors import BadArgument

    with pytest.raises(BadArgument, match="must be one of shared, separate, low"):
        Stack.load(two_bases, memory="tiny")
