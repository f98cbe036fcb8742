"""The ``edgestack`` command line, and its single error boundary (:func:`main`)."""

from __future__ import annotations

import logging
import sys

import typer
from typer.exceptions import TyperException

from ..errors import EdgeStackError
from ..util._env import settings
from ._app import app, error_line, one_line

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
    _serve_cmd,
    _doctor_cmd,
)

__all__ = ["app", "main"]


def _usage_line(exc: TyperException) -> str:
    """A usage error as one line that ends by naming the help to read."""
    message = one_line(exc.format_message()).rstrip(".")
    ctx = getattr(exc, "ctx", None)
    command = getattr(ctx, "command_path", None) or "edgestack"
    return f"edgestack: error: {message}; see '{command} --help'"


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
        # typer vendors click, whose usage errors (bad option value, missing argument, ...) all
        # derive from TyperException; `edgestack` alone is one of them, carrying the help text.
        if type(exc).__name__ == "NoArgsIsHelpError":
            exc.show()  # type: ignore[attr-defined]
        else:
            print(_usage_line(exc), file=sys.stderr)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        if debug:
            raise
        print("edgestack: interrupted", file=sys.stderr)
        sys.exit(130)
    except EdgeStackError as exc:
        if debug:
            raise
        print(error_line(exc), file=sys.stderr)
        sys.exit(exc.exit_code)
    except OSError as exc:
        # Disk full, permission denied, ...: the OS already says what and where.
        if debug:
            raise
        print(error_line(exc), file=sys.stderr)
        sys.exit(1)
    except Exception as exc:
        if debug:
            raise
        print(
            f"edgestack: internal error: {type(exc).__name__}: {one_line(str(exc))} "
            "(run again with EDGESTACK_DEBUG=1 for the traceback, and please report it)",
            file=sys.stderr,
        )
        sys.exit(1)
    # Without standalone mode typer *returns* a typer.Exit's code, and turns Ctrl-C into 130.
    if isinstance(code, int) and not isinstance(code, bool) and code:
        if code == 130:
            print("edgestack: interrupted", file=sys.stderr)
        sys.exit(code)
