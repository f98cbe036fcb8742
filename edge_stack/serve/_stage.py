"""Single stages over HTTP: how one edgestack server is the engine of another stack's stage.

``POST /v1/completions`` with ``"model": "STACK/STAGE"`` runs that one stage of a served stack on
a prompt the client rendered (a remote stage with ``engine = "edgestack"``): token ids, or text
(special tokens written in it are parsed, as llama-server does). Every sampling field the local
engine has may be sent (``max_tokens``, ``temperature``, ``top_k``, ``top_p``, ``min_p``,
``repeat_penalty``, ``seed``, ``stop``, ``grammar``); a field left out takes the served stage's
own value, and each is checked as stack.toml's key is. The stage's own ``draft`` (prompt-lookup
drafting) applies, as in ``Stack.ask``. The answer is OpenAI's text completion (streamed as
server-sent events with ``"stream": true``), with usage.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from typing import Any

from ..engines._backend import Chunk, GenerationParams, stage_params
from ..errors import GrammarError, ModelNotFound
from ..formats._template import Rendered, Segment
from ..formats.grammar._validate import validate_grammar
from ..manifest import STAGE_KEYS
from ._pool import StackPool
from ._protocol import RequestError

#: at most this many stop strings per stage request (a stage's own list plus a caller's extra)
MAX_STAGE_STOP = 32
#: the longest prompt given as token ids
MAX_PROMPT_TOKENS = 1 << 20
_SAMPLING = ("max_tokens", "temperature", "top_k", "top_p", "min_p", "repeat_penalty", "seed")
_FIELDS = {"model", "prompt", "stream", "stream_options", "stop", "grammar", "user", *_SAMPLING}


@dataclass(frozen=True)
class StageRequest:
    """One stage call, checked."""

    model: str
    stack: str
    stage: str
    prompt: str | tuple[int, ...]
    stream: bool
    include_usage: bool
    params: GenerationParams


def is_stage_model(body: object) -> bool:
    """True for a completions body whose model names a stage (``STACK/STAGE``)."""
    return isinstance(body, dict) and isinstance(body.get("model"), str) and "/" in body["model"]


def _prompt(value: object) -> str | tuple[int, ...]:
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], str):
        value = value[0]
    if isinstance(value, str):
        if not value:
            raise RequestError("prompt is empty; send the stage's rendered prompt", "prompt")
        return value
    if (
        isinstance(value, list)
        and value
        and len(value) <= MAX_PROMPT_TOKENS
        and all(isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in value)
    ):
        return tuple(value)
    raise RequestError(
        f"prompt must be a string or a list of at most {MAX_PROMPT_TOKENS} token ids", "prompt"
    )


def parse_stage_request(body: Mapping[str, Any], pool: StackPool) -> StageRequest:
    """Check a ``STACK/STAGE`` completions body against the served stage."""
    model = str(body["model"])
    stack_name, _, stage_name = model.rpartition("/")
    spec = pool.spec(stack_name)  # ModelNotFound for an unknown stack
    try:
        stage = spec.stage(stage_name)
    except KeyError:
        names = ", ".join(s.name for s in spec.stages)
        raise ModelNotFound(
            f"stack {stack_name!r} has no stage {stage_name[:40]!r}; its stages: {names}"
        ) from None
    if stage.remote is not None:
        raise ModelNotFound(
            f"stage {model!r} runs on another server itself; point the client at that server"
        )
    for key in body:
        if key not in _FIELDS:
            raise RequestError(f"unrecognized field for a stage request: {str(key)[:60]}", key)
    changes: dict[str, Any] = {}
    for key in _SAMPLING:
        if body.get(key) is not None:
            try:
                changes[key] = STAGE_KEYS[key](body[key])
            except ValueError as exc:
                raise RequestError(f"{key} {exc}", key) from None
    if "stop" in body and body["stop"] is not None:
        stop = [body["stop"]] if isinstance(body["stop"], str) else body["stop"]
        if not isinstance(stop, list) or len(stop) > MAX_STAGE_STOP:
            raise RequestError(f"stop must be a list of at most {MAX_STAGE_STOP} strings", "stop")
        try:
            changes["stop"] = STAGE_KEYS["stop"]([s for s in stop if s != ""])
        except ValueError as exc:
            raise RequestError(f"stop {exc}", "stop") from None
    if body.get("grammar") is not None:
        grammar = body["grammar"]
        if not isinstance(grammar, str):
            raise RequestError("grammar must be a GBNF string", "grammar")
        try:
            validate_grammar(grammar)
        except GrammarError as exc:
            raise RequestError(f"grammar: {exc}", "grammar") from None
        changes["grammar"] = grammar
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise RequestError("stream must be true or false", "stream")
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise RequestError("stream_options must be an object", "stream_options")
    return StageRequest(
        model=model,
        stack=stack_name,
        stage=stage.name,
        prompt=_prompt(body.get("prompt")),
        stream=stream,
        include_usage=bool(options and options.get("include_usage")),
        params=replace(stage_params(stage), **changes),
    )


@dataclass
class StageResult:
    """What a stage call produced so far: its chunks, then (once done) the counts."""

    chunk: Chunk | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    done: bool = False


def produce(
    pool: StackPool, req: StageRequest
) -> Callable[[threading.Event], Iterator[StageResult]]:
    """The worker-thread side of a stage call, for :meth:`Calls.run`."""

    def run(cancel: threading.Event) -> Iterator[StageResult]:
        with pool.use(req.stack) as stack:
            prompt = req.prompt
            if isinstance(prompt, str):
                runner = stack.runner(req.stage)
                prompt = tuple(runner.tokenize(Rendered((Segment(prompt, inserted=False),))))
            completion = 0
            for chunk in stack.stage_stream(req.stage, prompt, req.params, cancel):
                completion += chunk.n_tokens
                yield StageResult(chunk=chunk)
            yield StageResult(
                prompt_tokens=len(prompt), completion_tokens=completion, done=not cancel.is_set()
            )

    return run


def finish_reason(req: StageRequest, completion_tokens: int) -> str:
    """OpenAI's finish_reason: "length" when the stage used all of max_tokens."""
    return "length" if completion_tokens >= req.params.max_tokens else "stop"
