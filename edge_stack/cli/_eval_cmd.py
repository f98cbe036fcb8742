"""`edgestack eval`: accuracy and timings of a stack on a JSON Lines data set."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Literal

import typer

from ._app import StackOpt, app
from ._progress import progress_bar

#: the evaluation data a stack may ship beside its stack.toml (found without --data)
EVAL_DATA = "eval.jsonl"


@app.command("eval")
def eval_(
    stack: StackOpt = None,
    data: Annotated[
        Path | None,
        typer.Option(
            "--data",
            "-d",
            help='JSON Lines: {"question": "...", "answer": 43} per line. Default: the '
            f"stack's own {EVAL_DATA} (beside its stack.toml), if it ships one.",
            show_default=False,
        ),
    ] = None,
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
    Questions run one after another, greedy as the manifest says. A stack may ship its own
    data as eval.jsonl beside its stack.toml (the bundled stack does): then --data is optional.

    Examples:

      edgestack eval --stack word-problems

      edgestack eval --stack word-problems --limit 20 --json

      edgestack eval --stack ./my-stack --data qa.jsonl --match text --limit 50

      edgestack eval --stack owner/name --report report.json
    """
    from ..errors import BadArgument, ModelFileNotFound
    from ..pipeline._stack import Stack
    from ..tools._eval import MATCHES, evaluate, load_cases
    from ..util._atomic import check_output
    from ..util._paths import find_stack

    kind = match.strip().lower()
    if kind not in MATCHES:
        raise BadArgument(f"unknown --match {match!r}; use {' or '.join(MATCHES)}")
    mode: Literal["number", "text"] = "number" if kind == "number" else "text"
    if report is not None:
        check_output(report, force=force)  # before the (long) run, not after it
    # The data first when given (a bad line is known before anything loads), else the stack's own.
    cases = load_cases(data, match=mode)[:limit] if data is not None else []
    path = find_stack(stack)
    if data is None:
        data = path.parent / EVAL_DATA
        if not data.is_file():
            raise ModelFileNotFound(
                f"no --data given and the stack {path} ships no {EVAL_DATA} beside its "
                f'stack.toml; pass --data FILE.jsonl ({{"question": ..., "answer": ...}} per line)'
            )
        cases = load_cases(data, match=mode)[:limit]
    with (
        Stack.load(path, threads=threads) as loaded,
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
