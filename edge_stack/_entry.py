"""The ``edgestack`` command's entry point (``[project.scripts]``, ``python -m edge_stack``).

A Ctrl-C or a SIGTERM may come at any moment, also while Python imports the CLI (typer, every
command's module: a few tenths of a second on a small machine). A KeyboardInterrupt raised in
the middle of those imports printed a traceback, or was even swallowed by the import machinery
("Exception ignored"). So this module, which imports nothing heavy, holds both signals back
while the CLI is imported, then installs the SIGTERM handler (:mod:`edge_stack.util._signals`)
and acts on a held signal the way the CLI does: one line and exit 130 (Ctrl-C) or 143
(SIGTERM), no traceback. A second Ctrl-C while the imports run stops them at once. ``import
edge_stack`` itself is light (the package root imports its public names on first use), so only
Python's own start-up comes before.
"""

from __future__ import annotations

import signal
import sys
from types import FrameType

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing
if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["main"]


def _stopped() -> None:
    from .util._signals import EXIT_TERMINATED, terminated

    if terminated():
        sys.stderr.write("edgestack: terminated\n")
        raise SystemExit(EXIT_TERMINATED)
    sys.stderr.write("edgestack: interrupted\n")
    raise SystemExit(130)


def _import_cli() -> Callable[[], None]:
    """``edge_stack.cli.main``, imported with Ctrl-C and SIGTERM held back; then the held
    signal, if any, is raised as the running command would meet it."""
    held: list[int] = []

    def hold(signum: int, _frame: FrameType | None) -> None:
        if signum == signal.SIGINT and signal.SIGINT in held:
            raise KeyboardInterrupt  # pressed twice: stop waiting for the imports
        held.append(signum)

    previous = signal.signal(signal.SIGINT, hold)
    signal.signal(signal.SIGTERM, hold)
    try:
        from .cli import main as run
        from .util._signals import install
    finally:
        signal.signal(signal.SIGINT, previous)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    install()
    if signal.SIGTERM in held:
        signal.raise_signal(signal.SIGTERM)  # the handler just installed: KeyboardInterrupt
    if held:
        raise KeyboardInterrupt
    return run


def main() -> None:
    """Import the CLI with the signal handlers in place, then run it (``edge_stack.cli.main``)."""
    try:
        run = _import_cli()
        run()
    except KeyboardInterrupt:
        from .util._env import settings

        if settings().debug:
            raise
        _stopped()
