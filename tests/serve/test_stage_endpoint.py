"""``edgestack serve`` as an engine: ``POST /v1/completions`` with model ``STACK/STAGE`` runs one
stage on a prompt rendered by the client (token ids or text)."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from edge_stack import Stack
from edge_stack.engines._backend import GenerationParams
from edge_stack.formats._template import render
from edge_stack.util._paths import bundled_stacks

pytestmark = pytest.mark.llama

QUESTION = "Sam has 23 stamps and buys 18 more. How many stamps does Sam have?"


@pytest.fixture(scope="module")
def local() -> dict[str, Any]:
    """The extract stage's prompt (text and token ids) and output, run in this process."""
    with Stack.load(bundled_stacks()["word-problems"], threads=1) as stack:
        stage = stack.spec.stage("extract")
        rendered = render(stage.template, {"question": QUESTION})
        tokens = stack.runner("extract").tokenize(rendered)
        answer = stack.ask(QUESTION)
    return {"text": rendered.text, "tokens": tokens, "output": answer.stages[0].output}


def _post(server: Any, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(server.url + "/v1/completions", json=body, timeout=60)


@pytest.mark.parametrize("form", ["tokens", "text"])
def test_a_stage_answers_as_in_the_stack(
    module_server: Any, local: dict[str, Any], form: str
) -> None:
    body = {"model": "word-problems/extract", "prompt": local[form], "temperature": 0}
    reply = _post(module_server, body)
    assert reply.status_code == 200, reply.text
    data = reply.json()
    assert data["object"] == "text_completion"
    assert data["choices"][0]["text"].strip() == local["output"]
    assert data["choices"][0]["finish_reason"] == "stop"  # the stage's own stop string
    assert data["usage"]["prompt_tokens"] == len(local["tokens"])


def test_a_stage_streams_chunks_then_usage(module_server: Any, local: dict[str, Any]) -> None:
    body = {
        "model": "word-problems/extract",
        "prompt": local["tokens"],
        "stream": True,
        "stream_options": {"include_usage": True},
        "max_tokens": 2,
        "stop": [],
    }
    with httpx.stream("POST", module_server.url + "/v1/completions", json=body, timeout=60) as r:
        payloads = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
    assert payloads[-1] == "[DONE]"
    objects = [json.loads(p) for p in payloads[:-1]]
    texts = [o["choices"][0]["text"] for o in objects if o["choices"]]
    assert len([t for t in texts if t]) == 2
    assert objects[-2]["choices"][0]["finish_reason"] == "length"
    assert objects[-1]["choices"] == [] and objects[-1]["usage"]["completion_tokens"] == 2


def test_stage_stream_runs_under_the_stage_lock(local: dict[str, Any]) -> None:
    """The pipeline method behind the endpoint, in this process."""
    params = GenerationParams(16, 0.0, 40, 1.0, 0.05, 1.0, None, ("\n",), None)
    with Stack.load(bundled_stacks()["word-problems"], threads=1) as stack:
        text = "".join(c.text for c in stack.stage_stream("extract", local["tokens"], params))
        with pytest.raises(KeyError):
            stack.stage_stream("nope", local["tokens"], params)
    assert text.strip() == local["output"]


@pytest.mark.parametrize(
    ("body", "code", "words"),
    [
        ({"model": "word-problems/nope", "prompt": "x"}, 404, "has no stage 'nope'"),
        ({"model": "nope/extract", "prompt": "x"}, 404, "is not served here"),
        ({"model": "word-problems/extract", "prompt": "x", "n": 2}, 400, "unrecognized field"),
        ({"model": "word-problems/extract", "prompt": "x", "top_k": -1}, 400, "top_k must be"),
        ({"model": "word-problems/extract", "prompt": "x", "temperature": 3}, 400, "temperature"),
        ({"model": "word-problems/extract", "prompt": ""}, 400, "prompt is empty"),
        ({"model": "word-problems/extract", "prompt": [1, "a"]}, 400, "token ids"),
        ({"model": "word-problems/extract", "prompt": [10**6]}, 400, "outside stage extract"),
        ({"model": "word-problems/extract", "prompt": [5] * 250}, 400, "more than n_ctx 256"),
        (
            {"model": "word-problems/extract", "prompt": "x", "grammar": "root ::= ["},
            400,
            "grammar",
        ),
    ],
)
def test_stage_requests_are_checked(
    module_server: Any, body: dict[str, Any], code: int, words: str
) -> None:
    reply = _post(module_server, body)
    assert reply.status_code == code, reply.text
    assert words in reply.json()["error"]["message"]
