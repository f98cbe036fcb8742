"""SIGTERM handled as Ctrl-C is, for the ``edgestack`` command.

Process managers (systemd, Docker, a desktop app closing, ``timeout``) stop a program with
SIGTERM, whose default action kills Python on the spot: no ``finally`` runs, so temporary files
(``.OUT.gguf.edgestack-tmp-*``) and build folders stay behind. :func:`install` (called by
:mod:`edge_stack._entry`, which holds signals back while the CLI is imported) makes SIGTERM
raise KeyboardInterrupt in the main thread instead, so the same clean-up as for Ctrl-C runs
(temporary files removed, child processes stopped); :func:`terminated` then tells the CLI's
error boundary to say
``edgestack: terminated`` and exit 143 (128 + SIGTERM, what a shell reports for a program
killed by it). A second SIGTERM while that clean-up runs is ignored (SIGKILL still works).

Only the command installs it: importing edgestack as a library never changes signal handlers.
``edgestack serve`` hands SIGINT and SIGTERM to uvicorn while it serves (a graceful shutdown).
"""

from __future__ import annotations

import signal
import threading
from types import FrameType

__all__ = ["EXIT_TERMINATED", "install", "terminated"]

#: the exit status after SIGTERM: 128 + 15, as a shell reports a process killed by it
EXIT_TERMINATED = 128 + signal.SIGTERM

_terminated = False


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    global _terminated
    if _terminated:
        return  # already stopping: let the clean-up finish
    _terminated = True
    handler = signal.getsignal(signal.SIGINT)
    if callable(handler) and handler is not signal.default_int_handler:
        # Code that holds Ctrl-C back for a moment (starting a child process) holds this too.
        handler(signal.SIGINT, frame)
        return
    raise KeyboardInterrupt


def install() -> None:
    """Make SIGTERM stop this process as Ctrl-C does (main thread only; else nothing)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _on_sigterm)


def terminated() -> bool:
    """Whether a SIGTERM has been received since :func:`install`."""
    return _terminated
