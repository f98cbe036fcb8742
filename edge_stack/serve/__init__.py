"""``edgestack serve``: stacks over HTTP, OpenAI-compatible, with a live trace page.

Python API, for apps that embed a server and for tests::

    from edge_stack.serve import Server, ServeConfig, resolve_stacks

    config = ServeConfig(stacks=resolve_stacks(["word-problems"]), port=0)
    with Server(config) as server:       # starts in a thread, returns once it listens
        print(server.url)                # http://127.0.0.1:PORT
    # leaving the block stops it: requests in flight are cancelled, stacks unloaded

Starlette and uvicorn are imported only here, when a server starts (``import edge_stack`` and
``edgestack --help`` stay fast).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from types import TracebackType
from typing import Any

from ..errors import EngineError
from ._config import ServeConfig, check_exposure, free_port, is_loopback, resolve_stacks
from ._pool import parse_keep_alive

__all__ = [
    "ServeConfig",
    "Server",
    "check_exposure",
    "is_loopback",
    "parse_keep_alive",
    "resolve_stacks",
]

log = logging.getLogger(__name__)

#: seconds to wait for the server to start listening, and for in-flight requests at shutdown
START_TIMEOUT_S = 30.0
GRACEFUL_S = 10


def _loader(threads: int | None) -> Any:
    from ..pipeline._stack import Stack

    def load(path: Any) -> Stack:
        return Stack.load(path, threads=threads)

    return load


def _quiet_exit_server(uvicorn: Any) -> Any:
    """uvicorn's Server, minus its re-raising of SIGINT/SIGTERM after a graceful shutdown.

    uvicorn re-raises the signal so that the process dies of it; for ``edgestack serve`` a
    signal is the normal way to stop, and the shutdown it started has already completed.
    """

    class _Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            with super().capture_signals():
                yield
                getattr(self, "_captured_signals", []).clear()

    return _Server


class Server:
    """A server for ``config``: :meth:`start` in a background thread, or :meth:`run` here."""

    def __init__(self, config: ServeConfig) -> None:
        if config.port == 0:
            config = replace(config, port=free_port(config.host))
        self.config = config
        self._server: Any = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host = self.config.host
        shown = f"[{host}]" if ":" in host else host
        return f"http://{shown}:{self.config.port}"

    def _uvicorn(self, *, install_signals: bool) -> Any:
        import uvicorn

        from ._app import build_app

        app = build_app(self.config, _loader(self.config.threads))
        config = uvicorn.Config(
            app,
            host=self.config.host,
            port=self.config.port,
            log_level="warning",
            access_log=False,
            timeout_graceful_shutdown=GRACEFUL_S,
            lifespan="on",
        )
        server = _quiet_exit_server(uvicorn)(config)
        if not install_signals:
            # A server in a thread must not take over the process's Ctrl-C.
            server.install_signal_handlers = lambda: None
        return server

    def start(self) -> Server:
        """Start serving in a background thread; return once the port accepts connections."""
        if self._thread is not None:
            raise EngineError("this server is already started")
        self._server = self._uvicorn(install_signals=False)
        failed: list[BaseException] = []

        def run() -> None:
            try:
                self._server.run()
            except BaseException as exc:  # reported by start() below
                failed.append(exc)

        self._thread = threading.Thread(target=run, name="edgestack-serve", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self._server.started:
            if failed or not self._thread.is_alive():
                why = f": {failed[0]}" if failed else ""
                raise EngineError(
                    f"the server could not start on {self.url}{why}; is the port in use? "
                    "(pick another with --port)"
                )
            if time.monotonic() > deadline:
                raise EngineError(f"the server did not start on {self.url} in {START_TIMEOUT_S} s")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        """Stop: refuse new connections, cancel requests in flight, unload every stack."""
        if self._server is None or self._thread is None:
            return
        self._server.should_exit = True
        self._thread.join(GRACEFUL_S + 35)
        self._thread = None

    def run(self) -> None:
        """Serve in this thread until SIGINT/SIGTERM (the CLI's ``edgestack serve``)."""
        server = self._uvicorn(install_signals=True)
        server.run()
        if not server.started:
            raise EngineError(
                f"the server could not start on {self.url}; is the port in use? (pick another "
                "with --port)"
            )

    def __enter__(self) -> Server:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
