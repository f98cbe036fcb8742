"""Seconds per question of the four-stage stack against the obvious llama-cpp-python script.

    python benchmarks/prefix_cache.py [--questions 8] [--json]

The four-stage Pythia-160M-shaped Q8_0 stack (benchmarks/_common.py): every stage prompt begins
with the same fixed instruction of about 200 tokens; each stage generates exactly 16 tokens.

- edgestack: ``Stack.ask`` (each stage keeps its context, so the fixed start of its prompt is
  evaluated once and reused by every later question);
- the obvious script: four ``llama_cpp.Llama(model, lora_path=adapter)`` instances, one per
  stage, the same prompts rendered with str.format, greedy generation of 16 tokens, each prompt
  evaluated from scratch (``reset()`` before each call). Also reported: the same script
  relying on llama-cpp-python's own prefix matching (no reset; its own four instances), for
  reference.

Both sides answer the same questions, taking turns question by question, after one warm-up
question each. Goal: edgestack / from-scratch script <= 0.7.
"""

from __future__ import annotations

import json
import time
from typing import Any

import _common as c


class Script:
    """What a user would write with llama-cpp-python alone."""

    def __init__(self, threads: int) -> None:
        from edge_stack.engines.llama._lib import lib

        lib()  # first, so both sides run under the same OpenMP wait policy
        import llama_cpp

        root = c.OUT / "stack160m"
        self.llms = {
            name: llama_cpp.Llama(
                str(root / "base.q8_0.gguf"),
                lora_path=str(c.stage_lora(name)),
                n_ctx=512,
                n_threads=threads,
                verbose=False,
            )
            for name in c.STAGES
        }

    def ask(self, question: str, *, reset: bool) -> str:
        values = {"question": question}
        for name, llm in self.llms.items():
            prompt = c.stage_prompt(name).format(**values)
            tokens = llm.tokenize(prompt.encode(), add_bos=False, special=False)
            if reset:
                llm.reset()
            out = []
            for tok in llm.generate(tokens, temp=0.0, top_k=1, repeat_penalty=1.0):
                out.append(tok)
                if len(out) >= c.STAGE_TOKENS:
                    break
            values[name] = llm.detokenize(out).decode("utf-8", errors="replace").strip()
        return values[c.STAGES[-1]]

    def close(self) -> None:
        for llm in self.llms.values():
            llm.close()


def measure(questions: int, threads: int) -> dict[str, Any]:
    from edge_stack import Stack

    qs = (c.QUESTIONS * (questions // len(c.QUESTIONS) + 1))[:questions]
    sides: dict[str, list[float]] = {"edgestack": [], "script_scratch": [], "script_prefix": []}
    script = Script(threads)
    # Its own instances: after the from-scratch side, the same ones would hold this very prompt.
    matching = Script(threads)
    with Stack.load(c.stack_160m(), threads=threads) as stack:
        warm = "A warm-up question with 3 and 4 in it?"
        stack.ask(warm)
        script.ask(warm, reset=True)
        matching.ask(warm, reset=False)
        tokens = set()
        for q in qs:
            t = time.perf_counter()
            answer = stack.ask(q)
            sides["edgestack"].append(time.perf_counter() - t)
            tokens.update(s.completion_tokens for s in answer.stages)
            t = time.perf_counter()
            script.ask(q, reset=True)
            sides["script_scratch"].append(time.perf_counter() - t)
            t = time.perf_counter()
            matching.ask(q, reset=False)
            sides["script_prefix"].append(time.perf_counter() - t)
        prompt_tokens = [s.prompt_tokens for s in answer.stages]
    script.close()
    matching.close()
    s = {k: c.median_min_max(v) for k, v in sides.items()}
    return {
        "questions": len(qs),
        "stage_prompt_tokens": prompt_tokens,
        "tokens_per_stage": sorted(tokens),
        "seconds_per_question": s,
        "ratio": s["edgestack"]["median"] / s["script_scratch"]["median"],
        "ratio_vs_prefix_matching": s["edgestack"]["median"] / s["script_prefix"]["median"],
        "machine": c.machine(),
    }


def main() -> None:
    parser = c.arg_parser(__doc__)
    parser.add_argument("--questions", type=int, default=8)
    args = parser.parse_args()
    r = measure(args.questions, args.threads)
    if args.json:
        print(json.dumps(r, indent=2))
        return
    print(
        f"{r['questions']} questions; stage prompts {r['stage_prompt_tokens']} tokens, "
        f"{r['tokens_per_stage']} generated per stage (load {r['machine']['load_avg_1m']})"
    )
    for k, v in r["seconds_per_question"].items():
        print(f"{k:<16} {v['median']:.3f} s/question (min {v['min']:.3f}, max {v['max']:.3f})")
    print(c.ratio_line("edgestack / script (from scratch)", r["ratio"], "<= 0.7"))
    print(
        f"edgestack / script with llama-cpp-python's prefix matching: "
        f"{r['ratio_vs_prefix_matching']:.2f}"
    )


if __name__ == "__main__":
    main()
