"""The local run log: every ask, with each stage's prompt, output and timings, in SQLite.

The log lives in ``settings().data_dir / "runs.sqlite3"``; ``--no-log`` or EDGESTACK_NO_LOG=1
turns it off. Each append is one short transaction, so several processes can share the file.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._env import settings
from ._events import Answer

logger = logging.getLogger(__name__)

LOG_NAME = "runs.sqlite3"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    created REAL NOT NULL,
    stack TEXT NOT NULL,
    stack_path TEXT NOT NULL,
    question TEXT NOT NULL,
    answer TEXT NOT NULL,
    seconds REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS stages (
    run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    idx INTEGER NOT NULL,
    name TEXT NOT NULL,
    prompt TEXT NOT NULL,
    output TEXT NOT NULL,
    prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    seconds REAL NOT NULL,
    PRIMARY KEY (run_id, idx)
);
"""


@dataclass(frozen=True)
class LoggedRun:
    """One logged ask."""

    id: int
    created: float
    stack: str
    stack_path: str
    question: str
    answer: str
    seconds: float
    stages: tuple[dict[str, Any], ...]

    def to_dict(self) -> dict[str, Any]:
        """The object ``edgestack logs --json`` prints for this run (the ask --json shape plus
        id, time and stack path)."""
        return {
            "id": self.id,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(self.created)),
            "stack": self.stack,
            "stack_path": self.stack_path,
            "question": self.question,
            "answer": self.answer,
            "seconds": self.seconds,
            "stages": list(self.stages),
        }


def default_log_path() -> Path:
    """Where the run log lives."""
    return settings().data_dir / LOG_NAME


class RunLog:
    """Append-and-read access to the SQLite run log at ``path``."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path or default_log_path()

    def _connect(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, timeout=10.0)
        conn.executescript(_SCHEMA)
        return conn

    def append(self, answer: Answer, *, stack_path: Path | str) -> int:
        """Record one ask; returns its id."""
        with closing(self._connect()) as conn, conn:
            cur = conn.execute(
                "INSERT INTO runs (created, stack, stack_path, question, answer, seconds) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (
                    time.time(),
                    answer.stack,
                    str(stack_path),
                    answer.question,
                    answer.text,
                    answer.seconds,
                ),
            )
            run_id = int(cur.lastrowid or 0)
            conn.executemany(
                "INSERT INTO stages (run_id, idx, name, prompt, output, prompt_tokens, "
                "completion_tokens, seconds) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        run_id,
                        i,
                        s.name,
                        s.prompt,
                        s.output,
                        s.prompt_tokens,
                        s.completion_tokens,
                        s.seconds,
                    )
                    for i, s in enumerate(answer.stages)
                ],
            )
        logger.debug("logged run %d to %s", run_id, self.path)
        return run_id

    def recent(self, limit: int = 20) -> list[LoggedRun]:
        """The last ``limit`` runs, newest first (empty when there is no log yet)."""
        if not self.path.exists():
            return []
        with closing(self._connect()) as conn:
            rows = conn.execute(
                "SELECT id, created, stack, stack_path, question, answer, seconds FROM runs "
                "ORDER BY id DESC LIMIT ?",
                (limit,),
            ).fetchall()
            runs = []
            for row in rows:
                stages = conn.execute(
                    "SELECT name, prompt, output, prompt_tokens, completion_tokens, seconds "
                    "FROM stages WHERE run_id = ? ORDER BY idx",
                    (row[0],),
                ).fetchall()
                keys = ("name", "prompt", "output", "prompt_tokens", "completion_tokens", "seconds")
                runs.append(
                    LoggedRun(
                        id=row[0],
                        created=row[1],
                        stack=row[2],
                        stack_path=row[3],
                        question=row[4],
                        answer=row[5],
                        seconds=row[6],
                        stages=tuple(dict(zip(keys, s, strict=True)) for s in stages),
                    )
                )
        return runs


def log_answer(answer: Answer, *, stack_path: Path | str, enabled: bool = True) -> int | None:
    """Append ``answer`` unless logging is off (``enabled`` False or EDGESTACK_NO_LOG).

    A log that cannot be written (read-only home, locked file) must not cost the user the
    answer, so failures are logged as warnings and swallowed.
    """
    if not enabled or settings().no_log:
        return None
    try:
        return RunLog().append(answer, stack_path=stack_path)
    except (sqlite3.Error, OSError) as exc:
        logger.warning("could not write the run log %s: %s", default_log_path(), exc)
        return None


def dumps_run(run: LoggedRun) -> str:
    """One run as a JSON line."""
    return json.dumps(run.to_dict(), ensure_ascii=False)
