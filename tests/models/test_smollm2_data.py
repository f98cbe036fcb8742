"""The SmolLM2 stack's data: the widened generator, the compute stage's written work, and the
held-out files (none of their questions occurs in training). Pure Python."""

from __future__ import annotations

import importlib.util
import json
import random
import sys
from pathlib import Path
from types import ModuleType

import pytest

DIR = Path(__file__).resolve().parents[2] / "models" / "smollm2-word-problems"


def _load(name: str) -> ModuleType:
    """A script of models/smollm2-word-problems (they import each other as top-level modules)."""
    if str(DIR) not in sys.path:
        sys.path.insert(0, str(DIR))
    key = f"smollm2_{name}"
    if key not in sys.modules:
        spec = importlib.util.spec_from_file_location(key, DIR / f"{name}.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[key] = module
        spec.loader.exec_module(module)
    return sys.modules[key]


problems = _load("problems")
work = _load("work")
train = _load("train")

HELDOUT_FILES = ("eval.jsonl", "eval-people.jsonl", "eval-offtopic.jsonl")


def _rows(name: str) -> list[dict]:
    return [json.loads(line) for line in (DIR / name).read_text("utf-8").splitlines() if line]


@pytest.mark.parametrize(
    ("expression", "written"),
    [
        ("345 + 278", "5+8=13; 4+7+1=12; 3+2+1=6; so 623"),
        ("999 + 1", "9+1=10; 9+0+1=10; 9+0+1=10; so 1000"),
        ("345 - 278", "15-8=7; 14-7-1=6; 3-2-1=0; so 67"),
        ("300 - 1", "10-1=9; 10-0-1=9; 3-0-1=2; so 299"),
        ("7 * 125", "7*5=35; 7*2+3=17; 7*1+1=8; so 875"),
        ("24 * 3", "3*4=12; 3*2+1=7; so 72"),
        ("875 / 7", "8/7=1 r1; 17/7=2 r3; 35/7=5 r0; so 125"),
        ("56 / 7", "5/7=0 r5; 56/7=8 r0; so 8"),
        ("none", "none"),
    ],
)
def test_written_work(expression: str, written: str) -> None:
    assert work.work(expression) == written
    if expression != "none":
        assert work.result_of(written) == work.evaluate(expression)


def test_written_work_is_right_for_every_range() -> None:
    rng = random.Random(0)
    for _ in range(3000):
        op = rng.choice("+-*/")
        a, b = rng.randint(1, 999), rng.randint(1, 999)
        if op == "-":
            a, b = max(a, b), min(a, b)
        elif op == "*":
            a = rng.randint(2, 9)
        elif op == "/":
            b = rng.randint(2, 9)
            a = b * rng.randint(1, 111)
        expression = f"{a} {op} {b}"
        assert work.result_of(work.work(expression)) == work.evaluate(expression), expression


@pytest.mark.parametrize("bad", ["5 - 9", "7 / 2", "12 * 15", "7 / 10"])
def test_written_work_refuses_what_it_cannot_write(bad: str) -> None:
    with pytest.raises(ValueError):
        work.work(bad)


@pytest.mark.parametrize("split", ["train", "heldout"])
def test_problems_agree_with_their_stage_texts(split: str) -> None:
    for p in problems.problems(5, 3000, split):
        outputs = p.stage_outputs
        if p.kind == "refuse":
            assert (p.expression, outputs["compute"], p.sentence) == (
                "none",
                "none",
                problems.REFUSAL,
            )
            continue
        assert work.evaluate(p.expression) == p.value and 0 < p.value < 2000
        assert all(0 < int(n) <= 999 for n in p.expression.split()[::2])
        assert work.result_of(outputs["compute"]) == p.value
        assert f" {p.value} " in f" {p.sentence} " or p.sentence.endswith(f" {p.value}.")
        assert all(w in p.sentence for w in p.words) and "{" not in p.question


def test_every_kind_occurs_and_training_widens_the_questions() -> None:
    sample = problems.problems(0, 4000, "train")
    assert {p.kind for p in sample} == set(problems.KIND_WEIGHTS)
    texts = [p.question for p in sample]
    assert any("years old" in t for t in texts)  # distractor numbers
    assert any(t.startswith(("How many", "If ")) and "?" in t for t in texts)  # question first
    assert any(t.count(". ") >= 2 for t in texts)  # several sentences
    assert any(" / " in p.expression for p in sample)


def test_generated_heldout_file_is_what_the_generator_writes(tmp_path: Path) -> None:
    out = problems.write_heldout(tmp_path / "h.jsonl")
    assert out.read_text("utf-8") == (DIR / "eval.jsonl").read_text("utf-8")


@pytest.mark.parametrize("name", ["eval.jsonl", "eval-people.jsonl"])
def test_heldout_answers_are_right(name: str) -> None:
    rows = _rows(name)
    assert len(rows) >= 75
    for row in rows:
        assert work.evaluate(row["expression"]) == row["answer"], row
        work.work(row["expression"])  # within what the compute stage writes
        assert all(w in row["sentence"] for w in row["words"]), row


def test_offtopic_file_expects_the_refusal() -> None:
    rows = _rows("eval-offtopic.jsonl")
    assert len(rows) >= 60 and {r["answer"] for r in rows} == {problems.REFUSAL}


def test_no_heldout_question_occurs_in_training() -> None:
    """Every question train.py reads (the default run and the smaller one the README reports).

    The seed-1 run that trained the shipped compute adapter further reads no question: the
    compute stage's input is the expression alone (and every whole division by one digit occurs
    in any large enough sample, held out or not)."""
    seen: set[str] = set()
    for n in {train.Settings().problems, 4000}:
        seen |= {p.question for p in problems.problems(train.Settings().seed, n, "train")}
    for name in HELDOUT_FILES:
        questions = {r["question"] for r in _rows(name)}
        assert len(questions) == len(_rows(name)), f"{name} repeats a question"
        assert not questions & seen, f"{name}: {sorted(questions & seen)[:3]} occur in training"


def test_training_prompts_come_from_the_recipe() -> None:
    stages = train.load_stages(DIR / "recipe.toml")
    assert [s.name for s in stages] == ["extract", "compute", "answer"]
    p = problems.problems(1, 1, "train")[0]
    pairs = train.stage_examples(p, stages)
    assert pairs[0] == (f"Question: {p.question}\nExpression:", p.expression)
    assert pairs[1][0] == f"Expression: {p.expression}\nWork:"
    assert pairs[2] == (
        f"Question: {p.question}\nWork: {work.work(p.expression)}\nAnswer:",
        p.sentence,
    )


def test_compute_data_gives_every_operator_an_equal_share() -> None:
    """Each expression once; the operators' groups repeated whole, in order, to the largest
    one's size; the refusal 5% of the whole (train.balanced_compute)."""
    expressions = ["1 + 2", "3 + 4", "5 + 6", "7 + 8", "1 + 2", "9 - 3", "2 * 4", "8 / 2", "6 / 3"]
    pairs = [(f"Expression: {e}\nWork:", work.work(e)) for e in expressions]
    refusal = ("Expression: none\nWork:", work.NONE)
    out = train.balanced_compute([*pairs, refusal])
    ops = [work.operator_of(w) for _, w in out if w != work.NONE]
    assert {op: ops.count(op) for op in work.OPS} == {"+": 4, "-": 4, "*": 4, "/": 4}
    assert out.count(pairs[0]) == 1  # "1 + 2" twice in the input, once in the data
    assert [q for q, w in out if w != work.NONE and work.operator_of(w) == "/"] == [
        pairs[7][0],
        pairs[8][0],
        pairs[7][0],
        pairs[8][0],
    ]
    assert out.count(refusal) == 1  # round(16 * 0.05 / 0.95)
