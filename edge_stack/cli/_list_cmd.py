"""`edgestack list`: the stacks this machine has by name."""

from __future__ import annotations

import json
import time
from typing import Annotated

import typer

from ._app import app


def _when(pulled: float | None) -> str:
    if pulled is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(pulled))


@app.command("list")
def list_(
    as_json: Annotated[
        bool, typer.Option("--json", help="Print a JSON array, one object per stack.")
    ] = False,
) -> None:
    """List the stacks you can name: bundled ones and ones pulled from the Hub.

    Shows each stack's name (what --stack, show, rm and package take), where it came from,
    its size on disk, its number of stages and when it was pulled. A damaged store entry is
    listed with what is wrong on stderr (exit status 1); `edgestack rm NAME` removes it.

    Examples:

      edgestack list

      edgestack list --json | jq -r '.[].name'
    """
    from ..store import list_stacks
    from ..util._units import format_bytes

    rows = list_stacks()
    if as_json:
        typer.echo(json.dumps([r.to_dict() for r in rows], ensure_ascii=False, indent=2))
    else:
        table = [("NAME", "SOURCE", "SIZE", "STAGES", "PULLED")]
        for r in rows:
            table.append(
                (
                    r.name,
                    r.source,
                    format_bytes(r.size_bytes) if r.size_bytes else "-",
                    str(r.stages) if r.stages else "-",
                    _when(r.pulled),
                )
            )
        widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
        for row in table:
            typer.echo(
                "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
            )
        for r in rows:
            if r.problem:
                typer.echo(f"edgestack: {r.name}: {r.problem}", err=True)
    # A damaged store entry is an error to fix; a bundled stack that cannot run here (say, its
    # base is an optional package that is not installed) is only worth the note above.
    if any(r.problem and r.kind != "bundled" for r in rows):
        raise typer.Exit(1)
