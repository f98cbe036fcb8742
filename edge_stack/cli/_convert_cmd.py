"""`edgestack convert`: a Hugging Face checkpoint (folder or Hub id) to GGUF."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Annotated

import typer

from ._app import app
from ._progress import progress_bar


@app.command()
def convert(
    model: Annotated[
        str, typer.Argument(help="Checkpoint folder, or Hub id owner/name[@revision].")
    ],
    output: Annotated[Path, typer.Option("--output", "-o", help="GGUF file to write.")],
    outtype: Annotated[
        str,
        typer.Option(help="f32, f16, bf16, q8_0 (direct) or any llama.cpp type: q4_k_m, q6_k, ..."),
    ] = "f16",
    merge_lora: Annotated[
        list[str] | None,
        typer.Option(
            "--merge-lora", help="PEFT adapter folder or Hub id to merge in (repeatable)."
        ),
    ] = None,
    lora_scale: Annotated[float, typer.Option(help="Multiplier on every merged adapter.")] = 1.0,
    verify: Annotated[
        bool,
        typer.Option(
            "--verify", help="Compare the result with the checkpoint (needs transformers)."
        ),
    ] = False,
    force: Annotated[bool, typer.Option("--force", help="Replace OUTPUT if it exists.")] = False,
) -> None:
    """Convert a Hugging Face checkpoint to a GGUF file for llama.cpp.

    Examples:

      edgestack convert ./pythia-160m -o pythia.f16.gguf

      edgestack convert EleutherAI/pythia-160m -o pythia.q4.gguf --outtype q4_k_m

      edgestack convert ./base -o stage.gguf --merge-lora ./adapters/extract --verify
    """
    from edge_stack.convert import convert_checkpoint
    from edge_stack.util._atomic import atomic_output

    def run(target: Path, *, replace: bool) -> Path:
        with progress_bar("converting") as progress:
            return convert_checkpoint(
                model,
                target,
                outtype=outtype,
                force=replace,
                merge_lora=merge_lora or (),
                lora_scale=lora_scale,
                progress=progress,
            )

    if verify:
        # Verified before it takes OUTPUT's place: a file that fails is never left there, and an
        # existing OUTPUT (with --force) stays as it was.
        with atomic_output(output, force=force) as tmp:
            run(tmp, replace=True)
            _verify_against_checkpoint(tmp, output, model, merge_lora or (), lora_scale)
        path = output
    else:
        path = run(output, replace=force)
    size = path.stat().st_size
    from ..util._units import format_bytes

    typer.echo(f"{path}\t{outtype}\t{format_bytes(size)}")


def _verify_against_checkpoint(
    path: Path, output: Path, model: str, merge_lora: Sequence[str], lora_scale: float
) -> None:
    """Compare the output with its source: the checkpoint through transformers, or, with LoRA
    merged in (which transformers alone cannot apply), an f32 conversion with the same merge."""
    from edge_stack.convert import convert_checkpoint
    from edge_stack.convert.hub import resolve_model_dir
    from edge_stack.convert.verify import verify as run_verify
    from edge_stack.errors import VerificationFailed
    from edge_stack.util._atomic import temp_dir

    if not merge_lora:
        source = f"{model}"
        report = run_verify(path, resolve_model_dir(model))
    else:
        source = f"{model} with {', '.join(merge_lora)} merged (f32)"
        with temp_dir(path.parent, f"{path.name}.verify") as tmp:
            with progress_bar("converting the f32 reference") as progress:
                reference = convert_checkpoint(
                    model,
                    tmp / "reference.f32.gguf",
                    outtype="f32",
                    merge_lora=merge_lora,
                    lora_scale=lora_scale,
                    progress=progress,
                )
            report = run_verify(path, reference)
    typer.echo(report.summary(), err=True)
    if not report.passed:
        raise VerificationFailed(
            f"{output} disagrees with {source}: {report.summary()}; it was not written. Check "
            "the checkpoint, or try a finer --outtype"
        )
