"""`edgestack verify`: compare a GGUF model with a reference model on probe texts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from ._app import app


@app.command()
def verify(
    candidate: Annotated[Path, typer.Argument(help="GGUF model to check.")],
    reference: Annotated[
        str,
        typer.Option(
            "--reference",
            "-r",
            help="Reference: a GGUF file (e.g. the f32 conversion) or a Hugging Face model folder.",
        ),
    ],
    min_top1: Annotated[
        float | None,
        typer.Option(
            min=0.0, max=1.0, help="Least top-1 agreement to pass (default: by file type)."
        ),
    ] = None,
    max_kl: Annotated[
        float | None,
        typer.Option(min=0.0, help="Largest mean KL(reference || candidate) to pass."),
    ] = None,
    text: Annotated[
        list[str] | None,
        typer.Option("--text", help="Probe text instead of the built-in ones (repeatable)."),
    ] = None,
    threads: Annotated[
        int | None, typer.Option(min=1, help="Threads for llama.cpp (default: all CPUs).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Check a GGUF model against a reference: top-1 agreement, mean KL, max |logit difference|.

    Both models get the same token ids (from the candidate's tokenizer). Exits non-zero when
    the candidate is below the thresholds (defaults depend on its file type: strict for f32,
    looser for f16/bf16, q8_0, and the 4-bit and smaller types).

    Examples:

      edgestack verify model.q4_k_m.gguf --reference model.f32.gguf

      edgestack verify model.f16.gguf --reference ./pythia-160m --min-top1 0.99 --json
    """
    from edge_stack.convert.verify import verify as run_verify
    from edge_stack.errors import VerificationFailed

    overrides = {
        name: value
        for name, value in (("min_top1", min_top1), ("max_kl", max_kl))
        if value is not None
    }
    report = run_verify(candidate, reference, texts=text, thresholds=overrides, threads=threads)
    typer.echo(json.dumps(report.to_dict()) if as_json else report.table())
    if not report.passed:
        raise VerificationFailed(f"{candidate} does not match {reference}: {report.summary()}")
