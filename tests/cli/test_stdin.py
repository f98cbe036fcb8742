"""Questions from pipes, files and a terminal: `ask -`, `ask` with a pipe on stdin, `--batch -`
with each answer's own time, and `chat` until the end of input (blank lines skipped; on a
terminal with line editing and history)."""

from __future__ import annotations

import io
import json
import os
import pty
import select
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from edge_stack import Stack
from edge_stack.util._limits import MAX_QUESTION_BYTES

from cli_support import run
from stack_builders import QUESTIONS

pytestmark = [pytest.mark.llama, pytest.mark.torch]

QUESTION = "What is 15 plus 28?"


def stdin_of(data: bytes) -> io.TextIOWrapper:
    return io.TextIOWrapper(io.BytesIO(data), encoding="utf-8")


@pytest.fixture(scope="module")
def expected(tiny_stack: Path) -> dict[str, str]:
    with Stack.load(tiny_stack, threads=1) as stack:
        return {q: stack.ask(q).text for q in (QUESTION, "What is\n15 plus 28?")}


@pytest.mark.parametrize(
    ("argv", "data", "question"),
    [
        ([], b"What is 15 plus 28?\n", QUESTION),
        (["-"], b"What is 15 plus 28?", QUESTION),
        (["-"], b"\xef\xbb\xbf  What is 15 plus 28?  \r\n", QUESTION),  # BOM, spaces, CRLF
        ([], b"What is\n15 plus 28?\n", "What is\n15 plus 28?"),  # a question may span lines
    ],
)
def test_ask_reads_the_question_from_stdin(
    tiny_stack: Path,
    expected: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    data: bytes,
    question: str,
) -> None:
    monkeypatch.setattr(sys, "stdin", stdin_of(data))
    code, out, err = run(["ask", *argv, "--stack", str(tiny_stack), "--json"], capsys)
    assert code == 0 and err == ""
    answer = json.loads(out)
    assert answer["question"] == question and answer["answer"] == expected[question]


def test_an_argument_wins_over_a_pipe(
    tiny_stack: Path,
    expected: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr(sys, "stdin", stdin_of(b"something else entirely"))
    code, out, _ = run(["ask", QUESTION, "--stack", str(tiny_stack)], capsys)
    assert code == 0 and out == f"{expected[QUESTION]}\n"


@pytest.mark.parametrize(
    ("data", "code", "match"),
    [
        (b"", 2, "the question is empty (standard input had no text)"),
        (b" \n\t\n", 2, "the question is empty"),
        (b"caf\xe9?", 1, "not valid UTF-8 (byte 0xE9 at byte offset 3)"),
        (b"a\0b", 1, "has a NUL byte at character 1"),
        (b"x" * (MAX_QUESTION_BYTES + 1), 1, f"more than {MAX_QUESTION_BYTES} bytes"),
    ],
)
def test_bad_stdin_questions_are_one_line(
    tiny_stack: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    data: bytes,
    code: int,
    match: str,
) -> None:
    monkeypatch.setattr(sys, "stdin", stdin_of(data))
    got, out, err = run(["ask", "-", "--stack", str(tiny_stack)], capsys)
    assert got == code and out == "" and len(err.strip().splitlines()) == 1
    assert err.startswith("edgestack: error: ") and match in err


def test_ask_without_a_question_on_a_terminal_says_how(
    tiny_stack: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr(sys, "stdin", Terminal(""))
    code, out, err = run(["ask", "--stack", str(tiny_stack)], capsys)
    assert code == 2 and out == "" and "or - to read it from standard input" in err


def test_batch_lines_carry_each_questions_own_time(
    tiny_stack: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    questions = QUESTIONS[:4]
    monkeypatch.setattr(sys, "stdin", stdin_of("\n".join(questions).encode() + b"\n"))
    argv = ["ask", "--batch", "-", "--batch-size", "1", "--stack", str(tiny_stack)]
    started = time.perf_counter()
    code, out, err = run([*argv, "--no-log"], capsys)
    wall = time.perf_counter() - started
    answers = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and [a["question"] for a in answers] == questions, err
    for a in answers:
        assert a["seconds"] == pytest.approx(sum(s["seconds"] for s in a["stages"]), abs=1e-5)
    # One at a time, each answer's own time: together they fit in the run (the whole batch's
    # time on every line would add up to four times the run).
    assert sum(a["seconds"] for a in answers) <= wall
    assert len({a["seconds"] for a in answers}) > 1


def test_chat_skips_blank_lines_and_reads_to_the_end(
    tiny_stack: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with Stack.load(tiny_stack, threads=1) as stack:
        want = [stack.ask(q).text for q in ("one", "two", "three")]
    monkeypatch.setattr(sys, "stdin", stdin_of(b"one\n\n   \ntwo\n\n\nthree"))
    code, out, err = run(["chat", "--stack", str(tiny_stack), "--no-log"], capsys)
    assert code == 0 and err == "" and out == "".join(f"{w}\n" for w in want)


def _wait_for(fd: int, seen: bytearray, done: Callable[[bytes], bool], timeout: float = 90) -> None:
    """Read the terminal into ``seen`` until ``done(seen)`` (or fail after ``timeout``)."""
    deadline = time.monotonic() + timeout
    while not done(bytes(seen)):
        left = deadline - time.monotonic()
        assert left > 0, f"timed out; the terminal shows {bytes(seen)!r}"
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            try:
                chunk = os.read(fd, 4096)
            except OSError:  # EIO: the child closed the terminal
                chunk = b""
            assert chunk, f"the terminal closed; it showed {bytes(seen)!r}"
            seen += chunk


def test_chat_on_a_terminal_has_line_editing_and_history(
    tiny_stack: Path, expected: dict[str, str]
) -> None:
    pytest.importorskip("readline")
    answer = expected[QUESTION].encode()
    if len(answer) < 3:
        pytest.skip("the random model's answer is too short to find on the terminal")
    home = Path(os.environ["EDGESTACK_HOME"])
    main, child = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "edge_stack", "chat", "--stack", str(tiny_stack), "--no-log"],
        stdin=child,
        stdout=child,
        stderr=child,
        env={**os.environ, "TERM": "xterm", "EDGESTACK_THREADS": "1"},
        close_fds=True,
    )
    os.close(child)
    seen = bytearray()
    try:
        _wait_for(main, seen, lambda b: b.endswith(b"> "))
        # Typed with a mistake that backspace corrects (line editing) ...
        os.write(main, b"What is 15 plus 2X\x7f8?\r")
        _wait_for(main, seen, lambda b: b.count(answer) == 1 and b.endswith(b"> "))
        # ... then recalled with the up arrow (history) and asked again.
        os.write(main, b"\x1b[A\r")
        _wait_for(main, seen, lambda b: b.count(answer) == 2 and b.endswith(b"> "))
        os.write(main, b"\x04")  # Ctrl-D: the end of input
        assert proc.wait(timeout=60) == 0, bytes(seen)
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(main)
    assert QUESTION in (home / "chat-history").read_text()
