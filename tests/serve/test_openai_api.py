"""The OpenAI-compatible endpoints, driven by the official ``openai`` package and raw HTTP."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from edge_stack import Stack
from edge_stack.util._paths import bundled_stacks

pytestmark = pytest.mark.llama

QUESTIONS = [
    "Sam has 23 stamps and buys 18 more. How many stamps does Sam have?",
    "What is 15 plus 28?",
    "Mia has 9 pens and gives away 4. How many pens does Mia have left?",
]


@pytest.fixture(scope="module")
def reference() -> dict[str, Any]:
    """The same questions through Stack.ask in this process, at temperature 0."""
    with Stack.load(bundled_stacks()["word-problems"]) as stack:
        return {q: stack.ask(q) for q in QUESTIONS}


@pytest.fixture
def client(module_server: Any) -> Any:
    import openai

    return openai.OpenAI(base_url=module_server.url + "/v1", api_key="unused", max_retries=0)


def test_models_lists_every_served_stack(client: Any) -> None:
    ids = sorted(m.id for m in client.models.list())
    assert ids == ["endless", "word-problems"]


@pytest.mark.parametrize("question", QUESTIONS)
def test_chat_equals_stack_ask(client: Any, reference: dict[str, Any], question: str) -> None:
    reply = client.chat.completions.create(
        model="word-problems", messages=[{"role": "user", "content": question}], temperature=0
    )
    expected = reference[question]
    assert reply.choices[0].message.content == expected.text
    assert reply.choices[0].finish_reason == "stop"
    stages = reply.model_extra["edgestack"]["stages"]
    assert [s["output"] for s in stages] == [s.output for s in expected.stages]
    assert reply.usage.completion_tokens == sum(s.completion_tokens for s in expected.stages)
    assert reply.usage.prompt_tokens == sum(s.prompt_tokens for s in expected.stages)


@pytest.mark.parametrize("question", QUESTIONS)
def test_completions_equal_stack_ask(client: Any, reference: dict[str, Any], question: str) -> None:
    reply = client.completions.create(model="word-problems", prompt=question, temperature=0)
    assert reply.choices[0].text == reference[question].text


def test_chat_stream_carries_the_final_stage_and_usage(
    client: Any, reference: dict[str, Any]
) -> None:
    question = QUESTIONS[0]
    chunks = list(
        client.chat.completions.create(
            model="word-problems",
            messages=[
                {"role": "system", "content": "ignored"},
                {"role": "user", "content": question},
            ],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == reference[question].text
    assert chunks[0].choices[0].delta.role == "assistant"
    finals = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert [c.choices[0].finish_reason for c in finals] == ["stop"]
    assert finals[0].model_extra["edgestack"]["stages"][-1]["output"] == text
    usage = chunks[-1].usage
    assert chunks[-1].choices == [] and usage is not None
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens > 0


def test_completions_stream(client: Any, reference: dict[str, Any]) -> None:
    question = QUESTIONS[1]
    chunks = list(client.completions.create(model="word-problems", prompt=question, stream=True))
    assert "".join(c.choices[0].text for c in chunks) == reference[question].text


def test_max_tokens_override_reports_length(client: Any) -> None:
    reply = client.chat.completions.create(
        model="word-problems", messages=[{"role": "user", "content": QUESTIONS[0]}], max_tokens=2
    )
    assert reply.choices[0].finish_reason == "length"
    assert all(s["completion_tokens"] <= 2 for s in reply.model_extra["edgestack"]["stages"])


def test_stop_applies_to_the_answer_stage(client: Any, reference: dict[str, Any]) -> None:
    full = reference[QUESTIONS[0]].text  # "The number of stamps Sam has now is 41"
    reply = client.completions.create(model="word-problems", prompt=QUESTIONS[0], stop=[" has"])
    assert reply.choices[0].text == full[: full.index(" has")]


def _post(
    server: Any, path: str, body: bytes | str | dict[str, Any], **headers: str
) -> httpx.Response:
    content = json.dumps(body).encode() if isinstance(body, dict) else body
    return httpx.post(
        server.url + path,
        content=content,
        headers={"Content-Type": "application/json", **headers},
        timeout=60,
    )


BAD_REQUESTS: list[tuple[str, object, int, str | None, str]] = [
    ("/v1/chat/completions", b"{not json", 400, None, "not valid JSON"),
    ("/v1/chat/completions", b"[1, 2]", 400, None, "must be a JSON object"),
    ("/v1/chat/completions", {"model": "word-problems"}, 400, "messages", "non-empty list"),
    ("/v1/chat/completions", {"model": "word-problems", "messages": "hi"}, 400, "messages", "list"),
    (
        "/v1/chat/completions",
        {"model": "word-problems", "messages": [{"role": "assistant", "content": "x"}]},
        400,
        "messages",
        "last message must be the user",
    ),
    (
        "/v1/chat/completions",
        {"model": "word-problems", "messages": [{"role": "user", "content": "x"}], "n": 2},
        400,
        "n",
        "not supported",
    ),
    (
        "/v1/chat/completions",
        {
            "model": "word-problems",
            "messages": [{"role": "user", "content": "x"}],
            "tools": [{"type": "function", "function": {"name": "f"}}],
        },
        400,
        "tools",
        "not supported",
    ),
    (
        "/v1/chat/completions",
        {"model": "word-problems", "messages": [{"role": "user", "content": "x"}], "top_p": 0.5},
        400,
        "top_p",
        "not supported",
    ),
    (
        "/v1/completions",
        {"model": "word-problems", "prompt": "x", "max_tokens": "ten"},
        400,
        "max_tokens",
        "integer",
    ),
    (
        "/v1/completions",
        {"model": "word-problems", "prompt": "x", "max_tokens": 0},
        400,
        "max_tokens",
        "between",
    ),
    (
        "/v1/completions",
        {"model": "word-problems", "prompt": "x", "temperature": -1},
        400,
        "temperature",
        "from 0 to 2",
    ),
    (
        "/v1/completions",
        {"model": "word-problems", "prompt": "x", "temperature": "hot"},
        400,
        "temperature",
        "finite number",
    ),
    (
        "/v1/completions",
        {"model": "word-problems", "prompt": "x", "stream": "yes"},
        400,
        "stream",
        "true or false",
    ),
    (
        "/v1/completions",
        {"model": "word-problems", "prompt": ["a", "b"]},
        400,
        "prompt",
        "one string",
    ),
    ("/v1/completions", {"model": "word-problems", "prompt": [1, 2]}, 400, "prompt", "one string"),
    (
        "/v1/completions",
        {"model": "word-problems", "prompt": "x", "bogus": 1},
        400,
        "bogus",
        "unrecognized",
    ),
    (
        "/v1/completions",
        {"model": "word-problems", "prompt": "x", "stop": [1]},
        400,
        "stop",
        "strings",
    ),
    (
        "/v1/completions",
        {"model": "word-problems", "prompt": "x", "keep_alive": "soon"},
        400,
        None,
        "keep_alive",
    ),
    ("/v1/completions", {"model": "word-problems", "prompt": " "}, 400, "prompt", "empty"),
    ("/v1/completions", {"model": "nope", "prompt": "x"}, 404, "model", "not served here"),
    (
        "/v1/completions",
        {"model": "../../etc/passwd", "prompt": "x"},
        404,
        "model",
        "not served here",
    ),
    ("/api/ask", {"model": "word-problems"}, 400, "question", "must be a string"),
]


@pytest.mark.parametrize(("path", "body", "status", "param", "message"), BAD_REQUESTS)
def test_bad_requests_get_openai_errors_and_the_server_keeps_serving(
    module_server: Any, path: str, body: Any, status: int, param: str | None, message: str
) -> None:
    response = _post(module_server, path, body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert message in error["message"]
    assert error["param"] == param if param else True
    assert error["type"] == "invalid_request_error"
    assert "/tmp" not in error["message"] and "site-packages" not in error["message"]
    ok = _post(module_server, "/v1/completions", {"model": "word-problems", "prompt": QUESTIONS[1]})
    assert ok.status_code == 200


def test_oversized_body_is_413(module_server: Any) -> None:
    big = {"model": "word-problems", "prompt": "x" * (2 << 20)}
    response = _post(module_server, "/v1/completions", big)
    assert response.status_code == 413
    assert "larger than" in response.json()["error"]["message"]


def test_question_over_the_limit_is_400(module_server: Any) -> None:
    response = _post(
        module_server, "/v1/completions", {"model": "word-problems", "prompt": "x" * 70_000}
    )
    assert response.status_code == 400
    assert "question" in response.json()["error"]["message"]


def test_health_and_metrics(module_server: Any) -> None:
    _post(module_server, "/v1/completions", {"model": "word-problems", "prompt": QUESTIONS[1]})
    health = httpx.get(module_server.url + "/health").json()
    assert health["status"] == "ok" and "word-problems" in health["loaded"]
    metrics = httpx.get(module_server.url + "/metrics")
    assert metrics.headers["content-type"].startswith("text/plain")
    text = metrics.text
    assert "# TYPE edgestack_requests_total counter" in text
    assert 'edgestack_requests_total{code="200",endpoint="completions"}' in text
    assert 'edgestack_tokens_total{kind="completion",model="word-problems",stage="answer"}' in text
    assert 'edgestack_model_loaded{model="word-problems"} 1' in text
    assert "edgestack_queue_depth 0" in text


def test_answers_go_into_the_run_log(module_server: Any) -> None:
    from edge_stack.tools._runlog import RunLog

    _post(module_server, "/v1/completions", {"model": "word-problems", "prompt": QUESTIONS[2]})
    runs = RunLog().recent(5)
    assert runs and runs[0].question == QUESTIONS[2] and runs[0].stack == "word-problems"
    assert len(runs[0].stages) == 3


def test_recent_runs_leave_out_local_paths(module_server: Any) -> None:
    _post(module_server, "/v1/completions", {"model": "word-problems", "prompt": QUESTIONS[1]})
    runs = httpx.get(module_server.url + "/api/runs?limit=3").json()
    assert runs and runs[0]["question"] == QUESTIONS[1]
    assert "stack_path" not in runs[0]
    assert httpx.get(module_server.url + "/api/runs?limit=0").status_code == 400


def test_native_ask_returns_the_ask_json_object(
    module_server: Any, reference: dict[str, Any]
) -> None:
    body = _post(
        module_server, "/api/ask", {"model": "word-problems", "question": QUESTIONS[0]}
    ).json()
    assert body == {
        **reference[QUESTIONS[0]].to_dict(),
        "seconds": body["seconds"],
        "stages": body["stages"],
    }
    assert [s["output"] for s in body["stages"]] == [
        s.output for s in reference[QUESTIONS[0]].stages
    ]


def test_native_stream_has_every_stage_event_in_order(module_server: Any) -> None:
    events = []
    with httpx.stream(
        "POST",
        module_server.url + "/api/ask",
        json={"model": "word-problems", "question": QUESTIONS[1], "stream": True},
        timeout=60,
    ) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if line.startswith("data: "):
                events.append(json.loads(line[6:]))
    kinds = [e["type"] for e in events]
    assert kinds[0] == "stage_started" and kinds[-1] == "done"
    assert [e["stage"] for e in events if e["type"] == "stage_finished"] == [
        "extract",
        "compute",
        "answer",
    ]
    for index in range(3):
        tokens = "".join(e["text"] for e in events if e["type"] == "token" and e["index"] == index)
        finished = next(e for e in events if e["type"] == "stage_finished" and e["index"] == index)
        assert tokens == finished["trace"]["output"]
