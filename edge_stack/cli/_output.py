"""Standard output that cannot be written: closed before the start (``>&-``), or a pipe whose
reader has gone (``| head``). Either is one line on stderr from the error boundary
(``cli/__init__.py: main``), never a traceback: exit 1 for a closed output, 141 (128 + SIGPIPE,
what a shell reports for a program killed by a broken pipe) for a reader that left.
"""

from __future__ import annotations

import errno
import io
import sys

__all__ = ["EXIT_BROKEN_PIPE", "StdoutClosed", "guard_closed_stdout", "output_failure"]

#: the exit status after the reader of standard output went away: 128 + SIGPIPE
EXIT_BROKEN_PIPE = 141


class StdoutClosed(OSError):
    """A write to standard output when the process started without one."""


class _ClosedOutput(io.TextIOBase):
    """``sys.stdout`` for a process started with standard output closed: writing raises."""

    encoding = "utf-8"
    errors = "strict"

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return False

    def write(self, text: str) -> int:
        raise StdoutClosed(errno.EBADF, "standard output is closed")

    def flush(self) -> None:
        pass  # nothing was ever written: nothing to lose at exit


def guard_closed_stdout() -> None:
    """When the process has no standard output (Python then sets ``sys.stdout`` to None),
    replace it by one whose writes raise :class:`StdoutClosed`, for the boundary to report."""
    if sys.stdout is None:
        sys.stdout = _ClosedOutput()


def _reader_gone() -> bool:
    """Whether standard output is a pipe or socket whose reader has closed it."""
    try:
        import select

        fd = sys.stdout.fileno()
        poller = select.poll()
    except (AttributeError, OSError, ValueError):
        return False  # not a real file (captured output): the error was not about stdout
    poller.register(fd, select.POLLOUT)
    return any(mask & (select.POLLERR | select.POLLHUP) for _, mask in poller.poll(0))


def _pacified() -> bool:
    """Whether typer already met a broken pipe (it wraps the streams and exits 1)."""
    return type(sys.stdout).__name__ == "PacifyFlushWrapper"


def output_failure(exc: BaseException | None = None) -> int | None:
    """If ``exc`` (None: a SystemExit from typer) is a failed write to standard output, print
    one line on stderr and return the exit code; else None."""
    if exc is None:
        broken = _pacified()
    elif isinstance(exc, StdoutClosed):
        print(
            "edgestack: error: standard output is closed, so the output cannot be written; "
            "send it to a file, a pipe or the terminal (for example > out.txt)",
            file=sys.stderr,
        )
        return 1
    else:
        broken = isinstance(exc, OSError) and exc.errno == errno.EPIPE and _reader_gone()
    if not broken:
        return None
    # Whatever is still buffered can never be written: drop it, so the exit stays quiet.
    sys.stdout = _ClosedOutput()
    print(
        "edgestack: error: the program reading standard output closed it (broken pipe, as "
        "with | head); the rest of the output was not written",
        file=sys.stderr,
    )
    return EXIT_BROKEN_PIPE
