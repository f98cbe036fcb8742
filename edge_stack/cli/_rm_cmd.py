"""`edgestack rm`: forget a pulled stack and free its files."""

from __future__ import annotations

from typing import Annotated

import typer

from ._app import app


@app.command()
def rm(
    names: Annotated[
        list[str],
        typer.Argument(help="Names of pulled stacks (edgestack list).", show_default=False),
    ],
    keep_files: Annotated[
        bool,
        typer.Option(
            "--keep-files",
            help="Only forget the stack; leave its files in the Hugging Face cache.",
        ),
    ] = False,
) -> None:
    """Remove pulled stacks: their store entries and their files in the Hugging Face cache.

    Files another pulled stack uses stay (a base shared through hf:// is removed with the last
    stack that uses it). Bundled stacks cannot be removed. A damaged store entry is removed
    like any other.

    Examples:

      edgestack rm owner/name

      edgestack rm owner/name@v2 --keep-files
    """
    from ..store import remove_stack
    from ..util._units import format_bytes

    for name in names:
        _, freed = remove_stack(name, keep_files=keep_files)
        kept = ", files kept" if keep_files else f", freed {format_bytes(freed)}"
        typer.echo(f"removed {name}{kept}", err=True)
