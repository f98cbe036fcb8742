"""The SQLite run log."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from pathlib import Path

import pytest

from edge_stack import Answer, StageTrace
from edge_stack.errors import RunLogError
from edge_stack.tools import _runlog
from edge_stack.tools._runlog import RunLog, default_log_path, log_answer
from edge_stack.util._env import settings


def answer(question: str, n_stages: int = 2) -> Answer:
    stages = tuple(
        StageTrace(f"s{i}", f"prompt {i} {question}", f"out {i}", 3 + i, 2, 0.01)
        for i in range(n_stages)
    )
    return Answer(stages[-1].output, stages, "demo", question, 0.05)


def test_append_and_read_back(tmp_path: Path) -> None:
    log = RunLog(tmp_path / "sub" / "runs.sqlite3")
    assert log.recent() == []
    first = log.append(answer("q1 {x}"), stack_path="/s/stack.toml")
    second = log.append(answer("q2", 3), stack_path=Path("/s/stack.toml"))
    runs = log.recent()
    assert [r.id for r in runs] == [second, first]
    assert runs[1].question == "q1 {x}" and runs[1].answer == "out 1"
    assert [s["name"] for s in runs[0].stages] == ["s0", "s1", "s2"]
    assert runs[1].stages[0] == {
        "name": "s0",
        "prompt": "prompt 0 q1 {x}",
        "output": "out 0",
        "prompt_tokens": 3,
        "completion_tokens": 2,
        "seconds": 0.01,
    }
    assert len(log.recent(1)) == 1
    data = runs[0].to_dict()
    assert data["stack_path"] == "/s/stack.toml" and data["answer"] == "out 2"


def test_log_answer_respects_switches(monkeypatch: pytest.MonkeyPatch) -> None:
    assert log_answer(answer("a"), stack_path="x", enabled=False) is None
    monkeypatch.setenv("EDGESTACK_NO_LOG", "1")
    settings.cache_clear()
    assert log_answer(answer("b"), stack_path="x") is None
    assert not default_log_path().exists()
    monkeypatch.delenv("EDGESTACK_NO_LOG")
    settings.cache_clear()
    assert log_answer(answer("c"), stack_path="x") is not None
    assert [r.question for r in RunLog().recent()] == ["c"]


def test_unwritable_log_does_not_fail_the_ask(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("EDGESTACK_HOME", str(blocker / "home"))
    settings.cache_clear()
    assert log_answer(answer("q"), stack_path="x") is None
    assert "could not write the run log" in caplog.text


def test_log_is_plain_sqlite(tmp_path: Path) -> None:
    log = RunLog(tmp_path / "runs.sqlite3")
    log.append(answer("q"), stack_path="x")
    with sqlite3.connect(log.path) as conn:
        assert conn.execute("SELECT count(*) FROM stages").fetchone() == (2,)


# --- damaged, locked and unwritable logs --------------------------------------------------------

#: text the damaged files below hold: an error message must never echo it
MARKER = "SECRET-QUESTION-TEXT"


def _good_log(path: Path, runs: int = 3) -> RunLog:
    log = RunLog(path)
    for i in range(runs):
        log.append(answer(f"{MARKER} {i} " + "x" * 3000), stack_path="x")
    return log


def _flip_page(data: bytes, page: int) -> bytes:
    size = int.from_bytes(data[16:18], "big")
    start = page * size
    return data[:start] + bytes(b ^ 0xFF for b in data[start : start + size]) + data[start + size :]


def _other_db(path: Path) -> None:
    path.unlink()
    with closing(sqlite3.connect(path)) as conn, conn:
        conn.execute("CREATE TABLE notes (text TEXT)")
        conn.execute("INSERT INTO notes VALUES (?)", (MARKER,))


def _bad_value(path: Path) -> None:
    with closing(sqlite3.connect(path)) as conn, conn:
        conn.execute("UPDATE runs SET created = ? WHERE id = 2", (MARKER,))


DAMAGED_LOGS: dict[str, Callable[[Path], object]] = {
    "not SQLite": lambda p: p.write_text(f"{MARKER}\n" * 500),
    "truncated": lambda p: p.write_bytes(p.read_bytes()[:5000]),
    "flipped header": lambda p: p.write_bytes(
        _flip_page(p.read_bytes(), 0)[:100] + p.read_bytes()[100:]
    ),
    "flipped page": lambda p: p.write_bytes(_flip_page(p.read_bytes(), 1)),
    "another database": _other_db,
    "malformed value": _bad_value,
}


@pytest.mark.parametrize("damage", list(DAMAGED_LOGS), ids=list(DAMAGED_LOGS))
def test_damaged_log_is_one_line_error(tmp_path: Path, damage: str) -> None:
    log = _good_log(tmp_path / "runs.sqlite3")
    DAMAGED_LOGS[damage](log.path)
    with pytest.raises(RunLogError) as info:
        log.recent()
    msg = str(info.value)
    assert msg.startswith(f"run log {log.path} is damaged (")
    assert msg.endswith("); move it away or delete it, asks will start a new one")
    assert "\n" not in msg and MARKER not in msg


def test_empty_log_file_has_no_runs(tmp_path: Path) -> None:
    (tmp_path / "runs.sqlite3").write_bytes(b"")
    assert RunLog(tmp_path / "runs.sqlite3").recent() == []


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Another connection holding the log's exclusive lock (as a writer mid-commit does)."""
    holder = sqlite3.connect(path, isolation_level=None)
    try:
        holder.execute("BEGIN EXCLUSIVE")
        yield
    finally:
        holder.execute("ROLLBACK")
        holder.close()


def test_locked_log_waits_then_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_runlog, "LOCK_WAIT_S", 0.3)
    log = _good_log(tmp_path / "runs.sqlite3", runs=1)
    with _locked(log.path):
        started = time.monotonic()
        with pytest.raises(RunLogError, match=r"is locked by another process \(waited 0\.3 s\)"):
            log.recent()
        assert time.monotonic() - started >= 0.3  # it retried before giving up
    assert len(log.recent()) == 1  # and reads once the lock is gone


def _counts(path: Path) -> tuple[int, int]:
    with closing(sqlite3.connect(path)) as conn:
        runs = conn.execute("SELECT count(*) FROM runs").fetchone()[0]
        stages = conn.execute("SELECT count(*) FROM stages").fetchone()[0]
    return runs, stages


def _nan_stage(q: str) -> Answer:
    good = answer(q)
    bad = StageTrace("s9", "p", "o", 1, 1, float("nan"))  # SQLite stores NaN as NULL: refused
    return Answer(good.text, (*good.stages, bad), good.stack, q, good.seconds)


@pytest.mark.parametrize("failure", ["damaged", "locked", "refused stage"])
def test_ask_never_fails_and_never_logs_part_of_a_run(
    failure: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(_runlog, "LOCK_WAIT_S", 0.2)
    log = _good_log(default_log_path(), runs=2)
    if failure == "damaged":
        DAMAGED_LOGS["flipped page"](log.path)
        before = log.path.read_bytes()
        assert log_answer(answer("q"), stack_path="x") is None
        assert log.path.read_bytes() == before
    elif failure == "locked":
        with _locked(log.path):
            assert log_answer(answer("q"), stack_path="x") is None
        assert _counts(log.path) == (2, 4)
    else:
        assert log_answer(_nan_stage("q"), stack_path="x") is None
        assert _counts(log.path) == (2, 4)  # the run row went with its stages
    assert "this answer is not logged" in caplog.text


def test_undecodable_question_is_logged(tmp_path: Path) -> None:
    log = RunLog(tmp_path / "runs.sqlite3")
    log.append(answer("caf\udce9"), stack_path="x")  # argv bytes that are not UTF-8
    assert log.recent()[0].question == "caf?"
