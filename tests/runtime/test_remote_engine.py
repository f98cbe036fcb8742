"""Stages on servers: real OpenAI-compatible servers on loopback give the answers of the local
stack; faults (unreachable, garbage, 500s, 503s, streams cut short) are one clear error.

The servers are llama-cpp-python's own (``python -m llama_cpp.server`` with a config file that
serves each bundled stage's base + adapter) and ``edgestack serve`` (single stages as
``STACK/STAGE``); the fault cases use a scripted HTTP server.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from edge_stack import (
    BadArgument,
    Cancelled,
    ManifestError,
    Stack,
    StageStarted,
    Token,
)
from edge_stack.errors import RemoteEngineError

from remote_servers import (
    ADAPTER_STAGES,
    ScriptedEngine,
    adapter_stack,
    completion_events,
    edgestack_server,
    llama_cpp_python_server,
    sse,
    stack_toml,
    status,
    word_problems,
    write_remote_stack,
)
from stack_builders import QUESTIONS as ODD_QUESTIONS

pytestmark = pytest.mark.llama

KEY = "test-key-0123456789"
STAGES = ("extract", "compute", "answer")


def _questions() -> list[str]:
    lines = (word_problems() / "eval.jsonl").read_text(encoding="utf-8").splitlines()
    plain = [json.loads(line)["question"] for line in lines[:5]]
    return [*plain, ODD_QUESTIONS[2], ODD_QUESTIONS[4]]  # braces; a bare word


QUESTIONS = _questions()


@pytest.fixture(scope="module")
def local_answers() -> dict[str, object]:
    with Stack.load(word_problems(), threads=1) as stack:
        return {q: stack.ask(q) for q in QUESTIONS}


@pytest.fixture(scope="module")
def adapters(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return adapter_stack(tmp_path_factory.mktemp("adapters"))


@pytest.fixture(scope="module")
def lcp_url(tmp_path_factory: pytest.TempPathFactory, adapters: Path) -> Iterator[str]:
    folder = word_problems()
    models = {s: (folder / "base.q8_0.gguf", folder / f"{s}.lora.gguf") for s in STAGES}
    for stage in ADAPTER_STAGES:
        models[stage] = (adapters.parent / "base.q8_0.gguf", adapters.parent / f"{stage}.lora.gguf")
    with llama_cpp_python_server(tmp_path_factory.mktemp("lcp"), models) as url:
        yield url


@pytest.fixture(scope="module")
def edge_url(tmp_path_factory: pytest.TempPathFactory, adapters: Path) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("edgeserve")
    stacks = ["word-problems", str(adapters)]
    with edgestack_server(tmp, stacks, extra=["--api-key", KEY, "--no-log"]) as (url, _):
        yield url


@pytest.fixture
def api_key(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("EDGE_KEY", KEY)
    return "EDGE_KEY"


def _remote(engine: str, url: str, stage: str, *, vocab: bool, key: str | None = None) -> dict:
    keys: dict[str, object] = {"engine": engine, "url": url}
    keys["remote_model"] = stage if engine != "edgestack" else f"word-problems/{stage}"
    if vocab:
        keys["model"] = "base.q8_0.gguf"
    if key:
        keys["api_key_env"] = key
    return keys


def _same(answer: object, local: object) -> None:
    assert answer.text == local.text  # type: ignore[attr-defined]
    got = [s.output for s in answer.stages]  # type: ignore[attr-defined]
    assert got == [s.output for s in local.stages]  # type: ignore[attr-defined]


@pytest.mark.parametrize("vocab", [True, False], ids=["token ids", "text"])
@pytest.mark.parametrize("engine", ["llama-cpp-python", "edgestack"])
def test_remote_stages_answer_as_the_local_stack(
    engine: str,
    vocab: bool,
    request: pytest.FixtureRequest,
    local_answers: dict[str, object],
    api_key: str,
    tmp_path: Path,
) -> None:
    url = request.getfixturevalue("lcp_url" if engine == "llama-cpp-python" else "edge_url")
    key = api_key if engine == "edgestack" else None
    stages = {s: _remote(engine, url, s, vocab=vocab, key=key) for s in STAGES}
    path = write_remote_stack(tmp_path / "stack", stack_toml(stages))
    with Stack.load(path, threads=1) as stack:
        for question in QUESTIONS:
            answer = stack.ask(question)
            local = local_answers[question]
            _same(answer, local)
            counts = [s.prompt_tokens for s in answer.stages]
            assert counts == ([s.prompt_tokens for s in local.stages] if vocab else [0, 0, 0])


@pytest.mark.parametrize("engine", ["llama-cpp-python", "edgestack"])
def test_each_remote_stage_runs_on_its_own_adapter(
    engine: str, request: pytest.FixtureRequest, adapters: Path, api_key: str, tmp_path: Path
) -> None:
    url = request.getfixturevalue("lcp_url" if engine == "llama-cpp-python" else "edge_url")
    lines = ['name = "far"', "version = 1", "[defaults]", f'engine = "{engine}"', f'url = "{url}"']
    lines += ['model = "base.q8_0.gguf"', 'stop = ["\\n"]', "max_tokens = 4"]
    lines += ['prompt = "Question: {question}\\nAnswer:"']
    if engine == "edgestack":
        lines.append(f'api_key_env = "{api_key}"')
    for stage in ADAPTER_STAGES:
        model = stage if engine == "llama-cpp-python" else f"adapters/{stage}"
        lines += ["[[stages]]", f'name = "{stage}"', f'remote_model = "{model}"']
    remote = write_remote_stack(tmp_path / "far", "\n".join(lines) + "\n")
    differ = 0
    with Stack.load(adapters, threads=1) as local, Stack.load(remote, threads=1) as far:
        for question in QUESTIONS:
            near = [s.output for s in local.ask(question).stages]
            assert [s.output for s in far.ask(question).stages] == near
            differ += len(set(near)) > 1
    assert differ >= 3  # the adapters, and only they, make the stages differ


def test_a_mixed_stack_runs_local_and_remote_stages(
    lcp_url: str, edge_url: str, local_answers: dict[str, object], api_key: str, tmp_path: Path
) -> None:
    stages = {
        "extract": _remote("llama-cpp-python", lcp_url, "extract", vocab=True),
        "compute": {"model": "base.q8_0.gguf", "lora": "compute.lora.gguf"},
        "answer": _remote("edgestack", edge_url, "answer", vocab=True, key=api_key),
    }
    path = write_remote_stack(tmp_path / "stack", stack_toml(stages))
    with Stack.load(path, threads=1) as stack:
        for question in QUESTIONS[:3]:
            _same(stack.ask(question), local_answers[question])
        answers = stack.ask_batch(QUESTIONS[:4], batch_size=4)
        # Remote stages leave packing to their server; the local one packs its prompts.
        packed = stack.ask_batch(QUESTIONS[:4], batch_size=4, pack_prompts=True)
    for question, answer, again in zip(QUESTIONS[:4], answers, packed, strict=True):
        _same(answer, local_answers[question])
        _same(again, local_answers[question])


def test_remote_events_arrive_token_by_token(edge_url: str, api_key: str, tmp_path: Path) -> None:
    stages = {s: _remote("edgestack", edge_url, s, vocab=True, key=api_key) for s in STAGES}
    path = write_remote_stack(tmp_path / "stack", stack_toml(stages))
    with Stack.load(path, threads=1) as stack:
        events = list(stack.stream(QUESTIONS[0]))
    started = [e for e in events if isinstance(e, StageStarted)]
    assert [e.stage for e in started] == list(STAGES)
    tokens = [e.text for e in events if isinstance(e, Token) and e.stage == "answer"]
    assert len(tokens) > 3
    assert "".join(tokens) == events[-1].answer.text  # type: ignore[union-attr]


def test_a_wrong_api_key_is_one_clear_error(
    edge_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("EDGE_KEY", "not-the-key-at-all")
    stages = {"extract": _remote("edgestack", edge_url, "extract", vocab=False, key="EDGE_KEY")}
    path = write_remote_stack(tmp_path / "stack", stack_toml(stages))
    with Stack.load(path, threads=1) as stack, pytest.raises(RemoteEngineError) as info:
        stack.ask(QUESTIONS[0])
    message = str(info.value)
    assert "HTTP 401" in message and "api_key_env" in message and edge_url in message
    assert "not-the-key-at-all" not in message


# --- cancelling and killing -------------------------------------------------------------------

ENDLESS = """
name = "endless"
version = 1
[[stages]]
name = "forever"
model = "base.q8_0.gguf"
prompt = "Question: {question}\\nAnswer:"
max_tokens = 3000
n_ctx = 3200
grammar = 'root ::= "a" root'
"""


def _endless_server_stack(tmp: Path) -> Path:
    return write_remote_stack(tmp / "endless", ENDLESS)


def _endless_client(tmp: Path, url: str) -> Path:
    text = f"""
name = "far"
version = 1
[[stages]]
name = "forever"
engine = "edgestack"
url = "{url}"
remote_model = "endless/forever"
prompt = "Question: {{question}}\\nAnswer:"
max_tokens = 3000
n_ctx = 3200
"""
    return write_remote_stack(tmp / "client", text)


def _running(url: str) -> int:
    text = httpx.get(url.removesuffix("/v1") + "/metrics", timeout=5).text
    line = next(x for x in text.splitlines() if x.startswith("edgestack_requests_running "))
    return int(float(line.split()[1]))


def test_cancel_closes_the_stream_and_frees_the_server(tmp_path: Path) -> None:
    served = _endless_server_stack(tmp_path)
    with edgestack_server(tmp_path, [str(served)], extra=["--parallel", "1", "--no-log"]) as (
        url,
        _,
    ):
        client = _endless_client(tmp_path, url)
        with Stack.load(client, threads=1) as stack:
            cancel = threading.Event()
            seen = 0
            with pytest.raises(Cancelled):
                for event in stack.stream("go", cancel=cancel):
                    if isinstance(event, Token):
                        seen += 1
                        if seen == 3:
                            cancel.set()
                            stopped = time.monotonic()
            assert time.monotonic() - stopped < 1.0
            # The server saw the client leave and stopped generating: its one slot frees.
            deadline = time.monotonic() + 10
            while _running(url) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert _running(url) == 0
            answer = stack.ask("again", max_tokens=5)
            assert set(answer.text) == {"a"}


@pytest.mark.slow
def test_killing_the_server_mid_answer_is_one_error_and_no_log_entry(tmp_path: Path) -> None:
    served = _endless_server_stack(tmp_path)
    with edgestack_server(tmp_path, [str(served)], extra=["--no-log"]) as (url, server):
        client = _endless_client(tmp_path, url)
        env = {**os.environ, "EDGESTACK_NO_PROMPT_CACHE": "1"}
        ask = subprocess.Popen(
            [sys.executable, "-m", "edge_stack", "ask", "--stack", str(client), "go"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        deadline = time.monotonic() + 60
        while not _running(url):
            assert time.monotonic() < deadline and ask.poll() is None, ask.communicate()
            time.sleep(0.05)
        time.sleep(0.3)  # tokens are flowing
        server.send_signal(signal.SIGKILL)
        server.wait()
        out, err = ask.communicate(timeout=60)
    assert ask.returncode == 1, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "stage forever" in lines[0] and url in lines[0]
    assert "closed the connection in the middle of an answer" in lines[0]
    logs = subprocess.run(
        [sys.executable, "-m", "edge_stack", "logs", "--json"],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    assert json.loads(logs.stdout or "[]") == []


# --- faults, from a scripted server -----------------------------------------------------------


def _scripted_stack(tmp: Path, url: str, **keys: object) -> Path:
    extra = {"engine": "openai", "url": url, "remote_model": "m", **keys}
    return write_remote_stack(tmp / "stack", stack_toml({"extract": extra}))


def _events(texts: list[str]):  # type: ignore[no-untyped-def]
    return lambda h, body: sse(h, completion_events(texts))


REPLIES = {
    "not JSON": (
        [lambda h, b: sse(h, [b"<html>oops</html>"])],
        "answered something that is not JSON",
    ),
    "no choices": (
        [lambda h, b: sse(h, [b'{"id": "x"}'])],
        "not a completion (expected a 'choices' list",
    ),
    "HTTP 500": (
        [lambda h, b: status(h, 500, {"error": {"message": "CUDA out of memory"}})],
        "answered HTTP 500: CUDA out of memory; check the server's log",
    ),
    "HTTP 400": (
        [lambda h, b: status(h, 400, {"error": {"message": "max_tokens is too large: 16"}})],
        "answered HTTP 400: max_tokens is too large: 16",
    ),
    "HTTP 404 detail": (
        [lambda h, b: status(h, 404, {"detail": "Not Found"})],
        "answered HTTP 404: Not Found; check the stage's url",
    ),
    "cut short": (
        [lambda h, b: sse(h, completion_events(["12"])[:1])],
        "ended the stream before the answer was finished",
    ),
    "error mid-stream": (
        [
            lambda h, b: sse(
                h, [*completion_events(["1"])[:1], b'{"error": {"message": "slot died"}}']
            )
        ],
        "reported an error: slot died",
    ),
    "503 forever": (
        [lambda h, b: status(h, 503, {"error": {"message": "Loading model"}}, Retry_After="0")],
        "answered HTTP 503 (busy or loading): Loading model (3 attempts)",
    ),
}


@pytest.mark.parametrize("case", list(REPLIES))
def test_faults_are_one_error_naming_stage_and_url(case: str, tmp_path: Path) -> None:
    replies, words = REPLIES[case]
    with ScriptedEngine(replies) as engine:  # type: ignore[arg-type]
        path = _scripted_stack(tmp_path, engine.url, retries=2)
        with Stack.load(path, threads=1) as stack, pytest.raises(RemoteEngineError) as info:
            stack.ask("What is 2 plus 3?")
    message = str(info.value)
    assert message.startswith(f"{path}, stage extract: openai at {engine.url}"), message
    assert words in message, message
    assert "\n" not in message
    expected = 3 if case == "503 forever" else 1
    assert len(engine.requests) == expected


def test_503_is_retried_then_answered(tmp_path: Path) -> None:
    busy = lambda h, b: status(h, 503, {"error": "busy"}, Retry_After="0")  # noqa: E731
    with ScriptedEngine([busy, busy, _events([" 2", " +", " 3", "\n4"])]) as engine:
        path = _scripted_stack(tmp_path, engine.url, retries=3)
        with Stack.load(path, threads=1) as stack:
            answer = stack.ask("What is 2 plus 3?")
    assert answer.text == "2 + 3"  # the stop string cut the rest, even though the server did not
    assert len(engine.requests) == 3
    assert engine.requests[0]["prompt"].startswith("Question: What is 2 plus 3?")


@pytest.mark.parametrize(
    ("gets", "slots"),
    [
        ({"/props": {"total_slots": 4}, "/lora-adapters": [{"id": 0}, {"id": 1}]}, [1, 3, 1]),
        ({"/props": {"total_slots": 4}, "/lora-adapters": [{"id": i} for i in range(4)]}, [1, 1]),
        ({"/props": {"total_slots": 2}, "/lora-adapters": [{"id": i} for i in range(4)]}, [1, 1]),
        ({}, [None, None]),  # a server without /props picks its slots itself
    ],
)
def test_llama_server_stages_keep_to_their_own_slots(
    gets: dict[str, object], slots: list[int | None], tmp_path: Path
) -> None:
    with ScriptedEngine([_events(["x"])], gets=gets) as engine:
        extra = {"engine": "llama-server", "url": engine.url, "lora_id": 1}
        path = write_remote_stack(tmp_path / "stack", stack_toml({"extract": extra}))
        with Stack.load(path, threads=1) as stack:
            for _ in slots:
                stack.ask("What is 2 plus 3?")
    assert [r.get("id_slot") for r in engine.requests] == slots
    assert all(r["lora"] == [{"id": 1, "scale": 1.0}] for r in engine.requests)


def test_a_server_that_does_not_stream_is_read_whole(tmp_path: Path) -> None:
    whole = {
        "choices": [{"text": " 7 * 6", "finish_reason": "stop"}],
        "usage": {"completion_tokens": 4},
    }
    with ScriptedEngine([lambda h, b: status(h, 200, whole)]) as engine:
        path = _scripted_stack(tmp_path, engine.url)
        with Stack.load(path, threads=1) as stack:
            answer = stack.ask("What is 7 times 6?")
    assert answer.text == "7 * 6" and answer.stages[0].completion_tokens == 4


def test_cancel_reaches_a_silent_server_at_once(tmp_path: Path) -> None:
    def silent(handler: Any, body: dict[str, Any]) -> None:
        handler.send_response(200)
        handler.send_header("Content-Type", "text/event-stream")
        handler.end_headers()
        handler.wfile.flush()
        time.sleep(5)  # a long prompt, say: no byte for a while

    with ScriptedEngine([silent]) as engine:
        path = _scripted_stack(tmp_path, engine.url)
        with Stack.load(path, threads=1) as stack:
            cancel = threading.Event()
            threading.Timer(0.3, cancel.set).start()
            started = time.monotonic()
            with pytest.raises(Cancelled):
                stack.ask("What is 2 plus 3?", cancel=cancel)
            assert time.monotonic() - started < 1.5


def test_an_unreachable_server_is_retried_then_named(tmp_path: Path) -> None:
    from edge_stack.serve._config import free_port

    url = f"http://127.0.0.1:{free_port()}/v1"
    path = _scripted_stack(tmp_path, url, retries=1)
    with Stack.load(path, threads=1) as stack, pytest.raises(RemoteEngineError) as info:
        started = time.monotonic()
        stack.ask("What is 2 plus 3?")
    message = str(info.value)
    assert (
        f"openai at {url}/completions: cannot connect (connection refused) (2 attempts)" in message
    )
    assert "start the server" in message
    assert 0.4 < time.monotonic() - started < 5  # one backoff of 0.5 s


# --- what an engine cannot carry: refused at load, and per call ----------------------------------


@pytest.mark.parametrize(
    ("engine", "keys", "key"),
    [
        ("openai", {"temperature": 0.7}, "top_k"),
        ("openai", {"temperature": 0.7, "top_k": 0}, "min_p"),
        ("vllm", {"repeat_penalty": 1.1}, "repeat_penalty"),
        ("ollama", {"grammar": 'root ::= "a"'}, "grammar"),
    ],
)
def test_settings_an_engine_cannot_carry_fail_at_load(
    engine: str, keys: dict[str, object], key: str, tmp_path: Path
) -> None:
    url = "http://127.0.0.1:9/v1" if engine != "ollama" else "http://127.0.0.1:9"
    extra = {"engine": engine, "url": url, "remote_model": "m", **keys}
    path = write_remote_stack(tmp_path / "stack", stack_toml({"extract": extra}))
    with pytest.raises(ManifestError) as info:
        Stack.load(path, threads=1)
    assert str(info.value).startswith(f"{path}: stage 'extract', key '{key}': ")


def test_an_override_an_engine_cannot_carry_fails_before_sending(tmp_path: Path) -> None:
    with ScriptedEngine([_events(["x"])]) as engine:
        path = _scripted_stack(tmp_path, engine.url)
        with Stack.load(path, threads=1) as stack, pytest.raises(BadArgument, match="top_k"):
            stack.ask("What is 2 plus 3?", temperature=0.5)
    assert engine.requests == []


def test_a_missing_api_key_fails_at_load(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NO_SUCH_KEY", raising=False)
    path = _scripted_stack(tmp_path, "http://127.0.0.1:9/v1", api_key_env="NO_SUCH_KEY")
    with pytest.raises(
        ManifestError, match="key 'api_key_env': the environment variable NO_SUCH_KEY"
    ):
        Stack.load(path, threads=1)
