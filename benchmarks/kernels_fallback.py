"""The price of the kernel fallback: llama.cpp's extra CPU buffer types off against on.

    python benchmarks/kernels_fallback.py [--tokens 64] [--rounds 3] [--json]

Where the kernel probe (edge_stack.engines.llama._kernels) finds that a fast kernel crashes,
models holding that type load with llama.cpp's extra CPU buffer types off (AMX, weight
repacking). This measures what that costs where the fast kernels work: the Pythia-160M-shaped
base at Q8_0 and Q4_0 (Q4_0 is the type weight repacking serves on x86 AVX2/AVX-512 and ARM), each in
a fresh child process with plain llama-cpp-python calls, alternately on and off, round by round.
Prints the fallback's speed as a ratio to the full kernels (prompt and generation tokens/s).
A type whose full kernels fault on this machine is reported as such and not run with them.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import _common as c
from _llama_child import CHILD

TYPES = ("q8_0", "q4_0")


def _model(qtype: str) -> Path:
    from edge_stack.convert import convert_checkpoint
    from edge_stack.convert.quantize import quantize

    out = c.OUT / f"pythia160m.{qtype}.gguf"
    if out.exists():
        return out
    if qtype == "q8_0":
        return convert_checkpoint(c.pythia_checkpoint(), out, outtype="q8_0")
    f16 = c.OUT / "pythia160m.f16.gguf"
    if not f16.exists():
        convert_checkpoint(c.pythia_checkpoint(), f16, outtype="f16")
    return quantize(f16, out, qtype=qtype)


def _run(model: Path, extra: bool, args: object) -> dict[str, float]:
    cmd = [sys.executable, "-c", CHILD, str(model), str(args.threads), str(args.tokens)]  # type: ignore[attr-defined]
    cmd += ["1" if extra else "0", "1"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    result: dict[str, float] = json.loads(out)[0]
    return result


def main() -> None:
    parser = c.arg_parser(__doc__)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    from edge_stack.engines.llama._kernels import verdict

    faulty = set(verdict().faulty)
    report: dict[str, object] = {"machine": c.machine(), "faulty_here": sorted(faulty)}
    rows = {}
    for qtype in TYPES:
        model = _model(qtype)
        if qtype in faulty:
            rows[qtype] = {"full": "faults on this machine"}
            continue
        on: list[dict[str, float]] = []
        off: list[dict[str, float]] = []
        for _ in range(args.rounds):
            on.append(_run(model, True, args))
            off.append(_run(model, False, args))
        best_on = {k: max(r[k] for r in on) for k in ("prompt_tps", "gen_tps")}
        best_off = {k: max(r[k] for r in off) for k in ("prompt_tps", "gen_tps")}
        rows[qtype] = {
            "full": best_on,
            "fallback": best_off,
            "ratio": {k: round(best_off[k] / best_on[k], 3) for k in best_on},
        }
    report["types"] = rows
    if args.json:
        print(json.dumps(report, indent=1))
        return
    print(f"machine: {report['machine']}  threads: {args.threads}")
    for qtype, row in rows.items():
        if "ratio" not in row:
            print(f"{qtype}: full kernels fault here; only the fallback runs")
            continue
        r = row["ratio"]
        print(
            f"{qtype}: fallback / full kernels: prompt {r['prompt_tps']:.2f}, "  # type: ignore[index]
            f"generation {r['gen_tps']:.2f}"  # type: ignore[index]
        )


if __name__ == "__main__":
    main()
