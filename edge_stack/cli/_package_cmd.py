"""`edgestack package`: a stack as a folder ready to upload to the Hub."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ._app import app


@app.command()
def package(
    stack: Annotated[
        str,
        typer.Argument(
            help="The stack: a name from `edgestack list`, or a stack.toml or its folder.",
            show_default=False,
        ),
    ],
    out: Annotated[
        Path, typer.Option("--out", "-o", help="The folder to write.", show_default=False)
    ],
    repo: Annotated[
        str | None,
        typer.Option(
            "--repo", help="The Hub repository it will be uploaded to (owner/name), for the card."
        ),
    ] = None,
    eval_report: Annotated[
        Path | None,
        typer.Option(
            "--eval-report",
            help="An `edgestack eval --report` file: its accuracy goes into the model card.",
        ),
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Replace the folder if it exists.")
    ] = False,
) -> None:
    """Write a stack as a folder ready to upload to the Hub: pinned stack.toml, files, card.

    The folder holds stack.toml with a sha256 pin for every model and adapter, the files it
    names (hf:// files stay references), the stack's eval.jsonl if it has one, and a model card
    (README.md: stages, prompts, sizes, accuracy from --eval-report). Upload it with
    `hf upload owner/name DIR`; `edgestack pull owner/name` then fetches it. Also the way to get
    an editable copy of a bundled or pulled stack.

    Examples:

      edgestack package word-problems -o ./my-stack

      edgestack eval -s ./my-stack --report report.json

      edgestack package ./my-stack -o ./upload --repo me/my-stack --eval-report report.json

      hf upload me/my-stack ./upload
    """
    from ..errors import BadArgument
    from ..store import package_stack, resolve_stack
    from ..util._hubref import parse_hub_repo
    from ..util._units import format_bytes

    if repo is not None:
        parsed = parse_hub_repo(repo, "--repo")
        if parsed.revision:
            raise BadArgument(f"--repo {repo}: give owner/name without a revision")
    result = package_stack(
        resolve_stack(stack, "STACK"), out, force=force, repo=repo, eval_report=eval_report
    )
    pinned = f"; pinned {len(result.pinned_now)} files" if result.pinned_now else ""
    typer.echo(
        f"packaged {result.name} into {result.folder} ({len(result.files)} files, "
        f"{format_bytes(result.size_bytes)}){pinned}",
        err=True,
    )
