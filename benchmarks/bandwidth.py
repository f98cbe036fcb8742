"""Generation speed against the memory-bandwidth bound of this machine.

    python benchmarks/bandwidth.py [--json]

A generated token reads every weight once (except the token embedding, of which it reads one
row) plus the KV cache so far. Bound = measured read bandwidth / bytes per token; the fraction
is edgestack's measured generation speed (benchmarks/stage_speed.py's loop, Pythia-160M-shaped
Q8_0 with a stage's LoRA adapter, 2 threads) over that bound. Read bandwidth: numpy sums over a
512 MB array, split over the same number of threads (numpy releases the GIL), best of 8
before and 8 after the generation runs.
"""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import _common as c
import numpy as np


def read_bandwidth(threads: int, mb: int = 512, repeat: int = 8) -> float:
    """Bytes per second numpy can read (sum) with ``threads`` threads."""
    data = np.ones(mb * 1024 * 1024 // 8, dtype=np.float64)
    parts = np.array_split(data, threads)
    best = 0.0
    with ThreadPoolExecutor(threads) as pool:
        for _ in range(repeat):
            t = time.perf_counter()
            list(pool.map(np.sum, parts))
            best = max(best, data.nbytes / (time.perf_counter() - t))
    return best


def bytes_per_token(gguf: Path, lora: Path | None, n_past: int) -> int:
    import gguf as g

    reader = g.GGUFReader(gguf)
    total = 0
    n_layer = n_embd = 0
    for t in reader.tensors:
        if t.name == "token_embd.weight":
            total += int(t.n_bytes) // int(t.shape[1])  # one row
        else:
            total += int(t.n_bytes)
        if t.name.endswith("attn_norm.weight"):
            n_layer += 1
            n_embd = int(t.shape[0])
    if lora is not None:
        total += sum(int(t.n_bytes) for t in g.GGUFReader(lora).tensors)
    return total + n_past * n_layer * 2 * n_embd * 2  # K and V so far, f16


def measure(threads: int, tokens: int = 64, rounds: int = 3) -> dict[str, Any]:
    from stage_speed import measure_model

    c.stack_160m()
    gguf, lora = c.OUT / "stack160m" / "base.q8_0.gguf", c.stage_lora("extract")
    bw = read_bandwidth(threads)
    speed = measure_model(gguf, lora, tokens, rounds, threads)
    bw = max(bw, read_bandwidth(threads))  # before and after: the load drifts
    tok_s = speed["gen_tok_s"]["edgestack"]["median"]
    per_token = bytes_per_token(gguf, lora, 32 + tokens // 2)
    bound = bw / per_token
    return {
        "read_gb_s": bw / 1e9,
        "mb_per_token": per_token / 1e6,
        "bound_tok_s": bound,
        "gen_tok_s": tok_s,
        "fraction": tok_s / bound,
        "machine": c.machine(),
    }


def main() -> None:
    parser = c.arg_parser(__doc__)
    args = parser.parse_args()
    r = measure(args.threads)
    if args.json:
        print(json.dumps(r, indent=2))
        return
    print(
        f"read bandwidth {r['read_gb_s']:.1f} GB/s ({args.threads} threads); "
        f"{r['mb_per_token']:.1f} MB read per token -> bound {r['bound_tok_s']:.0f} tok/s"
    )
    print(f"measured {r['gen_tok_s']:.1f} tok/s = {r['fraction']:.2f} of the bound")


if __name__ == "__main__":
    main()
