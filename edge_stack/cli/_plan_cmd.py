"""`edgestack plan`: whether a stack fits a device's memory, and how fast it could run there."""

from __future__ import annotations

import json
import sys
from typing import Annotated

import typer

from ._app import app


@app.command()
def plan(
    stack: Annotated[
        str,
        typer.Argument(
            help="The stack: a name from `edgestack list`, or a stack.toml or its folder.",
            show_default=False,
        ),
    ],
    device: Annotated[
        str | None,
        typer.Option(
            "--device",
            "-d",
            help="pi4-1gb, pi4-2gb, pi5-4gb, pi5-8gb, laptop-8gb, this-machine (the default: "
            "its available memory and measured bandwidth), or a memory size such as 1GB or "
            "1.5GiB.",
            show_default=False,
        ),
    ] = None,
    low_memory: Annotated[
        bool,
        typer.Option(
            "--low-memory", help='Plan for memory = "low" (as edgestack ask --low-memory).'
        ),
    ] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the plan as JSON (sizes in bytes).")
    ] = False,
) -> None:
    """Say whether a stack fits a device before loading it: weights (shared files counted
    once), KV cache per stage, compute buffers and adapters against the device's usable
    memory, the tokens/s each stage's memory traffic allows there, and, when it does not fit,
    the cheapest changes that make it fit. Reads only file headers and vocabularies.

    Exits 0 when the stack fits, 3 when it does not (the plan is printed either way).

    Examples:

      edgestack plan word-problems --device pi4-1gb

      edgestack plan ./my-stack --device 512MB --json

      edgestack plan ./my-stack --device pi5-4gb --low-memory
    """
    from ..manifest import load_manifest
    from ..tools._devices import parse_device
    from ..tools._plan import format_plan, plan_stack
    from ..util._paths import find_stack

    spec = load_manifest(find_stack(stack))
    result = plan_stack(spec, parse_device(device), memory="low" if low_memory else None)
    if as_json:
        sys.stdout.write(json.dumps(result.to_dict(), indent=2) + "\n")
    else:
        sys.stdout.write(format_plan(result) + "\n")
    if not result.fits:
        raise typer.Exit(3)
