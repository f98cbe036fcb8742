"""Request bodies checked field by field, and response bodies built, for every endpoint.

OpenAI's completions and chat completions (what every client library speaks) and our native
``/api/ask``. A stack answers one question with its own prompts and sampling, so a field it
cannot honour (tools, n > 1, logprobs, a non-default top_p, ...) is a 400 naming the field,
never silently ignored; unknown fields are refused as OpenAI refuses them. Pure functions: no
I/O, so every rule is unit-tested without a server.
"""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import BadArgument
from ..pipeline._events import Answer
from ._pool import parse_keep_alive

#: at most this many stop strings, each at most this long (OpenAI allows 4)
MAX_STOP, MAX_STOP_CHARS = 4, 200
#: fields clients send that change nothing for a stack (accepted, not used)
_HARMLESS = {"user", "metadata", "store", "service_tier", "stream_options"}
#: fields accepted only at the value that means "off" (the value a stack behaves as)
_ONLY_DEFAULT: dict[str, tuple[object, ...]] = {
    "n": (1,),
    "best_of": (1,),
    "echo": (False,),
    "logprobs": (None, False, 0),
    "top_logprobs": (None, 0),
    "presence_penalty": (0, 0.0),
    "frequency_penalty": (0, 0.0),
    "logit_bias": (None, {}),
    "suffix": (None, ""),
    "tools": (None, []),
    "tool_choice": (None, "none"),
    "functions": (None, []),
    "function_call": (None, "none"),
    "parallel_tool_calls": (None, False),
    "top_p": (None, 1, 1.0),
    "response_format": (None, {"type": "text"}),
    "modalities": (None, ["text"]),
}
_COMMON = {"model", "stream", "max_tokens", "temperature", "seed", "stop", "keep_alive"}
_FIELDS = {
    "completions": _COMMON | {"prompt"},
    "chat": _COMMON | {"messages", "max_completion_tokens"},
    "ask": _COMMON | {"question", "stack"},
}


_QUESTION_FIELD = {"completions": "prompt", "chat": "messages", "ask": "question"}


class RequestError(BadArgument):
    """A request body the server cannot use; ``param`` names the field (OpenAI's error shape)."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


@dataclass(frozen=True)
class AskRequest:
    """What any of the three endpoints asks for, normalized."""

    model: str
    question: str
    stream: bool
    max_tokens: int | None
    temperature: float | None
    seed: int | None
    stop: tuple[str, ...]
    keep_alive: float | None
    include_usage: bool


def _int(body: Mapping[str, Any], key: str, low: int, high: int) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise RequestError(f"{key} must be an integer, not {type(value).__name__}", key)
    if not low <= value <= high:
        raise RequestError(f"{key} must be between {low} and {high}, not {value}", key)
    return value


def _temperature(body: Mapping[str, Any]) -> float | None:
    value = body.get("temperature")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise RequestError("temperature must be a finite number from 0 to 2", "temperature")
    if not 0 <= value <= 2:
        raise RequestError(f"temperature must be from 0 to 2, not {value}", "temperature")
    return float(value)


def _stop(body: Mapping[str, Any]) -> tuple[str, ...]:
    value = body.get("stop")
    if value is None:
        return ()
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(s, str) for s in items):
        raise RequestError("stop must be a string or a list of strings", "stop")
    if len(items) > MAX_STOP or any(len(s) > MAX_STOP_CHARS for s in items):
        raise RequestError(
            f"stop takes at most {MAX_STOP} strings of at most {MAX_STOP_CHARS} characters", "stop"
        )
    return tuple(s for s in items if s)


def _text_content(content: object, where: str) -> str:
    """A message's text: a string, or OpenAI's list of parts of which only text parts count."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text":
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                raise RequestError(f"{where}: only text content is supported, not {kind}", where)
            if not isinstance(part.get("text"), str):
                raise RequestError(f"{where}: a text part needs a string 'text'", where)
            texts.append(part["text"])
        return "".join(texts)
    raise RequestError(f"{where} must be a string or a list of text parts", where)


def _question(kind: str, body: Mapping[str, Any]) -> str:
    if kind == "completions":
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1:
            prompt = prompt[0]
        if not isinstance(prompt, str):
            raise RequestError(
                "prompt must be one string (the question; lists of several prompts and token "
                "ids are not supported)",
                "prompt",
            )
        return prompt
    if kind == "ask":
        question = body.get("question")
        if not isinstance(question, str):
            raise RequestError("question must be a string", "question")
        return question
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise RequestError("messages must be a non-empty list of messages", "messages")
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise RequestError(f"messages[{i}] must be an object with a role", "messages")
        if message["role"] in ("tool", "function") or message.get("tool_calls"):
            raise RequestError(
                f"messages[{i}]: tool messages and tool calls are not supported by a stack",
                "messages",
            )
    last = messages[-1]
    if last["role"] != "user":
        raise RequestError(
            "the last message must be the user's question (a stack answers one question)",
            "messages",
        )
    return _text_content(last.get("content"), f"messages[{len(messages) - 1}].content")


def parse(kind: str, body: object, *, default_model: str | None = None) -> AskRequest:
    """Check a request body of endpoint ``kind`` ("completions", "chat" or "ask")."""
    if not isinstance(body, dict):
        raise RequestError("the request body must be a JSON object")
    allowed = _FIELDS[kind] | _HARMLESS | set(_ONLY_DEFAULT)
    for key in body:
        if key not in allowed:
            raise RequestError(f"unrecognized request argument supplied: {str(key)[:60]}", key)
    for key, defaults in _ONLY_DEFAULT.items():
        if key in body and body[key] not in defaults:
            raise RequestError(
                f"{key} is not supported by a stack (it answers with its own stages' settings); "
                f"leave it out",
                key,
            )
    question = _question(kind, body)
    if not question.strip():
        raise RequestError("the question is empty; send the text to answer", _QUESTION_FIELD[kind])
    model = body.get("stack" if kind == "ask" and "stack" in body else "model", default_model)
    if not isinstance(model, str) or not model:
        raise RequestError("model must name a stack (GET /v1/models lists them)", "model")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise RequestError("stream must be true or false", "stream")
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise RequestError("stream_options must be an object", "stream_options")
    include_usage = bool(options and options.get("include_usage"))
    max_tokens = _int(body, "max_tokens", 1, 1 << 20)
    if kind == "chat" and max_tokens is None:
        max_tokens = _int(body, "max_completion_tokens", 1, 1 << 20)
    keep_alive = body.get("keep_alive")
    return AskRequest(
        model=model,
        question=question,
        stream=stream,
        max_tokens=max_tokens,
        temperature=_temperature(body),
        seed=_int(body, "seed", 0, (1 << 32) - 2),
        stop=_stop(body),
        keep_alive=None if keep_alive is None else parse_keep_alive(keep_alive),
        include_usage=include_usage,
    )


# --- responses ---------------------------------------------------------------------------------


def error_body(
    message: str, *, kind: str, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    """OpenAI's error object."""
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def usage(answer: Answer) -> dict[str, int]:
    """Tokens over every stage: what the stack really spent on the question."""
    prompt = sum(s.prompt_tokens for s in answer.stages)
    completion = sum(s.completion_tokens for s in answer.stages)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def new_id(kind: str) -> str:
    return ("chatcmpl-" if kind == "chat" else "cmpl-") + uuid.uuid4().hex[:24]


def completion_body(
    kind: str, rid: str, model: str, answer: Answer, finish: str, created: int | None = None
) -> dict[str, Any]:
    """The whole (non-streamed) response of completions or chat, with the stage trace."""
    created = int(time.time()) if created is None else created
    if kind == "chat":
        choice: dict[str, Any] = {
            "index": 0,
            "message": {"role": "assistant", "content": answer.text},
            "finish_reason": finish,
        }
        obj = "chat.completion"
    else:
        choice = {"index": 0, "text": answer.text, "logprobs": None, "finish_reason": finish}
        obj = "text_completion"
    return {
        "id": rid,
        "object": obj,
        "created": created,
        "model": model,
        "choices": [choice],
        "usage": usage(answer),
        "edgestack": {"stages": [s.to_dict() for s in answer.stages]},
    }


def chunk_body(
    kind: str,
    rid: str,
    model: str,
    created: int,
    *,
    text: str | None = None,
    finish: str | None = None,
    role: bool = False,
) -> dict[str, Any]:
    """One streamed chunk of completions or chat."""
    if kind == "chat":
        delta: dict[str, Any] = {}
        if role:
            delta["role"] = "assistant"
        if text is not None:
            delta["content"] = text
        choice: dict[str, Any] = {"index": 0, "delta": delta, "finish_reason": finish}
        obj = "chat.completion.chunk"
    else:
        choice = {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}
        obj = "text_completion"
    return {"id": rid, "object": obj, "created": created, "model": model, "choices": [choice]}
