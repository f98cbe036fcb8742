"""The ASGI application: routes, the API key, body limits, and the server's one error boundary.

Endpoints (README, "Serving"): ``GET /v1/models``, ``POST /v1/completions``,
``POST /v1/chat/completions`` (OpenAI), ``POST /api/ask`` (every stage's events), ``GET /api/runs``
(the local run log), ``GET /health``, ``GET /metrics``, and the page at ``/``. A completions
request whose model is ``STACK/STAGE`` runs that one stage for a remote stage elsewhere
(``_stage.py``).

Every error a client can cause becomes an OpenAI-style error body with a 4xx status (numbers in
a request are checked as text before anything converts them); a client that leaves before its
answer (while sending its request, or while waiting) is a 499 in ``/metrics`` and no error in
the log; anything else is a 500 whose body says only "internal error" (the log has the
traceback). No message sent to a client contains a file-system path.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from importlib import resources
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import (
    HTMLResponse,
    JSONResponse,
    PlainTextResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import Route

from ..errors import (
    BadArgument,
    Cancelled,
    ContextOverflowError,
    EdgeStackError,
    ModelNotFound,
    ServerBusy,
)
from ..pipeline._events import Done, Event, StageFinished, StageStarted, Token
from ..pipeline._stack import Stack
from ..tools._runlog import RunLog, log_answer
from ._config import ServeConfig
from ._metrics import Metrics
from ._pool import StackPool
from ._protocol import (
    AskRequest,
    RequestError,
    chunk_body,
    completion_body,
    error_body,
    new_id,
    parse,
    usage,
)
from ._runner import RETRY_AFTER_S, Admission, Calls
from ._stage import StageRequest, StageResult, is_stage_model, parse_stage_request
from ._stage import finish_reason as stage_finish
from ._stage import produce as stage_producer

log = logging.getLogger(__name__)

#: how often idle stacks are checked against their keep-alive
SWEEP_EVERY_S = 1.0
#: the most runs ``GET /api/runs?limit=N`` returns
MAX_RUNS = 200
_PATH = re.compile(r"(?:[A-Za-z]:)?(?:[\\/][^\s\\/:;,'\"()]+){2,}")


def _scrub(message: str) -> str:
    """Error text for a remote client: file-system paths replaced by their last part."""
    return _PATH.sub(lambda m: re.split(r"[\\/]", m.group(0))[-1], message)


#: ask_like's body argument when the route has not read the body yet
_UNREAD = object()


class _TooLarge(Exception):
    pass


class State:
    """Everything the routes share."""

    def __init__(self, config: ServeConfig, loader: Callable[..., Stack]) -> None:
        self.config = config
        self.pool = StackPool(config.stacks, keep_alive=config.keep_alive, loader=loader)
        self.admission = Admission(config.parallel, config.max_queue)
        self.calls = Calls()
        self.metrics = Metrics()

    def on_done(self, stack: Stack, req: AskRequest, done: Done) -> None:
        self.metrics.answered(req.model, done.answer)
        log_answer(done.answer, stack_path=stack.spec.path, enabled=not self.config.no_log)

    def finish_reason(self, req: AskRequest, done: Done) -> str:
        """OpenAI's finish_reason of the final stage: "length" when it used all its tokens."""
        last = done.answer.stages[-1]
        limit = req.max_tokens or self.pool.spec(req.model).stages[-1].max_tokens
        return "length" if last.completion_tokens >= limit else "stop"

    def is_final(self, req: AskRequest, index: int) -> bool:
        return index == len(self.pool.spec(req.model).stages) - 1


def _error(status: int, message: str, kind: str, **extra: Any) -> JSONResponse:
    headers = extra.pop("headers", None)
    return JSONResponse(error_body(_scrub(message), kind=kind, **extra), status, headers=headers)


def _error_json(exc: BaseException) -> dict[str, Any]:
    """The error body of :func:`_error_response`, for an event stream already under way."""
    return dict(json.loads(bytes(_error_response(exc).body)))


def _error_response(exc: BaseException) -> JSONResponse:
    if isinstance(exc, RequestError):
        return _error(400, str(exc), "invalid_request_error", param=exc.param)
    if isinstance(exc, ModelNotFound):
        return _error(404, str(exc), "invalid_request_error", param="model", code="model_not_found")
    if isinstance(exc, ServerBusy):
        headers = {"Retry-After": str(RETRY_AFTER_S)}
        return _error(503, str(exc), "server_busy", headers=headers)
    if isinstance(exc, ContextOverflowError | BadArgument):
        return _error(400, str(exc), "invalid_request_error")
    if isinstance(exc, EdgeStackError):
        return _error(500, str(exc), "server_error")
    log.error("internal error", exc_info=exc)
    return _error(500, "internal error (the server's log has the details)", "server_error")


def _whole_number(text: str, max_digits: int) -> int | None:
    """``text`` as a whole number when it is 1 to ``max_digits`` ASCII digits, else None.

    Checked before int(): str.isdigit() also takes digits such as "²" that int() refuses, and
    int() refuses more than 4300 digits; either would be a 500 for a client's mistake.
    """
    if text.isascii() and text.isdigit() and len(text) <= max_digits:
        return int(text)
    return None


async def _body(request: Request, limit: int) -> object:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isascii() and declared.isdigit():
        digits = declared.lstrip("0") or "0"
        # More digits than the limit has is too large, before int() (at most 4300 digits).
        if len(digits) > len(str(limit)) or int(digits) > limit:
            raise _TooLarge
    data = bytearray()
    async for chunk in request.stream():
        data += chunk
        if len(data) > limit:
            raise _TooLarge
    try:
        return json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise RequestError(f"the request body is not valid JSON ({exc})") from None


def _sse(obj: object) -> bytes:
    return b"data: " + json.dumps(obj, ensure_ascii=False).encode() + b"\n\n"


async def _collect(state: State, req: AskRequest) -> Done:
    async for event in state.calls.events(state.pool, req, state.on_done):
        if isinstance(event, Done):
            return event
    raise Cancelled("the call ended without an answer")


async def _until_disconnect(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _answer_or_disconnect(state: State, req: AskRequest, request: Request) -> Done | None:
    """The answer, or None when the client left first (its generation is cancelled)."""
    work = asyncio.ensure_future(_collect(state, req))
    gone = asyncio.ensure_future(_until_disconnect(request))
    try:
        await asyncio.wait({work, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
        if not work.done():
            work.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await work
    if work.cancelled():
        return None
    return work.result()


def _openai_stream(state: State, kind: str, req: AskRequest) -> AsyncIterator[bytes]:
    async def gen() -> AsyncIterator[bytes]:
        rid, created = new_id(kind), int(time.time())
        try:
            async with state.admission.slot():
                yield _sse(chunk_body(kind, rid, req.model, created, text="", role=True))
                async for event in state.calls.events(state.pool, req, state.on_done):
                    if isinstance(event, Token) and state.is_final(req, event.index):
                        yield _sse(chunk_body(kind, rid, req.model, created, text=event.text))
                    elif isinstance(event, Done):
                        yield _sse(_final_chunk(state, kind, req, rid, created, event))
                        if req.include_usage:
                            tail = chunk_body(kind, rid, req.model, created)
                            tail["choices"] = []
                            tail["usage"] = usage(event.answer)
                            yield _sse(tail)
            yield b"data: [DONE]\n\n"
        except Exception as exc:
            yield _sse(_error_json(exc))

    return gen()


def _final_chunk(
    state: State, kind: str, req: AskRequest, rid: str, created: int, done: Done
) -> dict[str, Any]:
    final = chunk_body(kind, rid, req.model, created, finish=state.finish_reason(req, done))
    final["edgestack"] = {"stages": [s.to_dict() for s in done.answer.stages]}
    return final


def _native_stream(state: State, req: AskRequest) -> AsyncIterator[bytes]:
    async def gen() -> AsyncIterator[bytes]:
        try:
            async with state.admission.slot():
                async for event in _native_events(state, req):
                    yield event
        except Exception as exc:
            body = _error_json(exc)
            yield _sse({"type": "error", **body})

    return gen()


def _native_event(event: Event) -> dict[str, Any]:
    """One stage event as the JSON object ``/api/ask`` streams."""
    if isinstance(event, StageStarted):
        return {
            "type": "stage_started",
            "stage": event.stage,
            "index": event.index,
            "prompt": event.prompt,
            "prompt_tokens": event.prompt_tokens,
        }
    if isinstance(event, Token):
        return {"type": "token", "stage": event.stage, "index": event.index, "text": event.text}
    if isinstance(event, StageFinished):
        return {
            "type": "stage_finished",
            "stage": event.stage,
            "index": event.index,
            "trace": event.trace.to_dict(),
        }
    return {"type": "done", "answer": event.answer.to_dict()}


async def _native_events(state: State, req: AskRequest) -> AsyncIterator[bytes]:
    async for event in state.calls.events(state.pool, req, state.on_done):
        yield _sse(_native_event(event))


async def _stage_completion(state: State, req: StageRequest) -> Response:
    """A ``STACK/STAGE`` completion (serve/_stage.py): the stage's raw text, streamed or whole."""
    rid, created = new_id("completions"), int(time.time())
    work = stage_producer(state.pool, req)

    def final(result: StageResult) -> dict[str, Any]:
        finish = stage_finish(req, result.completion_tokens)
        return chunk_body("completions", rid, req.model, created, text="", finish=finish)

    def counts(result: StageResult) -> dict[str, int]:
        p, c = result.prompt_tokens, result.completion_tokens
        return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}

    if req.stream:
        state.admission.check()

        async def gen() -> AsyncIterator[bytes]:
            try:
                async with state.admission.slot():
                    async for item in state.calls.run(req.model, work):
                        if item.chunk is not None and item.chunk.text:
                            text = item.chunk.text
                            yield _sse(
                                chunk_body("completions", rid, req.model, created, text=text)
                            )
                        elif item.done:
                            yield _sse(final(item))
                            if req.include_usage:
                                tail = chunk_body("completions", rid, req.model, created)
                                tail["choices"], tail["usage"] = [], counts(item)
                                yield _sse(tail)
                yield b"data: [DONE]\n\n"
            except Exception as exc:
                yield _sse(_error_json(exc))

        return StreamingResponse(gen(), media_type="text/event-stream")
    texts: list[str] = []
    last = StageResult()
    async with state.admission.slot():
        async for item in state.calls.run(req.model, work):
            if item.chunk is not None:
                texts.append(item.chunk.text)
            else:
                last = item
    body = final(last)
    body["choices"][0]["text"] = "".join(texts)
    body["object"] = "text_completion"
    body["usage"] = counts(last)
    return JSONResponse(body)


Handler = Callable[[Request], Awaitable[Response]]


def _endpoint(state: State, name: str, fn: Handler) -> Handler:
    """One error boundary and one metrics count for every route."""

    async def handle(request: Request) -> Response:
        try:
            response = await fn(request)
        except ClientDisconnect:
            # The client left while sending its request: nobody to answer, nothing went wrong
            # here. Counted as 499 (nginx's "client closed request"), as a cancelled answer is.
            log.debug("%s: the client disconnected while sending its request", request.url.path)
            response = Response(status_code=499)
        except _TooLarge:
            response = _error(
                413,
                f"the request body is larger than {state.config.max_body_bytes} bytes",
                "invalid_request_error",
            )
        except Exception as exc:
            response = _error_response(exc)
        state.metrics.request(name, response.status_code)
        return response

    return handle


def build_app(config: ServeConfig, loader: Callable[..., Stack]) -> Starlette:
    """The server's ASGI app for ``config``; ``loader`` loads a stack.toml (Stack.load)."""
    state = State(config, loader)

    async def ask_like(request: Request, kind: str, body: object = _UNREAD) -> Response:
        if body is _UNREAD:
            body = await _body(request, config.max_body_bytes)
        req = parse(kind, body, default_model=config.default)
        state.pool.spec(req.model)  # an unknown model is a 404 before it queues
        if req.stream:
            # The stream takes its turn itself (it must hold it while it streams); a full
            # queue is refused now, while a status code can still say so.
            state.admission.check()
            stream = (
                _native_stream(state, req) if kind == "ask" else _openai_stream(state, kind, req)
            )
            return StreamingResponse(stream, media_type="text/event-stream")
        async with state.admission.slot():
            done = await _answer_or_disconnect(state, req, request)
        if done is None:
            return Response(status_code=499)
        if kind == "ask":
            return JSONResponse(done.answer.to_dict())
        finish = state.finish_reason(req, done)
        return JSONResponse(completion_body(kind, new_id(kind), req.model, done.answer, finish))

    async def completions(request: Request) -> Response:
        body = await _body(request, config.max_body_bytes)
        if is_stage_model(body):  # one stage of a stack, for a remote stage elsewhere
            assert isinstance(body, dict)
            return await _stage_completion(state, parse_stage_request(body, state.pool))
        return await ask_like(request, "completions", body)

    async def chat(request: Request) -> Response:
        return await ask_like(request, "chat")

    async def ask(request: Request) -> Response:
        return await ask_like(request, "ask")

    async def models(_request: Request) -> Response:
        loaded = set(state.pool.loaded())
        data = [
            {
                "id": name,
                "object": "model",
                "created": 0,
                "owned_by": "edgestack",
                "edgestack": {
                    "loaded": name in loaded,
                    "description": state.pool.spec(name).description,
                    "stages": [stage.name for stage in state.pool.spec(name).stages],
                },
            }
            for name in state.pool.ids()
        ]
        return JSONResponse({"object": "list", "data": data})

    async def runs(request: Request) -> Response:
        limit = _whole_number(request.query_params.get("limit", "20"), 3)
        if limit is None or not 1 <= limit <= MAX_RUNS:
            raise RequestError(f"limit must be a whole number from 1 to {MAX_RUNS}", "limit")
        found = await asyncio.to_thread(RunLog().recent, limit)
        # The ``logs --json`` shape, less the stack's path on this machine.
        rows = [{k: v for k, v in run.to_dict().items() if k != "stack_path"} for run in found]
        return JSONResponse(rows)

    async def health(_request: Request) -> Response:
        return JSONResponse({"status": "ok", "loaded": state.pool.loaded()})

    async def metrics(_request: Request) -> Response:
        text = state.metrics.render(
            running=state.admission.running,
            waiting=state.admission.waiting,
            loaded=state.pool.loaded(),
            served=state.pool.ids(),
        )
        return PlainTextResponse(text, media_type="text/plain; version=0.0.4")

    async def page(_request: Request) -> Response:
        html = resources.files("edge_stack.serve").joinpath("static/index.html").read_text()
        return HTMLResponse(html, headers={"Cache-Control": "no-store"})

    routes = [
        Route("/", _endpoint(state, "page", page)),
        Route("/health", _endpoint(state, "health", health)),
        Route("/metrics", _endpoint(state, "metrics", metrics)),
        Route("/v1/models", _endpoint(state, "models", models)),
        Route("/v1/completions", _endpoint(state, "completions", completions), methods=["POST"]),
        Route("/v1/chat/completions", _endpoint(state, "chat", chat), methods=["POST"]),
        Route("/api/ask", _endpoint(state, "ask", ask), methods=["POST"]),
        Route("/api/runs", _endpoint(state, "runs", runs)),
    ]

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        async def sweep() -> None:
            while True:
                await asyncio.sleep(SWEEP_EVERY_S)
                await asyncio.to_thread(state.pool.sweep)

        task = asyncio.ensure_future(sweep())
        try:
            yield
        finally:
            task.cancel()
            state.calls.cancel_all()
            await asyncio.to_thread(state.calls.join, 30.0)
            await asyncio.to_thread(state.pool.close)

    middleware = [Middleware(_ApiKey, key=config.api_key)]
    if config.cors_origins:
        middleware.insert(
            0,
            Middleware(
                CORSMiddleware,
                allow_origins=list(config.cors_origins),
                allow_methods=["GET", "POST"],
                allow_headers=["Authorization", "Content-Type"],
            ),
        )
    app = Starlette(routes=routes, middleware=middleware, lifespan=lifespan)
    app.state.edgestack = state
    return app


#: paths that never need the API key: the page (it asks for the key) and the health check
_OPEN_PATHS = {"/", "/health"}


class _ApiKey:
    """Bearer-token check on every API path (constant-time), before any body is read."""

    def __init__(self, app: Any, key: str | None) -> None:
        self.app = app
        self.key = key.encode() if key else None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if self.key is None or scope["type"] != "http" or scope["path"] in _OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        if scope["method"] == "OPTIONS":  # CORS preflight carries no credentials
            await self.app(scope, receive, send)
            return
        given = b""
        for name, value in scope["headers"]:
            if name == b"authorization" and value[:7].lower() == b"bearer ":
                given = value[7:].strip()
        if not hmac.compare_digest(given, self.key):
            why = "missing" if not given else "wrong"
            response = _error(
                401,
                f"{why} API key; send the header 'Authorization: Bearer KEY' with the key the "
                "server was started with",
                "invalid_request_error",
                code="invalid_api_key",
                headers={"WWW-Authenticate": "Bearer"},
            )
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)
