"""Memory (PSS) of four LoRA stages over one base, against one stage and against lora_path.

    python benchmarks/memory.py [--rounds 2] [--json]

Three ways to hold the Pythia-160M-shaped Q8_0 stages (benchmarks/_common.py), each measured in
a fresh process, taking turns round by round:

- ``one``: a one-stage stack (base + one adapter, n_ctx 512) through edgestack;
- ``four``: the four-stage stack through edgestack (one shared mmap'd base, a context and an
  adapter per stage);
- ``one-q8`` and ``four-q8``: the same with ``kv_cache_type = "q8_0"`` (llama.cpp's
  ``-ctk q8_0 -ctv q8_0``): half the KV cache of each stage;
- ``lora_path``: four ``llama_cpp.Llama(model, lora_path=adapter)`` instances, as the
  llama-cpp-python docs suggest (n_ctx 512, same threads).

Each process generates a few tokens in every stage (so KV caches and compute buffers are
touched), then reads its PSS from /proc/self/smaps_rollup; the figure is the growth over the
process's PSS before loading (Python and the imported libraries excluded). Goals: four / one
<= 1.3, with llama.cpp's default f16 KV cache and with q8_0; four / lora_path reported (the docs
route duplicates the base per instance).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from typing import Any

import _common as c

MODES = ("one", "four", "one-q8", "four-q8", "lora_path")


def run_mode(mode: str, threads: int) -> dict[str, float]:
    from edge_stack import Stack
    from edge_stack.engines.llama._lib import lib

    lib()
    import llama_cpp

    before = c.pss_mb()
    if mode == "lora_path":
        root = c.OUT / "stack160m"
        llms = [
            llama_cpp.Llama(
                str(root / "base.q8_0.gguf"),
                lora_path=str(c.stage_lora(name)),
                n_ctx=512,
                n_threads=threads,
                verbose=False,
            )
            for name in c.STAGES
        ]
        for llm in llms:
            tokens = llm.tokenize(c.QUESTIONS[0].encode())
            for i, _ in enumerate(llm.generate(tokens, temp=0.0, top_k=1)):
                if i >= 3:
                    break
        pss = c.pss_mb() - before
    else:
        kv = "q8_0" if mode.endswith("-q8") else "f16"
        path = (
            c.stack_160m(kv_cache_type=kv)
            if mode.startswith("four")
            else c.one_stage_160m(kv_cache_type=kv)
        )
        with Stack.load(path, threads=threads) as stack:
            stack.ask(c.QUESTIONS[0], max_tokens=4)
            pss = c.pss_mb() - before
    return {"pss_mb": pss}


def measure(rounds: int, threads: int) -> dict[str, Any]:
    for kv in ("f16", "q8_0"):
        c.one_stage_160m(kv_cache_type=kv)
    got: dict[str, list[float]] = {m: [] for m in MODES}
    for _ in range(rounds):
        for mode in MODES:
            cmd = [sys.executable, __file__, "--mode", mode, "--threads", str(threads)]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            got[mode].append(json.loads(out.strip().splitlines()[-1])["pss_mb"])
    med = {m: statistics.median(v) for m, v in got.items()}
    return {
        "pss_mb": {m: c.median_min_max(v) for m, v in got.items()},
        "four_vs_one": med["four"] / med["one"],
        "four_vs_one_q8": med["four-q8"] / med["one-q8"],
        "four_vs_lora_path": med["four"] / med["lora_path"],
        "lora_path_vs_one": med["lora_path"] / med["one"],
        "machine": c.machine(),
    }


def main() -> None:
    parser = c.arg_parser(__doc__)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--mode", choices=MODES, help=argparse.SUPPRESS)  # internal
    args = parser.parse_args()
    if args.mode:
        print(json.dumps(run_mode(args.mode, args.threads)))
        return
    r = measure(args.rounds, args.threads)
    if args.json:
        print(json.dumps(r, indent=2))
        return
    for mode, s in r["pss_mb"].items():
        print(f"{mode:<10} PSS {s['median']:7.1f} MB (min {s['min']:.1f}, max {s['max']:.1f})")
    print(c.ratio_line("four stages / one stage, f16 KV cache", r["four_vs_one"], "<= 1.3"))
    print(c.ratio_line("four stages / one stage, q8_0 KV cache", r["four_vs_one_q8"], "<= 1.3"))
    print(c.ratio_line("four stages / four Llama(lora_path=...)", r["four_vs_lora_path"], "report"))
    print(f"four Llama(lora_path=...) / one stage: {r['lora_path_vs_one']:.2f}")


if __name__ == "__main__":
    main()
