"""The ``edgestack`` command's entry point (``[project.scripts]``, ``python -m edge_stack``).

A Ctrl-C or a SIGTERM may come at any moment, also while Python imports the CLI (typer, every
command's module: a few tenths of a second on a small machine). This module imports nothing
heavy: it installs the SIGTERM handler (:mod:`edge_stack.util._signals`) before it imports the
CLI, and turns an interruption during those imports into the CLI's own one line and exit code
(130 for Ctrl-C, 143 for SIGTERM) instead of a traceback. ``import edge_stack`` itself is light
(the package root imports its public names on first use), so only Python's own start-up is left
before the handlers are in place.
"""

from __future__ import annotations

import sys

__all__ = ["main"]


def _stopped() -> None:
    from .util._signals import EXIT_TERMINATED, terminated

    if terminated():
        sys.stderr.write("edgestack: terminated\n")
        raise SystemExit(EXIT_TERMINATED)
    sys.stderr.write("edgestack: interrupted\n")
    raise SystemExit(130)


def main() -> None:
    """Install the signal handlers, then run the CLI (``edge_stack.cli.main``)."""
    try:
        from .util._signals import install

        install()
        from .cli import main as run

        run()
    except KeyboardInterrupt:
        from .util._env import settings

        if settings().debug:
            raise
        _stopped()
