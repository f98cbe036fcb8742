"""Tiny stacks built the way users build theirs: a HF base, PEFT adapters trained for a few
steps, a recipe, and ``edgestack build``.

The base is the tiny random GPT-NeoX of model_builders (conftest's ``tiny_model("gptneox")``).
Each stage's adapter is a real PEFT LoRA trained with AdamW for a few steps on that stage's
texts (enough to move lora_B away from PEFT's zero init, so each stage differs from the base).
"""

from __future__ import annotations

import shutil
import textwrap
from pathlib import Path
from typing import Any

import pytest

STAGES = ("extract", "compute", "answer")

#: a few rendered training texts per stage (prompt + output), in the recipe's format
TEXTS: dict[str, list[str]] = {
    "extract": [
        "Question: Sam has 23 stamps and buys 18 more. How many stamps does Sam have?\n"
        "Expression: 23 + 18",
        "Question: What is 15 plus 28?\nExpression: 15 + 28",
    ],
    "compute": ["Expression: 23 + 18\nResult: 41", "Expression: 15 + 28\nResult: 43"],
    "answer": [
        "Question: What is 15 plus 28?\nResult: 43\nAnswer: The answer is 43",
        "Question: Sam has 23 stamps.\nResult: 41\nAnswer: Sam has 41 stamps",
    ],
}

RECIPE = """\
name = "tiny-word-problems"
description = "A tiny stack built in a test"
mode = "{mode}"
quantization = "{quantization}"
{extra}
[defaults]
base = "{base}"
temperature = 0.0
n_ctx = 128
stop = ["\\n"]

[[stages]]
name = "extract"
adapter = "adapters/extract"
max_tokens = 8
prompt = \"\"\"Question: {{question}}
Expression:\"\"\"

[[stages]]
name = "compute"
adapter = "adapters/compute"
max_tokens = 6
prompt = \"\"\"Expression: {{extract}}
Result:\"\"\"

[[stages]]
name = "answer"
adapter = "adapters/answer"
lora_scale = {scale}
max_tokens = 10
prompt = \"\"\"Question: {{question}}
Result: {{compute}}
Answer:\"\"\"
"""

_CACHE: dict[tuple[str, ...], Path] = {}


def lora_config(r: int = 4, alpha: float = 8) -> Any:
    from peft import LoraConfig

    return LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=0.0,
        bias="none",
        target_modules=["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"],
        task_type="CAUSAL_LM",
    )


def train_adapter(
    base_dir: Path, out_dir: Path, texts: list[str], *, seed: int, steps: int = 4, lr: float = 0.05
) -> Path:
    """A PEFT LoRA over ``base_dir`` after ``steps`` AdamW steps on ``texts`` (LM loss)."""
    import torch
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(seed)
    tok = AutoTokenizer.from_pretrained(base_dir)
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32), lora_config()
    )
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr)
    model.train()
    for step in range(steps):
        batch = tok(texts[step % len(texts)], return_tensors="pt")
        loss = model(**batch, labels=batch["input_ids"]).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval()
    model.save_pretrained(out_dir)
    return out_dir


def write_recipe(
    root: Path,
    base: Path | str,
    *,
    mode: str = "adapters",
    quantization: str = "q8_0",
    extra: str = "",
    scale: float = 1.0,
    name: str = "recipe.toml",
) -> Path:
    """A recipe in ``root`` over ``root/adapters/<stage>``; ``base`` as written (or a path)."""
    path = root / name
    path.write_text(
        RECIPE.format(mode=mode, quantization=quantization, extra=extra, base=base, scale=scale),
        encoding="utf-8",
    )
    return path


def recipe_folder(factory: pytest.TempPathFactory, base_dir: Path) -> Path:
    """A folder with ``adapters/<stage>`` (trained PEFT adapters) and a copy of the base in
    ``base/``, built once per session; copy it before changing anything in it."""
    key = (str(factory.getbasetemp()), "recipe-folder")
    if key not in _CACHE:
        root = factory.mktemp("tiny-recipe")
        shutil.copytree(base_dir, root / "base")
        for seed, stage in enumerate(STAGES, start=21):
            train_adapter(root / "base", root / "adapters" / stage, TEXTS[stage], seed=seed)
        _CACHE[key] = root
    return _CACHE[key]


def copy_recipe_folder(source: Path, dest: Path) -> Path:
    """A private copy of a recipe folder (its files can then be changed)."""
    shutil.copytree(source, dest)
    return dest


def built_stack(factory: pytest.TempPathFactory, base_dir: Path, mode: str) -> Path:
    """``edgestack build`` of the tiny recipe in ``mode``: the built stack.toml, once per session."""
    key = (str(factory.getbasetemp()), "built", mode)
    if key not in _CACHE:
        from edge_stack.cli import main

        root = recipe_folder(factory, base_dir)
        recipe = write_recipe(root, "base", mode=mode, name=f"recipe-{mode}.toml")
        out = factory.mktemp(f"built-{mode}")
        try:
            main(["build", str(recipe), "-o", str(out), "--threads", "1"])
        except SystemExit as exc:  # main exits only on errors
            raise AssertionError(f"edgestack build failed with exit code {exc.code}") from None
        _CACHE[key] = out / "stack.toml"
    return _CACHE[key]


def dedent(text: str) -> str:
    return textwrap.dedent(text)
