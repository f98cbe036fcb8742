"""OpenMP wait policy: generation and prompt speed under each policy, idle and under load.

    python benchmarks/thread_policy.py [--tokens 64] [--rounds 3] [--json]

llama-cpp-python's ggml runs its threads with OpenMP (libgomp), whose threads wait for each other
at every barrier (hundreds per token). How they wait is set by the environment before libgomp
loads: ``OMP_WAIT_POLICY=PASSIVE`` sleeps at once, ``ACTIVE`` spins forever, and libgomp's
default spins for a while (GOMP_SPINCOUNT, 300k iterations) then sleeps; ``GOMP_SPINCOUNT=N``
bounds the spin. Every measurement runs in a fresh child process (the policy is fixed when
libgomp loads) that loads the Pythia-160M-shaped Q8_0 base with plain llama.cpp calls,
evaluates a 128-token prompt and generates --tokens tokens greedily with --threads threads.

Three situations, each made by this script:
- idle: nothing else running;
- hogs: two busy-looping Python processes (one per core of this 2-core machine), as a desktop
  with other work would have;
- twin: a second llama.cpp process generating under the same policy at the same time (two apps,
  or two stacks, each with a model): spinning processes steal each other's time slices.

The anchor is llama.cpp as its users run it: the same child with the environment untouched
(libgomp's default). Ratios are tokens/s against that anchor in the same situation, measured in
this run. edgestack's policy is chosen as edgestack chooses it when llama.cpp loads
(``edge_stack.util._env.openmp_policy``: a bounded spin, or PASSIVE when other tasks want the
cores), with the situation's other work already running; the choice is printed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import _common as c
from _llama_child import CHILD as _CHILD

POLICIES: dict[str, dict[str, str]] = {
    "default (unset)": {},
    "PASSIVE": {"OMP_WAIT_POLICY": "PASSIVE"},
    "ACTIVE": {"OMP_WAIT_POLICY": "ACTIVE"},
    "GOMP_SPINCOUNT=10000": {"GOMP_SPINCOUNT": "10000"},
    "GOMP_SPINCOUNT=100000": {"GOMP_SPINCOUNT": "100000"},
}
SITUATIONS = ("idle", "hogs", "twin")


def _hog() -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", "while True: pass"])


def _child_env(policy: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    env.update(policy)
    return env


def _ours() -> dict[str, str]:
    """What edgestack would choose in a process starting now (this one's own settings aside)."""
    from edge_stack.util._env import openmp_policy

    saved = {k: os.environ.pop(k) for k in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT") if k in os.environ}
    try:
        return openmp_policy()
    finally:
        os.environ.update(saved)


def _measure(
    model: Path, policy: dict[str, str] | None, situation: str, args: object, extra: bool
) -> dict[str, Any]:
    """Tokens/s of a child under ``policy`` (None: edgestack's choice, made as it would be:
    when the process starts, seeing what else runs then)."""
    cmd = [sys.executable, "-c", _CHILD, str(model), str(args.threads), str(args.tokens)]  # type: ignore[attr-defined]
    cmd += ["1" if extra else "0", str(args.rounds)]  # type: ignore[attr-defined]
    others: list[subprocess.Popen[bytes]] = []
    if situation == "hogs":
        others = [_hog() for _ in range(2)]
    elif situation == "twin":
        # The twin repeats long enough to overlap the measured child's whole run.
        twin = [*cmd[:-1], str(args.rounds * 3)]  # type: ignore[attr-defined]
        twin_policy = _ours() if policy is None else policy
        others = [
            subprocess.Popen(
                twin,
                env=_child_env(twin_policy),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        ]
    chosen: dict[str, str] = {}
    try:
        if others:
            time.sleep(0.5)
        chosen = _ours() if policy is None else policy
        out = subprocess.run(
            cmd, env=_child_env(chosen), capture_output=True, text=True, check=True
        ).stdout
    finally:
        for proc in others:
            proc.kill()
            proc.wait()
    rounds = json.loads(out)
    return {
        "prompt_tps": max(r["prompt_tps"] for r in rounds),
        "gen_tps": max(r["gen_tps"] for r in rounds),
        "policy": " ".join(f"{k}={v}" for k, v in chosen.items()) or "unset",
    }


def main() -> None:
    parser = c.arg_parser(__doc__)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--situations", nargs="+", choices=SITUATIONS, default=list(SITUATIONS), metavar="NAME"
    )
    args = parser.parse_args()
    situations = tuple(args.situations)

    from edge_stack.engines.llama._kernels import use_extra_bufts
    from edge_stack.formats.gguf._check import check_gguf

    stack = c.stack_160m()
    model = stack.parent / "base.q8_0.gguf"
    # Only where llama.cpp's own defaults would crash (see edge_stack.engines.llama._kernels) are its extra
    # CPU buffer types off, for every policy alike.
    extra = use_extra_bufts({t.type for t in check_gguf(model).tensors}, model)
    policies: dict[str, dict[str, str] | None] = dict(POLICIES)
    label = "edgestack (adaptive)"
    policies[label] = None

    results: dict[str, dict[str, dict[str, Any]]] = {}
    for situation in situations:
        results[situation] = {}
        for name, policy in policies.items():
            print(f"{situation:5s} {name} ...", file=sys.stderr)
            results[situation][name] = _measure(model, policy, situation, args, extra)
    anchor = "default (unset)"
    report: dict[str, object] = {"machine": c.machine(), "extra_bufts": extra, "results": results}
    ratios: dict[str, dict[str, dict[str, float]]] = {}
    for situation, by_policy in results.items():
        base = by_policy[anchor]
        ratios[situation] = {
            name: {k: round(v[k] / base[k], 3) for k in ("gen_tps", "prompt_tps")}
            for name, v in by_policy.items()
        }
    report["ratios_vs_default"] = ratios
    if args.json:
        print(json.dumps(report, indent=1))
        return
    print(f"machine: {report['machine']}  threads: {args.threads}  extra buffer types: {extra}")
    for situation in situations:
        print(f"\n{situation}: tokens/s (ratio to llama.cpp's default policy)")
        for name, v in results[situation].items():
            r = ratios[situation][name]
            print(
                f"  {name:28s} gen {v['gen_tps']:7.1f} ({r['gen_tps']:.2f})   "
                f"prompt {v['prompt_tps']:7.1f} ({r['prompt_tps']:.2f})"
                + (f"   chose {v['policy']}" if name == label else "")
            )
    for situation in situations:
        print(
            c.ratio_line(
                f"edgestack policy / llama.cpp default, generation, {situation}",
                ratios[situation][label]["gen_tps"],
                ">= 0.97" if situation == "idle" else "no worse than PASSIVE",
            )
        )
        passive = results[situation]["PASSIVE"]["gen_tps"]
        print(
            c.ratio_line(
                f"edgestack policy / PASSIVE (before issue 18), generation, {situation}",
                results[situation][label]["gen_tps"] / passive,
                ">= 0.97 loaded" if situation != "idle" else "report",
            )
        )


if __name__ == "__main__":
    main()
