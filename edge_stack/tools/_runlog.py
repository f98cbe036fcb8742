"""The local run log: every ask, with each stage's prompt, output and timings, in SQLite.

The log lives in ``settings().data_dir / "runs.sqlite3"``; ``--no-log`` or EDGESTACK_NO_LOG=1
turns it off. Each run keeps two times: ``seconds``, what the stack's stages took (prompt
evaluation and generation: the answer's own seconds), and ``wall_seconds``, what the user waited
(for ``ask``, from the command's start to the answer, loading the stack included; for a
``chat`` line, from reading it to the answer; None where nobody measured it, as in logs written
before this column existed). Each append is one short transaction (a run and its stages together or nothing),
so several processes can share the file and a killed ask leaves no partial entry.

The log is a convenience: an ask never fails because of it (a damaged, locked or unwritable log
costs a warning and that run's entry). Reading it (``edgestack logs``) raises
:class:`~edge_stack.errors.RunLogError` with one line saying what is wrong. Either side waits at
most :data:`LOCK_WAIT_S` for another process's lock.
"""

from __future__ import annotations

import json
import logging
import math
import sqlite3
import time
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import BadArgument, RunLogError
from ..pipeline._events import Answer
from ..util._datafile import private_folder
from ..util._env import settings

logger = logging.getLogger(__name__)

LOG_NAME = "runs.sqlite3"
#: seconds a read or an append waits for another process's lock before giving up
LOCK_WAIT_S = 2.0
#: the most runs one read returns (``edgestack logs --limit``): bounds its time and memory
MAX_RECENT = 100_000
# A logged time outside this range (seconds since 1970, up to the year 5138) is damage, and
# time.localtime() would raise on it.
_MAX_CREATED = 1e11
# SQLite result codes (primary, the low byte of sqlite_errorcode) that mean "held by another".
_BUSY_CODES = frozenset({5, 6})  # SQLITE_BUSY, SQLITE_LOCKED
# ... that mean the file itself is not a usable database,
_DAMAGE_CODES = frozenset({11, 26})  # SQLITE_CORRUPT, SQLITE_NOTADB
# ... and that mean the file could not be opened, read or written.
_ACCESS_CODES = frozenset({3, 8, 10, 13, 14})  # _PERM, _READONLY, _IOERR, _FULL, _CANTOPEN

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    created REAL NOT NULL,
    stack TEXT NOT NULL,
    stack_path TEXT NOT NULL,
    question TEXT NOT NULL,
    answer TEXT NOT NULL,
    seconds REAL NOT NULL,
    wall_seconds REAL
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
    #: what the stages took (prompt evaluation and generation)
    seconds: float
    stages: tuple[dict[str, Any], ...]
    #: what the user waited (ask: loading the stack included); None when not measured
    wall_seconds: float | None = None

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
            "wall_seconds": self.wall_seconds,
            "stages": list(self.stages),
        }


def default_log_path() -> Path:
    """Where the run log lives."""
    return settings().data_dir / LOG_NAME


def _text(value: str) -> str:
    """``value`` as SQLite can store it: lone surrogates (from undecodable argv) become "?"."""
    return value.encode("utf-8", "replace").decode("utf-8")


def _check_row(run_id: object, values: dict[str, object], texts: tuple[str, ...]) -> str | None:
    """What is wrong with one row read back (None if nothing): a column of the wrong type."""
    for key, value in values.items():
        if key in texts:
            ok = isinstance(value, str)
        elif key in ("prompt_tokens", "completion_tokens"):
            ok = type(value) is int and value >= 0
        elif isinstance(value, int | float) and math.isfinite(value):
            ok = key != "created" or 0 <= value < _MAX_CREATED
        else:
            ok = False
        if not ok:
            return f"run {run_id} has a malformed {key} ({type(value).__name__})"
    return None


_RUN_TEXTS = ("stack", "stack_path", "question", "answer")
_STAGE_KEYS = ("name", "prompt", "output", "prompt_tokens", "completion_tokens", "seconds")


class RunLog:
    """Append-and-read access to the SQLite run log at ``path``."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path or default_log_path()

    def _connect(self) -> sqlite3.Connection:
        private_folder(self.path.parent)
        conn = sqlite3.connect(self.path, timeout=LOCK_WAIT_S)
        try:
            conn.executescript(_SCHEMA)
            if "wall_seconds" not in _columns(conn):  # a log from before the column existed
                conn.execute("ALTER TABLE runs ADD COLUMN wall_seconds REAL")
                conn.commit()
        except BaseException:
            conn.close()
            raise
        return conn

    def append(
        self, answer: Answer, *, stack_path: Path | str, wall_seconds: float | None = None
    ) -> int:
        """Record one ask (all of it or, on any error, nothing); returns its id."""
        with closing(self._connect()) as conn, conn:  # one transaction: commit or roll back
            cur = conn.execute(
                "INSERT INTO runs (created, stack, stack_path, question, answer, seconds, "
                "wall_seconds) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    time.time(),
                    _text(answer.stack),
                    _text(str(stack_path)),
                    _text(answer.question),
                    _text(answer.text),
                    answer.seconds,
                    wall_seconds,
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
                        _text(s.name),
                        _text(s.prompt),
                        _text(s.output),
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
        """The last ``limit`` runs, newest first (empty when there is no log yet).

        Raises :class:`RunLogError` (one line) when the log is damaged, cannot be opened, or is
        locked by another process for more than :data:`LOCK_WAIT_S`, and BadArgument when
        ``limit`` is not a whole number from 1 to :data:`MAX_RECENT`.
        """
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_RECENT:
            raise BadArgument(
                f"the number of runs to show must be a whole number from 1 to {MAX_RECENT}, "
                f"not {str(limit)[:40]}; ask for fewer"
            )
        if not self.path.exists():
            return []
        try:
            return self._read(limit)
        except sqlite3.Error as exc:
            raise self._error(exc) from None

    def _read(self, limit: int) -> list[LoggedRun]:
        # mode=rw: never create the file or the schema just to read (a reader changes nothing).
        uri = f"{self.path.resolve().as_uri()}?mode=rw"
        with closing(sqlite3.connect(uri, uri=True, timeout=LOCK_WAIT_S)) as conn:
            # Undecodable text is damage to show, not a reason to refuse the whole log.
            conn.text_factory = lambda b: b.decode("utf-8", "replace")
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
            if not tables:
                return []  # an empty file: SQLite's empty database, nothing logged yet
            wall = "wall_seconds" if "wall_seconds" in _columns(conn) else "NULL"
            rows = conn.execute(
                "SELECT id, created, stack, stack_path, question, answer, seconds, "
                f"{wall} FROM runs ORDER BY id DESC LIMIT ?",
                (limit,),
            ).fetchall()
            runs = []
            for row in rows:
                values = dict(zip(("created", *_RUN_TEXTS, "seconds"), row[1:7], strict=True))
                if row[7] is not None:
                    values["wall_seconds"] = row[7]
                problem = _check_row(row[0], values, _RUN_TEXTS)
                stages = conn.execute(
                    "SELECT name, prompt, output, prompt_tokens, completion_tokens, seconds "
                    "FROM stages WHERE run_id = ? ORDER BY idx",
                    (row[0],),
                ).fetchall()
                stage_dicts = tuple(dict(zip(_STAGE_KEYS, s, strict=True)) for s in stages)
                for stage in stage_dicts:
                    problem = problem or _check_row(row[0], stage, _STAGE_KEYS[:3])
                if problem is not None:
                    raise RunLogError(self._damaged(problem))
                runs.append(
                    LoggedRun(
                        id=row[0],
                        created=row[1],
                        stack=row[2],
                        stack_path=row[3],
                        question=row[4],
                        answer=row[5],
                        seconds=row[6],
                        stages=stage_dicts,
                        wall_seconds=row[7],
                    )
                )
        return runs

    def _damaged(self, why: str) -> str:
        return (
            f"run log {self.path} is damaged ({why}); move it away or delete it, "
            "asks will start a new one"
        )

    def _locked(self) -> str:
        return (
            f"run log {self.path} is locked by another process (waited {LOCK_WAIT_S:g} s); "
            "try again when the other edgestack (or sqlite3) command has finished"
        )

    def _error(self, exc: sqlite3.Error) -> RunLogError:
        """The one-line error for what SQLite said while reading the log."""
        code = _code(exc)
        why = " ".join(str(exc).split())
        if code in _BUSY_CODES:
            return RunLogError(self._locked())
        # Any other complaint about the database itself (not SQLite, malformed, not our tables)
        # is damage; failing to open or read the file is the file system's business.
        if isinstance(exc, sqlite3.DatabaseError) and code not in _ACCESS_CODES:
            return RunLogError(self._damaged(why))
        return RunLogError(
            f"run log {self.path} cannot be used ({why}); check that it is a file you may "
            "read and write"
        )


def _columns(conn: sqlite3.Connection) -> set[str]:
    """The columns of the runs table."""
    return {str(r[1]) for r in conn.execute("PRAGMA table_info(runs)")}


def _code(exc: BaseException) -> int:
    """SQLite's primary result code of ``exc`` (-1 when it has none)."""
    code = getattr(exc, "sqlite_errorcode", None)
    return code & 0xFF if isinstance(code, int) else -1


def log_answer(
    answer: Answer,
    *,
    stack_path: Path | str,
    enabled: bool = True,
    wall_seconds: float | None = None,
) -> int | None:
    """Append ``answer`` unless logging is off (``enabled`` False or EDGESTACK_NO_LOG);
    ``wall_seconds`` is what the user waited for it (see the module).

    A log that cannot be written (damaged, locked, read-only home, a value SQLite refuses) must
    not cost the user the answer: any failure is logged as a warning and None returned, and the
    transaction leaves no part of the entry behind.
    """
    if not enabled or settings().no_log:
        return None
    log = RunLog()
    try:
        return log.append(answer, stack_path=stack_path, wall_seconds=wall_seconds)
    except Exception as exc:  # the log is optional: nothing it does may fail the ask
        code = _code(exc)
        if code in _BUSY_CODES:
            why = log._locked()
        elif code in _DAMAGE_CODES:
            why = log._damaged(" ".join(str(exc).split()))
        else:
            why = f"could not write the run log {log.path}: {' '.join(str(exc).split())}"
        logger.warning("this answer is not logged: %s", why)
        return None


def dumps_run(run: LoggedRun) -> str:
    """One run as a JSON line."""
    return json.dumps(run.to_dict(), ensure_ascii=False)
