"""Conversion speed and peak memory on a Pythia-160M-shaped checkpoint, against llama.cpp's converter.

    python benchmarks/convert_pythia160m.py [--runs 3] [--llama-cpp DIR]

Builds the random checkpoint once (benchmarks/out/pythia160m), converts it to f16 with edgestack
and, when --llama-cpp names a llama.cpp source tree (for example the one vendored in the
llama-cpp-python sdist), with llama.cpp's own convert_hf_to_gguf.py too, alternating the two so
that both see the same machine state. Each conversion runs in its own process; its peak memory is
the process's maximum resident set (ru_maxrss). Then quantizes edgestack's f16 to q8_0 and q4_k_m.
Prints a table and the ratios edgestack / llama.cpp (goal: time <= 1.0, memory <= 0.5).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _pythia import write_checkpoint  # noqa: E402

# llama.cpp's converter refuses tokenizers it does not know by hash (ours has GPT-2's structure,
# so the shim tells it so) and misses rotary_pct in transformers-5 configs; the shim mends only
# those two, nothing in how it converts.
_LLAMA_SHIM = """
import sys
root = sys.argv.pop(1)
sys.path[:0] = [root, root + "/gguf-py"]
import conversion.base as base
base.TextModel.get_vocab_base_pre = lambda self, tokenizer: "gpt-2"
_load = base.ModelBase.load_hparams
def load_hparams(dir_model, is_mistral_format):
    # transformers 5 re-spells rotary_pct as rope_parameters.partial_rotary_factor, which this
    # converter does not read; give it back the old key (the value is the same).
    hp = _load(dir_model, is_mistral_format)
    rope = hp.get("rope_parameters") or {}
    hp.setdefault("rotary_pct", rope.get("partial_rotary_factor", 0.25))
    return hp
base.ModelBase.load_hparams = staticmethod(load_hparams)
import convert_hf_to_gguf
convert_hf_to_gguf.main()
"""

_OURS = """
import sys
from edge_stack.convert import convert_checkpoint
convert_checkpoint(sys.argv[1], sys.argv[2], outtype="f16", force=True)
"""


def _run(cmd: list[str]) -> tuple[float, float]:
    """Run ``cmd``; return (seconds, peak RSS in MB) of that process alone."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        err = proc.stderr.read().decode() if proc.stderr else ""
        raise SystemExit(f"failed: {' '.join(cmd)}\n{err[-2000:]}")
    return seconds, usage.ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--llama-cpp", type=Path, help="llama.cpp source tree with convert_hf_to_gguf.py"
    )
    parser.add_argument("--out", type=Path, default=HERE / "out")
    parser.add_argument("--json", action="store_true", help="print the results as one JSON object")
    args = parser.parse_args()

    ckpt = args.out / "pythia160m"
    if not (ckpt / "model.safetensors").exists():
        print(f"building {ckpt} ...", file=sys.stderr)
        write_checkpoint(ckpt)
    ours_out = args.out / "pythia160m.f16.gguf"
    theirs_out = args.out / "pythia160m.llamacpp.f16.gguf"

    sides: dict[str, list[str]] = {
        "edgestack": [sys.executable, "-c", _OURS, str(ckpt), str(ours_out)]
    }
    if args.llama_cpp:
        sides["llama.cpp"] = [
            sys.executable,
            "-c",
            _LLAMA_SHIM,
            str(args.llama_cpp),
            str(ckpt),
            "--outtype",
            "f16",
            "--outfile",
            str(theirs_out),
        ]
    results: dict[str, list[tuple[float, float]]] = {k: [] for k in sides}
    for _ in range(args.runs):
        for name, cmd in sides.items():  # alternating, so drift hits both sides alike
            results[name].append(_run(cmd))

    from edge_stack.convert.quantize import quantize

    quant: dict[str, dict[str, float]] = {}
    for qtype in ("q8_0", "q4_k_m"):
        dst = args.out / f"pythia160m.{qtype}.gguf"
        start = time.perf_counter()
        quantize(ours_out, dst, qtype=qtype, force=True)
        quant[qtype] = {"seconds": time.perf_counter() - start, "mb": dst.stat().st_size / 1e6}

    summary = {
        name: {
            "seconds": statistics.median(s for s, _ in runs),
            "peak_mb": statistics.median(m for _, m in runs),
            "seconds_min": min(s for s, _ in runs),
            "seconds_max": max(s for s, _ in runs),
        }
        for name, runs in results.items()
    }
    report: dict[str, object] = {
        "checkpoint_mb": (ckpt / "model.safetensors").stat().st_size / 1e6,
        "f16": summary,
        "quantize": quant,
    }
    if "llama.cpp" in summary:
        ours, theirs = summary["edgestack"], summary["llama.cpp"]
        report["ratio_time"] = ours["seconds"] / theirs["seconds"]
        report["ratio_peak_memory"] = ours["peak_mb"] / theirs["peak_mb"]
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(
        f"Pythia-160M-shaped checkpoint, f32 safetensors {report['checkpoint_mb']:.0f} MB, "
        f"median of {args.runs} runs"
    )
    print(f"{'converter':<12} {'seconds':>8} {'min':>6} {'max':>6} {'peak MB':>8}")
    for name, s in summary.items():
        print(
            f"{name:<12} {s['seconds']:8.2f} {s['seconds_min']:6.2f} {s['seconds_max']:6.2f} {s['peak_mb']:8.0f}"
        )
    if "ratio_time" in report:
        print(
            f"ratio edgestack/llama.cpp: time {report['ratio_time']:.2f} (goal <= 1.0), "
            f"peak memory {report['ratio_peak_memory']:.2f} (goal <= 0.5)"
        )
    for qtype, q in quant.items():
        print(f"quantize f16 -> {qtype}: {q['seconds']:.2f} s, {q['mb']:.0f} MB")


if __name__ == "__main__":
    main()
