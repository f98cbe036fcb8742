"""Stage speed: edgestack's generation loop against the same work straight through llama.cpp.

    python benchmarks/stage_speed.py [--tokens 64] [--rounds 5] [--llama-bench PATH] [--json]

For each reference model (Pythia-160M-shaped with a stage's LoRA adapter; SmolLM2-135M-shaped
base, Llama architecture), both Q8_0, 2 threads:

- edgestack: ``LlamaContext.generate`` (the stage code path: our sampler chain, stop handling,
  UTF-8 assembly, cache bookkeeping);
- llama.cpp: a bare ctypes loop on the same C API with llama.cpp's best CPU settings (flash
  attention on, n_batch = n_ubatch = 512, the same threads): decode the prompt, then sample
  greedily and decode one token at a time, nothing else.

Both generate exactly --tokens tokens after the same 32-token prompt (the direct loop ignores
end-of-generation; the script checks edgestack produced the full count), taking turns round by
round in one process. With --llama-bench (a llama-bench binary built from the vendored
llama.cpp), its tg figure is printed as a cross-check. Goal: generation ratio >= 0.97.
"""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import _common as c
import numpy as np


def smollm_gguf() -> Path:
    from _smollm import write_checkpoint

    from edge_stack.convert import convert_checkpoint

    out = c.OUT / "smollm135m.q8_0.gguf"
    if not out.exists():
        ckpt = c.OUT / "smollm135m"
        if not (ckpt / "model.safetensors").exists():
            write_checkpoint(ckpt)
        convert_checkpoint(ckpt, out, outtype="q8_0")
    return out


class Direct:
    """The plainest fast llama.cpp generation loop (greedy, fixed length)."""

    def __init__(self, model: Any, lora: Path | None, threads: int) -> None:
        from edge_stack.engines.llama._lib import lib

        self.lib = lib()
        p = self.lib.llama_context_default_params()
        p.n_ctx, p.n_batch, p.n_ubatch = 512, 512, 512
        p.n_threads = p.n_threads_batch = threads
        p.flash_attn_type = self.lib.LLAMA_FLASH_ATTN_TYPE_ENABLED
        p.no_perf = True
        self.ctx = self.lib.llama_init_from_model(model.ptr, p)
        self.adapter = None
        if lora is not None:
            self.adapter = self.lib.llama_adapter_lora_init(model.ptr, os.fsencode(lora))
            self.lib.llama_set_adapters_lora(
                self.ctx,
                (self.lib.llama_adapter_lora_p_ctypes * 1)(self.adapter),
                1,
                (ctypes.c_float * 1)(1.0),
            )
        sp = self.lib.llama_sampler_chain_default_params()
        self.smpl = self.lib.llama_sampler_chain_init(sp)
        self.lib.llama_sampler_chain_add(self.smpl, self.lib.llama_sampler_init_greedy())

    def run(self, prompt: list[int], n: int) -> tuple[float, float]:
        """(prompt seconds, generation seconds) for ``n`` tokens after ``prompt``."""
        lib = self.lib
        lib.llama_memory_clear(lib.llama_get_memory(self.ctx), True)
        arr = (lib.llama_token * len(prompt))(*prompt)
        t0 = time.perf_counter()
        lib.llama_decode(self.ctx, lib.llama_batch_get_one(arr, len(prompt)))
        t1 = time.perf_counter()
        one = (lib.llama_token * 1)()
        for i in range(n):
            one[0] = lib.llama_sampler_sample(self.smpl, self.ctx, -1)
            if i < n - 1:  # as edgestack: the last token is not evaluated
                lib.llama_decode(self.ctx, lib.llama_batch_get_one(one, 1))
        return t1 - t0, time.perf_counter() - t1

    def close(self) -> None:
        self.lib.llama_sampler_free(self.smpl)
        self.lib.llama_free(self.ctx)
        if self.adapter is not None:
            self.lib.llama_adapter_lora_free(self.adapter)


def llama_bench(binary: Path, gguf: Path, tokens: int, threads: int) -> float | None:
    cmd = [str(binary), "-m", str(gguf), "-t", str(threads), "-fa", "1", "-p", "0"]
    cmd += ["-n", str(tokens), "-r", "3", "-o", "json"]
    try:
        out = subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=600).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    rows = [r for r in json.loads(out) if r.get("n_gen")]
    return float(rows[0]["avg_ts"]) if rows else None


def measure_model(
    gguf: Path, lora: Path | None, tokens: int, rounds: int, threads: int
) -> dict[str, Any]:
    from edge_stack.engines.llama import LlamaContext, LlamaModel

    model = LlamaModel.load(gguf)
    ours = LlamaContext(model, n_ctx=512, n_threads=threads, lora=lora)
    direct = Direct(model, lora, threads)
    prompt = [int(x) for x in np.random.default_rng(0).integers(100, model.n_vocab - 100, 32)]
    gen: dict[str, list[float]] = {"edgestack": [], "llama.cpp": []}
    pp: dict[str, list[float]] = {"edgestack": [], "llama.cpp": []}
    counts = set()
    for r in range(rounds + 1):  # round 0 warms both up and is not counted
        p = [*prompt[:-1], prompt[-1] + r]
        if r % 2:  # who goes first alternates too
            ps, gs = direct.run(p, tokens)
        ours.reset()
        for _ in ours.generate(p, max_tokens=tokens):
            pass
        st = ours.last_stats
        counts.add(st.completion_tokens)
        if not r % 2:
            ps, gs = direct.run(p, tokens)
        if r:
            gen["edgestack"].append(st.completion_tokens / st.gen_seconds)
            pp["edgestack"].append(st.prompt_tokens / st.prompt_seconds)
            gen["llama.cpp"].append(st.completion_tokens / gs)
            pp["llama.cpp"].append(len(p) / ps)
    direct.close()
    ours.close()
    model.close()
    g = {k: c.median_min_max(v) for k, v in gen.items()}
    q = {k: c.median_min_max(v) for k, v in pp.items()}
    return {
        "model": gguf.name,
        "lora": lora.name if lora else None,
        "tokens": sorted(counts),
        "gen_tok_s": g,
        "prompt_tok_s": q,
        "gen_ratio": g["edgestack"]["median"] / g["llama.cpp"]["median"],
        "prompt_ratio": q["edgestack"]["median"] / q["llama.cpp"]["median"],
    }


def measure(tokens: int, rounds: int, threads: int, bench: Path | None = None) -> dict[str, Any]:
    c.stack_160m()
    models = [
        (c.OUT / "stack160m" / "base.q8_0.gguf", c.stage_lora("extract"), "pythia-160m"),
        (smollm_gguf(), None, "smollm2-135m"),
    ]
    result: dict[str, Any] = {"threads": threads, "machine": c.machine(), "models": {}}
    for gguf, lora, name in models:
        row = measure_model(gguf, lora, tokens, rounds, threads)
        if bench is not None:
            row["llama_bench_tg_tok_s"] = llama_bench(bench, gguf, tokens, threads)
        result["models"][name] = row
    return result


def main() -> None:
    parser = c.arg_parser(__doc__)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--llama-bench", type=Path, help="a llama-bench binary for a cross-check")
    args = parser.parse_args()
    r = measure(args.tokens, args.rounds, args.threads, args.llama_bench)
    if args.json:
        print(json.dumps(r, indent=2))
        return
    print(
        f"{args.threads} threads, medians of {args.rounds} rounds (load {r['machine']['load_avg_1m']})"
    )
    for name, m in r["models"].items():
        g, q = m["gen_tok_s"], m["prompt_tok_s"]
        print(
            f"{name} ({m['model']}{' + ' + m['lora'] if m['lora'] else ''}), {m['tokens']} tokens: "
            f"generation {g['edgestack']['median']:.1f} vs {g['llama.cpp']['median']:.1f} tok/s, "
            f"prompt {q['edgestack']['median']:.0f} vs {q['llama.cpp']['median']:.0f} tok/s"
        )
        print("  " + c.ratio_line("generation ratio", m["gen_ratio"], ">= 0.97"))
        print(f"  prompt ratio: {m['prompt_ratio']:.2f} (no goal; 32-token micro-batches)")
        if m.get("llama_bench_tg_tok_s"):
            print(f"  llama-bench tg{args.tokens}: {m['llama_bench_tg_tok_s']:.1f} tok/s")


if __name__ == "__main__":
    main()
