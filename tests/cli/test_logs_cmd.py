"""`edgestack logs` on a damaged or locked run log: one line, a non-zero exit, no traceback."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from edge_stack import Answer, StageTrace
from edge_stack.tools import _runlog
from edge_stack.tools._runlog import RunLog, default_log_path

from cli_support import run

MARKER = "SECRET-QUESTION-TEXT"


def _log() -> Path:
    log = RunLog(default_log_path())
    stage = StageTrace("s", "prompt", "out", 3, 2, 0.01)
    for i in range(3):
        log.append(Answer("out", (stage,), "demo", f"{MARKER} {i}" * 500, 0.1), stack_path="x")
    return log.path


def _garbage(path: Path) -> None:
    path.write_text(f"{MARKER}\n" * 100)


def _truncated(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:5000])


@pytest.mark.parametrize("damage", [_garbage, _truncated], ids=["not SQLite", "truncated"])
@pytest.mark.parametrize("args", [[], ["--json"], ["--stages"]], ids=["plain", "json", "stages"])
def test_logs_on_damaged_log(
    damage: Callable[[Path], None], args: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    path = _log()
    damage(path)
    code, out, err = run(["logs", *args], capsys)
    assert code == 1 and out == ""
    assert err.startswith(f"edgestack: error: run log {path} is damaged (")
    assert err.endswith("; move it away or delete it, asks will start a new one\n")
    assert err.count("\n") == 1 and MARKER not in err and "internal error" not in err


def test_logs_on_locked_log(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(_runlog, "LOCK_WAIT_S", 0.2)
    path = _log()
    holder = sqlite3.connect(path, isolation_level=None)
    try:
        holder.execute("BEGIN EXCLUSIVE")
        code, out, err = run(["logs"], capsys)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert code == 1 and out == ""
    assert err == (
        f"edgestack: error: run log {path} is locked by another process (waited 0.2 s); "
        "try again when the other edgestack (or sqlite3) command has finished\n"
    )
    code, out, _ = run(["logs"], capsys)
    assert code == 0 and out.count("Q: ") == 3
