"""Usage errors and bad inputs on the command line: one stderr line, no box, no traceback, fast.

Nothing here loads a model: every case must be refused before the stack is opened (the stack
path given does not exist, so reaching it would be a different error).
"""

from __future__ import annotations

import io
import os
import resource
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from edge_stack.util._limits import MAX_BATCH_BYTES, MAX_BATCH_LINES, MAX_QUESTION_BYTES

from cli_support import run

NO_STACK = "/nonexistent/stack.toml"
BOX = ("╭", "│", "╰", "Usage:", "Try '")


def one_line_error(err: str) -> str:
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith("edgestack: error: ") and err.endswith("\n"), err
    assert "Traceback" not in err and not any(mark in err for mark in BOX), err
    return err


# --- usage errors: exit 2, one line that names the help to read ----------------------------

USAGE = [
    (["ask", "q", "--max-tokens", "0"], "'--max-tokens'"),
    (["ask", "q", "--max-tokens", str(2**20 + 1)], "'--max-tokens'"),
    (["ask", "q", "--threads", "0"], "'--threads'"),
    (["ask", "q", "--threads", "-4"], "'--threads'"),
    (["ask", "q", "--threads", "513"], "'--threads'"),
    (["ask", "q", "--threads", "4096"], "'--threads'"),
    (["ask", "q", "--threads", "20000"], "'--threads'"),
    (["ask", "q", "--threads", "100000"], "'--threads'"),
    (["ask", "q", "--threads", "1000000"], "'--threads'"),
    (["ask", "q", "--threads", "x"], "'--threads'"),
    (["chat", "--threads", "4096"], "'--threads'"),
    (["ask", "q", "--temperature", "nan"], "'--temperature'"),
    (["ask", "q", "--temperature", "inf"], "'--temperature'"),
    (["ask", "q", "--temperature", "-inf"], "'--temperature'"),
    (["ask", "q", "--temperature", "2.5"], "'--temperature'"),
    (["ask", "q", "--seed", str(2**32)], "'--seed'"),
    (["ask", "q", "--batch-size", "0"], "'--batch-size'"),
    (["ask"], "the question is empty"),
    (["ask", ""], "the question is empty"),
    (["ask", " \t\n "], "the question is empty"),
    (["ask", "q", "--bogus"], "No such option: --bogus"),
    (["ask", "q", "--batch", "x.txt"], "not both"),
    (["ask", "q", "--pack-prompts"], "give --batch FILE too"),
    (["chat", "extra"], "unexpected extra argument"),
    (["nosuchcommand"], "No such command"),
    (["quantize"], "Missing argument"),
]


@pytest.mark.parametrize(("argv", "match"), USAGE)
def test_usage_errors_are_one_line(
    argv: list[str],
    match: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # `ask` without a question reads standard input when it is not a terminal: give it none.
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"")))
    code, out, err = run([*argv, "--stack", NO_STACK] if argv[0] == "ask" else argv, capsys)
    assert code == 2 and out == ""
    one_line_error(err)
    command = f"edgestack {argv[0]}" if argv[0] in ("ask", "chat", "quantize") else "edgestack"
    assert match in err and err.rstrip().endswith(f"see '{command} --help'")


def test_help_is_unchanged(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(["ask", "--help"], capsys)
    assert code == 0 and err == ""
    assert out.startswith("Usage: edgestack ask [OPTIONS] [question]")
    assert "Options:" in out and "--threads" in out and "1<=x<=512" in out
    assert "65,536 bytes" in out  # the question limit is stated
    code, out, err = run([], capsys)  # no command: the help, as before
    assert code == 2 and "Usage: edgestack" in out + err and "Commands:" in out + err


# --- bad values that typer cannot see: exit 1, one line, before the stack is opened ----------


@pytest.mark.parametrize(
    ("question", "match"),
    [
        ("caf\udce9 au lait", "not valid UTF-8: byte 0xE9 at byte offset 3"),
        ("\u00e9\udcff", "not valid UTF-8: byte 0xFF at byte offset 2"),
        ("lone \ud800 surrogate", "lone surrogate U+D800 at character 5"),
        ("x" * (MAX_QUESTION_BYTES + 1), f"more than the limit of {MAX_QUESTION_BYTES}"),
        ("x" * 10_000_000, f"more than the limit of {MAX_QUESTION_BYTES}"),
    ],
)
def test_bad_question_is_one_line(
    question: str, match: str, capsys: pytest.CaptureFixture[str]
) -> None:
    started = time.perf_counter()
    code, out, err = run(["ask", question, "--stack", NO_STACK], capsys)
    assert code == 1 and out == "" and match in one_line_error(err)
    assert time.perf_counter() - started < 2.0


@pytest.mark.parametrize("option", ["--stack", "--batch"])
def test_nul_byte_in_a_path_is_one_line(option: str, capsys: pytest.CaptureFixture[str]) -> None:
    # typer's own path check sees --batch first (a usage error); --stack, a name or a path, is
    # edgestack's; the Python API's is in test_paths.
    argv = ["ask", "q", "--stack", "a\0b"] if option == "--stack" else ["ask", "--batch", "a\0b"]
    code, _, err = run(argv, capsys)
    if option == "--stack":  # a name or a path: edgestack's own path check
        assert code == 1 and "NUL byte" in one_line_error(err) and "from --stack" in err
    else:
        assert code == 2 and "null byte" in one_line_error(err) and f"'{option}'" in err


def _batch(tmp_path: Path, kind: str) -> str:
    path = tmp_path / "questions.txt"
    if kind == "nul":
        path.write_bytes(b"What is 2 plus 3?\nbad\0line\n")
    elif kind == "too big":
        path.write_bytes((b"x" * 1000 + b"\n") * (MAX_BATCH_BYTES // 1000 + 1))
    elif kind == "too many lines":
        path.write_bytes(b"What is 1 plus 1?\n" * (MAX_BATCH_LINES + 1))
    elif kind == "blank lines count":
        path.write_bytes(b"What is 1 plus 1?" + b"\n" * (MAX_BATCH_LINES + 1))
    elif kind == "long line":
        path.write_bytes(b"ok\n" + b"x" * (MAX_QUESTION_BYTES + 1) + b"\n")
    elif kind == "not utf-8":
        path.write_bytes(b"What is 2 plus 3?\n\xff\xfe bad\n")
    elif kind == "device":
        return "/dev/zero"
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "folder":
        path.mkdir()
    elif kind == "loop":
        path.symlink_to(path)
    elif kind != "missing":
        raise AssertionError(kind)
    return str(path)


@pytest.mark.parametrize(
    ("kind", "match"),
    [
        ("nul", "has a NUL byte at byte offset 21"),
        ("too big", f"is more than {MAX_BATCH_BYTES} bytes (the limit)"),
        ("too many lines", f"{MAX_BATCH_LINES + 1} lines, more than {MAX_BATCH_LINES}"),
        ("blank lines count", f"more than {MAX_BATCH_LINES}"),
        ("long line", f"line 2: the question is more than {MAX_QUESTION_BYTES} bytes"),
        ("not utf-8", "not UTF-8 text (bad byte 0xFF at line 2, byte offset 18)"),
        ("device", "is a character device, not a regular file"),
        ("fifo", "is a FIFO (named pipe), not a regular file"),
        ("folder", "is a folder, not a regular file"),
        ("loop", "is a symlink loop"),
        ("missing", "does not exist"),
    ],
)
def test_bad_batch_file_is_one_line(
    tmp_path: Path, kind: str, match: str, capsys: pytest.CaptureFixture[str]
) -> None:
    started = time.perf_counter()
    code, out, err = run(["ask", "--batch", _batch(tmp_path, kind), "--stack", NO_STACK], capsys)
    assert code == 1 and out == "" and match in one_line_error(err)
    assert time.perf_counter() - started < 5.0


class _Endless(io.RawIOBase):
    """A stream that never ends (like /dev/zero, but of a given byte)."""

    def __init__(self, byte: bytes) -> None:
        self.byte = byte
        self.served = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        buffer[:] = self.byte * len(buffer)
        self.served += len(buffer)
        return len(buffer)


@pytest.mark.parametrize(
    ("byte", "match"),
    [(b"\0", "has a NUL byte at byte offset 0"), (b"a", f"more than {MAX_BATCH_BYTES} bytes")],
)
def test_endless_standard_input_is_refused_after_a_bounded_read(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], byte: bytes, match: str
) -> None:
    source = _Endless(byte)
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BufferedReader(source)))
    code, out, err = run(["ask", "--batch", "-", "--stack", NO_STACK], capsys)
    assert code == 1 and out == ""
    assert "standard input (--batch -)" in err and match in one_line_error(err)
    assert source.served <= MAX_BATCH_BYTES + (2 << 20)


# --- the real process: argv bytes, /dev/zero, memory ------------------------------------------


#: address space each CLI process may use: a bounded read fits easily, an unbounded one fails
#: (a child's peak RSS cannot be measured instead: it counts the memory of the forked parent)
CHILD_MEMORY = 512 << 20


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (CHILD_MEMORY, CHILD_MEMORY))


def _run_process(
    args: Sequence[str | bytes], stdin: int | None = None, env: dict[str, str] | None = None
) -> tuple[int, str, float]:
    """``python -m edge_stack ARGS`` in CHILD_MEMORY: (exit code, stderr, seconds)."""
    started = time.perf_counter()
    proc = subprocess.Popen(
        [os.fsencode(sys.executable), b"-m", b"edge_stack", *[os.fsencode(a) for a in args]],
        stdin=stdin if stdin is not None else subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=env,
        preexec_fn=_limit_memory,
    )
    try:
        _, err = proc.communicate(timeout=60)  # a hang is a failure, not a stuck suite
    finally:
        proc.kill()
        proc.wait()
    return proc.returncode, err.decode("utf-8", "replace"), time.perf_counter() - started


def test_process_argv_not_utf8() -> None:
    code, err, _ = _run_process([b"ask", b"caf\xe9?", b"--stack", NO_STACK.encode()])
    assert code == 1 and "byte 0xE9 at byte offset 3" in one_line_error(err)


@pytest.mark.parametrize("how", ["path", "stdin"])
def test_process_dev_zero_is_fast_and_small(how: str) -> None:
    with open("/dev/zero", "rb") as zero:
        args = ["ask", "--batch", "/dev/zero" if how == "path" else "-", "--stack", NO_STACK]
        code, err, seconds = _run_process(args, stdin=zero.fileno())
    assert code == 1 and ("/dev/zero" in err or "standard input" in err)
    one_line_error(err)
    assert seconds < 10


def test_process_endless_text_on_stdin_is_bounded() -> None:
    yes = subprocess.Popen(["yes", "What is 2 plus 3?"], stdout=subprocess.PIPE)
    assert yes.stdout is not None
    try:
        code, err, seconds = _run_process(
            ["ask", "--batch", "-", "--stack", NO_STACK], stdin=yes.stdout.fileno()
        )
    finally:
        yes.stdout.close()
        yes.kill()
        yes.wait()
    assert code == 1 and f"more than {MAX_BATCH_BYTES} bytes" in one_line_error(err)
    assert seconds < 10


@pytest.mark.parametrize("value", ["0", "abc", "4096", "100000", "1000000"])
def test_process_bad_env_threads(tmp_path: Path, value: str) -> None:
    (tmp_path / "stack.toml").write_text("version = 1\n")  # never read: threads come first
    env = {**os.environ, "EDGESTACK_THREADS": value}
    code, err, seconds = _run_process(["ask", "q", "--stack", str(tmp_path)], env=env)
    assert code == 1 and "EDGESTACK_THREADS must be a whole number" in one_line_error(err)
    assert seconds < 10
