"""`edgestack quantize`: a GGUF model to another llama.cpp file type, by llama.cpp itself."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from ._app import app


def _mb(n: int) -> str:
    from ..util._units import format_bytes

    return format_bytes(n)


@app.command()
def quantize(
    model: Annotated[Path, typer.Argument(help="GGUF model to quantize (f32, f16 or bf16).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="GGUF file to write.")],
    qtype: Annotated[
        str,
        typer.Option(
            "--type",
            "-t",
            help="llama.cpp file type: q8_0, q6_k, q5_k_m, q4_k_m, q4_0, q3_k_m, q2_k, f16, ...",
        ),
    ],
    threads: Annotated[
        int | None, typer.Option(min=1, help="Threads for llama.cpp (default: all CPUs).")
    ] = None,
    allow_requantize: Annotated[
        bool,
        typer.Option(
            "--allow-requantize", help="Accept an already quantized input (loses quality)."
        ),
    ] = False,
    force: Annotated[bool, typer.Option("--force", help="Replace OUTPUT if it exists.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Quantize a GGUF model with llama.cpp (every file type llama.cpp offers).

    Prints the output path, its type and size (and the input's size).

    Examples:

      edgestack quantize pythia.f16.gguf -o pythia.q4_k_m.gguf --type q4_k_m

      edgestack quantize model.f32.gguf -o model.q8_0.gguf -t q8_0 --threads 2 --force
    """
    from edge_stack.convert.quantize import fallbacks, tensor_type_mix
    from edge_stack.convert.quantize import quantize as run_quantize

    path = run_quantize(
        model,
        output,
        qtype=qtype,
        force=force,
        threads=threads,
        allow_requantize=allow_requantize,
    )
    before, after = model.stat().st_size, path.stat().st_size
    if as_json:
        record = {
            "output": str(path),
            "type": qtype.lower(),
            "bytes": after,
            "input": str(model),
            "input_bytes": before,
            "tensor_types": tensor_type_mix(path),
            "fallbacks": fallbacks(path, qtype),
        }
        typer.echo(json.dumps(record))
    else:
        ratio = after / before if before else 0.0
        typer.echo(f"{path}\t{qtype.lower()}\t{_mb(after)} (input {_mb(before)}, {ratio:.0%})")
