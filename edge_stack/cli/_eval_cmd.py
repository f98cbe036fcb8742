"""`edgestack eval`: accuracy and timings of a stack on a JSON Lines data set."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Literal

import typer

from ._app import app
from ._progress import progress_bar


@app.command("eval")
def eval_(
    stack: Annotated[Path, typer.Argument(help="stack.toml or stack folder.")],
    data: Annotated[
        Path,
        typer.Option(
            "--data", "-d", help='JSON Lines: {"question": "...", "answer": 43} per line.'
        ),
    ],
    match: Annotated[
        str,
        typer.Option(
            help="number: the answer's last number equals the expected one; text: whole text."
        ),
    ] = "number",
    limit: Annotated[
        int | None, typer.Option("--limit", min=1, help="Only the first N questions.")
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the whole report (every case) as JSON.")
    ] = False,
    report: Annotated[
        Path | None, typer.Option("--report", help="Also write the JSON report to this file.")
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace the --report file.")] = False,
    threads: Annotated[
        int | None, typer.Option("--threads", min=1, help="CPU threads for llama.cpp.")
    ] = None,
) -> None:
    """Run every question of a data set through a stack and measure it, as the paper did.

    Prints the accuracy, seconds per question and each stage's median time and token counts.
    Questions run one after another, greedy as the manifest says.

    Examples:

      edgestack eval models/word-problems --data models/word-problems/eval.jsonl

      edgestack eval my-stack/stack.toml --data qa.jsonl --match text --limit 50

      edgestack eval my-stack --data qa.jsonl --json --report report.json
    """
    from ..errors import BadArgument
    from ..pipeline._stack import Stack
    from ..tools._eval import MATCHES, evaluate, load_cases
    from ..util._atomic import check_output

    kind = match.strip().lower()
    if kind not in MATCHES:
        raise BadArgument(f"unknown --match {match!r}; use {' or '.join(MATCHES)}")
    mode: Literal["number", "text"] = "number" if kind == "number" else "text"
    if report is not None:
        check_output(report, force=force)  # before the (long) run, not after it
    cases = load_cases(data, match=mode)[:limit]
    with (
        Stack.load(stack, threads=threads) as loaded,
        progress_bar("questions", unit="q", unit_scale=False) as progress,
    ):
        result = evaluate(loaded, cases, match=mode, data=str(data), progress=progress)
    payload = json.dumps(result.to_dict(), ensure_ascii=False, indent=1)
    if report is not None:
        from ..util._atomic import atomic_output

        with atomic_output(report, force=force) as tmp:
            tmp.write_text(payload + "\n", encoding="utf-8")
    if as_json:
        typer.echo(payload)
    else:
        typer.echo(result.summary())
