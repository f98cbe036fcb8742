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
this run. edgestack's policy (``edge_stack.util._env.OPENMP_DEFAULTS``) is printed with its ratios.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import _common as c

POLICIES: dict[str, dict[str, str]] = {
    "default (unset)": {},
    "PASSIVE": {"OMP_WAIT_POLICY": "PASSIVE"},
    "ACTIVE": {"OMP_WAIT_POLICY": "ACTIVE"},
    "GOMP_SPINCOUNT=10000": {"GOMP_SPINCOUNT": "10000"},
    "GOMP_SPINCOUNT=100000": {"GOMP_SPINCOUNT": "100000"},
}
SITUATIONS = ("idle", "hogs", "twin")

_CHILD = r"""
import ctypes, json, os, sys, time
import llama_cpp.llama_cpp as lib
path, threads, n_gen, extra, repeat = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "1", int(sys.argv[5])
cb = lib.llama_log_callback(lambda *a: None)
lib.llama_log_set(cb, ctypes.c_void_p(0))
lib.llama_backend_init()
mp = lib.llama_model_default_params()
mp.use_extra_bufts = extra
model = lib.llama_model_load_from_file(path.encode(), mp)
cp = lib.llama_context_default_params()
cp.n_ctx, cp.n_batch, cp.n_ubatch = 512, 512, 512
cp.n_threads = cp.n_threads_batch = threads
cp.no_perf = True
ctx = lib.llama_init_from_model(model, cp)
n_vocab = lib.llama_vocab_n_tokens(lib.llama_model_get_vocab(model))
prompt = [(37 * i + 11) % n_vocab for i in range(128)]
results = []
for _ in range(repeat):
    lib.llama_memory_clear(lib.llama_get_memory(ctx), True)
    arr = (lib.llama_token * len(prompt))(*prompt)
    t0 = time.perf_counter()
    assert lib.llama_decode(ctx, lib.llama_batch_get_one(arr, len(prompt))) == 0
    t1 = time.perf_counter()
    tok = lib.llama_token(prompt[-1])
    for _ in range(n_gen):
        # Fixed next tokens: the speed of a step does not depend on which token it is.
        tok = lib.llama_token((tok.value * 7 + 3) % n_vocab)
        assert lib.llama_decode(ctx, lib.llama_batch_get_one(ctypes.pointer(tok), 1)) == 0
    t2 = time.perf_counter()
    results.append({"prompt_tps": len(prompt) / (t1 - t0), "gen_tps": n_gen / (t2 - t1)})
print(json.dumps(results))
"""


def _hog() -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", "while True: pass"])


def _child_env(policy: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    env.update(policy)
    return env


def _measure(
    model: Path, policy: dict[str, str], situation: str, args: object, extra: bool
) -> dict[str, float]:
    cmd = [sys.executable, "-c", _CHILD, str(model), str(args.threads), str(args.tokens)]  # type: ignore[attr-defined]
    cmd += ["1" if extra else "0", str(args.rounds)]  # type: ignore[attr-defined]
    others: list[subprocess.Popen[bytes]] = []
    if situation == "hogs":
        others = [_hog() for _ in range(2)]
    elif situation == "twin":
        # The twin repeats long enough to overlap the measured child's whole run.
        twin = [*cmd[:-1], str(args.rounds * 3)]  # type: ignore[attr-defined]
        others = [
            subprocess.Popen(
                twin, env=_child_env(policy), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
        ]
    try:
        if others:
            time.sleep(0.5)
        out = subprocess.run(
            cmd, env=_child_env(policy), capture_output=True, text=True, check=True
        ).stdout
    finally:
        for proc in others:
            proc.kill()
            proc.wait()
    rounds = json.loads(out)
    return {
        "prompt_tps": max(r["prompt_tps"] for r in rounds),
        "gen_tps": max(r["gen_tps"] for r in rounds),
    }


def main() -> None:
    parser = c.arg_parser(__doc__)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    from edge_stack.engines.llama._kernels import use_extra_bufts
    from edge_stack.formats.gguf._check import check_gguf
    from edge_stack.util._env import OPENMP_DEFAULTS

    stack = c.stack_160m()
    model = stack.parent / "base.q8_0.gguf"
    # Only where llama.cpp's own defaults would crash (see edge_stack.engines.llama._kernels) are its extra
    # CPU buffer types off, for every policy alike.
    extra = use_extra_bufts({t.type for t in check_gguf(model).tensors}, model)
    ours = dict(OPENMP_DEFAULTS)
    policies = dict(POLICIES)
    label = "edgestack: " + (" ".join(f"{k}={v}" for k, v in ours.items()) or "unset")
    policies[label] = ours

    results: dict[str, dict[str, dict[str, float]]] = {}
    for situation in SITUATIONS:
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
    for situation in SITUATIONS:
        print(f"\n{situation}: tokens/s (ratio to llama.cpp's default policy)")
        for name, v in results[situation].items():
            r = ratios[situation][name]
            print(
                f"  {name:28s} gen {v['gen_tps']:7.1f} ({r['gen_tps']:.2f})   "
                f"prompt {v['prompt_tps']:7.1f} ({r['prompt_tps']:.2f})"
            )
    for situation in SITUATIONS:
        print(
            c.ratio_line(
                f"edgestack policy / llama.cpp default, generation, {situation}",
                ratios[situation][label]["gen_tps"],
                ">= 0.97" if situation == "idle" else "no worse than PASSIVE",
            )
        )


if __name__ == "__main__":
    main()
