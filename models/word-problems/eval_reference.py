"""Reference accuracy of the trained stack and baseline through transformers + peft.

This is the upstream measurement (float32, no conversion): each stage is greedy-decoded up to
``"\\n"`` or EOS and stripped, and its text fills the next prompt, as the edgestack runtime does.
The built, quantized stack is measured with ``edgestack eval`` instead::

    python models/word-problems/eval_reference.py --out /work/artifacts/word-problems
    python models/word-problems/eval_reference.py --out DIR --data models/word-problems/eval.jsonl
    python models/word-problems/eval_reference.py --out DIR --compute-table   # compute stage alone
    python models/word-problems/eval_reference.py --by-template report.json   # edgestack eval --json
    python models/word-problems/eval_reference.py --write-eval-jsonl models/word-problems/eval.jsonl
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import generate
import stages as stages_mod
from stages import StagePrompt

log = logging.getLogger("eval_reference")

_NUMBER = re.compile(r"-?\d+")


def final_number(text: str) -> int | None:
    """The last integer in ``text`` (the answer sentence ends with it), or None."""
    found = _NUMBER.findall(text)
    return int(found[-1]) if found else None


@dataclass(frozen=True)
class Case:
    """A question and its expected number; ``stage_outputs`` when it came from the generator."""

    question: str
    answer: int
    stage_outputs: dict[str, str] | None = None
    template: str | None = None  # "add/0": kind and template index, when generated


class Runner:
    """Greedy, stage-by-stage decoding with one base and one active LoRA at a time."""

    def __init__(
        self, model: Any, tokenizer: Any, stages: list[StagePrompt], *, adapters: bool
    ) -> None:
        self.model, self.tok, self.stages, self.adapters = model, tokenizer, stages, adapters
        eos = tokenizer.eos_token_id
        newline = tokenizer.convert_tokens_to_ids("Ċ")  # byte-level spelling of "\n"
        self.stop_ids = [eos] + ([newline] if isinstance(newline, int) and newline != eos else [])

    def generate(self, prompt: str, max_tokens: int) -> str:
        """Greedy completion of ``prompt`` up to a stop, stripped."""
        import torch

        ids = torch.tensor([self.tok.encode(prompt)])
        with torch.no_grad():
            out = self.model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=max_tokens,
                do_sample=False,
                eos_token_id=self.stop_ids,
                pad_token_id=self.stop_ids[0],
            )
        text = self.tok.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
        return text.split("\n", 1)[0].strip()

    def ask(self, question: str) -> dict[str, str]:
        """Every stage's output for ``question``."""
        values = {"question": question}
        for stage in self.stages:
            if self.adapters:
                self.model.set_adapter(stage.name)
            values[stage.name] = self.generate(
                stages_mod.render(stage.template, values), stage.max_tokens
            )
        del values["question"]
        return values


def load_stack(out: Path) -> Runner:
    """Base + every stage's adapter from a train.py output folder."""
    from peft import PeftModel
    from transformers import AutoTokenizer, GPTNeoXForCausalLM

    stack = stages_mod.load_stages(stages_mod.RECIPE)
    model: Any = GPTNeoXForCausalLM.from_pretrained(out / "base")
    first, *rest = stack
    model = PeftModel.from_pretrained(model, out / "adapters" / first.name, adapter_name=first.name)
    for stage in rest:
        model.load_adapter(out / "adapters" / stage.name, adapter_name=stage.name)
    model.eval()
    return Runner(model, AutoTokenizer.from_pretrained(out / "base"), stack, adapters=True)


def load_baseline(out: Path) -> Runner:
    """The single-model baseline."""
    from transformers import AutoTokenizer, GPTNeoXForCausalLM

    model = GPTNeoXForCausalLM.from_pretrained(out / "baseline").eval()
    stage = stages_mod.load_stages(stages_mod.BASELINE_RECIPE)
    return Runner(model, AutoTokenizer.from_pretrained(out / "baseline"), stage, adapters=False)


def generated_cases(n: int, split: generate.Split, seed: int) -> list[Case]:
    """``n`` distinct generated questions of ``split``."""

    def key(p: generate.Problem) -> str:  # training shapes are thousands: by kind only
        return f"{p.kind}/{p.template}" if split == "heldout" else p.kind

    return [
        Case(p.question, p.value, p.stage_outputs, key(p))
        for p in generate.unique_problems(seed, n, split)
    ]


def jsonl_cases(path: Path) -> list[Case]:
    """Cases from a JSONL file of ``{"question": ..., "answer": <number>}``."""
    lines = path.read_text(encoding="utf-8").splitlines()
    return [Case(d["question"], int(d["answer"])) for d in map(json.loads, filter(None, lines))]


def score(runner: Runner, cases: Sequence[Case]) -> dict[str, Any]:
    """Final-number accuracy, per-stage exact match (when known), seconds per question."""
    right, stage_right = 0, dict.fromkeys([s.name for s in runner.stages], 0)
    by_template: dict[str, list[int]] = {}
    failures: list[dict[str, Any]] = []
    start = time.perf_counter()
    for case in cases:
        outputs = runner.ask(case.question)
        final = outputs[runner.stages[-1].name]
        ok = final_number(final) == case.answer
        right += ok
        if case.template is not None:
            tally = by_template.setdefault(case.template, [0, 0])
            tally[0] += ok
            tally[1] += 1
        for name, text in outputs.items():
            if case.stage_outputs is not None:
                stage_right[name] += text == case.stage_outputs.get(name, text)
        if not ok and len(failures) < 10:
            failures.append({"question": case.question, "expected": case.answer, **outputs})
    seconds = time.perf_counter() - start
    report: dict[str, Any] = {
        "n": len(cases),
        "accuracy": right / len(cases),
        "seconds_per_question": seconds / len(cases),
        "failures": failures,
    }
    if cases and cases[0].stage_outputs is not None:
        report["stage_exact"] = {k: v / len(cases) for k, v in stage_right.items()}
    if by_template:
        report["by_template"] = {k: f"{r}/{n}" for k, (r, n) in sorted(by_template.items())}
    return report


def compute_table(runner: Runner, *, adapter: bool = True, batch: int = 500) -> dict[str, Any]:
    """Exact match of the compute stage alone on every expression the generator can write
    (``generate.all_expressions``), by operator; ``adapter=False`` measures the bare base.
    Greedy, two tokens (the number, then EOS or newline), batched: every prompt has one length."""
    import contextlib

    import torch

    stage = next(s for s in runner.stages if s.name == "compute")
    if runner.adapters:
        runner.model.set_adapter(stage.name)
    expressions = generate.all_expressions()
    right: dict[str, list[int]] = {}
    wrong: list[str] = []
    off = runner.model.disable_adapter() if not adapter else contextlib.nullcontext()
    with torch.no_grad(), off:
        for start in range(0, len(expressions), batch):
            chunk = expressions[start : start + batch]
            prompts = [stages_mod.render(stage.template, {"extract": e}) for e in chunk]
            want = [f" {generate.evaluate_expression(e)}" for e in chunk]
            ids = torch.tensor([runner.tok.encode(p) for p in prompts])
            first = runner.model(input_ids=ids).logits[:, -1].argmax(-1)
            ids = torch.cat([ids, first[:, None]], dim=1)
            second = runner.model(input_ids=ids).logits[:, -1].argmax(-1)
            for e, w, a, b in zip(chunk, want, first.tolist(), second.tolist(), strict=True):
                ok = runner.tok.decode([a]) == w and b in runner.stop_ids
                tally = right.setdefault(e.split()[1], [0, 0])
                tally[0] += ok
                tally[1] += 1
                if not ok and len(wrong) < 20:
                    wrong.append(f"{e} -> {runner.tok.decode([a, b])!r}")
    total = sum(r for r, _ in right.values()), sum(n for _, n in right.values())
    return {
        "accuracy": total[0] / total[1],
        "n": total[1],
        "by_operator": {op: round(r / n, 4) for op, (r, n) in right.items()},
        "wrong_examples": wrong,
    }


def by_template(report_path: Path, *, n: int = 200, seed: int = 1234) -> dict[str, Any]:
    """Right/total per held-out template of an ``edgestack eval --json`` report on eval.jsonl
    (its questions are the generator's held-out ones, so each maps back to its template)."""
    report = json.loads(report_path.read_text(encoding="utf-8"))
    known = {p.question: p for p in generate.unique_problems(seed, n, "heldout")}
    tally: dict[str, list[int]] = {}
    wrong: list[dict[str, Any]] = []
    for case in report["cases"]:
        p = known[case["question"]]
        key = f"{p.kind}/{p.template}"
        counts = tally.setdefault(key, [0, 0])
        counts[0] += case["correct"]
        counts[1] += 1
        if not case["correct"]:
            stages = case.get("stages", {})
            wrong.append({"template": key, "question": p.question, "want": p.expression, **stages})
    return {
        "accuracy": report["accuracy"],
        "by_template": {k: f"{r}/{t}" for k, (r, t) in sorted(tally.items())},
        "wrong": wrong,
    }


def quiet_libraries() -> None:
    """No progress bars or deprecation chatter from transformers/peft in our logs."""
    import warnings

    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    warnings.filterwarnings("ignore", category=FutureWarning)


def main(argv: Sequence[str] | None = None) -> None:
    """Score stack and baseline; print a JSON report on stdout."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    quiet_libraries()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="train.py output folder")
    parser.add_argument("--data", type=Path, help="JSONL eval data instead of generated questions")
    parser.add_argument("-n", type=int, default=200, help="generated questions per split")
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-baseline", action="store_true")
    parser.add_argument("--write-eval-jsonl", type=Path, help="write held-out eval data and exit")
    parser.add_argument(
        "--compute-table",
        action="store_true",
        help="only the compute stage on every expression (with and without its adapter)",
    )
    parser.add_argument(
        "--by-template", type=Path, help="per-template tally of an `edgestack eval --json` report"
    )
    args = parser.parse_args(argv)
    if args.write_eval_jsonl:
        generate.write_eval_jsonl(args.write_eval_jsonl, n=args.n, seed=args.seed)
        return
    if args.by_template:
        print(json.dumps(by_template(args.by_template, n=args.n, seed=args.seed), indent=2))
        return
    if args.out is None:
        parser.error("--out is required unless --write-eval-jsonl is given")
    import torch

    torch.set_num_threads(args.threads)
    if args.compute_table:
        runner = load_stack(args.out)
        tables = {"adapter": compute_table(runner), "base": compute_table(runner, adapter=False)}
        print(json.dumps(tables, indent=2))
        return
    if args.data:
        suites = {args.data.name: jsonl_cases(args.data)}
    else:
        # the test split uses the training pools with a seed training never used
        suites = {
            "heldout": generated_cases(args.n, "heldout", args.seed),
            "test": generated_cases(args.n, "train", args.seed + 1_000_003),
        }
    runners = {"stack": load_stack(args.out)}
    if not args.no_baseline:
        runners["baseline"] = load_baseline(args.out)
    report = {
        who: {suite: score(r, cases) for suite, cases in suites.items()}
        for who, r in runners.items()
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
