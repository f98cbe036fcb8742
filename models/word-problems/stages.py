"""The stack's stage prompts, read from the recipe, and the training texts they make.

The prompts live in ``recipe.toml`` (and ``recipe-baseline.toml`` for the single-model baseline)
and nowhere else: training renders exactly the prompts that ``edgestack build`` writes into
``stack.toml``. Rendering follows the runtime (docs/stack-manifest.md): one pass, ``{question}`` and earlier
stage names only, and a stage's output is its text up to ``"\\n"``/EOS, stripped. Pure Python.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from generate import Problem

HERE = Path(__file__).resolve().parent
RECIPE = HERE / "recipe.toml"
BASELINE_RECIPE = HERE / "recipe-baseline.toml"

_PLACEHOLDER = re.compile(r"\{([a-z][a-z0-9_]*)\}")


@dataclass(frozen=True)
class StagePrompt:
    """One stage of a recipe: its name, prompt template and token limit."""

    name: str
    template: str
    max_tokens: int


@dataclass(frozen=True)
class Example:
    """One training pair: the rendered prompt and the text the stage should generate."""

    stage: str
    prompt: str
    output: str

    @property
    def completion(self) -> str:
        """What the model generates after the prompt: a space, then the output."""
        return " " + self.output


def load_stages(recipe: Path = RECIPE) -> list[StagePrompt]:
    """The ``[[stages]]`` of a recipe, in order."""
    with recipe.open("rb") as f:
        data = tomllib.load(f)
    default_max = int(data.get("defaults", {}).get("max_tokens", 64))
    return [
        StagePrompt(s["name"], s["prompt"], int(s.get("max_tokens", default_max)))
        for s in data["stages"]
    ]


def render(template: str, values: Mapping[str, str]) -> str:
    """Fill ``{name}`` placeholders in one pass: braces inside values stay text."""
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], template)


def stage_examples(problem: Problem, stages: list[StagePrompt]) -> list[Example]:
    """The prompt -> output pair of every stage for one problem, fed as the runtime would."""
    values = {"question": problem.question}
    outputs = problem.stage_outputs
    examples = []
    for stage in stages:
        output = outputs[stage.name]
        examples.append(Example(stage.name, render(stage.template, values), output))
        values[stage.name] = output
    return examples


def baseline_example(problem: Problem, stage: StagePrompt) -> Example:
    """The baseline's single pair: question -> final sentence."""
    return Example(
        stage.name, render(stage.template, {"question": problem.question}), problem.sentence
    )
