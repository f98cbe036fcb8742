"""Small devices: one context per base, low-memory mode, right-sized contexts and the planner.

    python benchmarks/small_devices.py [--rounds 3] [--questions 8] [--json]

The Pythia-160M-shaped Q8_0 stack of benchmarks/_common.py (four rank-16 LoRA stages, f16 KV
cache, prompts starting with the same ~200-token instruction, 16 tokens per stage), with its
contexts sized by edgestack (no n_ctx in stack.toml) and its files copied to
benchmarks/out/small-devices/ (no other process maps them), held four ways, each in a fresh
process, taking turns round by round:

- ``one``: a one-stage stack (its first stage), the reference "one stage";
- ``separate``: memory = "separate", one context per stage (edgestack before one context per
  base);
- ``shared``: memory = "shared" (the default), one context for the four stages;
- ``low``: memory = "low", only the running stage's context.

Each process asks one question to warm up (the fixed prompt starts are then cached, in memory
and on disk), then ``--questions`` more, and reports: PSS growth over the process before
loading (after importing edgestack and llama.cpp; as benchmarks/memory.py), the peak PSS growth
(sampled every 5 ms while asking) and the answers. Seconds per question are measured apart, in
one process holding the stack three ways (separate, shared, low) and asking each question of
each in turn (the order rotating), so that the load of a shared machine falls on all three
alike: the ratios are medians of per-question ratios. Goals: shared / one <= 1.15 (PSS),
shared / separate <= 1.03 (seconds per question), low peak / one peak <= 1.1, answers
identical in every mode. The planner's estimate (edgestack plan) of each mode is compared with
its measured PSS (goal: within 10%).

A last process measures what an adapter switch costs llama.cpp (its graph is planned again):
the time of a one-token decode right after another sequence's adapter was set, minus the time
of the same decode without a switch.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import _common as c

MODES = ("one", "separate", "shared", "low")


def stacks() -> dict[str, Path]:
    """The benchmark stack with contexts sized by edgestack, and its first stage alone.

    The GGUF files are copies of benchmarks/out/stack160m's, private to this script: PSS divides
    a page among the processes that map it, and other benchmarks may map those files."""
    import shutil

    full = c.stack_160m()
    root = c.OUT / "small-devices"
    root.mkdir(exist_ok=True)
    for src in full.parent.glob("*.gguf"):
        dst = root / src.name
        if not dst.exists() or dst.stat().st_size != src.stat().st_size:
            shutil.copyfile(src, root / f".{src.name}.tmp")
            (root / f".{src.name}.tmp").rename(dst)
    text = "\n".join(line for line in full.read_text().splitlines() if not line.startswith("n_ctx"))
    auto = root / "stack-16-auto-f16.toml"
    cut = text.index("[[stages]]", text.index("[[stages]]") + 1)
    one = root / "stack-one-auto-f16.toml"
    for path, body in ((auto, text + "\n"), (one, text[:cut])):
        if not path.exists() or path.read_text() != body:
            path.write_text(body)
    return {"four": auto, "one": one}


class PeakPss:
    """The highest PSS seen while running, sampled every ``every`` seconds."""

    def __init__(self, every: float = 0.005) -> None:
        self.every = every
        self.peak = c.pss_mb()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            self.peak = max(self.peak, c.pss_mb())

    def __enter__(self) -> PeakPss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, c.pss_mb())


def run_mode(mode: str, threads: int, questions: int) -> dict[str, Any]:
    from edge_stack import Stack
    from edge_stack.engines.llama._lib import lib

    lib()
    paths = stacks()
    path = paths["one"] if mode == "one" else paths["four"]
    memory = None if mode == "one" else mode
    before = c.pss_mb()
    with PeakPss() as peak, Stack.load(path, threads=threads, memory=memory) as stack:
        stack.ask(c.QUESTIONS[-1])  # warm-up: fixed prompt starts cached
        seconds, answers = [], []
        for q in c.QUESTIONS[:questions]:
            t = time.perf_counter()
            answer = stack.ask(q)
            seconds.append(time.perf_counter() - t)
            answers.append([s.output for s in answer.stages])
        pss = c.pss_mb() - before
        n_ctx = dict(getattr(stack._backend, "n_ctx", {}))
        switches = getattr(stack._backend, "adapter_switches", 0)
    return {
        "pss_mb": pss,
        "peak_pss_mb": peak.peak - before,
        "seconds_per_question": statistics.median(seconds),
        "answers": answers,
        "n_ctx": n_ctx,
        "adapter_switches": switches,
    }


def speed(threads: int, questions: int) -> dict[str, Any]:
    """Seconds per question of the four-stage stack held three ways in this process, taking
    turns question by question."""
    from edge_stack import Stack

    path = stacks()["four"]
    modes = ("separate", "shared", "low")
    loaded = {m: Stack.load(path, threads=threads, memory=m) for m in modes}
    try:
        for stack in loaded.values():
            stack.ask(c.QUESTIONS[-1])  # warm-up: fixed prompt starts cached
        seconds: dict[str, list[float]] = {m: [] for m in modes}
        for i, q in enumerate(c.QUESTIONS[:questions] * 2):
            order = modes[i % 3 :] + modes[: i % 3]
            for m in order:
                t = time.perf_counter()
                loaded[m].ask(q)
                seconds[m].append(time.perf_counter() - t)
    finally:
        for stack in loaded.values():
            stack.close()

    def paired(a: str, b: str) -> float:
        return statistics.median(x / y for x, y in zip(seconds[a], seconds[b], strict=True))

    return {
        "seconds_per_question": {m: c.median_min_max(v) for m, v in seconds.items()},
        "shared_vs_separate": paired("shared", "separate"),
        "low_vs_shared": paired("low", "shared"),
    }


def planned(mode: str) -> float:
    """The planner's estimate of ``mode`` in MB, without the process's own part (as measured)."""
    from edge_stack.manifest import load_manifest
    from edge_stack.tools._devices import parse_device
    from edge_stack.tools._plan import plan_stack

    paths = stacks()
    spec = load_manifest(paths["one"] if mode == "one" else paths["four"])
    memory = "shared" if mode == "one" else mode
    plan = plan_stack(spec, parse_device("8GB", bandwidth=1e10), memory=memory)
    return plan.estimate.stack_bytes / 1024**2  # MiB, as pss_mb


def switch_cost(threads: int, repeat: int = 40) -> dict[str, float]:
    """Milliseconds a one-token decode takes after an adapter switch, and without one."""
    from edge_stack.engines.llama._lib import lib
    from edge_stack.engines.llama._model import LlamaModel
    from edge_stack.engines.llama._shared import SharedContext

    lib()
    root = stacks()["four"].parent
    with LlamaModel.load(root / "base.q8_0.gguf") as model:
        shared = SharedContext(model, n_ctx=512, n_seq=2, n_threads=threads)
        views = [shared.sequence(lora=root / f"{n}.lora.gguf") for n in c.STAGES[:2]]
        prompt = model.tokenize(c.INSTRUCTION, add_bos=False, special=False)[:33]
        for v in views:
            list(v.generate(prompt, max_tokens=1))
        timings: dict[str, list[float]] = {"switch": [], "same": []}
        for i in range(repeat):
            for kind, view in (("same", views[i % 2]), ("switch", views[(i + 1) % 2])):
                if kind == "same":
                    list(view.generate(prompt, max_tokens=1))  # its adapter is now set
                t = time.perf_counter()
                list(view.generate(prompt, max_tokens=1))  # the last prompt token again
                timings[kind].append(time.perf_counter() - t)
        shared.close()
    same = statistics.median(timings["same"]) * 1e3
    switch = statistics.median(timings["switch"]) * 1e3
    return {"same_ms": same, "switch_ms": switch, "cost_ms": switch - same}


def measure(rounds: int, threads: int, questions: int) -> dict[str, Any]:
    stacks()
    got: dict[str, list[dict[str, Any]]] = {m: [] for m in MODES}
    for _ in range(rounds):
        for mode in MODES:
            cmd = [
                sys.executable,
                __file__,
                "--mode",
                mode,
                "--threads",
                str(threads),
                "--questions",
                str(questions),
            ]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            got[mode].append(json.loads(out.strip().splitlines()[-1]))
            shown = {k: v for k, v in got[mode][-1].items() if k != "answers"}
            print(f"{mode}: {json.dumps(shown)}", file=sys.stderr, flush=True)

    def med(mode: str, key: str) -> float:
        return statistics.median(r[key] for r in got[mode])

    cmd = [sys.executable, __file__, "--mode", "switch", "--threads", str(threads)]
    switch = json.loads(
        subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.splitlines()[-1]
    )
    cmd = [sys.executable, __file__, "--mode", "speed", "--threads", str(threads)]
    cmd += ["--questions", str(questions)]
    timed = json.loads(
        subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.splitlines()[-1]
    )
    reference = got["separate"][0]["answers"]
    four_answers = [r["answers"] == reference for m in ("shared", "low") for r in got[m]]
    plan = {m: planned(m) for m in MODES}
    return {
        "pss_mb": {m: c.median_min_max([r["pss_mb"] for r in got[m]]) for m in MODES},
        "peak_pss_mb": {m: c.median_min_max([r["peak_pss_mb"] for r in got[m]]) for m in MODES},
        "seconds_per_question": timed["seconds_per_question"],
        "n_ctx": got["shared"][0]["n_ctx"],
        "adapter_switches_per_question": got["shared"][0]["adapter_switches"] / (questions + 1),
        "shared_vs_one": med("shared", "pss_mb") / med("one", "pss_mb"),
        "separate_vs_one": med("separate", "pss_mb") / med("one", "pss_mb"),
        "low_peak_vs_one_peak": med("low", "peak_pss_mb") / med("one", "peak_pss_mb"),
        "shared_vs_separate_seconds": timed["shared_vs_separate"],
        "low_vs_shared_seconds": timed["low_vs_shared"],
        "same_answers": all(four_answers),
        "plan_mb": plan,
        "plan_vs_measured": {
            m: plan[m] / med(m, "peak_pss_mb" if m == "low" else "pss_mb") for m in MODES
        },
        "switch": switch,
        "machine": c.machine(),
    }


def main() -> None:
    parser = c.arg_parser(__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--questions", type=int, default=8)
    parser.add_argument("--mode", choices=[*MODES, "switch", "speed"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.mode == "switch":
        print(json.dumps(switch_cost(args.threads)))
        return
    if args.mode == "speed":
        print(json.dumps(speed(args.threads, args.questions)))
        return
    if args.mode:
        print(json.dumps(run_mode(args.mode, args.threads, args.questions)))
        return
    r = measure(args.rounds, args.threads, args.questions)
    if args.json:
        print(json.dumps(r, indent=2))
        return
    for m in MODES:
        timed = r["seconds_per_question"].get(m)
        per_question = f", {timed['median']:.3f} s/question" if timed else ""
        print(
            f"{m:<9} PSS {r['pss_mb'][m]['median']:6.1f} MB, peak "
            f"{r['peak_pss_mb'][m]['median']:6.1f} MB{per_question}, plan "
            f"{r['plan_mb'][m]:.1f} MB ({r['plan_vs_measured'][m]:.3f}x measured)"
        )
    print(f"n_ctx by stage: {r['n_ctx']}; answers identical in every mode: {r['same_answers']}")
    print(c.ratio_line("PSS shared / one stage", r["shared_vs_one"], "<= 1.15"))
    print(c.ratio_line("PSS separate / one stage (before)", r["separate_vs_one"], "report"))
    print(c.ratio_line("peak PSS low / one stage", r["low_peak_vs_one_peak"], "<= 1.1"))
    print(c.ratio_line("s/question shared / separate", r["shared_vs_separate_seconds"], "<= 1.03"))
    print(c.ratio_line("s/question low / shared", r["low_vs_shared_seconds"], "report"))
    s = r["switch"]
    print(
        f"adapter switch: {s['cost_ms']:.2f} ms ({s['switch_ms']:.2f} vs {s['same_ms']:.2f} ms "
        f"per one-token decode), {r['adapter_switches_per_question']:.1f} switches per question"
    )


if __name__ == "__main__":
    main()
