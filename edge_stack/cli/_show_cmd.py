"""`edgestack show`: one stack, as `inspect` shows it, with where it came from."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from ._app import app


@app.command()
def show(
    name: Annotated[
        str,
        typer.Argument(
            help="The stack: a name from `edgestack list`, or a stack.toml or its folder.",
            show_default=False,
        ),
    ],
    as_json: Annotated[bool, typer.Option("--json", help="Print the details as JSON.")] = False,
) -> None:
    """Show a stack: where it came from, its stages and prompts, files, sizes and memory.

    What `edgestack inspect` shows for a stack, plus its source (bundled, or the Hub
    repository and commit it was pulled from) and when it was pulled. Nothing is loaded.

    Examples:

      edgestack show word-problems

      edgestack show owner/name --json
    """
    from ..store import list_stacks, resolve_stack
    from ..util._units import format_bytes
    from ._inspect_cmd import show_stack

    path = resolve_stack(name, "NAME")
    extra: dict[str, Any] = {"name": name, "source": "local"}
    for row in list_stacks():
        if row.manifest is not None and row.manifest == path:
            extra = {"name": row.name, "source": row.source}
            if row.size_bytes:
                extra["size"] = format_bytes(row.size_bytes)
            if row.pulled is not None:
                extra["pulled"] = row.to_dict()["pulled"]
            break
    show_stack(path, as_json, extra)
