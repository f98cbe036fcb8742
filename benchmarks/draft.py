"""Prompt-lookup drafting: identical answers and per-stage speed, in one run.

    python benchmarks/draft.py [--questions 200] [--json]

The bundled stack's held-out questions (models/word-problems/eval.jsonl) are asked of the stack
as shipped and of a copy whose every stage drafts (``draft = 8``), alternately question by
question, at temperature 0. Printed: how many answers and stage outputs are identical, and per
stage the drafted tokens per stage-second over the undrafted (the answer stage copies names and
numbers from the question; the compute stage writes one number and copies nothing).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import _common as c

TEXT = (
    "The quick brown fox jumps over the lazy dog while the farmer counts twenty three apples "
    "and eighteen pears in the old wooden basket near the red barn"
)


def _exactness(n: int) -> dict[str, object]:
    from edge_stack import Stack
    from edge_stack.util._paths import bundled_stacks

    toml = bundled_stacks()["word-problems"]
    questions = [
        json.loads(line)["question"] for line in (toml.parent / "eval.jsonl").open() if line.strip()
    ][:n]
    # The drafted copy: every stage drafts, and names the bundled files from a temp folder.
    os.environ["EDGESTACK_ALLOW_OUTSIDE_PATHS"] = "1"
    from edge_stack.util._env import settings

    settings.cache_clear()
    lines = ["[defaults]", "draft = 8"] if "[defaults]" not in toml.read_text() else []
    for line in toml.read_text().splitlines():
        key = line.split("=", 1)[0].strip()
        if key in ("model", "lora") and '"' in line:
            line = f'{key} = "{toml.parent / line.split(chr(34))[1]}"'
        lines.append(line)
        if line.strip() == "[defaults]":
            lines.append("draft = 8")
    with tempfile.TemporaryDirectory() as tmp:
        drafted_toml = Path(tmp) / "stack.toml"
        drafted_toml.write_text("\n".join(lines) + "\n")
        same_answers = same_stages = stages = 0
        # per stage: [tokens, seconds] without and with drafting
        timing: dict[str, list[float]] = {}
        with Stack.load(toml) as plain, Stack.load(drafted_toml) as drafted:
            for q in questions:
                a, b = plain.ask(q), drafted.ask(q)
                same_answers += a.text == b.text
                for x, y in zip(a.stages, b.stages, strict=True):
                    stages += 1
                    same_stages += x.output == y.output
                    t = timing.setdefault(x.name, [0.0, 0.0, 0.0, 0.0])
                    t[0] += x.completion_tokens
                    t[1] += x.seconds
                    t[2] += y.completion_tokens
                    t[3] += y.seconds
    return {
        "questions": len(questions),
        "identical_answers": same_answers,
        "stage_outputs": stages,
        "identical_stage_outputs": same_stages,
        # stage seconds include prompt evaluation: what a question costs, stage by stage
        "stage_speedup": {
            name: round((t[2] / t[3]) / (t[0] / t[1]), 3) for name, t in timing.items() if t[0]
        },
    }


def main() -> None:
    parser = c.arg_parser(__doc__)
    parser.add_argument("--questions", type=int, default=200)
    args = parser.parse_args()
    report: dict[str, object] = {"machine": c.machine()}
    report["exactness"] = _exactness(args.questions)
    if args.json:
        print(json.dumps(report, indent=1))
        return
    print(f"machine: {report['machine']}")
    e = report["exactness"]
    print(
        f"identical answers with drafting: {e['identical_answers']}/{e['questions']}, "  # type: ignore[index]
        f"stage outputs {e['identical_stage_outputs']}/{e['stage_outputs']}"  # type: ignore[index]
    )
    for name, ratio in e["stage_speedup"].items():  # type: ignore[index]
        print(
            c.ratio_line(
                f"stage {name}, drafting / none, tokens per stage-second",
                ratio,
                "answer >= 1.5, others >= 0.97",
            )
        )


if __name__ == "__main__":
    main()
