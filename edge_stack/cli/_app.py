"""The typer application every command module registers on."""

from __future__ import annotations

from typing import Annotated

import typer
from typer._click import Command, Context, HelpFormatter  # typer vendors click
from typer.core import TyperGroup

from .. import __version__


def summary(command: Command) -> str:
    """A command's one-line summary for the command list: its ``short_help``, else the first
    sentence of its help, never cut short (click truncates to the terminal's width)."""
    if command.short_help:
        return command.short_help
    first = one_line((command.help or "").split("\n\n")[0])
    sentence, dot, _ = first.partition(". ")
    return sentence + "." if dot else first


class _Group(TyperGroup):
    """The command list in ``edgestack --help`` with every summary whole, wrapped, not cut."""

    def format_commands(self, ctx: Context, formatter: HelpFormatter) -> None:
        rows = []
        for name in self.list_commands(ctx):
            command = self.get_command(ctx, name)
            if command is not None and not command.hidden:
                rows.append((name, summary(command)))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


app = typer.Typer(
    name="edgestack",
    cls=_Group,
    help="Run stacks of small quantized language models offline, on CPUs.",
    no_args_is_help=True,
    # `edgestack --install-completion` (bash, zsh, fish, PowerShell) and --show-completion
    add_completion=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)

#: the help of every ``--stack`` option: a stack is named the same way by every command
STACK_HELP = (
    "The stack: a name from `edgestack list` (a bundled stack, or owner/name pulled from the "
    "Hub) or a stack.toml or its folder. Default: $EDGESTACK_STACK, then the bundled stack."
)
StackOpt = Annotated[
    str | None,
    typer.Option("--stack", "-s", help=STACK_HELP, show_default=False, metavar="STACK"),
]


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

    A stack is named the same way by every command (--stack NAME_OR_PATH, or the NAME of
    show, rm and package): a name from `edgestack list` or a stack.toml or its folder.

    Examples:

      edgestack ask "What is 15 plus 28?"

      echo "What is 15 plus 28?" | edgestack ask

      edgestack list

      edgestack pull owner/name && edgestack ask -s owner/name "What is 2 plus 3?"

      edgestack --install-completion
    """
