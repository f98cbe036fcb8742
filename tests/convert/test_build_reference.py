"""What `edgestack build` makes, compared with what it was made from: the built stack (both
modes, an adapter at lora_scale 0.5) against the transformers + peft pipeline of the recipe,
stage by stage; adapters mode against merged mode; and what a failed or interrupted build leaves.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from edge_stack import Stack, load_manifest
from edge_stack.builder.build import build
from edge_stack.engines.llama._engine import Engine
from edge_stack.formats._template import render
from edge_stack.util._atomic import TEMP_MARK

from build_builders import STAGES, recipe_folder, write_recipe
from cli_support import run

pytestmark = [
    pytest.mark.llama,
    pytest.mark.torch,
    pytest.mark.filterwarnings("ignore::FutureWarning"),
]

QUESTIONS = [
    "Sam has 23 stamps and buys 18 more. How many stamps does Sam have?",
    "What is 15 plus 28?",
    "Tom has 12 apples and eats 5. How many are left?",
]
#: the answer stage's adapter scale in the recipes built here
SCALE = 0.5
#: largest gap allowed between transformers' best logit and its logit for the token the built
#: (Q8_0) stack chose: the quantization moves logits by a few hundredths here
TOLERANCE = 0.25


@pytest.fixture(scope="module")
def recipe_dir(tmp_path_factory: pytest.TempPathFactory, tiny_model: Callable[[str], Path]) -> Path:
    return recipe_folder(tmp_path_factory, tiny_model("gptneox"))


@pytest.fixture(scope="module")
def scaled(recipe_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The tiny recipe with the answer stage at lora_scale 0.5, built in both modes."""
    built = {}
    for mode in ("adapters", "merged"):
        recipe = write_recipe(recipe_dir, "base", mode=mode, scale=SCALE, name=f"half-{mode}.toml")
        built[mode] = build(recipe, tmp_path_factory.mktemp(f"half-{mode}"), threads=1)
    return built


class Reference:
    """The recipe's stages in transformers + peft: the base with each stage's adapter."""

    def __init__(self, recipe_dir: Path, scales: dict[str, float]) -> None:
        import torch
        from peft import PeftModel
        from peft.tuners.lora import LoraLayer
        from transformers import AutoModelForCausalLM

        self.models = {}
        for stage in STAGES:
            base = AutoModelForCausalLM.from_pretrained(recipe_dir / "base", dtype=torch.float32)
            model = PeftModel.from_pretrained(base, recipe_dir / "adapters" / stage)
            for module in model.modules():
                if isinstance(module, LoraLayer) and scales.get(stage, 1.0) != 1.0:
                    module.scale_layer(scales[stage])
            self.models[stage] = model.eval()

    def logits(self, stage: str, ids: list[int]) -> np.ndarray:
        import torch

        with torch.no_grad():
            return self.models[stage](torch.tensor([ids])).logits[0].numpy()  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def reference(recipe_dir: Path) -> Reference:
    return Reference(recipe_dir, {"answer": SCALE})


def _stage_runs(path: Path) -> Iterator[tuple[str, list[int], list[int], str]]:
    """For each question and stage of the built stack: the stage, its prompt tokens, the tokens
    it generated (the stop string's token included) and how it ended; the prompts chained by
    Stack.ask, checked against the engine's own generation."""
    with Stack.load(path, threads=1) as stack:
        engine = stack._backend
        assert isinstance(engine, Engine)
        for question in QUESTIONS:
            answer = stack.ask(question)
            values = {"question": question}
            for stage, trace in zip(stack.spec.stages, answer.stages, strict=True):
                rendered = render(stage.template, values)
                assert trace.prompt == rendered.text
                runner = engine.runner(stage.name)
                prompt = runner.tokenize(rendered)
                items = list(
                    runner.context.generate(prompt, max_tokens=stage.max_tokens, stop=stage.stop)
                )
                assert "".join(i.text for i in items).strip() == trace.output
                tokens = [i.id for i in items if i.id >= 0]
                assert len(tokens) == trace.completion_tokens
                yield stage.name, prompt, tokens, runner.context.last_stats.finish_reason
                values[stage.name] = trace.output


def _gaps(ref: Reference, runs: list[tuple[str, list[int], list[int], str]]) -> list[float]:
    """transformers' best logit minus its logit for each token the built stack chose (and for
    the end of text where the built stack ended there)."""
    gaps: list[float] = []
    for stage, prompt, tokens, reason in runs:
        rows = ref.logits(stage, prompt + tokens)[len(prompt) - 1 :]
        chosen = list(tokens)
        if reason == "eog":
            chosen.append(int(rows[len(tokens)].argmax()))  # checked below: EOG was the best
        for row, token in zip(rows, chosen, strict=False):
            gaps.append(float(row.max() - row[token]))
    return gaps


@pytest.mark.parametrize("mode", ["adapters", "merged"])
def test_built_stack_follows_the_transformers_peft_pipeline(
    mode: str, scaled: dict[str, Path], reference: Reference, recipe_dir: Path
) -> None:
    spec = load_manifest(scaled[mode])
    scales = {s.name: s.lora_scale for s in spec.stages}
    if mode == "adapters":  # the scale is stack.toml's, applied by llama.cpp at run time
        assert scales == {"extract": 1.0, "compute": 1.0, "answer": SCALE}
    else:  # merged into the weights: stack.toml has no scale left to apply
        assert set(scales.values()) == {1.0} and all(s.lora is None for s in spec.stages)
    runs = list(_stage_runs(scaled[mode]))
    assert len(runs) == len(QUESTIONS) * len(STAGES)
    assert sum(len(t) for _, _, t, _ in runs) >= 20
    gaps = _gaps(reference, runs)
    assert max(gaps) <= TOLERANCE, sorted(gaps)[-5:]
    assert sum(g == 0.0 for g in gaps) >= 0.9 * len(gaps)  # mostly transformers' own argmax
    # The comparison can fail: the answer stage at scale 1 is not what was built.
    unscaled = Reference(recipe_dir, {})
    answer_runs = [r for r in runs if r[0] == "answer"]
    assert max(_gaps(unscaled, answer_runs)) > TOLERANCE


def test_adapters_mode_equals_merged_mode(scaled: dict[str, Path]) -> None:
    logits: dict[str, list[np.ndarray]] = {}
    for mode, path in scaled.items():
        with Stack.load(path, threads=1) as stack:
            engine = stack._backend
            assert isinstance(engine, Engine)
            logits[mode] = []
            for stage in stack.spec.stages:
                runner = engine.runner(stage.name)
                for question in QUESTIONS:
                    prompt = runner.tokenize(
                        render(
                            stage.template, {"question": question, **dict.fromkeys(STAGES, "41")}
                        )
                    )
                    logits[mode].append(runner.context.eval_logits(prompt))
    for a, m in zip(logits["adapters"], logits["merged"], strict=True):
        assert np.abs(a - m).max() < TOLERANCE
        assert (a.argmax(-1) == m.argmax(-1)).mean() >= 0.9


def _outputs(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()}


def test_failed_verification_keeps_nothing_of_that_step(
    recipe_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from edge_stack.builder import _verify
    from edge_stack.convert.verify import Thresholds

    recipe = write_recipe(recipe_dir, "base", mode="adapters", name="fail-adapters.toml")
    out = tmp_path / "out"
    # The base converts and passes; every adapter then fails its (real) verification.
    monkeypatch.setattr(_verify, "looser", lambda *names: Thresholds(min_top1=1.01, max_kl=0.0))
    code, stdout, err = run(["build", str(recipe), "-o", str(out), "--threads", "1"], capsys)
    assert code == 1 and err.count("\n") == 1
    assert "extract.lora.gguf (export of " in err and "disagrees with its source: FAIL" in err
    assert "the file was not kept" in err
    # What it leaves: the finished base (recorded, so the next build keeps it), nothing else.
    assert _outputs(out) == {"base.q8_0.gguf", ".edgestack-build.json"}
    monkeypatch.undo()
    code, stdout, err = run(["build", str(recipe), "-o", str(out), "--threads", "1"], capsys)
    assert code == 0, err
    status = dict(line.split("\t")[:2] for line in stdout.splitlines()[:-1])
    assert status["base.q8_0.gguf"] == "unchanged", status
    assert all(status[f"{s}.lora.gguf"] == "made" for s in STAGES)


_BLOCKING_BUILD = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from edge_stack.builder import build as b
    from edge_stack.cli import main

    real = b._Runner.run
    def run(self, step):
        if step.kind == "adapter":
            Path(sys.argv[3]).write_text("blocked")
            time.sleep(600)  # until the test's Ctrl-C
        return real(self, step)
    b._Runner.run = run
    main(["build", sys.argv[1], "-o", sys.argv[2], "--threads", "1"])
    """
)


def test_interrupted_build_leaves_finished_files_and_no_scratch(
    recipe_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    recipe = write_recipe(recipe_dir, "base", mode="adapters", name="ctrl-c.toml")
    out, flag = tmp_path / "out", tmp_path / "blocked"
    proc = subprocess.Popen(
        [sys.executable, "-c", _BLOCKING_BUILD, str(recipe), str(out), str(flag)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "EDGESTACK_THREADS": "1"},
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.monotonic() + 300
    while not flag.exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)
    # The scratch folder exists while the build works ...
    assert [p for p in out.iterdir() if TEMP_MARK in p.name]
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130 and stderr.endswith(b"edgestack: interrupted\n"), stderr
    # ... and is gone after Ctrl-C: the finished base stays, recorded; no stack.toml.
    assert _outputs(out) == {"base.q8_0.gguf", ".edgestack-build.json"}
    code, stdout_text, err = run(["build", str(recipe), "-o", str(out), "--threads", "1"], capsys)
    assert code == 0, err
    lines = [line.split("\t")[:2] for line in stdout_text.splitlines()[:-1]]
    assert lines[0] == ["base.q8_0.gguf", "unchanged"], lines
    assert (out / "stack.toml").is_file()
