"""`edgestack bench`: load time, speed and memory of a stack on this machine."""

from __future__ import annotations

import json
import sys
from typing import Annotated

import typer

from ._app import StackOpt, app


@app.command()
def bench(
    stack: StackOpt = None,
    runs: Annotated[int, typer.Option("--runs", min=1, help="Times to load and ask.")] = 3,
    threads: Annotated[
        int | None, typer.Option("--threads", min=1, help="CPU threads for llama.cpp.")
    ] = None,
    question: Annotated[
        str | None, typer.Option("--question", help="The question each run asks first.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the results as JSON.")] = False,
) -> None:
    """Measure a stack: per stage load time, prompt and generation tokens/s, time to first
    token; for the whole stack cold start, seconds per question and memory (PSS, and llama.cpp's
    figures for weights and KV cache). Medians over --runs, with min and max.

    Examples:

      edgestack bench

      edgestack bench --stack ./my-stack --runs 5 --json

      edgestack bench --stack owner/name --threads 4
    """
    from ..tools._bench import DEFAULT_QUESTION, format_bench, run_bench
    from ..util._paths import find_stack

    path = find_stack(stack)
    result = run_bench(path, runs=runs, threads=threads, question=question or DEFAULT_QUESTION)
    if as_json:
        sys.stdout.write(json.dumps(result, indent=2) + "\n")
    else:
        sys.stdout.write(format_bench(result) + "\n")
