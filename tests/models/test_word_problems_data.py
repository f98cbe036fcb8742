"""The word-problems generator and stage prompts (pure Python; the tokenizer test needs tokenizers)."""

from __future__ import annotations

import importlib
import importlib.util
import json
import re
import sys
from pathlib import Path
from types import ModuleType

import pytest

WP_DIR = Path(__file__).resolve().parents[2] / "models" / "word-problems"


def _load(name: str) -> ModuleType:
    """A script of models/word-problems, under a name of its own: models/smollm2-word-problems
    has a train.py too, and both folders go on sys.path for the scripts' own imports."""
    if str(WP_DIR) not in sys.path:
        sys.path.insert(0, str(WP_DIR))
    key = f"word_problems_{name}"
    if key not in sys.modules:
        spec = importlib.util.spec_from_file_location(key, WP_DIR / f"{name}.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[key] = module
        spec.loader.exec_module(module)
    return sys.modules[key]


gen = _load("generate")
stg = _load("stages")

SPLITS = ("train", "heldout")


@pytest.fixture(scope="module", params=SPLITS)
def sample(request: pytest.FixtureRequest) -> tuple[str, list]:
    return request.param, gen.problems(7, 3000, request.param)


def test_reproducible_from_seed() -> None:
    assert gen.problems(3, 50) == gen.problems(3, 50)
    assert gen.problems(3, 50) != gen.problems(4, 50)


def test_expression_value_and_sentence_agree(sample: tuple[str, list]) -> None:
    _, problems = sample
    for p in problems:
        a, op, b = p.expression.split()
        assert op in "+-*"
        assert 0 < int(a) <= 99 and 0 < int(b) <= 99, p
        assert gen.evaluate_expression(p.expression) == p.value >= 0
        assert p.sentence.endswith(f" {p.value}") and p.sentence.split()[-1] == str(p.value)
        assert "{" not in p.question and "}" not in p.question


def test_every_kind_and_template_is_used(sample: tuple[str, list]) -> None:
    split, problems = sample
    if split == "train":  # thousands of training shapes built from parts: a larger sample
        problems = gen.problems(7, 60000, split)
    used = {(p.kind, p.template) for p in problems}
    expected = {
        ("add", len(gen.ADD_TEMPLATES[split])),
        ("sub", len(gen.SUB_TEMPLATES[split])),
        ("mul", len(gen.MUL_TEMPLATES[split])),
        ("bare", len(gen.BARE_TEMPLATES[split])),
    }
    for kind, n in expected:
        seen = {t for k, t in used if k == kind}
        assert seen <= set(range(n)), kind
        # every held-out template; nearly every training shape (each is one of thousands)
        assert len(seen) >= (n if split == "heldout" else 0.95 * n), kind


def test_singular_after_one_plural_otherwise(sample: tuple[str, list]) -> None:
    _, problems = sample
    singulars = {t.singular for pool in gen.THINGS.values() for t in pool}
    plurals = {t.plural for pool in gen.THINGS.values() for t in pool}
    for p in problems:
        for count, noun in re.findall(r"\b(\d+) (?:more )?([a-z]+)", p.question):
            if noun in singulars | plurals:
                assert (noun in singulars) == (count == "1"), p.question


@pytest.mark.parametrize(
    "pools",
    [
        gen.PEOPLE,
        gen.THINGS,
        gen.CONTAINERS,
        gen.ADD_TEMPLATES,
        gen.SUB_TEMPLATES,
        gen.MUL_TEMPLATES,
        gen.BARE_TEMPLATES,
    ],
)
def test_train_and_heldout_pools_are_disjoint(pools: dict) -> None:
    assert not set(pools["train"]) & set(pools["heldout"])


def test_heldout_words_never_appear_in_training_questions() -> None:
    held = {p.name for p in gen.PEOPLE["heldout"]} | {
        t.plural for t in gen.THINGS["heldout"] + gen.CONTAINERS["heldout"]
    }
    words = {
        w for p in gen.problems(0, 5000, "train") for w in re.findall(r"[A-Za-z]+", p.question)
    }
    assert not held & words


def test_training_mixes_made_up_names_and_objects_heldout_never() -> None:
    known = {p.name for p in gen.PEOPLE["train"]}
    word = [p for p in gen.problems(0, 2000) if p.kind != "bare"]
    openers = {"If", "There", "Each", "Every"}  # shapes that do not start with the name
    made_up = [p for p in word if p.question.split()[0].strip(",") not in known | openers]
    assert 0.3 < len(made_up) / len(word) < 0.7
    heldout = [p for p in gen.problems(0, 500, "heldout") if p.kind != "bare"]
    assert all(any(q.name in p.question for q in gen.PEOPLE["heldout"]) for p in heldout)


def test_variety() -> None:
    problems = gen.problems(0, 2000)
    assert len({p.question for p in problems}) > 1900
    assert len({p.question.split()[0] for p in problems}) > 30
    assert {p.kind for p in problems} == {"add", "sub", "mul", "bare"}


def test_stage_prompts_come_from_the_recipe() -> None:
    stack = stg.load_stages(stg.RECIPE)
    assert [s.name for s in stack] == list(gen.problems(0, 1)[0].stage_outputs)
    for i, stage in enumerate(stack):
        names = set(re.findall(r"\{([a-z_]+)\}", stage.template))
        assert names <= {"question"} | {s.name for s in stack[:i]}, stage.name
        # the completion starts with a space-led pre-token, so prompt + output tokenizes the same
        # whole or in two parts (the runtime tokenizes the rendered prompt as one text)
        assert stage.template.endswith(":"), stage.name
    baseline = stg.load_stages(stg.BASELINE_RECIPE)
    assert len(baseline) == 1 and baseline[0].template.endswith(":")


def test_stage_examples_chain_outputs() -> None:
    stack = stg.load_stages(stg.RECIPE)
    problem = gen.problems(0, 1)[0]
    examples = stg.stage_examples(problem, stack)
    assert [e.output for e in examples] == list(problem.stage_outputs.values())
    assert problem.question in examples[0].prompt
    assert f" {examples[0].output}\n" in examples[-1].prompt
    assert all(e.completion == " " + e.output for e in examples)


def test_render_is_one_pass() -> None:
    assert stg.render(
        "Q: {question}\nE: {extract}", {"question": "{extract}?", "extract": "1 + 2"}
    ) == ("Q: {extract}?\nE: 1 + 2")


def test_eval_jsonl(tmp_path: Path) -> None:
    path = gen.write_eval_jsonl(tmp_path / "eval.jsonl", n=50, seed=5)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(rows) == 50 and len({r["question"] for r in rows}) == 50
    assert all(set(r) == {"question", "answer"} and isinstance(r["answer"], int) for r in rows)
    held_names = {p.name for p in gen.PEOPLE["heldout"]}
    assert any(r["question"].split()[0] in held_names for r in rows)


def test_committed_eval_jsonl_is_the_generators() -> None:
    committed = WP_DIR / "eval.jsonl"
    lines = committed.read_text(encoding="utf-8").splitlines()
    regenerated = [
        json.dumps({"question": p.question, "answer": p.value})
        for p in gen.unique_problems(1234, len(lines), "heldout")
    ]
    assert lines == regenerated


@pytest.mark.parametrize(
    ("mode", "pieces"), [("no", ["Ġ23"]), ("apart", ["Ġ2", "3"]), ("alone", ["Ġ", "2", "3"])]
)
def test_tokenizer_digit_modes(mode: str, pieces: list[str]) -> None:
    pytest.importorskip("tokenizers")
    train_data = _load("train_data")
    stack = stg.load_stages(stg.RECIPE)
    texts = [
        e.prompt + e.completion for p in gen.problems(0, 500) for e in stg.stage_examples(p, stack)
    ]
    # mode "no" needs room for the 200 whole numbers on top of the words
    tok = train_data.train_tokenizer(texts, 1024 if mode == "no" else 600, split_digits=mode)
    assert tok.token_to_id(train_data.EOS) == 0
    vocab = tok.get_vocab()
    assert sorted(vocab.values()) == list(range(len(vocab)))
    if mode != "no":
        assert not [t for t in vocab if sum(c.isdigit() for c in t) > 1]
    else:  # every number a stage can write is one token, however rare in the texts
        assert all(len(tok.encode(f" {n}").ids) == 1 for n in train_data.WHOLE_NUMBERS)
    text = "Oscar has 23 tickets and buys 118 more."
    encoding = tok.encode(text)
    assert tok.decode(encoding.ids) == text
    start = encoding.tokens.index("Ġhas") + 1
    assert encoding.tokens[start : start + len(pieces)] == pieces


def _frame(template: str) -> str:
    """A template with its operation words blanked: the sentence shape alone."""
    for word in ("{vp}", "{vpast}", " more", "{b_n}", "{b_x}", " of them"):
        template = template.replace(word, "")
    return template


def test_every_training_shape_occurs_with_add_and_sub() -> None:
    add = {_frame(t) for t in gen.ADD_TEMPLATES["train"]}
    sub = {_frame(t) for t in gen.SUB_TEMPLATES["train"]}
    assert add == sub and len(add) > 100
    # add and sub verbs take the same object phrases: "of them" and "more" are no operation cue
    for kind in ("add", "sub"):
        questions = [p.question for p in gen.problems(0, 3000) if p.kind == kind]
        assert any(" more of them." in q for q in questions), kind
        assert any(re.search(r"\d of them\.", q) for q in questions), kind
    questions = {t.rsplit(". ", 1)[-1] for t in gen.SUB_TEMPLATES["train"]}
    assert "How many {xs} does {name} have now?" in questions
    assert "How many {xs} does {name} have in all?" in questions


@pytest.mark.parametrize("frame", ["What is ", "How much is ", "Compute ", "Calculate "])
def test_every_bare_frame_occurs_with_every_operation(frame: str) -> None:
    ops = {op for t, op in gen.BARE_TEMPLATES["train"] if t.startswith(frame)}
    assert ops == {"+", "-", "*"}


def test_heldout_shapes_never_in_training() -> None:
    def near(t: str) -> str:
        return t.replace("{Pron}", "{name}").replace("{pron}", "{name}")

    for pools in (gen.ADD_TEMPLATES, gen.SUB_TEMPLATES, gen.MUL_TEMPLATES):
        held = {near(t) for t in pools["heldout"]}
        for other in (gen.ADD_TEMPLATES, gen.SUB_TEMPLATES, gen.MUL_TEMPLATES):
            assert not held & {near(t) for t in other["train"]}
    bare_held = {t for t, _ in gen.BARE_TEMPLATES["heldout"]}
    assert not bare_held & {t for t, _ in gen.BARE_TEMPLATES["train"]}
    questions = {p.question for p in gen.problems(0, 3000)}
    assert not questions & {p.question for p in gen.problems(0, 500, "heldout")}


def test_multiplication_shares_the_openings_of_add_and_sub() -> None:
    """Only the "each ..." clause marks a multiplication, not the sentence's opening."""
    openings = {t.split("{a_x}")[0] for t in gen.ADD_TEMPLATES["train"]}
    mul_openings = {t.split("{a_cs}")[0] for t in gen.MUL_TEMPLATES["train"]}
    assert openings <= mul_openings
    assert all(re.search(r"\b[Ee](?:ach|very)\b", t) for t in gen.MUL_TEMPLATES["train"])


def test_bare_and_phrases_for_every_operation() -> None:
    with_and = {op for t, op in gen.BARE_TEMPLATES["train"] if re.search(r"\{a\} and \{b\}", t)}
    assert with_and == {"+", "-", "*"}


def test_all_expressions_is_every_expression_a_problem_can_have() -> None:
    table = gen.all_expressions()
    assert len(table) == len(set(table)) == 14990
    seen = {p.expression for split in SPLITS for p in gen.problems(1, 5000, split)}
    assert seen <= set(table)
    assert all(gen.evaluate_expression(e) >= 0 for e in table)
