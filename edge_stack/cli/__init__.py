"""The ``edgestack`` command line, and its single error boundary (:func:`main`)."""

from __future__ import annotations

import logging
import sys
from typing import NoReturn

import typer
from typer.exceptions import TyperException

from ..errors import EdgeStackError
from ..util._env import settings
from ..util._signals import EXIT_TERMINATED, terminated
from ._app import app, error_line, one_line
from ._output import guard_closed_stdout, output_failure

# Each module registers its commands on `app` (the order is the order of --help); they import
# heavy packages only when a command runs.
from . import (  # noqa: F401  isort: skip
    _ask_cmd,
    _list_cmd,
    _pull_cmd,
    _show_cmd,
    _rm_cmd,
    _package_cmd,
    _inspect_cmd,
    _plan_cmd,
    _logs_cmd,
    _convert_cmd,
    _lora_cmd,
    _quantize_cmd,
    _verify_cmd,
    _build_cmd,
    _export_cmd,
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


def _interrupted() -> NoReturn:
    """Ctrl-C (exit 130), or SIGTERM handled as Ctrl-C (util/_signals.py: exit 143)."""
    if terminated():
        print("edgestack: terminated", file=sys.stderr)
        sys.exit(EXIT_TERMINATED)
    print("edgestack: interrupted", file=sys.stderr)
    sys.exit(130)


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the CLI, turning known errors into one line on stderr and an exit code."""
    debug = settings().debug
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    guard_closed_stdout()
    try:
        code = app(args=argv, prog_name="edgestack", standalone_mode=False)
        sys.stdout.flush()  # output still buffered fails here, inside the boundary
    except SystemExit:
        # typer turns a broken pipe into a silent exit 1; say it in one line instead
        if (failed := output_failure()) is not None:
            sys.exit(failed)
        raise
    except typer.Exit as exc:
        if exc.exit_code == 130:
            _interrupted()
        sys.exit(exc.exit_code)
    except typer.Abort:
        _interrupted()
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
        _interrupted()
    except EdgeStackError as exc:
        if debug:
            raise
        print(error_line(exc), file=sys.stderr)
        sys.exit(exc.exit_code)
    except OSError as exc:
        if (failed := output_failure(exc)) is not None:  # stdout closed, or | head
            sys.exit(failed)
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
            _interrupted()
        sys.exit(code)
