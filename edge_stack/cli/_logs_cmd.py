"""`edgestack logs`."""

from __future__ import annotations

import json
import time
from typing import Annotated

import typer

from ..tools._runlog import MAX_RECENT
from ._app import app


def _short(text: str, width: int) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


@app.command()
def logs(
    limit: Annotated[
        int,
        typer.Option(
            "--limit",
            "-n",
            min=1,
            max=MAX_RECENT,
            help=f"How many runs to show, 1 to {MAX_RECENT:,}.",
        ),
    ] = 20,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print a JSON array (newest first) with every stage.")
    ] = False,
    stages: Annotated[
        bool, typer.Option("--stages", help="Also show each stage's output and timing.")
    ] = False,
) -> None:
    """Show the most recent asks from the local run log (newest first).

    Each run shows two times: wall, what you waited (for ask, from the command's start to the
    answer, loading the stack included; "-" when not measured), and stages, what the stack's
    stages took (prompt evaluation and generation). Every `edgestack ask` and `chat` answer is
    logged unless --no-log or EDGESTACK_NO_LOG=1.
    A damaged log, or one another process keeps locked, is reported in one line (exit status 1);
    asks go on without logging until it is moved away or deleted.

    Examples:

      edgestack logs

      edgestack logs -n 5 --stages

      edgestack logs --json | jq '.[0].stages'
    """
    from ..tools._runlog import RunLog
    from ..util._units import format_seconds

    log = RunLog()
    runs = log.recent(limit)
    if as_json:
        typer.echo(json.dumps([r.to_dict() for r in runs], ensure_ascii=False, indent=2))
        return
    if not runs:
        typer.echo(f"no runs logged yet (log: {log.path})", err=True)
        return
    for run in runs:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(run.created))
        wall = "-" if run.wall_seconds is None else format_seconds(run.wall_seconds)
        typer.echo(
            f"#{run.id}  {when}  {run.stack}  wall {wall}, stages {format_seconds(run.seconds)}"
        )
        typer.echo(f"  Q: {_short(run.question, 100)}")
        if stages:
            for s in run.stages:
                typer.echo(
                    f"    {s['name']}: {_short(str(s['output']), 80)}  "
                    f"({s['prompt_tokens']}+{s['completion_tokens']} tokens, "
                    f"{format_seconds(float(s['seconds']))})"
                )
        typer.echo(f"  A: {_short(run.answer, 100)}")
