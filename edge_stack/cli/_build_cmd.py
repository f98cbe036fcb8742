"""`edgestack build`: a recipe (base checkpoints + PEFT adapters + prompts) to a ready stack."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from ..util._units import format_bytes
from ._app import app

if TYPE_CHECKING:
    from ..builder.build import BuildEvent


class _Display:
    """Collects the build's events; shows one line per step on stderr when it is a terminal."""

    def __init__(self, show: bool) -> None:
        self.show = show
        self.events: dict[str, BuildEvent] = {}

    def __call__(self, event: BuildEvent) -> None:
        if event.status != "start":
            self.events[event.output] = event
        if not self.show:
            return
        where = f"[{event.step}/{event.total}] {event.output}"
        if event.status == "start":
            sys.stderr.write(f"{where}: {event.action}...\n")
        elif event.status == "skipped":
            sys.stderr.write(f"{where}: unchanged\n")
        elif event.action == "write":
            sys.stderr.write(f"{where}: written\n")
        else:
            sys.stderr.write(f"{where}: {event.detail} ({event.seconds:.1f}s)\n")
        sys.stderr.flush()


@app.command()
def build(
    recipe: Annotated[Path, typer.Argument(help="The build recipe (.toml).")],
    output: Annotated[
        Path, typer.Option("--output", "-o", help="Stack folder to write (created if needed).")
    ],
    force: Annotated[
        bool,
        typer.Option("--force", help="Rebuild every file and replace files in the way."),
    ] = False,
    threads: Annotated[
        int | None, typer.Option("--threads", min=1, help="CPU threads for llama.cpp.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Build a stack from a recipe: convert, merge or export, quantize, verify, write stack.toml.

    The recipe names per stage a Hugging Face base folder (or Hub id), a PEFT adapter folder and
    the prompt and generation settings; for the stack its mode ("merged" or "adapters") and
    quantization. Every file is verified against its source before it is kept. Running it again
    redoes only what changed; files in OUTPUT that the build did not make are left alone.
    Prints each output (made or unchanged, size) and the stack.toml path.

    Examples:

      edgestack build models/word-problems/recipe.toml -o models/word-problems

      edgestack build recipe.toml -o my-stack --force

      edgestack ask "What is 15 plus 28?" --stack my-stack
    """
    from edge_stack.builder.build import build as run_build

    display = _Display(sys.stderr.isatty())
    path = run_build(recipe, output, force=force, progress=display, threads=threads)
    files = []
    for name, event in display.events.items():
        file = event.file or path.parent / name  # a pip:// or hf:// base is not in the folder
        files.append(
            {
                "file": name,
                "status": "made" if event.status == "done" else "unchanged",
                "bytes": file.stat().st_size,
                "verify": event.detail if event.action != "write" else "",
            }
        )
    if as_json:
        typer.echo(json.dumps({"stack": str(path), "files": files}))
        return
    for item in files:
        typer.echo(f"{item['file']}\t{item['status']}\t{format_bytes(int(item['bytes']))}")
    typer.echo(str(path))
