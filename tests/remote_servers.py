"""Servers on loopback for the remote-engine tests: real ones in child processes (llama-cpp-python's
``llama_cpp.server``, ``edgestack serve``, llama.cpp's ``llama-server`` when a binary is there)
and a scripted one for the fault cases (bad JSON, 500s, 503s, streams cut short).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from edge_stack.serve._config import free_port

START_TIMEOUT_S = 120.0

#: the bundled stack's three stages, with prompts and settings as in its stack.toml
WORD_PROBLEMS_STAGES = {
    "extract": {"prompt": "Question: {question}\\nExpression:", "max_tokens": 16},
    "compute": {"prompt": "Expression: {extract}\\nResult:", "max_tokens": 8},
    "answer": {
        "prompt": "Question: {question}\\nExpression: {extract}\\nResult: {compute}\\nAnswer:",
        "max_tokens": 40,
    },
}


def word_problems() -> Path:
    from edge_stack.util._paths import bundled_stacks

    return bundled_stacks()["word-problems"].parent


def stack_toml(
    stages: dict[str, dict[str, Any]], *, name: str = "remote", defaults: str = ""
) -> str:
    """A stack.toml over the bundled stack's files: ``stages`` maps a stage to its extra keys
    (written as TOML values), on top of the bundled prompts and settings."""
    lines = [
        f'name = "{name}"',
        "version = 1",
        "[defaults]",
        'stop = ["\\n"]',
        "temperature = 0.0",
        "n_ctx = 256",
        defaults,
    ]
    for stage, extra in stages.items():
        own = {**WORD_PROBLEMS_STAGES[stage], **extra}
        lines += ["[[stages]]", f'name = "{stage}"']
        lines += [f"{k} = {_toml(v)}" for k, v in own.items()]
    return "\n".join(lines) + "\n"


def _toml(value: Any) -> str:
    if isinstance(value, str):
        return '"' + value.replace('"', '\\"') + '"'
    if isinstance(value, bool):
        return "true" if value else "false"
    return json.dumps(value)


def write_remote_stack(root: Path, text: str) -> Path:
    """``text`` as ``root/stack.toml``, with the bundled GGUF files beside it."""
    root.mkdir(parents=True, exist_ok=True)
    for file in word_problems().glob("*.gguf"):
        if not (root / file.name).exists():
            os.link(file, root / file.name) if _same_fs(file, root) else shutil.copy(file, root)
    path = root / "stack.toml"
    path.write_text(text, encoding="utf-8")
    return path


def _same_fs(a: Path, b: Path) -> bool:
    return a.stat().st_dev == b.stat().st_dev


def wait_http(url: str, proc: subprocess.Popen[bytes] | None = None) -> None:
    import httpx

    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the server for {url} exited with {proc.returncode}")
        try:
            if httpx.get(url, timeout=2).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer in {START_TIMEOUT_S} s")


@contextmanager
def child(argv: list[str], url: str, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A server process (its output in ``log``), up once ``url`` answers; killed at the end."""
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
        try:
            wait_http(url, proc)
            yield proc
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


#: stages whose random adapters change the bundled base's answers (its own adapters barely do:
#: the bundled base answers alone), so a server that applies the wrong adapter, or none, shows
ADAPTER_STAGES = ("s1", "s2", "s3")
ADAPTER_STACK = """
name = "adapters"
version = 1
[defaults]
model = "base.q8_0.gguf"
stop = ["\\n"]
n_ctx = 256
max_tokens = 4
prompt = "Question: {question}\\nAnswer:"
"""


def adapter_stack(root: Path) -> Path:
    """The bundled base with three random rank-4 adapters (std 0.2), one per stage, every stage
    with the same prompt: what differs between the stages' outputs is the adapter alone.

    Random adapters make a model unsure: later tokens can be near-ties, which an engine that
    evaluates prompts in other batch sizes (llama-server reusing a cached prefix) may break the
    other way. Four tokens a stage keep to the part the adapters decide firmly."""
    from stack_builders import random_lora

    path = write_remote_stack(root, "")
    text = ADAPTER_STACK
    for seed, stage in enumerate(ADAPTER_STAGES, start=1):
        lora = root / f"{stage}.lora.gguf"
        if not lora.exists():
            random_lora(root / "base.q8_0.gguf", lora, seed=seed, rank=4, std=0.2)
        text += f'[[stages]]\nname = "{stage}"\nlora = "{stage}.lora.gguf"\n'
    path.write_text(text, encoding="utf-8")
    return path


@contextmanager
def llama_cpp_python_server(
    tmp: Path, models: dict[str, tuple[Path, Path]] | None = None, threads: int = 1
) -> Iterator[str]:
    """llama-cpp-python's own OpenAI server, one model alias per stage (``models``: alias ->
    base and adapter; default: the bundled stages); yields its API base (…/v1)."""
    folder = word_problems()
    if models is None:
        models = {
            stage: (folder / "base.q8_0.gguf", folder / f"{stage}.lora.gguf")
            for stage in WORD_PROBLEMS_STAGES
        }
    port = free_port()
    settings = [
        {
            "model": str(base),
            "model_alias": alias,
            "lora_path": str(lora),
            "n_ctx": 256,
            "n_threads": threads,
            "n_threads_batch": threads,
            "verbose": False,
        }
        for alias, (base, lora) in models.items()
    ]
    config = {"host": "127.0.0.1", "port": port, "interrupt_requests": False, "models": settings}
    path = tmp / "llama-cpp-python.json"
    path.write_text(json.dumps(config), encoding="utf-8")
    base = f"http://127.0.0.1:{port}/v1"
    argv = [sys.executable, "-m", "llama_cpp.server", "--config_file", str(path)]
    with child(argv, base + "/models", tmp / "llama-cpp-python.log"):
        yield base


@contextmanager
def edgestack_server(
    tmp: Path, stacks: list[str], *, extra: list[str] | None = None
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """``edgestack serve`` in a child process; yields its API base (…/v1) and the process."""
    port = free_port()
    argv = [sys.executable, "-m", "edge_stack", "serve", "--port", str(port), "--keep-alive", "-1"]
    for stack in stacks:
        argv += ["--stack", stack]
    argv += extra or []
    base = f"http://127.0.0.1:{port}"
    with child(argv, base + "/health", tmp / f"edgestack-serve-{port}.log") as proc:
        yield base + "/v1", proc


def llama_server_binary() -> str | None:
    """A llama-server binary: $EDGESTACK_TEST_LLAMA_SERVER, else one on the PATH."""
    given = os.environ.get("EDGESTACK_TEST_LLAMA_SERVER")
    if given and Path(given).is_file() and os.access(given, os.X_OK):
        return given
    return shutil.which("llama-server")


# --- a scripted engine for the fault cases ------------------------------------------------------

Reply = Callable[[BaseHTTPRequestHandler, dict[str, Any]], None]


def sse(handler: BaseHTTPRequestHandler, events: list[bytes], *, status: int = 200) -> None:
    """Answer with server-sent events (each item is one ``data:`` payload, sent as it is)."""
    handler.send_response(status)
    handler.send_header("Content-Type", "text/event-stream")
    # The handlers close every connection: saying so keeps the client from reusing one the
    # server is closing (a race that dropped the next request now and then).
    handler.send_header("Connection", "close")
    handler.end_headers()
    for event in events:
        handler.wfile.write(b"data: " + event + b"\n\n")
        handler.wfile.flush()


def completion_events(texts: list[str], finish: str = "stop") -> list[bytes]:
    """OpenAI completion chunks for ``texts``, the finish, and [DONE]."""
    out = [json.dumps({"choices": [{"text": t, "finish_reason": None}]}).encode() for t in texts]
    out.append(json.dumps({"choices": [{"text": "", "finish_reason": finish}]}).encode())
    return [*out, b"[DONE]"]


def status(handler: BaseHTTPRequestHandler, code: int, body: object, **headers: str) -> None:
    data = json.dumps(body).encode() if not isinstance(body, bytes) else body
    handler.send_response(code)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(data)))
    handler.send_header("Connection", "close")
    for name, value in headers.items():
        handler.send_header(name.replace("_", "-"), value)
    handler.end_headers()
    handler.wfile.write(data)


class ScriptedEngine:
    """An HTTP server whose n-th POST is answered by ``replies[min(n, last)]``; it records the
    request bodies."""

    def __init__(self, replies: list[Reply], gets: dict[str, object] | None = None) -> None:
        self.replies = replies
        self.requests: list[dict[str, Any]] = []
        #: path -> the JSON a GET of it answers (anything else: 404)
        self.gets = gets or {}
        engine = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                if self.path in engine.gets:
                    status(self, 200, engine.gets[self.path])
                else:
                    status(self, 404, {"error": "not found"})
                self.close_connection = True

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = json.loads(self.rfile.read(length) or b"{}")
                n = len(engine.requests)
                engine.requests.append(body)
                engine.replies[min(n, len(engine.replies) - 1)](self, body)
                self.close_connection = True

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> ScriptedEngine:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
