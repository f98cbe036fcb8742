"""Running a stack call for an async server: admission, a worker thread, events as they happen.

llama.cpp calls block, so each request's pipeline runs on a thread of its own and hands its
events to the event loop. The consumer going away (a client that disconnects, a server that
shuts down) sets the call's cancel event, which the pipeline checks between tokens.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

from ..errors import ServerBusy
from ..pipeline._events import Done, Event
from ..pipeline._stack import Stack
from ._pool import StackPool
from ._protocol import AskRequest

_T = TypeVar("_T")

#: seconds a client is told to wait when the queue is full
RETRY_AFTER_S = 1


class Admission:
    """At most ``parallel`` calls run at once; at most ``max_queue`` more wait for a turn."""

    def __init__(self, parallel: int, max_queue: int) -> None:
        self.parallel = parallel
        self.max_queue = max_queue
        self.waiting = 0
        self.running = 0
        self._sem: asyncio.Semaphore | None = None

    def check(self) -> None:
        """Raise :class:`ServerBusy` if a request arriving now would find the queue full."""
        if self.running >= self.parallel and self.waiting >= self.max_queue:
            raise ServerBusy(
                f"the server is busy: {self.running} requests running and {self.waiting} "
                f"waiting (--max-queue {self.max_queue}); retry in a moment"
            )

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Wait for a turn (refused at once when the queue is full), hold it in the block."""
        if self._sem is None:
            self._sem = asyncio.Semaphore(self.parallel)
        self.check()
        self.waiting += 1
        try:
            await self._sem.acquire()
        finally:
            self.waiting -= 1
        self.running += 1
        try:
            yield
        finally:
            self.running -= 1
            self._sem.release()


@dataclass
class _Failed:
    error: BaseException


_END = object()

OnDone = Callable[[Stack, AskRequest, Done], None]


class Calls:
    """Every call in flight, so shutdown can cancel them all."""

    def __init__(self) -> None:
        self._cancels: set[threading.Event] = set()
        self._threads: set[threading.Thread] = set()
        self._lock = threading.Lock()

    def cancel_all(self) -> None:
        with self._lock:
            for cancel in self._cancels:
                cancel.set()

    def join(self, timeout: float) -> None:
        with self._lock:
            threads = list(self._threads)
        for thread in threads:
            thread.join(timeout)

    async def events(
        self, pool: StackPool, req: AskRequest, on_done: OnDone
    ) -> AsyncIterator[Event]:
        """The call's events, as the worker thread produces them."""

        def produce(cancel: threading.Event) -> Iterator[Event]:
            with pool.use(req.model, req.keep_alive) as stack:
                for event in stack.stream(
                    req.question,
                    max_tokens=req.max_tokens,
                    temperature=req.temperature,
                    seed=req.seed,
                    stop=req.stop,
                    cancel=cancel,
                ):
                    if isinstance(event, Done):
                        on_done(stack, req, event)
                    yield event

        async for event in self.run(req.model, produce):
            yield event

    async def run(
        self, name: str, produce: Callable[[threading.Event], Iterator[_T]]
    ) -> AsyncIterator[_T]:
        """What ``produce(cancel)`` yields on a worker thread of its own, as it comes."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[object] = asyncio.Queue()
        cancel = threading.Event()

        def put(item: object) -> None:
            with contextlib.suppress(RuntimeError):  # the loop is gone: nobody is listening
                loop.call_soon_threadsafe(queue.put_nowait, item)

        def work() -> None:
            try:
                for item in produce(cancel):
                    put(item)
            except BaseException as exc:
                put(_Failed(exc))
            finally:
                put(_END)
                with self._lock:
                    self._cancels.discard(cancel)
                    self._threads.discard(thread)

        thread = threading.Thread(target=work, name=f"edgestack-call-{name}", daemon=True)
        with self._lock:
            self._cancels.add(cancel)
            self._threads.add(thread)
        thread.start()
        try:
            while True:
                item = await queue.get()
                if item is _END:
                    return
                if isinstance(item, _Failed):
                    raise item.error
                yield item  # type: ignore[misc]
        finally:
            # Normal end, an error, or the consumer gone (client disconnected): stop generating.
            cancel.set()
