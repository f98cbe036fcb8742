"""Streaming JSON over HTTP for remote stages: timeouts, bounded retries, cancellation, errors.

:meth:`HttpStage.stream` POSTs a request and yields the JSON objects of the answer as they
arrive (server-sent events, newline-delimited JSON, or one JSON body from a server that does not
stream). Limits, all stated in docs/remote-engines.md:

- connecting may take ``connect_timeout`` seconds, and the server may stay silent for
  ``read_timeout`` seconds at any point of an answer (the stage keys);
- a refused or dropped connection before the answer starts, and HTTP 503, are retried up to
  ``retries`` times, waiting 0.5 s, 1 s, 2 s, ... (at most :data:`BACKOFF_MAX_S`; a 503's
  ``Retry-After`` is honoured up to that); nothing is retried once text has arrived;
- one event (one line) is at most :data:`MAX_EVENT_BYTES`, an error body is read up to
  :data:`MAX_ERROR_BYTES`.

Every failure is one :class:`~edge_stack.errors.RemoteEngineError` naming the stage and the URL.
Once the answer has started (the server sent its headers), setting the call's cancel event
shuts the connection down within :data:`CANCEL_POLL_S`, so the server sees the client leave and
stops generating; before that, httpx gives no handle on the connection, and the call ends when
the first byte arrives (or ``read_timeout`` passes).
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import threading
from collections.abc import Generator, Iterator
from typing import Any

from ..._version import __version__
from ...errors import RemoteEngineError
from ...util._env import named_secret

logger = logging.getLogger(__name__)

#: the first wait before a retry, doubled for each next one, and the longest wait
BACKOFF_FIRST_S = 0.5
BACKOFF_MAX_S = 8.0
#: the largest event (one SSE or NDJSON line) and the most of an error body read
MAX_EVENT_BYTES = 1 << 20
MAX_ERROR_BYTES = 64 << 10
#: how often a streaming call looks at its cancel event
CANCEL_POLL_S = 0.05
#: characters of a server's own error message kept in ours
MAX_MESSAGE_CHARS = 300


def one_line(text: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    """``text`` on one line, at most ``limit`` characters."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


_CONNECT_FIX = "start the server, or check the stage's url and the network"


class _Retry(Exception):
    def __init__(self, reason: str, wait: float | None = None, fix: str = _CONNECT_FIX) -> None:
        super().__init__(reason)
        self.wait = wait
        self.fix = fix


class HttpStage:
    """The HTTP side of one remote stage: one connection pool, used by one call at a time per
    connection (httpx's client is safe to share between threads)."""

    def __init__(
        self,
        where: str,
        url: str,
        *,
        engine: str,
        api_key_env: str | None,
        connect_timeout: float,
        read_timeout: float,
        retries: int,
    ) -> None:
        #: "STACK_FILE, stage NAME": the start of every error message
        self.where = where
        self.url = url
        self.engine = engine
        self.api_key_env = api_key_env
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.retries = retries
        self._client: Any = None
        self._lock = threading.Lock()

    def error(self, problem: str, fix: str, endpoint: str = "") -> RemoteEngineError:
        return RemoteEngineError(
            f"{self.where}: {self.engine} at {self.url}{endpoint}: {problem}; {fix}"
        )

    def _http(self) -> Any:
        with self._lock:
            if self._client is None:
                import httpx

                timeout = httpx.Timeout(
                    connect=self.connect_timeout,
                    read=self.read_timeout,
                    write=self.read_timeout,
                    pool=self.connect_timeout,
                )
                # Without TCP_NODELAY the request's body waits for the ACK of its headers
                # (Nagle against delayed ACK): 40 ms per request on Linux.
                nodelay = [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]
                transport = httpx.HTTPTransport(socket_options=nodelay)
                self._client = httpx.Client(timeout=timeout, trust_env=False, transport=transport)
            return self._client

    def headers(self, ndjson: bool) -> dict[str, str]:
        headers = {
            "Content-Type": "application/json",
            "Accept": "application/x-ndjson" if ndjson else "text/event-stream",
            "User-Agent": f"edgestack/{__version__}",
        }
        if self.api_key_env is not None:
            key = named_secret(self.api_key_env)
            if key is None:
                raise self.error(
                    f"the environment variable {self.api_key_env} (api_key_env) is not set",
                    f"export {self.api_key_env}=KEY with the server's API key",
                )
            headers["Authorization"] = f"Bearer {key}"
        return headers

    def get_json(self, url: str) -> object | None:
        """GET ``url`` once (no retries) and parse its JSON; None when that fails in any way
        (for optional facts about a server, such as llama-server's slots)."""
        import httpx

        for attempt in (1, 2):
            try:
                response = self._http().get(url, headers=self.headers(False))
                if response.status_code != 200 or len(response.content) > MAX_EVENT_BYTES:
                    return None
                return response.json()
            except httpx.RemoteProtocolError as exc:
                # A kept-alive connection the server had just closed: once more, on a new one.
                logger.debug("%s: GET %s failed (attempt %d): %s", self.where, url, attempt, exc)
            except (httpx.HTTPError, ValueError, RemoteEngineError) as exc:
                logger.debug("%s: GET %s failed: %s", self.where, url, exc)
                return None
        return None

    def stream(
        self, path: str, body: dict[str, Any], cancel: threading.Event, *, ndjson: bool = False
    ) -> Generator[object, None, None]:
        """POST ``body`` to url + ``path``; yield each JSON object of the answer. Returns quietly
        (yielding nothing more) once ``cancel`` is set."""
        import httpx

        client = self._http()
        headers = self.headers(ndjson)
        data = json.dumps(body, ensure_ascii=False).encode("utf-8")
        response = self._open(client, path, data, headers, cancel)
        if response is None:
            return
        done = threading.Event()
        watcher = threading.Thread(
            target=_shut_on_cancel, args=(response, cancel, done), daemon=True
        )
        watcher.start()
        try:
            yield from self._objects(response, path, ndjson)
        except RemoteEngineError:
            raise
        except httpx.TimeoutException:
            if cancel.is_set():
                return
            raise self.error(
                f"sent nothing for {self.read_timeout:g} s in the middle of an answer",
                "the server is overloaded or stuck; raise read_timeout in stack.toml or check it",
                path,
            ) from None
        except (httpx.HTTPError, OSError) as exc:
            if cancel.is_set():
                return
            raise self.error(
                f"closed the connection in the middle of an answer ({type(exc).__name__})",
                "the server stopped or crashed; check its log and ask again",
                path,
            ) from None
        finally:
            done.set()
            response.close()

    def _open(
        self,
        client: Any,
        path: str,
        data: bytes,
        headers: dict[str, str],
        cancel: threading.Event,
    ) -> Any:
        """The response with status 200 (None once cancelled), after at most ``retries`` more
        attempts for connection errors and 503."""
        wait = BACKOFF_FIRST_S
        attempt = 0
        while True:
            attempt += 1
            try:
                return self._attempt(client, path, data, headers)
            except _Retry as retry:
                if attempt > self.retries:
                    tries = f"{attempt} attempt{'s' if attempt > 1 else ''}"
                    raise self.error(f"{retry} ({tries})", retry.fix, path) from None
                delay = min(retry.wait if retry.wait is not None else wait, BACKOFF_MAX_S)
                logger.info(
                    "%s: %s at %s%s: %s; retrying in %.1f s",
                    self.where,
                    self.engine,
                    self.url,
                    path,
                    retry,
                    delay,
                )
                if cancel.wait(delay):
                    return None
                wait = min(wait * 2, BACKOFF_MAX_S)

    def _attempt(self, client: Any, path: str, data: bytes, headers: dict[str, str]) -> Any:
        import httpx

        try:
            request = client.build_request("POST", self.url + path, content=data, headers=headers)
            response = client.send(request, stream=True)
        except httpx.ConnectTimeout:
            raise _Retry(f"no connection within {self.connect_timeout:g} s") from None
        except httpx.ConnectError as exc:
            raise _Retry(f"cannot connect ({_reason(exc)})") from None
        except httpx.RemoteProtocolError as exc:
            # A kept-alive connection the server had closed, or a server that died at once.
            raise _Retry(f"the connection was dropped ({_reason(exc)})") from None
        except httpx.TimeoutException:
            raise self.error(
                f"sent nothing for {self.read_timeout:g} s after the request",
                "the server is overloaded or stuck; raise read_timeout in stack.toml or check it",
                path,
            ) from None
        except httpx.HTTPError as exc:
            raise self.error(
                f"the request failed ({type(exc).__name__}: {one_line(str(exc), 120)})",
                "check the stage's url",
                path,
            ) from None
        if response.status_code == 200:
            return response
        try:
            message = self._error_text(response)
        finally:
            response.close()
        status = response.status_code
        if status == 503:
            raise _Retry(
                f"answered HTTP 503 (busy or loading): {message}",
                _retry_after(response),
                "the server is overloaded or still loading: ask again later, or raise the "
                "stage's retries in stack.toml",
            )
        fix = {
            401: f"check the API key (the variable named in api_key_env, {self.api_key_env})",
            403: f"check the API key (the variable named in api_key_env, {self.api_key_env})",
            404: "check the stage's url (the API base, e.g. http://host:8080/v1) and remote_model",
        }.get(status, "fix the stage's settings in stack.toml, or the server")
        if status >= 500:
            fix = "check the server's log"
        raise self.error(f"answered HTTP {status}: {message}", fix, path)

    @staticmethod
    def _error_text(response: Any) -> str:
        raw = b""
        with contextlib.suppress(Exception):
            for chunk in response.iter_bytes():
                raw += chunk
                if len(raw) >= MAX_ERROR_BYTES:
                    break
        text = raw[:MAX_ERROR_BYTES].decode("utf-8", errors="replace")
        try:
            obj = json.loads(text)
        except ValueError:
            return one_line(text) or "(no message)"
        if isinstance(obj, dict):
            error = obj.get("error", obj.get("detail", obj.get("message", obj)))
            if isinstance(error, dict):
                error = error.get("message", error)
            return one_line(json.dumps(error) if not isinstance(error, str) else error)
        return one_line(text)

    def _objects(self, response: Any, path: str, ndjson: bool) -> Iterator[object]:
        kind = response.headers.get("content-type", "").split(";")[0].strip().lower()
        if kind == "application/json":
            # A server that does not stream sends the whole answer as one object.
            raw = b""
            for chunk in response.iter_bytes():
                raw += chunk
                if len(raw) > MAX_EVENT_BYTES:
                    raise self.error(
                        f"sent an answer longer than {MAX_EVENT_BYTES} bytes",
                        "check that the url is the engine's API",
                        path,
                    )
            yield self._json(raw, path)
            return
        for line in _lines(response.iter_bytes()):
            if line is None:
                raise self.error(
                    f"sent an event longer than {MAX_EVENT_BYTES} bytes",
                    "check that the url is the engine's API",
                    path,
                )
            text = line.strip()
            if not text:
                continue
            if ndjson:
                yield self._json(text, path)
                continue
            if text.startswith(b":") or not text.startswith(b"data:"):
                continue  # comments (keep-alive pings), event names, ids
            payload = text[5:].strip()
            if payload == b"[DONE]":
                return
            yield self._json(payload, path)

    def _json(self, raw: bytes, path: str) -> object:
        try:
            return json.loads(raw)
        except (ValueError, RecursionError):
            shown = one_line(raw[:60].decode("utf-8", errors="replace"), 60)
            raise self.error(
                f"answered something that is not JSON ({shown!r})",
                f"check that the url is {self.engine}'s API base",
                path,
            ) from None

    def close(self) -> None:
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()


def _reason(exc: BaseException) -> str:
    text = one_line(str(exc), 120)
    cause = exc.__context__ or exc.__cause__
    if "refused" in text.lower() or isinstance(cause, ConnectionRefusedError):
        return "connection refused"
    return text or type(exc).__name__


def _retry_after(response: Any) -> float | None:
    value = response.headers.get("retry-after", "")
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


def _lines(chunks: Iterator[bytes]) -> Iterator[bytes | None]:
    """Lines of a byte stream (without their end); None for a line over MAX_EVENT_BYTES."""
    buffer = b""
    for chunk in chunks:
        buffer += chunk
        while True:
            end = buffer.find(b"\n")
            if end == -1:
                break
            yield buffer[:end]
            buffer = buffer[end + 1 :]
        if len(buffer) > MAX_EVENT_BYTES:
            yield None
            return
    if buffer:
        yield buffer


def _shut_on_cancel(response: Any, cancel: threading.Event, done: threading.Event) -> None:
    """Shut the connection down when ``cancel`` is set (a read blocked in another thread then
    returns at once, and the server sees the client leave)."""
    while not done.wait(CANCEL_POLL_S):
        if cancel.is_set():
            stream = response.extensions.get("network_stream")
            sock = stream.get_extra_info("socket") if stream is not None else None
            if isinstance(sock, socket.socket):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
            return
