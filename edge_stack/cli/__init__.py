"""The ``edgestack`` command line, and its single error boundary (:func:`main`)."""

from __future__ import annotations

import logging
import sys

import typer
from typer.exceptions import TyperException

from .._env import settings
from ..errors import EdgeStackError
from ._app import app

# Each module registers its commands on `app` (the order is the order of --help); they import
# heavy packages only when a command runs.
from . import (  # noqa: F401  isort: skip
    _ask_cmd,
    _inspect_cmd,
    _logs_cmd,
    _convert_cmd,
    _lora_cmd,
    _quantize_cmd,
    _verify_cmd,
    _build_cmd,
    _eval_cmd,
    _bench_cmd,
)

__all__ = ["app", "main"]


def _one_line(message: str) -> str:
    return " ".join(str(message).split())


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the CLI, turning known errors into one line on stderr and an exit code."""
    debug = settings().debug
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        code = app(args=argv, prog_name="edgestack", standalone_mode=False)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        print("edgestack: interrupted", file=sys.stderr)
        sys.exit(130)
    except TyperException as exc:
        # Usage errors: typer shows the usage line and the problem, as users of any CLI expect.
        show = getattr(exc, "show", None)
        if callable(show):
            show()
        else:
            print(f"edgestack: error: {_one_line(str(exc))}", file=sys.stderr)
        sys.exit(getattr(exc, "exit_code", 2))
    except KeyboardInterrupt:
        if debug:
            raise
        print("edgestack: interrupted", file=sys.stderr)
        sys.exit(130)
    except EdgeStackError as exc:
        if debug:
            raise
        print(f"edgestack: error: {_one_line(str(exc))}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except OSError as exc:
        # Disk full, permission denied, ...: the OS already says what and where.
        if debug:
            raise
        print(f"edgestack: error: {_one_line(str(exc))}", file=sys.stderr)
        sys.exit(1)
    except Exception as exc:
        if debug:
            raise
        print(
            f"edgestack: internal error: {type(exc).__name__}: {_one_line(str(exc))} "
            "(run again with EDGESTACK_DEBUG=1 for the traceback, and please report it)",
            file=sys.stderr,
        )
        sys.exit(1)
    # Without standalone mode typer *returns* a typer.Exit's code, and turns Ctrl-C into 130.
    if isinstance(code, int) and not isinstance(code, bool) and code:
        if code == 130:
            print("edgestack: interrupted", file=sys.stderr)
        sys.exit(code)
