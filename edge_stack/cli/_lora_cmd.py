"""`edgestack export-lora`: a PEFT LoRA adapter as a GGUF adapter over a shared base model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from ._app import app


@app.command("export-lora")
def export_lora(
    adapter: Annotated[
        str, typer.Argument(help="PEFT adapter folder, or Hub id owner/name[@revision].")
    ],
    base: Annotated[
        str,
        typer.Option(
            "--base",
            "-b",
            help="The Hugging Face checkpoint (folder or Hub id) it was trained on, or a GGUF "
            "model of the same weights (arch, shapes and layout are read from it).",
        ),
    ],
    output: Annotated[Path, typer.Option("--output", "-o", help="GGUF adapter file to write.")],
    outtype: Annotated[str, typer.Option(help="f32, f16 or q8_0.")] = "f32",
    force: Annotated[bool, typer.Option("--force", help="Replace OUTPUT if it exists.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Export a PEFT LoRA adapter as a GGUF LoRA adapter that llama.cpp applies at run time.

    Use it as a stage's `lora` over the GGUF converted from the same base: many stages then share
    one base in memory. rsLoRA and per-module rank/alpha patterns are folded in exactly.
    Prints the output path, its type and size.

    Examples:

      edgestack export-lora ./adapters/extract --base ./pythia-160m -o extract.lora.gguf

      edgestack export-lora me/pythia-extract-lora --base EleutherAI/pythia-160m -o x.gguf --outtype f16

      edgestack export-lora ./adapters/extract --base SmolLM2-135M-Instruct.Q4_1.gguf -o x.lora.gguf
    """
    from edge_stack.convert.lora import export_lora as run_export

    path = run_export(adapter, base, output, outtype=outtype, force=force)
    size = path.stat().st_size
    if as_json:
        typer.echo(json.dumps({"output": str(path), "outtype": outtype.lower(), "bytes": size}))
    else:
        from ..util._units import format_bytes

        shown = format_bytes(size)
        typer.echo(f"{path}\t{outtype.lower()}\t{shown}")
