"""The bundled default stack (models/word-problems, built by `edgestack build`) answers out of
the box: `edgestack ask` with no --stack, real llama.cpp, the issue's own example."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_stack import load_manifest
from edge_stack._paths import bundled_stack
from edge_stack.cli import main

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


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    try:
        main(argv)
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


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
    assert code == 0
    answer = out.strip()
    assert answer.rstrip(".").endswith("41") and " " in answer  # a sentence ending in the number
    for stage in ("extract", "compute", "answer"):
        assert f"--- {stage} prompt" in err and f"[{stage}: " in err
