"""Every runtime benchmark, one after the other; prints the README's results table (markdown).

    python benchmarks/run_all.py [--quick] [--llama-bench PATH] [--json]

Builds the reference models once (benchmarks/out/, git-ignored), then runs stage_speed.py,
memory.py, prefix_cache.py, cold_start.py, bandwidth.py, batch_throughput.py and
small_devices.py with their defaults (--quick: fewer rounds). Each ratio is measured within one
run, the two sides taking
turns. The machine is described in the table's header, with its load average before and after:
on a shared machine the absolute figures move with the load, the ratios much less.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import _common as c


def run(quick: bool, threads: int, bench: Path | None = None) -> dict[str, Any]:
    from edge_stack.engines.llama._lib import lib

    lib()  # first: every in-process side runs under the same OpenMP wait policy
    import bandwidth
    import batch_throughput
    import cold_start
    import memory
    import prefix_cache
    import small_devices
    import stage_speed

    load_before = os.getloadavg()[0]
    c.stack_160m()
    r: dict[str, Any] = {"machine": c.machine(), "threads": threads}
    r["stage_speed"] = stage_speed.measure(64, 3 if quick else 5, threads, bench)
    r["memory"] = memory.measure(1 if quick else 2, threads)
    r["prefix_cache"] = prefix_cache.measure(4 if quick else 8, threads)
    r["cold_start"] = cold_start.measure(3 if quick else 5, threads)
    r["bandwidth"] = bandwidth.measure(threads)
    r["batch"] = batch_throughput.measure(16, [8, 16], 1 if quick else 2, threads)
    r["small_devices"] = small_devices.measure(2 if quick else 3, threads, 6)
    r["load_avg"] = {"before": round(load_before, 2), "after": round(os.getloadavg()[0], 2)}
    return r


def table(r: dict[str, Any]) -> str:
    sp, mem, pre = r["stage_speed"]["models"], r["memory"], r["prefix_cache"]
    cold, bw, b = r["cold_start"], r["bandwidth"], r["batch"]

    def row(figure: str, goal: str, value: str, ok: bool | None) -> str:
        verdict = "-" if ok is None else ("pass" if ok else "**miss**")
        return f"| {figure} | {goal} | {value} | {verdict} |"

    p, s = sp["pythia-160m"], sp["smollm2-135m"]
    lines = [
        f"Machine: {r['machine']['cpu']}, {r['machine']['cores']} cores, {r['threads']} threads; "
        f"load average {r['load_avg']['before']} before, {r['load_avg']['after']} after "
        "(shared machine). Models: random-weight Pythia-160M-shaped (GPT-NeoX) and "
        "SmolLM2-135M-shaped (Llama) checkpoints, converted to Q8_0 by edgestack; four rank-16 "
        "LoRA stages.",
        "",
        "| Figure | Goal | Measured | |",
        "|---|---|---|---|",
        row(
            "Stage generation speed / llama.cpp direct, Pythia-160M + LoRA",
            ">= 0.97",
            f"{p['gen_ratio']:.2f} ({p['gen_tok_s']['edgestack']['median']:.0f} vs "
            f"{p['gen_tok_s']['llama.cpp']['median']:.0f} tok/s)",
            p["gen_ratio"] >= 0.97,
        ),
        row(
            "Stage generation speed / llama.cpp direct, SmolLM2-135M",
            ">= 0.97",
            f"{s['gen_ratio']:.2f} ({s['gen_tok_s']['edgestack']['median']:.0f} vs "
            f"{s['gen_tok_s']['llama.cpp']['median']:.0f} tok/s)",
            s["gen_ratio"] >= 0.97,
        ),
        *[
            row(
                f"llama-bench tg64 cross-check, {name} base (no adapter)",
                "-",
                f"{m['llama_bench_tg_tok_s']:.0f} tok/s (the direct loop above: "
                f"{m['gen_tok_s']['llama.cpp']['median']:.0f} tok/s"
                f"{', with the adapter' if m['lora'] else ''})",
                None,
            )
            for name, m in sp.items()
            if m.get("llama_bench_tg_tok_s")
        ],
        row(
            "Prompt speed / llama.cpp direct (Pythia / SmolLM2)",
            "-",
            f"{p['prompt_ratio']:.2f} / {s['prompt_ratio']:.2f}",
            None,
        ),
        row(
            "PSS, four LoRA stages / one stage, f16 KV cache (llama.cpp's default)",
            "<= 1.3",
            f"{mem['four_vs_one']:.2f} ({mem['pss_mb']['four']['median']:.0f} vs "
            f"{mem['pss_mb']['one']['median']:.0f} MB)",
            mem["four_vs_one"] <= 1.3,
        ),
        row(
            'PSS, four LoRA stages / one stage, `kv_cache_type = "q8_0"`',
            "<= 1.3",
            f"{mem['four_vs_one_q8']:.2f} ({mem['pss_mb']['four-q8']['median']:.0f} vs "
            f"{mem['pss_mb']['one-q8']['median']:.0f} MB)",
            mem["four_vs_one_q8"] <= 1.3,
        ),
        row(
            "PSS, four stages / four `Llama(lora_path=...)`",
            "report",
            f"{mem['four_vs_lora_path']:.2f} ({mem['pss_mb']['lora_path']['median']:.0f} MB "
            f"for lora_path = {mem['lora_path_vs_one']:.2f}x one stage)",
            None,
        ),
        row(
            "Seconds per question / obvious llama-cpp-python script (fixed 200-token prefix)",
            "<= 0.7",
            f"{pre['ratio']:.2f} ({pre['seconds_per_question']['edgestack']['median']:.2f} vs "
            f"{pre['seconds_per_question']['script_scratch']['median']:.2f} s); "
            f"vs its own prefix matching {pre['ratio_vs_prefix_matching']:.2f}",
            pre["ratio"] <= 0.7,
        ),
        row(
            "Cold start, four stages + first token (prompt cache written by an earlier start)",
            "< 0.5 s",
            f"{cold['cold_s']['median']:.2f} s (load {cold['load_s']['median']:.2f} s, "
            f"first token {cold['first_token_s']['median']:.2f} s)",
            cold["cold_s"]["median"] < 0.5,
        ),
        row(
            "Cold start, the very first start (empty prompt cache)",
            "-",
            f"{cold['first_start']['cold_s']['median']:.2f} s (first token "
            f"{cold['first_start']['first_token_s']['median']:.2f} s)",
            None,
        ),
        row(
            "Generation speed / memory-bandwidth bound",
            "report",
            f"{bw['fraction']:.2f} ({bw['gen_tok_s']:.0f} of {bw['bound_tok_s']:.0f} tok/s; "
            f"{bw['mb_per_token']:.0f} MB/token at {bw['read_gb_s']:.1f} GB/s)",
            None,
        ),
        *[
            row(
                f"Batch throughput (`ask --batch`, {size} at a time) / one by one, and of the "
                "attainable ceiling",
                ">= 3; >= 0.9",
                f"{x['ratio']:.2f} ({x['qps']['median']:.2f} vs "
                f"{b['one_by_one_qps']['median']:.2f} questions/s; "
                f"{x['same_answers']}/{b['questions']} answers identical); "
                f"{x['of_attainable']:.2f}",
                x["ratio"] >= 3 and x["of_attainable"] >= 0.9,
            )
            for size, x in b["batch"].items()
        ],
        row(
            "Batch throughput ceiling on this machine (every token at full-batch speed)",
            "-",
            f"{b['ceiling_ratio']:.2f} ({b['tokens_per_question']:.0f} tokens per question at "
            f"{b['full_batch_tok_s']:.0f} tok/s)",
            None,
        ),
        *[
            row(
                f"Attainable batch ceiling, {size} at a time (generation steps at {size}-row speed)",
                "-",
                f"{v:.2f} ({b['step_tok_s'][size]:.0f} tok/s per {size}-row step)",
                None,
            )
            for size, v in b["attainable_ceiling"].items()
        ],
        *small_devices_rows(r["small_devices"], row),
    ]
    return "\n".join(lines)


def small_devices_rows(d: dict[str, Any], row: Any) -> list[str]:
    """The rows of benchmarks/small_devices.py (shared contexts, low-memory mode, plan)."""
    pss, peak, sec = d["pss_mb"], d["peak_pss_mb"], d["seconds_per_question"]
    plan = d["plan_vs_measured"]
    return [
        row(
            "PSS, four stages / one stage, one context per base (f16, n_ctx sized by edgestack)",
            "<= 1.15",
            f"{d['shared_vs_one']:.2f} ({pss['shared']['median']:.0f} vs "
            f"{pss['one']['median']:.0f} MB; one context per stage: {d['separate_vs_one']:.2f})",
            d["shared_vs_one"] <= 1.15,
        ),
        row(
            "Seconds per question, one context per base / one per stage",
            "<= 1.03",
            f"{d['shared_vs_separate_seconds']:.3f} ({sec['shared']['median']:.2f} vs "
            f"{sec['separate']['median']:.2f} s; adapter switch {d['switch']['cost_ms']:.1f} ms, "
            f"{d['adapter_switches_per_question']:.0f} per question)",
            d["shared_vs_separate_seconds"] <= 1.03,
        ),
        row(
            'Peak PSS, `memory = "low"` / one stage',
            "<= 1.1",
            f"{d['low_peak_vs_one_peak']:.2f} ({peak['low']['median']:.0f} vs "
            f"{peak['one']['median']:.0f} MB)",
            d["low_peak_vs_one_peak"] <= 1.1,
        ),
        row(
            'Seconds per question, `memory = "low"` / one context per base',
            "report",
            f"{d['low_vs_shared_seconds']:.2f} ({sec['low']['median']:.2f} vs "
            f"{sec['shared']['median']:.2f} s)",
            None,
        ),
        row(
            "`edgestack plan` estimate / measured PSS (one, separate, shared, low)",
            "0.9 to 1.1",
            " / ".join(f"{plan[m]:.2f}" for m in ("one", "separate", "shared", "low")),
            all(0.9 <= v <= 1.1 for v in plan.values()),
        ),
        row(
            "Answers identical in every memory mode",
            "yes",
            "yes" if d["same_answers"] else "no",
            bool(d["same_answers"]),
        ),
    ]


def main() -> None:
    parser = c.arg_parser(__doc__, json_help="print every result as JSON")
    parser.add_argument("--quick", action="store_true", help="fewer rounds (noisier)")
    parser.add_argument(
        "--llama-bench", type=Path, help="a llama-bench binary: its tg figure as a cross-check"
    )
    args = parser.parse_args()
    r = run(args.quick, args.threads, args.llama_bench)
    if args.json:
        print(json.dumps(r, indent=2))
        return
    print(table(r))


if __name__ == "__main__":
    main()
