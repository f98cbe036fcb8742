"""The stacks a server can answer with: loaded on first use, unloaded after their keep-alive.

Model ids are plain names looked up in a fixed table made at start-up (the bundled stacks and
the stacks given with ``--stack``): a request can never name a file, so no id reaches the file
system. Keep-alive follows Ollama: a duration after the last request ends, ``0`` unloads as
soon as the stack is idle, a negative value keeps it loaded until the server stops.
"""

from __future__ import annotations

import contextlib
import logging
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import BadArgument, ModelNotFound
from ..manifest import StackSpec
from ..pipeline._stack import Stack

log = logging.getLogger(__name__)

#: keep-alive that means "until the server stops"
FOREVER = float("inf")
#: the longest keep-alive, in seconds (about 31 years); -1 (any negative) keeps a stack loaded
MAX_KEEP_ALIVE_S = 10**9
# ASCII digits only, and few of them: a number is checked before anything converts it.
_DURATION = re.compile(r"^\s*(-?[0-9]{1,12}(?:\.[0-9]{1,9})?)\s*(ms|s|m|h)?\s*$", re.ASCII)
_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def parse_keep_alive(value: object, where: str = "keep_alive") -> float:
    """Seconds from Ollama's keep-alive forms: ``"5m"``, ``"30s"``, ``"1h"``, ``300``, ``0``, ``-1``.

    At most :data:`MAX_KEEP_ALIVE_S`; any negative value means "until the server stops".
    """
    if isinstance(value, bool):
        raise BadArgument(f"{where} must be a duration such as 5m, 30s, 0 or -1, not {value}")
    if isinstance(value, int):
        # Compared as an integer: float() of a 400-digit number raises OverflowError.
        if value < 0:
            return FOREVER
        seconds = float(min(value, MAX_KEEP_ALIVE_S + 1))
    elif isinstance(value, float):
        seconds = value
    elif isinstance(value, str) and (m := _DURATION.match(value)):
        seconds = float(m.group(1)) * _UNIT[m.group(2)]
    else:
        raise BadArgument(
            f"{where} must be a duration such as 5m, 30s, 1h, 0 (unload now) or -1 (keep "
            f"loaded), not {str(value)[:40]!r}"
        )
    if seconds != seconds:  # NaN
        raise BadArgument(f"{where} must be a number of seconds or a duration, not NaN")
    if seconds < 0:
        return FOREVER
    if seconds > MAX_KEEP_ALIVE_S:
        raise BadArgument(
            f"{where} must be at most {MAX_KEEP_ALIVE_S} seconds (about 31 years); use -1 to "
            "keep the stack loaded until the server stops"
        )
    return seconds


@dataclass
class _Entry:
    name: str
    spec: StackSpec
    stack: Stack | None = None
    users: int = 0
    idle_since: float = 0.0
    keep_alive: float = 300.0
    lock: threading.Lock = field(default_factory=threading.Lock)


Loader = Callable[[Path], Stack]


class StackPool:
    """Named stacks, each loaded at most once, shared by concurrent requests."""

    def __init__(self, stacks: dict[str, StackSpec], *, keep_alive: float, loader: Loader) -> None:
        self._entries = {
            name: _Entry(name, spec, keep_alive=keep_alive) for name, spec in stacks.items()
        }
        self._loader = loader
        self._table = threading.Lock()

    def ids(self) -> list[str]:
        """Every model id, loaded or not."""
        return sorted(self._entries)

    def loaded(self) -> list[str]:
        """Ids of the stacks loaded now."""
        return sorted(name for name, e in self._entries.items() if e.stack is not None)

    def spec(self, name: str) -> StackSpec:
        """The validated manifest of ``name`` (raises ModelNotFound for an unknown id)."""
        return self._entry(name).spec

    def _entry(self, name: str) -> _Entry:
        entry = self._entries.get(name)
        if entry is None:
            known = ", ".join(self.ids()) or "none"
            raise ModelNotFound(
                f"model {name[:80]!r} is not served here; use one of: {known} (GET /v1/models)"
            )
        return entry

    @contextlib.contextmanager
    def use(self, name: str, keep_alive: float | None = None) -> Iterator[Stack]:
        """The loaded stack ``name`` for one request (loading it first if needed; blocks)."""
        entry = self._entry(name)
        with entry.lock:
            if keep_alive is not None:
                entry.keep_alive = keep_alive
            if entry.stack is None:
                log.info("loading stack %s from %s", name, entry.spec.path)
                entry.stack = self._loader(entry.spec.path)
            entry.users += 1
            stack = entry.stack
        try:
            yield stack
        finally:
            with entry.lock:
                entry.users -= 1
                entry.idle_since = time.monotonic()
            if entry.keep_alive == 0:
                self.sweep()

    def load(self, name: str, keep_alive: float | None = None) -> None:
        """Load ``name`` now (a request with no question, as Ollama's preload)."""
        with self.use(name, keep_alive):
            pass

    def sweep(self, now: float | None = None) -> list[str]:
        """Unload every idle stack whose keep-alive has run out; return their ids."""
        now = time.monotonic() if now is None else now
        unloaded = []
        for entry in self._entries.values():
            with entry.lock:
                if entry.stack is None or entry.users:
                    continue
                if now - entry.idle_since < entry.keep_alive:
                    continue
                stack, entry.stack = entry.stack, None
            log.info("unloading stack %s (idle %.0f s)", entry.name, now - entry.idle_since)
            stack.close()
            unloaded.append(entry.name)
        return unloaded

    def close(self) -> None:
        """Unload everything (waits for calls in flight: Stack.close does)."""
        for entry in self._entries.values():
            with entry.lock:
                stack, entry.stack = entry.stack, None
            if stack is not None:
                stack.close()
