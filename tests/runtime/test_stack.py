"""The pipeline over a fake backend: ordering, events, stripping, overrides, locking, cancel."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from edge_stack import Answer, Done, Stack, StageFinished, StageStarted, StageTrace, Token
from edge_stack._backend import GenerationParams
from edge_stack.errors import Cancelled, ContextOverflowError, EngineError
from edge_stack.manifest import load_manifest

from .conftest import MakeStack
from .fakes import SPECIAL_BASE, FakeBackend

THREE = """
name = "demo"
version = 1
[defaults]
model = "base.gguf"
n_ctx = 256
[[stages]]
name = "extract"
prompt = "Q: {question}\\nE:"
stop = ["\\n"]
max_tokens = 40
[[stages]]
name = "compute"
prompt = "E: {extract}\\nV:"
[[stages]]
name = "say"
prompt = "<|endoftext|>Q: {question} V: {compute}\\nS:"
"""


def scripted(stage: str, prompt: str, params: GenerationParams) -> str:
    if stage == "extract":
        return "  {question} 1+2 \nignored"
    if stage == "compute":
        return " 3\t\n"
    return f" The answer is 3. ({prompt!r})  "


@pytest.fixture
def spec_path(make_stack: MakeStack) -> Path:
    return make_stack(THREE)


def make(spec_path: Path, **kw: object) -> tuple[Stack, FakeBackend]:
    spec = load_manifest(spec_path)
    backend = FakeBackend(spec, kw.pop("reply", scripted), **kw)  # type: ignore[arg-type]
    return Stack(spec, backend), backend


def test_outputs_flow_between_stages(spec_path: Path) -> None:
    stack, backend = make(spec_path)
    answer = stack.ask("Tom has {x} <|endoftext|>?")
    assert isinstance(answer, Answer)
    extract, compute, say = answer.stages
    assert extract.prompt == "Q: Tom has {x} <|endoftext|>?\nE:"
    assert extract.output == "{question} 1+2"  # stripped, cut at the stop string
    assert compute.prompt == "E: {question} 1+2\nV:"  # braces from a stage stay text
    assert compute.output == "3"
    assert say.prompt == "<|endoftext|>Q: Tom has {x} <|endoftext|>? V: 3\nS:"
    assert answer.text == say.output and answer.text.startswith("The answer is 3.")
    assert answer.stack == "demo" and answer.question == "Tom has {x} <|endoftext|>?"
    # Only the template's own <|endoftext|> became the special token.
    say_tokens = backend.runners["say"].calls[0][0]
    assert say_tokens.count(SPECIAL_BASE) == 1 and say_tokens[0] == SPECIAL_BASE
    assert say.prompt_tokens == len(say_tokens) == len(say.prompt) - len("<|endoftext|>") + 1
    assert extract.completion_tokens == len("  {question} 1+2 \n")
    assert all(isinstance(t, StageTrace) and t.seconds >= 0 for t in answer.stages)


def test_events_in_order_and_tokens_join_to_output(spec_path: Path) -> None:
    stack, _ = make(spec_path)
    events = list(stack.stream("q"))
    kinds = [type(e).__name__ for e in events]
    assert kinds[0] == "StageStarted" and kinds[-1] == "Done"
    assert kinds.count("StageStarted") == kinds.count("StageFinished") == 3
    done = events[-1]
    assert isinstance(done, Done)
    for index, trace in enumerate(done.answer.stages):
        started = [e for e in events if isinstance(e, StageStarted) and e.index == index]
        finished = [e for e in events if isinstance(e, StageFinished) and e.index == index]
        tokens = [e.text for e in events if isinstance(e, Token) and e.index == index]
        assert started[0].prompt == trace.prompt and started[0].prompt_tokens == trace.prompt_tokens
        assert finished[0].trace == trace
        assert "".join(tokens) == trace.output
        assert all(tokens)
        # Events of a stage come between its start and finish.
        assert events.index(started[0]) < events.index(finished[0])


def test_events_stream_as_they_happen(spec_path: Path) -> None:
    stack, backend = make(spec_path)
    seen = []
    for event in stack.stream("q"):
        if isinstance(event, Token) and event.stage == "extract":
            seen.append(backend.generated)
    # Each extract token event arrived before the next token was generated.
    assert seen == sorted(seen) and len(set(seen)) == len(seen) > 3


def test_overrides_apply_to_every_stage_and_do_not_stick(spec_path: Path) -> None:
    stack, backend = make(spec_path)
    stack.ask("q", max_tokens=5, temperature=0.5, seed=11)
    for runner in backend.runners.values():
        params = runner.calls[-1][1]
        assert (params.max_tokens, params.temperature, params.seed) == (5, 0.5, 11)
    answer = stack.ask("q")
    assert backend.runners["extract"].calls[-1][1].max_tokens == 40
    assert backend.runners["compute"].calls[-1][1].temperature == 0.0
    assert len(answer.stages[0].output) > 5


@pytest.mark.parametrize(
    "kwargs", [{"max_tokens": 0}, {"temperature": 2.5}, {"seed": -1}, {"max_tokens": 1.5}]
)
def test_bad_overrides(spec_path: Path, kwargs: dict[str, object]) -> None:
    stack, _ = make(spec_path)
    with pytest.raises(ValueError):
        stack.ask("q", **kwargs)  # type: ignore[arg-type]


def test_max_tokens_stops_generation(spec_path: Path) -> None:
    stack, _ = make(spec_path, reply=lambda s, p, g: "x" * 1000)
    answer = stack.ask("q", max_tokens=7)
    assert [t.completion_tokens for t in answer.stages] == [7, 7, 7]
    assert answer.text == "x" * 7


def test_context_overflow_names_stage_and_numbers(spec_path: Path) -> None:
    stack, backend = make(spec_path, n_ctx=60)
    with pytest.raises(ContextOverflowError) as info:
        stack.ask("a long question " * 3)
    message = str(info.value)
    assert "stage extract" in message and "n_ctx is 60" in message and "max_tokens is 40" in message
    assert backend.generated == 0
    # A short question fits, so the same stack still works afterwards.
    stack.ask("q", max_tokens=5)


def test_cancel_stops_within_a_token(spec_path: Path) -> None:
    stack, backend = make(spec_path, reply=lambda s, p, g: "y" * 1000, n_ctx=4096)
    cancel = threading.Event()
    count = 0
    with pytest.raises(Cancelled, match="extract"):
        for event in stack.stream("q", cancel=cancel, max_tokens=500):
            if isinstance(event, Token):
                count += 1
                if count == 3:
                    cancel.set()
    assert backend.generated <= 4
    # The stage lock was released: the stack answers again.
    assert stack.ask("q", max_tokens=3).text == "yyy"


def test_cancel_from_another_thread(spec_path: Path) -> None:
    stack, backend = make(spec_path, reply=lambda s, p, g: "z" * 10000, delay=0.001, n_ctx=8192)
    cancel = threading.Event()
    timer = threading.Timer(0.05, cancel.set)
    timer.start()
    start = time.perf_counter()
    with pytest.raises(Cancelled):
        stack.ask("q", cancel=cancel, max_tokens=5000)
    assert time.perf_counter() - start < 1.0
    assert backend.generated < 1000


def test_threads_get_same_answers_and_stages_are_serialized(spec_path: Path) -> None:
    stack, backend = make(spec_path, delay=0.0005)
    questions = [f"question {i} {{brace}}" for i in range(16)]
    serial = [stack.ask(q).text for q in questions]
    with ThreadPoolExecutor(8) as pool:
        parallel = list(pool.map(lambda q: stack.ask(q).text, questions))
    assert parallel == serial
    assert all(r.max_active == 1 for r in backend.runners.values())


def test_abandoned_stream_releases_lock(spec_path: Path) -> None:
    stack, _ = make(spec_path)
    events = stack.stream("q")
    next(events)
    next(events)
    events.close()
    assert stack.ask("q").text


def test_reentry_from_inside_stream_is_an_error(spec_path: Path) -> None:
    stack, _ = make(spec_path)
    events = stack.stream("q")
    next(events)  # holding the extract lock now
    with pytest.raises(EngineError, match="already running"):
        stack.ask("again")
    events.close()


def test_close_is_idempotent_and_final(spec_path: Path) -> None:
    stack, backend = make(spec_path)
    with stack:
        stack.ask("q")
    stack.close()
    assert backend.closed == 1 and stack.closed
    with pytest.raises(EngineError, match="closed"):
        stack.ask("q")


def test_close_waits_for_running_call(spec_path: Path) -> None:
    stack, backend = make(spec_path, reply=lambda s, p, g: "w" * 200, delay=0.002)
    results: list[object] = []

    def run() -> None:
        try:
            results.append(stack.ask("q"))
        except EngineError as exc:
            results.append(exc)

    worker = threading.Thread(target=run)
    worker.start()
    time.sleep(0.05)
    stack.close()
    # close() returned only once no stage was generating.
    assert all(r.active == 0 for r in backend.runners.values())
    worker.join()
    assert backend.closed == 1 and len(results) == 1


def test_question_must_be_str(spec_path: Path) -> None:
    stack, _ = make(spec_path)
    with pytest.raises(TypeError):
        stack.ask(b"bytes")  # type: ignore[arg-type]


def test_answer_json_shape(spec_path: Path) -> None:
    stack, _ = make(spec_path)
    data = stack.ask("q").to_dict()
    assert list(data) == ["stack", "question", "answer", "seconds", "stages"]
    assert list(data["stages"][0]) == [
        "name",
        "prompt",
        "output",
        "prompt_tokens",
        "completion_tokens",
        "seconds",
    ]
