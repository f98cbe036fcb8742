"""Inputs and outputs that once broke the CLI: `logs -n 2**63` (an internal OverflowError),
standard output closed or its reader gone (an internal AttributeError, or a silent exit), and
`chat` fed an endless line or NUL bytes (read forever, or accepted what --batch refuses)."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest

from edge_stack import Answer, Stack, StageTrace
from edge_stack.errors import BadArgument
from edge_stack.tools._runlog import MAX_RECENT, RunLog
from edge_stack.util._limits import MAX_BATCH_BYTES, MAX_BATCH_LINES

from cli_support import run


def _log_one_run() -> None:
    stage = StageTrace("s", "prompt", "out", 3, 2, 0.01)
    RunLog().append(Answer("out", (stage,), "demo", "q", 0.01), stack_path="/s/stack.toml")


# --- logs --limit (F15) ---------------------------------------------------------------------------

#: --limit given -> accepted?
LIMITS = {
    "2**63": ("9223372036854775808", False),
    "one above the limit": (str(MAX_RECENT + 1), False),
    "5000 digits": ("1" + "0" * 5000, False),
    "zero": ("0", False),
    "the limit": (str(MAX_RECENT), True),
    "one": ("1", True),
}


@pytest.mark.parametrize("case", list(LIMITS))
def test_logs_limit_is_bounded(capsys: pytest.CaptureFixture[str], case: str) -> None:
    limit, accepted = LIMITS[case]
    _log_one_run()  # the overflow needed a log to read from
    code, out, err = run(["logs", "-n", limit], capsys)
    if accepted:
        assert (code, err) == (0, "") and "Q: q" in out
        return
    assert (code, out) == (2, "")
    assert err.count("\n") == 1 and err.startswith("edgestack: error: Invalid value for '--limit'")


@pytest.mark.parametrize("limit", [2**63, MAX_RECENT + 1, 0, -1, True, 2.0])
def test_run_log_read_is_bounded(limit: object) -> None:
    _log_one_run()
    with pytest.raises(BadArgument, match=f"from 1 to {MAX_RECENT}"):
        RunLog().recent(limit)  # type: ignore[arg-type]


# --- standard output closed or gone (F16) ---------------------------------------------------------

#: commands that write to standard output, and need nothing else
WRITERS = {
    "version": ["--version"],
    "help": ["--help"],
    "logs --json": ["logs", "--json"],
    "list": ["list"],
}
CLOSED = (
    "edgestack: error: standard output is closed, so the output cannot be written; send it to "
    "a file, a pipe or the terminal (for example > out.txt)\n"
)
BROKEN = (
    "edgestack: error: the program reading standard output closed it (broken pipe, as with "
    "| head); the rest of the output was not written\n"
)


def _edgestack(argv: list[str], home: Path, *, stdout: str) -> tuple[int, str]:
    """Run ``edgestack ARGV`` with standard output closed ("closed") or a pipe whose reader is
    gone before anything is written ("broken"): (exit status, stderr)."""
    env = {**os.environ, "EDGESTACK_HOME": str(home)}
    command = [sys.executable, "-m", "edge_stack", *argv]
    if stdout == "closed":
        command = ["sh", "-c", 'exec "$@" >&-', "sh", *command]
        proc = subprocess.run(
            command, env=env, cwd=home, capture_output=False, stderr=subprocess.PIPE, timeout=300
        )
        return proc.returncode, proc.stderr.decode()
    child = subprocess.Popen(
        command, env=env, cwd=home, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert child.stdout is not None and child.stderr is not None
    child.stdout.close()  # the reader leaves at once, as `| head -0` would
    err = child.stderr.read().decode()
    return child.wait(timeout=300), err


@pytest.mark.parametrize("stdout", ["closed", "broken"])
@pytest.mark.parametrize("command", list(WRITERS))
def test_unwritable_stdout_is_one_line(command: str, stdout: str) -> None:
    _log_one_run()
    code, err = _edgestack(WRITERS[command], Path(os.environ["EDGESTACK_HOME"]), stdout=stdout)
    assert (code, err) == ((1, CLOSED) if stdout == "closed" else (141, BROKEN))


@pytest.mark.llama
@pytest.mark.torch
@pytest.mark.parametrize("stdout", ["closed", "broken"])
def test_unwritable_stdout_while_asking(tiny_stack: Path, stdout: str) -> None:
    argv = ["ask", "What is 2 plus 3?", "--stack", str(tiny_stack), "--no-log"]
    code, err = _edgestack(argv, Path(os.environ["EDGESTACK_HOME"]), stdout=stdout)
    assert (code, err) == ((1, CLOSED) if stdout == "closed" else (141, BROKEN))


# --- chat's input (F18) ---------------------------------------------------------------------------


class Endless(io.RawIOBase):
    """``head`` and then ``fill`` without end, as /dev/zero is; refuses to be read past
    ``stop`` bytes, so that a reader without a bound fails instead of running forever."""

    def __init__(self, head: bytes, fill: bytes, stop: int = 4 * MAX_BATCH_BYTES) -> None:
        self.head, self.fill, self.stop, self.given = head, fill, stop, 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        if self.given > self.stop:
            raise RuntimeError("read far past chat's limit: the input is not bounded")
        n = len(buffer)
        data = self.head[:n]
        self.head = self.head[n:]
        data += self.fill * (n - len(data))
        buffer[:n] = data
        self.given += n
        return n


def _stdin(data: bytes | Endless) -> io.TextIOWrapper:
    raw = data if isinstance(data, Endless) else io.BytesIO(data)
    return io.TextIOWrapper(io.BufferedReader(raw), encoding="utf-8")  # type: ignore[arg-type]


#: input -> (questions answered, the error line's text; None: no error)
CHAT_INPUTS: dict[str, tuple[bytes | Endless, list[str], str | None]] = {
    "endless NUL bytes (/dev/zero)": (
        Endless(b"", b"\0"),
        [],
        "standard input has a NUL byte (line 1, byte offset 0), so it is not text",
    ),
    "an endless line": (
        Endless(b"one\n", b"x"),
        ["one"],
        f"standard input is more than {MAX_BATCH_BYTES} bytes",
    ),
    "a NUL byte after a question": (
        b"one\nbad \0 line\ntwo\n",
        ["one"],
        "standard input has a NUL byte (line 2, byte offset 8)",
    ),
    "too many lines": (
        b"\n" * MAX_BATCH_LINES + b"one\n",
        [],
        f"standard input has more than {MAX_BATCH_LINES} lines",
    ),
    "blank and whitespace lines": (b"one\n\n \t \n\r\n\x0b\x0c\ntwo", ["one", "two"], None),
}


@pytest.mark.llama
@pytest.mark.torch
@pytest.mark.parametrize("case", list(CHAT_INPUTS))
def test_chat_input_is_bounded_as_batch_input_is(
    tiny_stack: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    case: str,
) -> None:
    data, asked, error = CHAT_INPUTS[case]
    with Stack.load(tiny_stack, threads=1) as stack:
        want = "".join(f"{stack.ask(q).text}\n" for q in asked)
    monkeypatch.setattr(sys, "stdin", _stdin(data))
    code, out, err = run(["chat", "--stack", str(tiny_stack), "--no-log"], capsys)
    assert out == want
    if error is None:
        assert (code, err) == (0, "")
    else:
        assert code == 1 and err.count("\n") == 1, err
        assert err.startswith("edgestack: error: ") and error in err
