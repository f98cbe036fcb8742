"""Questions per second: `ask --batch` (llama.cpp batched decoding) against asking one by one.

    python benchmarks/batch_throughput.py [--questions 16] [--batch-sizes 8 16] [--rounds 2] [--json]

The four-stage Pythia-160M-shaped Q8_0 stack (benchmarks/_common.py), 2 threads, each stage
generating exactly 16 tokens. Both sides run in this process on one loaded stack, after one
warm-up each (so both start with their stages' fixed prompt prefix cached), taking turns round
by round. Counts the batched answers equal to the one-by-one answers (see Stack.ask_batch on
llama.cpp's f16 kernels, which the LoRA adapters use). Each batch size is measured as `ask
--batch` runs it (every prompt evaluated alone, as one by one) and with `--pack-prompts` (the
batch's prompts evaluated together, in large micro-batches: faster, not bit-exact). Goals:
ratio >= 3, and >= 0.9 of the ceiling below.

Also printed: two ceilings. The first (kept from earlier sessions) assumes every token a
question needs (its prompt tokens past each stage's cached prefix, and its generated tokens) is
computed at llama.cpp's full-batch speed: a 512-token prompt in one micro-batch, with a stage's
adapter attached. No batch of N questions can reach it: a generation step holds one token of
each question, N rows, and on a CPU N rows compute slower per token than 512 (on this Xeon a
16-row step runs at about a quarter of the 512-row speed). The second, the attainable ceiling,
gives each token the best speed a batch of that size can have: prompt tokens at the 512-row
speed, each generation step at the measured speed of llama.cpp stepping that many sequences
(bare llama_decode calls, no sampling, the faster of the two KV layouts). Each ceiling is
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
    # (batch size, prompts packed)
    modes = [(b, p) for b in batch_sizes for p in (False, True)]
    batched: dict[tuple[int, bool], list[float]] = {m: [] for m in modes}
    same: dict[tuple[int, bool], int] = {m: len(qs) for m in modes}
    gen: set[int] = set()
    # Packed batches on a stack of their own: a runner keeps one batch context, made again
    # (its cache lost) when the packing changes, which taking turns would do every call.
    with (
        Stack.load(c.stack_160m(), threads=threads) as stack,
        Stack.load(c.stack_160m(), threads=threads) as packing,
    ):
        stack.ask(qs[0])
        tokens = [_tokens_needed(stack, q) for q in qs]
        best = _full_batch_tok_s(stack, threads)
        step = {b: _step_tok_s(stack, b, threads) for b in batch_sizes}
        on = {False: stack, True: packing}
        for b, p in modes:
            on[p].ask_batch(qs[:b], batch_size=b, pack_prompts=p)
        for _ in range(rounds):
            t = time.perf_counter()
            one = [stack.ask(q).text for q in qs]
            single.append(len(qs) / (time.perf_counter() - t))
            for b, p in modes:
                t = time.perf_counter()
                many = on[p].ask_batch(qs, batch_size=b, pack_prompts=p)
                batched[b, p].append(len(qs) / (time.perf_counter() - t))
                equal = sum(x == y.text for x, y in zip(one, many, strict=True))
                same[b, p] = min(same[b, p], equal)
                gen.update(s.completion_tokens for a in many for s in a.stages)
    s = c.median_min_max(single)
    prompt_tokens = statistics.mean(p for p, _, _ in tokens)
    gen_tokens = statistics.mean(g for _, g, _ in tokens)
    stepped = statistics.mean(d for _, _, d in tokens)
    ceiling = (1 / s["median"]) / ((prompt_tokens + gen_tokens) / best)
    attainable = {
        b: (1 / s["median"]) / (prompt_tokens / best + stepped / step[b]) for b in batch_sizes
    }
    return {
        "tokens_per_question": prompt_tokens + gen_tokens,
        "prompt_tokens_per_question": prompt_tokens,
        "decoded_steps_per_question": stepped,
        "full_batch_tok_s": best,
        "step_tok_s": {str(b): v for b, v in step.items()},
        "ceiling_ratio": ceiling,
        "attainable_ceiling": {str(b): v for b, v in attainable.items()},
        "questions": len(qs),
        "rounds": rounds,
        "tokens_per_stage": sorted(gen),
        "one_by_one_qps": s,
        "batch": {
            f"{b}{' packed' if p else ''}": {
                "qps": c.median_min_max(v),
                "ratio": statistics.median(v) / s["median"],
                "of_ceiling": statistics.median(v) / s["median"] / ceiling,
                "of_attainable": statistics.median(v) / s["median"] / attainable[b],
                "same_answers": same[b, p],
            }
            for (b, p), v in batched.items()
        },
        "machine": c.machine(),
    }


def _tokens_needed(stack: Any, question: str) -> tuple[int, int, int]:
    """What one question makes the stack compute: uncached prompt tokens, generated tokens, and
    generated tokens that were decoded (each stage's last one is sampled, never decoded)."""
    answer = stack.ask(question)
    engine = stack._backend
    prompt = sum(
        st.prompt_tokens - engine.runner(st.name).context.last_stats.cached_tokens
        for st in answer.stages
    )
    generated = sum(st.completion_tokens for st in answer.stages)
    return prompt, generated, generated - len(answer.stages)


def _step_tok_s(stack: Any, rows: int, threads: int, steps: int = 16, runs: int = 3) -> float:
    """llama.cpp's best tokens/s for generation steps of ``rows`` sequences, each after one of
    the first stage's prompts: bare decode calls, in either KV layout of a batch."""
    from edge_stack.engines.llama import BatchContext

    runner = stack._backend.runner(c.STAGES[0])
    prompt = c.stage_prompt(c.STAGES[0]).replace("{question}", c.QUESTIONS[0])
    ids = runner.model.tokenize(prompt, add_bos=False, special=False)
    best = 0.0
    for packed in (False, True):
        with BatchContext(
            runner.model,
            n_ctx=512,
            n_seq=rows,
            n_threads=threads,
            lora=runner.stage.lora,
            pack_prompts=packed,
        ) as ctx:
            ctx.generate_batch([ids] * rows, max_tokens=0)
            for _ in range(runs):
                seconds = timed_steps(ctx, [len(ids)] * rows, ids[-1], steps)
                best = max(best, rows * steps / seconds)
    return best


def timed_steps(ctx: Any, lengths: list[int], token: int, steps: int = 16) -> float:
    """Seconds for ``steps`` bare generation steps (``token`` appended to every sequence of a
    batch context, one llama_decode call each); then each sequence is cut back to its prompt's
    ``lengths``."""
    from edge_stack.engines.llama._lib import lib

    seqs = list(range(len(lengths)))
    t = time.perf_counter()
    for _ in range(steps):
        ctx._decode_step(seqs, [token] * len(seqs))
    seconds = time.perf_counter() - t
    for seq, n in zip(seqs, lengths, strict=True):
        lib().llama_memory_seq_rm(ctx._mem, seq, n, -1)
        ctx._slots[seq] = ctx._slots[seq][:n]
    return seconds


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
        f"ceiling if every token ran at full-batch speed: {r['ceiling_ratio']:.2f}x "
        f"({r['tokens_per_question']:.0f} tokens per question at llama.cpp's 512-row "
        f"{r['full_batch_tok_s']:.0f} tok/s)"
    )
    for size, value in r["attainable_ceiling"].items():
        print(
            f"attainable ceiling, {size} at a time: {value:.2f}x "
            f"({r['prompt_tokens_per_question']:.0f} prompt tokens at 512-row speed, "
            f"{r['decoded_steps_per_question']:.0f} generation steps at llama.cpp's {size}-row "
            f"{r['step_tok_s'][size]:.0f} tok/s)"
        )
    for size, b in r["batch"].items():
        q = b["qps"]
        print(
            f"batch size {size}: {q['median']:.3f} q/s (min {q['min']:.3f}, max {q['max']:.3f}); "
            f"{b['same_answers']}/{r['questions']} answers equal to one by one"
        )
        print("  " + c.ratio_line("ratio batched / one by one", b["ratio"], ">= 3"))
        print("  " + c.ratio_line("that ratio / the full-batch ceiling", b["of_ceiling"], "-"))
        print(
            "  " + c.ratio_line("that ratio / the attainable ceiling", b["of_attainable"], ">= 0.9")
        )


if __name__ == "__main__":
    main()
