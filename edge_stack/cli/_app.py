"""The typer application every command module registers on."""

from __future__ import annotations

from typing import Annotated

import typer

from .. import __version__

app = typer.Typer(
    name="edgestack",
    help="Run stacks of small quantized language models offline, on CPUs.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


def one_line(message: str) -> str:
    """``message`` with every run of whitespace (newlines too) made one space."""
    return " ".join(str(message).split())


def error_line(exc: BaseException) -> str:
    """How an error is shown on stderr: one line, without a traceback."""
    return f"edgestack: error: {one_line(str(exc))}"


def _version(value: bool) -> None:
    if value:
        typer.echo(f"edgestack {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """Run stacks of small quantized language models offline, on CPUs.

    Examples:

      edgestack ask "What is 15 plus 28?"

      edgestack convert ./pythia-160m -o pythia.f16.gguf --outtype f16
    """
