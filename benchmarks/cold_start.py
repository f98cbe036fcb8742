"""Cold start of the four-stage stack: load every stage and produce the first token.

    python benchmarks/cold_start.py [--runs 5] [--json]

Each run is a fresh process (so nothing of llama.cpp is loaded yet; the GGUF files are in the
OS page cache, as on any second start). It imports edgestack, then times ``Stack.load`` of the
four-stage Pythia-160M-shaped Q8_0 stack (benchmarks/_common.py: every file checked, one
mmap'd base, four contexts with their adapters) and the first stage's first token
(``stream(question, max_tokens=1)`` until that stage finishes). Also reported: the time to
import edgestack and initialise llama.cpp, which comes before. Goal: under 0.5 s.

Two starts per run, in a data folder of their own (benchmarks/out/home): the very first, with
an empty prompt cache, which evaluates the stage's fixed 200-token instruction; and a usual one,
which restores it from the prompt cache the first start wrote (as every start after the first
does).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from typing import Any

import _common as c


def run_once(threads: int) -> dict[str, float]:
    t0 = time.perf_counter()
    from edge_stack import Stack, StageFinished
    from edge_stack.engines.llama._lib import lib

    lib()
    t1 = time.perf_counter()
    stack = Stack.load(c.stack_160m(), threads=threads)
    t2 = time.perf_counter()
    for event in stack.stream(c.QUESTIONS[0], max_tokens=1):
        if isinstance(event, StageFinished):
            break
    t3 = time.perf_counter()
    stack.close()
    return {"import_s": t1 - t0, "load_s": t2 - t1, "first_token_s": t3 - t2, "cold_s": t3 - t1}


def measure(runs: int, threads: int) -> dict[str, Any]:
    c.stack_160m()
    home = c.OUT / "home"
    env = os.environ | {"EDGESTACK_HOME": str(home)}
    env.pop("EDGESTACK_NO_PROMPT_CACHE", None)
    rows: dict[str, list[dict[str, float]]] = {"first": [], "usual": []}
    for _ in range(runs):
        shutil.rmtree(home / "prompt-cache", ignore_errors=True)
        for kind in ("first", "usual"):
            cmd = [sys.executable, __file__, "--once", "--threads", str(threads)]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout
            rows[kind].append(json.loads(out.strip().splitlines()[-1]))
    usual, first = rows["usual"], rows["first"]
    return (
        {k: c.median_min_max([r[k] for r in usual]) for k in usual[0]}
        | {"first_start": {k: c.median_min_max([r[k] for r in first]) for k in first[0]}}
        | {"machine": c.machine()}
    )


def main() -> None:
    parser = c.arg_parser(__doc__)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--once", action="store_true", help=argparse.SUPPRESS)  # internal
    args = parser.parse_args()
    if args.once:
        print(json.dumps(run_once(args.threads)))
        return
    r = measure(args.runs, args.threads)
    if args.json:
        print(json.dumps(r, indent=2))
        return
    for label, row in (("first start, empty prompt cache", r["first_start"]), ("usual start", r)):
        print(label)
        for k in ("import_s", "load_s", "first_token_s", "cold_s"):
            v = row[k]
            print(f"  {k:<14} {v['median']:.3f} s (min {v['min']:.3f}, max {v['max']:.3f})")
    print(
        f"cold start (load four stages + first token): {r['cold_s']['median']:.3f} s (goal < 0.5); "
        f"first start ever: {r['first_start']['cold_s']['median']:.3f} s"
    )


if __name__ == "__main__":
    main()
