"""The SQLite run log."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from edge_stack import Answer, StageTrace
from edge_stack._env import settings
from edge_stack._runlog import RunLog, default_log_path, log_answer


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
