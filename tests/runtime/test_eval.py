"""`edgestack eval`: scoring rules, data file errors, a fake-backend run with known accuracy, and
the CLI on a tiny stack built with `edgestack build` (real llama.cpp)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from edge_stack import Stack, load_manifest
from edge_stack.engines._backend import GenerationParams
from edge_stack.errors import BadArgument, ModelFileNotFound
from edge_stack.tools._eval import evaluate, final_number, load_cases, matches

from .conftest import MakeStack
from .fakes import FakeBackend
from cli_support import run


@pytest.mark.parametrize(
    ("text", "number"),
    [
        ("Sam has 41 stamps.", 41.0),
        ("23 + 18 = 41", 41.0),
        ("The answer is -5", -5.0),
        ("23-18", 18.0),  # a hyphen between numbers is not a sign
        ("about 1,250 people", 1250.0),
        ("half is 2.5.", 2.5),
        ("no number here", None),
        ("", None),
    ],
)
def test_final_number(text: str, number: float | None) -> None:
    assert final_number(text) == number


@pytest.mark.parametrize(
    ("answer", "expected", "match", "ok"),
    [
        ("Sam has 41 stamps.", 41, "number", True),
        ("Sam has 41 stamps.", 41.0, "number", True),
        ("Sam has 41 stamps.", "41", "number", True),
        ("41 stamps, not 40", 41, "number", False),  # the LAST number counts
        ("nothing", 41, "number", False),
        ("  Sam  has 41 Stamps. ", "sam has 41 stamps.", "text", True),
        ("Sam has 41 stamps", "Sam has 41 stamps.", "text", False),
    ],
)
def test_matches(answer: str, expected: str | int | float, match: str, ok: bool) -> None:
    assert matches(answer, expected, match) is ok  # type: ignore[arg-type]


def write_lines(path: Path, *lines: str) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


GOOD_LINE = '{"question": "What is 1 plus 2?", "answer": 3}'


@pytest.mark.parametrize(
    ("bad", "fragment"),
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "not a JSON object"),
        ('{"answer": 3}', "'question' must be a non-empty string"),
        ('{"question": "  ", "answer": 3}', "'question' must be a non-empty string"),
        ('{"question": "q?", "answer": true}', "'answer' must be a number or a string"),
        ('{"question": "q?"}', "'answer' must be a number or a string"),
        ('{"question": "q?", "answer": "many"}', "holds no number"),
    ],
)
def test_bad_data_lines_name_the_line(tmp_path: Path, bad: str, fragment: str) -> None:
    path = write_lines(tmp_path / "data.jsonl", GOOD_LINE, "", bad)
    with pytest.raises(BadArgument) as info:
        load_cases(path)
    message = str(info.value)
    assert message.startswith(f"{path}, line 3: ") and fragment in message and "\n" not in message


def test_load_cases(tmp_path: Path) -> None:
    path = write_lines(
        tmp_path / "d.jsonl", GOOD_LINE, "   ", '{"question": "Hi?", "answer": "Hello"}'
    )
    with pytest.raises(BadArgument, match="line 3"):
        load_cases(path)  # "Hello" holds no number
    cases = load_cases(path, match="text")
    assert [(c.line, c.question, c.answer) for c in cases] == [
        (1, "What is 1 plus 2?", 3),
        (3, "Hi?", "Hello"),
    ]
    with pytest.raises(BadArgument, match="holds no questions"):
        load_cases(write_lines(tmp_path / "empty.jsonl", ""))
    with pytest.raises(ModelFileNotFound, match="does not exist"):
        load_cases(tmp_path / "missing.jsonl")


TWO = """
name = "sums"
version = 1
[defaults]
model = "base.gguf"
[[stages]]
name = "extract"
prompt = "Q: {question}\\nE:"
[[stages]]
name = "say"
prompt = "E: {extract}\\nA:"
"""


def adder(stage: str, prompt: str, params: GenerationParams) -> str:
    """Extract: the two numbers of the question; say: their sum (wrong when it is over 50)."""
    if stage == "extract":
        a, b = [int(w.strip("?.")) for w in prompt.split() if w.strip("?.").isdigit()][:2]
        return f" {a} + {b}"
    a, b = (int(x) for x in prompt.split("E: ")[1].split("\n")[0].split(" + "))
    total = a + b if a + b <= 50 else a + b + 1
    return f" The answer is {total}."


def test_evaluate_scores_and_times(make_stack: MakeStack, tmp_path: Path) -> None:
    spec = load_manifest(make_stack(TWO))
    data = write_lines(
        tmp_path / "d.jsonl",
        '{"question": "What is 1 plus 2?", "answer": 3}',
        '{"question": "What is 30 plus 40?", "answer": 70}',
        '{"question": "Add 10 and 15.", "answer": "25"}',
        '{"question": "What is 2 plus 2?", "answer": 5}',
    )
    seen: list[tuple[int, int]] = []
    with Stack(spec, FakeBackend(spec, adder)) as stack:
        report = evaluate(
            stack, load_cases(data), data=str(data), progress=lambda d, n: seen.append((d, n))
        )
    assert (report.n, report.correct, report.accuracy) == (4, 2, 0.5)
    assert [c.correct for c in report.cases] == [True, False, True, False]
    assert report.cases[1].answer == "The answer is 71." and report.cases[1].line == 2
    assert report.cases[0].stages == {"extract": "1 + 2", "say": "The answer is 3."}
    assert seen == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert set(report.stages) == {"extract", "say"}
    assert report.stages["say"]["median_completion_tokens"] > 0
    assert report.seconds_per_question > 0 and report.median_seconds_per_question > 0
    body = report.to_dict()
    json.dumps(body)  # serializable as it is
    assert body["stack"] == "sums" and len(body["cases"]) == 4
    assert "accuracy 50.0% (2/4" in report.summary()


# --- the CLI on a tiny stack built with `edgestack build` (real llama.cpp) ----------------------


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, tiny_model: Callable[[str], Path]) -> Path:
    pytest.importorskip("peft")
    from build_builders import built_stack

    return built_stack(tmp_path_factory, tiny_model("gptneox"), "adapters")


QUESTIONS = ["What is 15 plus 28?", "Sam has 23 stamps and buys 18 more. How many stamps?"]


@pytest.mark.llama
@pytest.mark.torch
@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_eval_cli_on_a_built_stack(
    built: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with Stack.load(built, threads=1) as stack:
        first = stack.ask(QUESTIONS[0]).text
    data = write_lines(
        tmp_path / "d.jsonl",
        json.dumps({"question": QUESTIONS[0], "answer": first}),
        json.dumps({"question": QUESTIONS[1], "answer": first + " (not what it says)"}),
    )
    report = tmp_path / "report.json"
    argv = [
        *("eval", "--stack", str(built.parent), "--data", str(data)),
        *("--match", "text", "--threads", "1"),
    ]
    code, out, err = run([*argv, "--report", str(report)], capsys)
    assert code == 0 and err == ""
    assert out.startswith("accuracy 50.0% (1/2, match text)")
    for stage in ("extract", "compute", "answer"):
        assert f"stage {stage}: median" in out
    body = json.loads(report.read_text())
    assert (body["n"], body["correct"], body["accuracy"]) == (2, 1, 0.5)
    assert body["stack"] == "tiny-word-problems" and set(body["stages"]) == {
        "extract",
        "compute",
        "answer",
    }
    assert body["cases"][0]["answer"] == first and body["cases"][0]["correct"] is True

    # the report is not overwritten without --force, and that is known before the run
    code, out, err = run([*argv, "--report", str(report)], capsys)
    assert code == 1 and "already exists" in err and out == ""

    code, out, err = run([*argv, "--limit", "1", "--json"], capsys)
    assert code == 0
    assert json.loads(out)["n"] == 1 and json.loads(out)["accuracy"] == 1.0


def test_eval_cli_bad_inputs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = write_lines(tmp_path / "d.jsonl", GOOD_LINE, '{"question": 3, "answer": 3}')
    stack = tmp_path / "nowhere"
    code, out, err = run(["eval", "--stack", str(stack), "--data", str(data)], capsys)
    assert code == 1 and out == "" and err.count("\n") == 1
    assert f"{data}, line 2: 'question' must be a non-empty string" in err
    code, out, err = run(
        ["eval", "--stack", str(stack), "--data", str(data), "--match", "fuzzy"], capsys
    )
    assert code == 1 and "unknown --match 'fuzzy'" in err
    good = write_lines(tmp_path / "g.jsonl", GOOD_LINE)
    code, out, err = run(["eval", "--stack", str(stack), "--data", str(good)], capsys)
    assert code == 1 and "does not exist" in err and str(stack) in err
