"""What a client can send that once became a 500: numbers no conversion can hold (a 400-digit
keep_alive, a superscript or 5000-digit limit) and a client that leaves while sending its body
(a ClientDisconnect traceback in the log, counted as 500). Each is now a 4xx, and a client that
leaves is a 499 in /metrics with no error in the log."""

from __future__ import annotations

import json
import logging
import socket
import time
from typing import Any
from urllib.parse import quote

import httpx
import pytest

pytestmark = pytest.mark.llama

ASK = {"model": "word-problems", "question": "What is 2 plus 3?"}

#: case -> (method, path, JSON body or None, the field the 400 names)
BAD_NUMBERS: dict[str, tuple[str, str, object, str]] = {
    "keep_alive of 400 digits": ("POST", "/api/ask", {**ASK, "keep_alive": 10**400}, "keep_alive"),
    "keep_alive of 4000 digits": (
        "POST",
        "/api/ask",
        {**ASK, "keep_alive": 10**4000},
        "keep_alive",
    ),
    "keep_alive 1e300 seconds": ("POST", "/api/ask", {**ASK, "keep_alive": 1e300}, "keep_alive"),
    "keep_alive in fullwidth digits": (
        "POST",
        "/api/ask",
        {**ASK, "keep_alive": "５m"},
        "keep_alive",
    ),
    "keep_alive of 40 digits": (
        "POST",
        "/api/ask",
        {**ASK, "keep_alive": "9" * 40 + "s"},
        "keep_alive",
    ),
    "chat keep_alive of 400 digits": (
        "POST",
        "/v1/chat/completions",
        {
            "model": "word-problems",
            "messages": [{"role": "user", "content": "What is 2 plus 3?"}],
            "keep_alive": 10**400,
        },
        "keep_alive",
    ),
    "limit superscript two": ("GET", "/api/runs?limit=" + quote("²"), None, "limit"),
    "limit in Arabic-Indic digits": ("GET", "/api/runs?limit=" + quote("٣"), None, "limit"),
    "limit of 5000 digits": ("GET", "/api/runs?limit=" + "0" * 4999 + "5", None, "limit"),
    "limit of 5000 nines": ("GET", "/api/runs?limit=" + "9" * 5000, None, "limit"),
    "limit 201": ("GET", "/api/runs?limit=201", None, "limit"),
}


@pytest.mark.parametrize("case", list(BAD_NUMBERS))
def test_numbers_no_conversion_holds_are_a_400(module_server: Any, case: str) -> None:
    method, path, body, param = BAD_NUMBERS[case]
    content = None if body is None else _dumps(body)
    reply = httpx.request(
        method,
        module_server.url + path,
        content=content,
        headers={"Content-Type": "application/json"},
        timeout=60,
    )
    assert reply.status_code == 400, reply.text
    error = reply.json()["error"]
    assert error["type"] == "invalid_request_error" and param in error["message"]


def _dumps(body: object) -> bytes:
    """JSON, with integers of any length written out (json.dumps stops at 4300 digits)."""
    if isinstance(body, dict):
        items = (json.dumps(k).encode() + b":" + _dumps(v) for k, v in body.items())
        return b"{" + b",".join(items) + b"}"
    if isinstance(body, int) and not isinstance(body, bool):
        return str(body).encode()
    return json.dumps(body).encode()


def test_limits_inside_the_range_still_work(module_server: Any) -> None:
    for limit in ("1", "007", "200"):
        reply = httpx.get(module_server.url + f"/api/runs?limit={limit}", timeout=60)
        assert reply.status_code == 200 and isinstance(reply.json(), list)


def _count(server: Any, endpoint: str, code: int) -> int:
    line = f'edgestack_requests_total{{code="{code}",endpoint="{endpoint}"}} '
    for row in httpx.get(server.url + "/metrics", timeout=60).text.splitlines():
        if row.startswith(line):
            return int(float(row[len(line) :]))
    return 0


#: endpoint name in /metrics -> its path
ENDPOINTS = {"ask": "/api/ask", "chat": "/v1/chat/completions", "completions": "/v1/completions"}


@pytest.mark.parametrize("endpoint", list(ENDPOINTS))
def test_a_client_that_leaves_while_sending_is_a_499_not_an_error(
    module_server: Any, caplog: pytest.LogCaptureFixture, endpoint: str
) -> None:
    host, port = module_server.config.host, module_server.config.port
    before = {code: _count(module_server, endpoint, code) for code in (499, 500)}
    with caplog.at_level(logging.INFO):
        for _ in range(3):
            sock = socket.create_connection((host, port), timeout=30)
            head = (
                f"POST {ENDPOINTS[endpoint]} HTTP/1.1\r\nHost: {host}\r\n"
                "Content-Type: application/json\r\nContent-Length: 100\r\n\r\n"
            )
            sock.sendall(head.encode() + b'{"q')
            time.sleep(0.1)
            sock.close()
        deadline = time.monotonic() + 30
        while _count(module_server, endpoint, 499) < before[499] + 3:
            assert time.monotonic() < deadline, "the disconnects were not counted as 499"
            time.sleep(0.1)
    assert _count(module_server, endpoint, 500) == before[500]
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [], [r.getMessage() for r in errors]
