"""Questions per second: `ask --batch` (llama.cpp batched decoding) against asking one by one.

    python benchmarks/batch_throughput.py [--questions 16] [--batch-sizes 8 16] [--rounds 2] [--json]

The four-stage Pythia-160M-shaped Q8_0 stack (benchmarks/_common.py), 2 threads, each stage
generating exactly 16 tokens. Both sides run in this process on one loaded stack, after one
warm-up each (so both start with their stages' fixed prompt prefix cached), taking turns round
by round. Counts the batched answers equal to the one-by-one answers (see Stack.ask_batch on
llama.cpp's f16 kernels, which the LoRA adapters use). Goal: ratio >= 3.

Also printed: the ceiling of any batching on this machine. Batching shares the reading of the
weights between questions, so at best every token a question needs (its prompt tokens past each
stage's cached prefix, and its generated tokens) is computed at llama.cpp's full-batch speed: a
512-token prompt evaluated in one micro-batch, with a stage's adapter attached. The ceiling is
one-by-one seconds per question over that time.
"""

from __future__ import annotations

import json
import statistics
import time
from typing import Any

import _common as c


def measure(questions: int, batch_sizes: list[int], rounds: int, threads: int) -> dict[str, Any]:
    from edge_stack import Stack

    qs = (c.QUESTIONS * (questions // len(c.QUESTIONS) + 1))[:questions]
    single: list[float] = []
    batched: dict[int, list[float]] = {b: [] for b in batch_sizes}
    same: dict[int, int] = {b: len(qs) for b in batch_sizes}
    gen: set[int] = set()
    with Stack.load(c.stack_160m(), threads=threads) as stack:
        stack.ask(qs[0])
        tokens = [_tokens_needed(stack, q) for q in qs]
        best = _full_batch_tok_s(stack, threads)
        for b in batch_sizes:
            stack.ask_batch(qs[:b], batch_size=b)
        for _ in range(rounds):
            t = time.perf_counter()
            one = [stack.ask(q).text for q in qs]
            single.append(len(qs) / (time.perf_counter() - t))
            for b in batch_sizes:
                t = time.perf_counter()
                many = stack.ask_batch(qs, batch_size=b)
                batched[b].append(len(qs) / (time.perf_counter() - t))
                equal = sum(x == y.text for x, y in zip(one, many, strict=True))
                same[b] = min(same[b], equal)
                gen.update(s.completion_tokens for a in many for s in a.stages)
    s = c.median_min_max(single)
    floor_s = statistics.mean(tokens) / best
    return {
        "tokens_per_question": statistics.mean(tokens),
        "full_batch_tok_s": best,
        "ceiling_ratio": (1 / s["median"]) / floor_s,
        "questions": len(qs),
        "rounds": rounds,
        "tokens_per_stage": sorted(gen),
        "one_by_one_qps": s,
        "batch": {
            str(b): {
                "qps": c.median_min_max(v),
                "ratio": statistics.median(v) / s["median"],
                "same_answers": same[b],
            }
            for b, v in batched.items()
        },
        "machine": c.machine(),
    }


def _tokens_needed(stack: Any, question: str) -> int:
    """Tokens one question makes the stack compute: uncached prompt tokens plus generated ones."""
    answer = stack.ask(question)
    engine = stack._backend
    return sum(
        st.prompt_tokens
        - engine.runner(st.name).context.last_stats.cached_tokens
        + st.completion_tokens
        for st in answer.stages
    )


def _full_batch_tok_s(stack: Any, threads: int, n: int = 512, runs: int = 3) -> float:
    """llama.cpp's best tokens/s here: n prompt tokens in one micro-batch, adapter attached."""
    from edge_stack.engines.llama import LlamaContext

    runner = stack._backend.runner(c.STAGES[0])
    ids = (runner.model.tokenize(c.INSTRUCTION, add_bos=False, special=False) * 4)[:n]
    best = 0.0
    with LlamaContext(
        runner.model, n_ctx=n + 1, n_threads=threads, n_batch=n, n_ubatch=n, lora=runner.stage.lora
    ) as ctx:
        for _ in range(runs):
            ctx.reset()
            t = time.perf_counter()
            list(ctx.generate(ids, max_tokens=0))
            best = max(best, n / (time.perf_counter() - t))
    return best


def main() -> None:
    parser = c.arg_parser(__doc__)
    parser.add_argument("--questions", type=int, default=16)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[8, 16])
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    r = measure(args.questions, args.batch_sizes, args.rounds, args.threads)
    if args.json:
        print(json.dumps(r, indent=2))
        return
    s = r["one_by_one_qps"]
    print(
        f"{r['questions']} questions, 4 stages x {r['tokens_per_stage']} tokens, "
        f"{r['rounds']} rounds (load {r['machine']['load_avg_1m']})"
    )
    print(f"one by one: {s['median']:.3f} q/s (min {s['min']:.3f}, max {s['max']:.3f})")
    print(
        f"ceiling of batching: {r['ceiling_ratio']:.2f}x ({r['tokens_per_question']:.0f} tokens "
        f"per question at llama.cpp's full-batch {r['full_batch_tok_s']:.0f} tok/s)"
    )
    for size, b in r["batch"].items():
        q = b["qps"]
        print(
            f"batch size {size}: {q['median']:.3f} q/s (min {q['min']:.3f}, max {q['max']:.3f}); "
            f"{b['same_answers']}/{r['questions']} answers equal to one by one"
        )
        print("  " + c.ratio_line("ratio batched / one by one", b["ratio"], ">= 3"))


if __name__ == "__main__":
    main()
