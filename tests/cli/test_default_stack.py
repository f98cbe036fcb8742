"""The bundled default stack (models/word-problems, built by `edgestack build`) answers out of
the box: `edgestack ask` with no --stack, real llama.cpp, the issue's own example."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_stack import load_manifest
from edge_stack.util._paths import bundled_stack

from cli_support import run

pytestmark = pytest.mark.llama

QUESTION = "Sam has 23 stamps and buys 18 more. How many stamps does Sam have?"
LIMIT = 20 * 1000 * 1000  # bytes: the whole built stack (issue 5)


@pytest.fixture
def default_stack() -> Path:
    path = bundled_stack()
    if path is None:
        pytest.skip(
            "the default stack is not built (edgestack build models/word-problems/recipe.toml)"
        )
    return path


def test_default_stack_is_small_and_pinned(default_stack: Path) -> None:
    spec = load_manifest(default_stack)
    assert [s.name for s in spec.stages] == ["extract", "compute", "answer"]
    files = {s.model for s in spec.stages} | {s.lora for s in spec.stages if s.lora}
    assert all(s.sha256 for s in spec.stages) and all(s.lora_sha256 for s in spec.stages if s.lora)
    assert sum(f.stat().st_size for f in files) + default_stack.stat().st_size <= LIMIT


def test_ask_without_stack_uses_the_default(
    default_stack: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(["ask", QUESTION, "--trace", "--no-log", "--threads", "1"], capsys)
    assert code == 0 and out.strip()
    for stage in ("extract", "compute", "answer"):
        assert f"--- {stage} prompt" in err and f"[{stage}: " in err


# The issue's acceptance example. It depends on how well the upstream models are trained (the
# built stack reproduces the trained models' answers: see tests/convert/test_build.py and the
# build's verification), so it is reported, not enforced, until the training reaches its goal.
def test_default_stack_answers_the_issue_example(
    default_stack: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(["ask", QUESTION, "--no-log", "--threads", "1"], capsys)
    answer = out.strip()
    assert code == 0 and " " in answer and answer.rstrip(".").endswith("41")


def test_default_stack_answers_every_held_out_question(
    default_stack: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The README's claim: the bundled stack answers all 200 held-out questions of its
    eval.jsonl exactly (`edgestack eval`, final number)."""
    import json

    code, out, err = run(
        ["eval", "--stack", str(default_stack), "--json", "--threads", "1"], capsys
    )
    assert code == 0, err
    report = json.loads(out)
    wrong = [c["question"] for c in report["cases"] if not c["correct"]]
    assert (report["n"], report["correct"], wrong) == (200, 200, [])
