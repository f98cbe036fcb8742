"""The pipeline over a fake backend: ordering, events, stripping, overrides, locking, cancel."""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from edge_stack import Answer, Done, Stack, StageFinished, StageStarted, StageTrace, Token
from edge_stack.engines._backend import GenerationParams
from edge_stack.errors import BadArgument, Cancelled, ContextOverflowError, EngineError
from edge_stack.manifest import load_manifest
from edge_stack.util._limits import MAX_N_CTX, MAX_QUESTION_BYTES

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
    "kwargs",
    [
        {"max_tokens": 0},
        {"max_tokens": 1.5},
        {"max_tokens": True},
        {"max_tokens": MAX_N_CTX + 1},
        {"max_tokens": 10**18},
        {"temperature": 2.5},
        {"temperature": -0.1},
        {"temperature": math.nan},
        {"temperature": math.inf},
        {"temperature": "0.5"},
        {"temperature": True},
        {"seed": -1},
        {"seed": 2**32},
        {"seed": False},
    ],
)
def test_bad_overrides(spec_path: Path, kwargs: dict[str, object]) -> None:
    stack, backend = make(spec_path)
    for call in (
        lambda: stack.ask("q", **kwargs),  # type: ignore[arg-type]
        lambda: stack.ask_batch(["q"], **kwargs),  # type: ignore[arg-type]
    ):
        with pytest.raises(BadArgument) as info:
            call()
        assert "\n" not in str(info.value) and next(iter(kwargs)) in str(info.value)
    assert backend.generated == 0 and not backend.runners["extract"].calls


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
    with pytest.raises(Cancelled):
        stack.ask("q", cancel=cancel, max_tokens=5000)
    assert backend.generated < 1000  # of 5000 (5 s of generation): the cancel stopped it


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
    with pytest.raises(TypeError, match=r"questions\[1\] must be a str"):
        stack.ask_batch(["q", 5])  # type: ignore[list-item]


@pytest.mark.parametrize(
    ("question", "match"),
    [
        ("ab\ud800c", "lone surrogate U\\+D800 at character 2"),
        ("caf\udce9", "lone surrogate U\\+DCE9 at character 3"),  # a byte kept by surrogateescape
        ("x" * (MAX_QUESTION_BYTES + 1), f"at least {MAX_QUESTION_BYTES + 1} bytes"),
        # 2 bytes each: few enough characters for the quick test, too many bytes for the limit
        ("é" * (MAX_QUESTION_BYTES // 2 + 1), f"{MAX_QUESTION_BYTES + 2} bytes"),
        ("x" * 10**8, "limit of 65536"),  # refused without tokenizing 100 MB
    ],
)
def test_bad_question_is_refused_before_tokenizing(
    spec_path: Path, question: str, match: str
) -> None:
    stack, backend = make(spec_path, n_ctx=1 << 20)
    for call, name in (
        (lambda: stack.ask(question), "question"),
        (lambda: stack.ask_batch(["fine", question]), "questions[1]"),
        (lambda: next(stack.stream(question)), "question"),
    ):
        with pytest.raises(BadArgument, match=match) as info:
            call()
        message = str(info.value)
        assert message.startswith(f"{name} ") and "\n" not in message and len(message) < 300
    assert not any(r.calls for r in backend.runners.values())


class _NeverEncoded(str):
    """A question that fails the test if anything encodes it or searches it character by
    character: a question over the limit must be refused by its length alone."""

    def encode(self, *args: object, **kwargs: object) -> bytes:  # type: ignore[override]
        raise AssertionError("the question was encoded")

    def __iter__(self):  # type: ignore[no-untyped-def]
        raise AssertionError("the question was read character by character")


def test_huge_question_is_refused_by_its_length_alone(spec_path: Path) -> None:
    stack, backend = make(spec_path, n_ctx=1 << 20)
    huge = _NeverEncoded("x" * 10**8)
    for call in (
        lambda: stack.ask(huge),
        lambda: stack.ask_batch(["fine", huge]),
        lambda: next(stack.stream(huge)),
    ):
        with pytest.raises(BadArgument, match="at least 100000000 bytes"):
            call()
    assert not any(r.calls for r in backend.runners.values())


def test_question_at_the_limit_is_asked(spec_path: Path) -> None:
    stack, backend = make(spec_path, n_ctx=1 << 20)
    for question in ("x" * MAX_QUESTION_BYTES, "é" * (MAX_QUESTION_BYTES // 2), "\U0001f600 ok"):
        stack.ask(question, max_tokens=1)
    assert len(backend.runners["extract"].calls) == 3


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


@pytest.mark.parametrize("threads", [0, -2, 513, 4096, 100_000, 10**6, True, 1.5, "2"])
def test_load_refuses_bad_threads_before_loading(
    spec_path: Path, monkeypatch: pytest.MonkeyPatch, threads: object
) -> None:
    from edge_stack.engines.llama import _engine

    monkeypatch.setattr(_engine, "Engine", None)  # anything past the check would fail otherwise
    with pytest.raises(BadArgument, match=r"Stack.load\(threads=\) must be a whole number") as info:
        Stack.load(spec_path, threads=threads)  # type: ignore[arg-type]
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("env", ["0", "abc", "100000"])
def test_load_refuses_bad_env_threads_before_loading(
    spec_path: Path, monkeypatch: pytest.MonkeyPatch, env: str
) -> None:
    from edge_stack.engines.llama import _engine
    from edge_stack.util._env import settings

    monkeypatch.setattr(_engine, "Engine", None)
    monkeypatch.setenv("EDGESTACK_THREADS", env)
    settings.cache_clear()
    with pytest.raises(BadArgument, match="EDGESTACK_THREADS must be a whole number"):
        Stack.load(spec_path)


@pytest.mark.parametrize(
    ("name", "match"),
    [
        ("with\0nul", "has a NUL byte"),
        ("loop", "is a symlink loop"),
        ("fifo", r"is a FIFO \(named pipe\)"),
    ],
)
def test_load_refuses_bad_paths(tmp_path: Path, name: str, match: str) -> None:
    import os

    if name == "loop":
        os.symlink(tmp_path / name, tmp_path / name)
    elif name == "fifo":
        os.mkfifo(tmp_path / name)
    with pytest.raises(BadArgument, match=match) as info:
        Stack.load(tmp_path / name)
    assert "\n" not in str(info.value) and "(from Stack.load)" in str(info.value)


@pytest.mark.llama
@pytest.mark.torch
@pytest.mark.parametrize(("n_ctx", "warned"), [(256, False), (512, True)])
def test_context_past_the_training_context_warns(
    tmp_path: Path,
    tiny_gguf: Callable[..., Path],
    caplog: pytest.LogCaptureFixture,
    n_ctx: int,
    warned: bool,
) -> None:
    from stack_builders import write_stack

    path = write_stack(
        tmp_path / "s",
        f'version = 1\n[[stages]]\nname = "only"\nmodel = "m.gguf"\nprompt = "{{question}}"\n'
        f"n_ctx = {n_ctx}\n",
        {"m.gguf": tiny_gguf("gptneox")},  # trained on 256 positions
    )
    with (
        caplog.at_level(logging.WARNING, logger="edge_stack.pipeline._stack"),
        Stack.load(path, threads=1),
    ):
        pass
    messages = [r.getMessage() for r in caplog.records if r.name == "edge_stack.pipeline._stack"]
    if warned:
        assert len(messages) == 1 and "stage only: n_ctx 512 is above" in messages[0]
        assert "(256 tokens)" in messages[0]
    else:
        assert messages == []
