"""train.py end to end at toy size: the folders it writes load back through transformers + peft."""

from __future__ import annotations

import importlib
import importlib.util
import json
import sys
from dataclasses import replace
from pathlib import Path
from types import ModuleType

import pytest

WP_DIR = Path(__file__).resolve().parents[2] / "models" / "word-problems"

# peft calls transformers' deprecated is_gradient_checkpointing (their business, not ours)
pytestmark = [pytest.mark.torch, pytest.mark.filterwarnings("ignore::FutureWarning")]


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


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("peft")
    train = _load("train")
    out = tmp_path_factory.mktemp("word-problems")
    settings = replace(
        train.Settings.quick(),
        threads=1,
        problems=300,
        base_steps=8,
        adapter_steps="extract=4,compute=4,answer=4",
        batch_tokens=256,
        warmup=2,
    )
    train.run(settings, out)
    return out


def test_folders_are_hf_checkpoints_and_peft_adapters(trained: Path) -> None:
    for folder in ("base", "baseline"):
        names = {p.name for p in (trained / folder).iterdir()}
        assert {
            "config.json",
            "model.safetensors",
            "tokenizer.json",
            "tokenizer_config.json",
        } <= names
    config = json.loads((trained / "base" / "config.json").read_text())
    assert config["model_type"] == "gpt_neox" and config["use_parallel_residual"] is True
    tok_config = json.loads((trained / "base" / "tokenizer_config.json").read_text())
    assert tok_config["add_bos_token"] is False
    for stage in ("extract", "compute", "answer"):
        adapter = json.loads((trained / "adapters" / stage / "adapter_config.json").read_text())
        assert adapter["r"] == 8 and set(adapter["target_modules"]) == {
            "query_key_value",
            "dense",
            "dense_h_to_4h",
            "dense_4h_to_h",
        }
        assert (trained / "adapters" / stage / "adapter_model.safetensors").is_file()
    log = json.loads((trained / "train_log.json").read_text())
    assert log["stack_params"] == log["base"]["params"] + sum(
        a["params"] for a in log["adapters"].values()
    )
    assert abs(log["baseline"]["params"] - log["stack_params"]) / log["stack_params"] < 0.05


def test_reference_eval_runs_every_stage(trained: Path) -> None:
    ev = _load("eval_reference")
    cases = ev.generated_cases(3, "heldout", 1)
    runner = ev.load_stack(trained)
    report = ev.score(runner, cases)
    # The same questions asked here, stage by stage: the report counts exactly these.
    outputs = [runner.ask(c.question) for c in cases]
    right = [
        ev.final_number(o[runner.stages[-1].name]) == c.answer
        for o, c in zip(outputs, cases, strict=True)
    ]
    assert report["n"] == 3 and report["accuracy"] == sum(right) / 3
    assert [f["question"] for f in report["failures"]] == [
        c.question for c, ok in zip(cases, right, strict=True) if not ok
    ]
    for stage in ("extract", "compute", "answer"):
        exact = [o[stage] == c.stage_outputs[stage] for o, c in zip(outputs, cases, strict=True)]
        assert report["stage_exact"][stage] == sum(exact) / 3
    baseline = ev.load_baseline(trained)
    answers = [baseline.ask(c.question)[baseline.stages[-1].name] for c in cases]
    assert (
        ev.score(baseline, cases)["accuracy"]
        == sum(ev.final_number(a) == c.answer for a, c in zip(answers, cases, strict=True)) / 3
    )


@pytest.mark.parametrize(
    ("text", "number"), [("The number of pies Alice has left is 11", 11), ("no number", None)]
)
def test_final_number(text: str, number: int | None) -> None:
    assert _load("eval_reference").final_number(text) == number


def test_number_features_write_the_digits() -> None:
    train = _load("train")
    settings = train.Settings.quick()
    tok = train.build_tokenizer(settings, _load("stages").load_stages())
    model = train.new_model(settings, tok)
    row = model.get_input_embeddings().weight[tok.encode(" 147").ids[0], :32]
    assert row[7] == 1 and row[10 + 14] == 1 and abs(row[30].item() - 1.47) < 1e-6
    assert row[:30].sum() == 2
    out_row = model.get_output_embeddings().weight[tok.encode(" 147").ids[0], :32]
    assert (out_row == row).all()


def test_random_result_keeps_the_sentence_ending_with_the_result() -> None:
    import random

    train, gen = _load("train"), _load("generate")
    problems = gen.problems(0, 200)
    changed = [train.random_result(p, random.Random(i), 0.5) for i, p in enumerate(problems)]
    assert 40 < sum(c != p for c, p in zip(changed, problems, strict=True)) < 160
    for c, p in zip(changed, problems, strict=True):
        assert c.sentence.endswith(f" {c.value}") and c.question == p.question
        assert c.expression == p.expression and 0 <= c.value <= 198
