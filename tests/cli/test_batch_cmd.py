"""`edgestack ask --batch` on the tiny real stack: the one-by-one answers, clear errors."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import pytest

from edge_stack import Stack

from cli_support import run

pytestmark = [pytest.mark.llama, pytest.mark.torch]

QUESTIONS = [
    "What is 15 plus 28?",
    "Tom has 12 apples and buys 7 more. How many apples does he have?",
    "A {curly} question",
    "ünïcödé ✓ <|endoftext|>",
    "zero",
]


def _without_seconds(answer: dict[str, object]) -> dict[str, object]:
    stages = answer["stages"]
    assert isinstance(stages, list)
    return {k: v for k, v in answer.items() if k != "seconds"} | {
        "stages": [{k: v for k, v in s.items() if k != "seconds"} for s in stages]
    }


@pytest.mark.parametrize("batch_size", ["1", "2", "8"])
def test_batch_equals_one_by_one(
    tiny_stack: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], batch_size: str
) -> None:
    with Stack.load(tiny_stack, threads=1) as stack:
        expected = [_without_seconds(stack.ask(q).to_dict()) for q in QUESTIONS]
    batch = tmp_path / "questions.txt"
    batch.write_text("\n".join(QUESTIONS[:2]) + "\n\n  \n" + "\n".join(QUESTIONS[2:]) + "\n")
    code, out, err = run(
        ["ask", "--batch", str(batch), "--stack", str(tiny_stack), "--batch-size", batch_size],
        capsys,
    )
    assert code == 0 and err == ""
    lines = out.splitlines()
    assert len(lines) == len(QUESTIONS)
    answers = [json.loads(line) for line in lines]
    assert list(answers[0]) == ["stack", "question", "answer", "seconds", "stages"]
    assert [_without_seconds(a) for a in answers] == expected


def test_pack_prompts_answers_every_question(
    tiny_stack: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--pack-prompts reaches the engine (the answers of this random model may differ from one
    by one at a near-tie, so only their shape is compared; tests/runtime/test_batch.py checks the
    packed logits)."""
    batch = tmp_path / "questions.txt"
    batch.write_text("\n".join(QUESTIONS) + "\n")
    argv = ["ask", "--batch", str(batch), "--stack", str(tiny_stack), "--pack-prompts"]
    code, out, err = run(argv, capsys)
    assert code == 0 and err == ""
    answers = [json.loads(line) for line in out.splitlines()]
    assert [a["question"] for a in answers] == QUESTIONS
    assert all(a["stages"] and a["answer"] == a["stages"][-1]["output"] for a in answers)


def test_batch_from_standard_input(
    tiny_stack: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    batch = tmp_path / "questions.txt"
    batch.write_text("\n".join(QUESTIONS) + "\n", encoding="utf-8")
    code, from_file, err = run(["ask", "--batch", str(batch), "--stack", str(tiny_stack)], capsys)
    assert code == 0 and err == ""
    data = ("\n".join(QUESTIONS) + "\n").encode("utf-8")
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data)))
    code, from_stdin, err = run(["ask", "--batch", "-", "--stack", str(tiny_stack)], capsys)
    assert code == 0 and err == ""
    assert [_without_seconds(json.loads(line)) for line in from_stdin.splitlines()] == [
        _without_seconds(json.loads(line)) for line in from_file.splitlines()
    ]
    assert len(from_stdin.splitlines()) == len(QUESTIONS)


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (None, "does not exist"),
        (b"", "has no questions"),
        (b"\n   \n\t\n", "has no questions"),
        (b"What is 2 plus 3?\n\xff\xfe bad\n", "not UTF-8 text (bad byte 0xFF at line 2"),
    ],
)
def test_bad_batch_file_is_one_line(
    tiny_stack: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    content: bytes | None,
    match: str,
) -> None:
    batch = tmp_path / "questions.txt"
    if content is not None:
        batch.write_bytes(content)
    code, out, err = run(["ask", "--batch", str(batch), "--stack", str(tiny_stack)], capsys)
    assert code != 0 and out == ""
    assert err.count("\n") == 1 and err.startswith("edgestack: error: ")
    assert match in err and "Traceback" not in err


def test_question_and_batch_together_is_a_usage_error(
    tiny_stack: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    batch = tmp_path / "q.txt"
    batch.write_text("What is 1 plus 1?\n")
    code, _, err = run(["ask", "hello", "--batch", str(batch), "--stack", str(tiny_stack)], capsys)
    assert code == 2 and "not both" in err


def test_no_question_at_all_is_a_usage_error(
    tiny_stack: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"")))  # nothing piped in
    code, _, err = run(["ask", "--stack", str(tiny_stack)], capsys)
    assert code == 2 and "empty" in err
