"""Queueing, cancellation on disconnect, keep-alive, shutdown, API keys, CORS, the CLI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from edge_stack.errors import BadArgument
from edge_stack.serve import check_exposure, parse_keep_alive

pytestmark = pytest.mark.llama

ENDLESS = {"model": "endless", "prompt": "go", "stream": True}


def _metric(server: Any, name: str) -> float:
    for line in httpx.get(server.url + "/metrics").text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in /metrics")


def _wait(predicate: Callable[[], bool], seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def test_a_client_that_disconnects_mid_stream_stops_its_generation(start_server: Any) -> None:
    from edge_stack.tools._runlog import RunLog

    server = start_server()
    received = 0
    with httpx.stream("POST", server.url + "/v1/completions", json=ENDLESS, timeout=60) as r:
        for line in r.iter_lines():
            if line.startswith("data: ") and json.loads(line[6:])["choices"][0]["text"]:
                received += 1
            if received >= 5:
                break  # closing the response here drops the connection
    assert received == 5
    # Generation (3000 tokens, many seconds) stops within a token or so of the disconnect.
    assert _wait(lambda: _metric(server, "edgestack_requests_running") == 0, 5.0)
    state = server._server.config.app.state.edgestack
    assert _wait(lambda: not state.calls._threads, 5.0)
    assert RunLog().recent(5) == []  # nothing half-answered is logged


def test_a_full_queue_is_503_with_retry_after(start_server: Any) -> None:
    server = start_server(parallel=1, max_queue=0)
    with httpx.stream("POST", server.url + "/v1/completions", json=ENDLESS, timeout=60) as first:
        lines = first.iter_lines()  # kept: a dropped iterator closes the stream
        next(lines)  # the first request is generating
        assert _wait(lambda: _metric(server, "edgestack_requests_running") == 1)
        busy = httpx.post(
            server.url + "/v1/completions", json={"model": "word-problems", "prompt": "1 plus 2"}
        )
        assert busy.status_code == 503
        assert busy.headers["Retry-After"] == "1"
        assert busy.json()["error"]["type"] == "server_busy"
    assert _wait(lambda: _metric(server, "edgestack_requests_running") == 0)
    ok = httpx.post(
        server.url + "/v1/completions",
        json={"model": "word-problems", "prompt": "What is 1 plus 2?"},
        timeout=60,
    )
    assert ok.status_code == 200


def _loaded(server: Any) -> list[str]:
    return httpx.get(server.url + "/health").json()["loaded"]


def test_keep_alive_unloads_idle_stacks(start_server: Any) -> None:
    server = start_server(keep_alive=0.5)
    body = {"model": "word-problems", "prompt": "What is 1 plus 2?"}
    assert httpx.post(server.url + "/v1/completions", json=body, timeout=60).status_code == 200
    assert _loaded(server) == ["word-problems"]
    assert _wait(lambda: _loaded(server) == [], 5.0)


@pytest.mark.parametrize(("keep_alive", "stays"), [(0, False), ("-1", True), ("10m", True)])
def test_keep_alive_per_request(start_server: Any, keep_alive: object, stays: bool) -> None:
    server = start_server(keep_alive=300.0)
    body = {"model": "word-problems", "prompt": "What is 1 plus 2?", "keep_alive": keep_alive}
    assert httpx.post(server.url + "/v1/completions", json=body, timeout=60).status_code == 200
    time.sleep(0.2)
    assert (_loaded(server) == ["word-problems"]) is stays


def test_stop_cancels_requests_in_flight_and_unloads(start_server: Any) -> None:
    server = start_server()
    state = server._server.config.app.state.edgestack
    errors: list[BaseException] = []

    def stream() -> None:
        try:
            with httpx.stream(
                "POST", server.url + "/v1/completions", json=ENDLESS, timeout=60
            ) as r:
                for _ in r.iter_lines():
                    pass
        except httpx.HTTPError as exc:  # the server closing the stream is fine
            errors.append(exc)

    thread = threading.Thread(target=stream)
    thread.start()
    assert _wait(lambda: state.admission.running == 1)
    start = time.monotonic()
    server.stop()
    assert time.monotonic() - start < 15
    thread.join(10)
    assert not thread.is_alive()
    assert state.pool.loaded() == []


KEY = "s3cret-key-for-tests"


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({}, 401),
        ({"Authorization": "Bearer wrong-key-123"}, 401),
        ({"Authorization": "Basic " + KEY}, 401),
        ({"Authorization": "Bearer " + KEY}, 200),
    ],
)
def test_api_key(start_server: Any, headers: dict[str, str], status: int) -> None:
    server = start_server(api_key=KEY)
    r = httpx.post(
        server.url + "/v1/completions",
        json={"model": "word-problems", "prompt": "What is 1 plus 2?"},
        headers=headers,
        timeout=60,
    )
    assert r.status_code == status
    if status == 401:
        assert r.json()["error"]["code"] == "invalid_api_key"
        assert httpx.get(server.url + "/v1/models", headers=headers).status_code == 401
    # the health check and the page stay open; the server keeps serving
    assert httpx.get(server.url + "/health").status_code == 200
    assert httpx.get(server.url + "/").status_code == 200


def test_cors_is_off_by_default_and_follows_the_allow_list(start_server: Any) -> None:
    origin = "http://localhost:1420"
    plain = start_server()
    r = httpx.get(plain.url + "/v1/models", headers={"Origin": origin})
    assert "access-control-allow-origin" not in r.headers
    allowed = start_server(cors_origins=(origin,))
    r = httpx.get(allowed.url + "/v1/models", headers={"Origin": origin})
    assert r.headers["access-control-allow-origin"] == origin
    r = httpx.get(allowed.url + "/v1/models", headers={"Origin": "http://evil.example"})
    assert "access-control-allow-origin" not in r.headers


@pytest.mark.parametrize(
    ("host", "key", "insecure", "ok"),
    [
        ("127.0.0.1", None, False, True),
        ("localhost", None, False, True),
        ("::1", None, False, True),
        ("0.0.0.0", None, False, False),
        ("0.0.0.0", "a-long-key", False, True),
        ("0.0.0.0", None, True, True),
        ("192.168.1.5", None, False, False),
    ],
)
def test_binding_beyond_loopback_needs_a_key(
    host: str, key: str | None, insecure: bool, ok: bool
) -> None:
    if ok:
        check_exposure(host, key, insecure)
    else:
        with pytest.raises(BadArgument, match="--api-key"):
            check_exposure(host, key, insecure)


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("5m", 300.0),
        ("30s", 30.0),
        ("1h", 3600.0),
        (0, 0.0),
        ("0", 0.0),
        (-1, float("inf")),
        ("-1", float("inf")),
        (12.5, 12.5),
        ("250ms", 0.25),
    ],
)
def test_keep_alive_forms(value: object, seconds: float) -> None:
    assert parse_keep_alive(value) == seconds


@pytest.mark.parametrize("value", ["soon", "", "5 minutes", True, None, [1], "nan"])
def test_bad_keep_alive(value: object) -> None:
    with pytest.raises(BadArgument, match="keep_alive"):
        parse_keep_alive(value)


def _serve_cli(*args: str, home: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "EDGESTACK_HOME": str(home)}
    return subprocess.Popen(
        [sys.executable, "-m", "edge_stack", "serve", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def test_cli_refuses_to_expose_without_a_key(tmp_path: Path) -> None:
    proc = _serve_cli("--host", "0.0.0.0", home=tmp_path)
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode != 0
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "--api-key" in lines[0]


def test_cli_serves_and_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    from edge_stack.serve._config import free_port

    port = free_port()
    proc = _serve_cli("--port", str(port), home=tmp_path)
    try:
        assert _wait(lambda: _up(port), 60.0), proc.stderr
        r = httpx.post(
            f"http://127.0.0.1:{port}/v1/completions",
            json={"model": "word-problems", "prompt": "What is 15 plus 28?"},
            timeout=60,
        )
        assert r.json()["choices"][0]["text"] == "15 plus 28 is 43"
    finally:
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "Traceback" not in err


def _up(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False
