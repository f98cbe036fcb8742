"""``edgestack bench``: how fast and how big a stack is on this machine.

Each run loads the stack from scratch in this process (the files stay in the OS page cache, so
this is a warm-disk cold start), asks ``question`` once with every context empty (per-stage
prompt and generation speed, time to first token), then asks a second question, whose stage
prompts share their fixed start with the first one's (seconds per question as a user sees it
after the first). Figures are medians with min and max over the runs.

The result (``--json``), all times in seconds, memory in MB (10^6 bytes, as every size
edgestack prints)::

    stack, path, runs, threads, question
    load_s, cold_start_s, seconds_per_question     {median, min, max}
    memory: {kind: "pss"|"rss_peak", process_mb, runtime_mb, stack_mb, weights_mb,
             kv_cache_mb, state_mb, adapters_mb}
    stages: [{name, model, lora, load_s, prompt_tokens, prompt_tok_s, completion_tokens,
              gen_tok_s, ttft_s, kv_cache_mb, state_mb}]

``load_s`` per stage is its context (and its model when it is the first stage on that file);
``cold_start_s`` is loading everything plus the first stage's first token. ``memory.kind`` says
how the process was measured: PSS from /proc/self/smaps_rollup (shared pages divided among the
processes that map them) on Linux, else the peak resident set. ``runtime_mb`` is what loading
llama.cpp itself adds to the process (its code and its first allocations, the same for any
stack); ``stack_mb`` what the stack adds after that (what ``edgestack inspect`` estimates).
``weights_mb`` is llama.cpp's
``llama_model_size`` of each distinct model; ``kv_cache_mb`` is each stage's KV cache as
llama.cpp allocates it (its stream's cells x layers x K and V rows, at its cache type; stages
sharing a context have a stream each); ``state_mb`` is ``llama_state_seq_get_size`` of the
stage's sequence after the run (its KV cells in use plus the logits buffer). llama.cpp's
C API in this version reports no compute-buffer size; ``stack_mb - weights_mb - kv_cache_mb``
bounds it from above.
"""

from __future__ import annotations

import resource
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..util._units import MB, format_bytes

if TYPE_CHECKING:
    from ..engines.llama._model import LlamaModel

DEFAULT_QUESTION = "Tom has 12 apples and buys 7 more. How many apples does he have?"
SECOND_QUESTION = "Sam has 23 stamps and gives 8 to his sister. How many are left?"


def process_memory_mb() -> tuple[str, float]:
    """("pss", MB) from /proc/self/smaps_rollup, else ("rss_peak", MB) from getrusage
    (MB: 10^6 bytes)."""
    try:
        for line in Path("/proc/self/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return "pss", int(line.split()[1]) * 1024 / MB  # the kernel's "kB" is KiB
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports KiB, macOS bytes.
    return "rss_peak", peak / MB if peak > 1 << 32 else peak * 1024 / MB


def spread(values: Sequence[float]) -> dict[str, float | None]:
    """Median, min and max (None for an empty list)."""
    if not values:
        return {"median": None, "min": None, "max": None}
    return {
        "median": round(statistics.median(values), 6),
        "min": round(min(values), 6),
        "max": round(max(values), 6),
    }


def _kv_bytes(lib: Any, model: LlamaModel, cells: int, kv_cache_type: str) -> int:
    import gguf

    block, size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[kv_cache_type.upper()]]
    n_layer = lib.llama_model_n_layer(model.ptr)
    n_head_kv = lib.llama_model_n_head_kv(model.ptr)
    row = sum(model.head_dims()) * n_head_kv  # a key and a value per head
    return cells * n_layer * row * size // block


def run_bench(
    path: str | Path,
    *,
    runs: int = 3,
    threads: int | None = None,
    question: str = DEFAULT_QUESTION,
) -> dict[str, Any]:
    """Measure the stack at ``path`` ``runs`` times; the dict documented in this module."""
    from ..engines.llama._engine import Engine
    from ..engines.llama._lib import lib as _lib
    from ..engines.llama._sizing import round_n_ctx
    from ..errors import BadArgument
    from ..pipeline._stack import Stack

    if runs < 1:
        raise BadArgument(f"runs must be at least 1, got {runs}")
    from ..manifest import load_manifest

    spec = load_manifest(path)
    for s in spec.stages:
        if s.remote is not None:
            raise BadArgument(
                f"{spec.path}: stage {s.name} runs on {s.remote.engine} at {s.remote.url}; "
                "bench measures stages on this machine: run it where that server runs, or "
                "time the stack with benchmarks/remote.py"
            )
    names = [s.name for s in spec.stages]
    per: dict[str, dict[str, list[float]]] = {
        n: {"load": [], "prompt": [], "gen": [], "ttft": []} for n in names
    }
    counts: dict[str, dict[str, int]] = {n: {"prompt": 0, "completion": 0} for n in names}
    loads: list[float] = []
    colds: list[float] = []
    per_question: list[float] = []
    kind, start = process_memory_mb()
    _lib()  # llama.cpp's code and backends: the runtime's cost, not the stack's
    _, before = process_memory_mb()
    memory: dict[str, Any] = {}
    stage_mem: dict[str, dict[str, float]] = {}
    second = SECOND_QUESTION if question != SECOND_QUESTION else DEFAULT_QUESTION
    for run in range(runs):
        t0 = time.perf_counter()
        stack = Stack.load(spec.path, threads=threads)
        loads.append(time.perf_counter() - t0)
        with stack:
            engine = stack._backend
            assert isinstance(engine, Engine)
            for n in names:
                per[n]["load"].append(engine.load_seconds[n])
            for event in stack.stream(question):
                trace = getattr(event, "trace", None)
                if trace is None:
                    continue
                st = engine.runner(trace.name).context.last_stats
                evaluated = st.prompt_tokens - st.cached_tokens
                if st.prompt_seconds > 0:
                    per[trace.name]["prompt"].append(evaluated / st.prompt_seconds)
                if st.completion_tokens and st.gen_seconds > 0:
                    per[trace.name]["gen"].append(st.completion_tokens / st.gen_seconds)
                if st.first_token_seconds:
                    per[trace.name]["ttft"].append(st.first_token_seconds)
                counts[trace.name] = {
                    "prompt": st.prompt_tokens,
                    "completion": st.completion_tokens,
                }
            colds.append(loads[-1] + (per[names[0]]["ttft"] or [0.0])[-1])
            t = time.perf_counter()
            stack.ask(second)
            per_question.append(time.perf_counter() - t)
            if run == runs - 1:
                lib = _lib()
                _, now = process_memory_mb()
                weights = sum(lib.llama_model_size(m.ptr) for m in engine.models.values())
                for n in names:
                    runner = engine.runner(n)
                    # The stage's own stream of cells and sequence state (stages on one base
                    # share a context, one sequence each); in low-memory mode its context
                    # exists only during its calls.
                    context = runner.context
                    ctx = getattr(context, "_ctx", None)
                    cells = lib.llama_n_ctx_seq(ctx) if ctx else round_n_ctx(runner.n_ctx)
                    kv_type = runner.stage.kv_cache_type
                    stage_mem[n] = {
                        "kv_cache_mb": _kv_bytes(lib, runner.model, cells, kv_type) / MB,
                        "state_mb": (lib.llama_state_seq_get_size(ctx, context._seq) if ctx else 0)
                        / MB,
                    }
                adapters = {s.lora for s in spec.stages if s.lora is not None}
                memory = {
                    "kind": kind,
                    "process_mb": round(now, 1),
                    "runtime_mb": round(before - start, 1),
                    "stack_mb": round(now - before, 1),
                    "weights_mb": round(weights / MB, 1),
                    "kv_cache_mb": round(sum(m["kv_cache_mb"] for m in stage_mem.values()), 1),
                    "state_mb": round(sum(m["state_mb"] for m in stage_mem.values()), 1),
                    "adapters_mb": round(sum(p.stat().st_size for p in adapters) / MB, 1),
                }
    stages = []
    for s in spec.stages:
        p = per[s.name]
        stages.append(
            {
                "name": s.name,
                "model": s.model.name if s.model is not None else None,
                "lora": s.lora.name if s.lora else None,
                "load_s": spread(p["load"]),
                "prompt_tokens": counts[s.name]["prompt"],
                "prompt_tok_s": spread(p["prompt"]),
                "completion_tokens": counts[s.name]["completion"],
                "gen_tok_s": spread(p["gen"]),
                "ttft_s": spread(p["ttft"]),
                "kv_cache_mb": round(stage_mem[s.name]["kv_cache_mb"], 1),
                "state_mb": round(stage_mem[s.name]["state_mb"], 1),
            }
        )
    return {
        "stack": spec.name,
        "path": str(spec.path),
        "runs": runs,
        "threads": threads,
        "question": question,
        "load_s": spread(loads),
        "cold_start_s": spread(colds),
        "seconds_per_question": spread(per_question),
        "memory": memory,
        "stages": stages,
    }


def format_bench(result: dict[str, Any]) -> str:
    """The human-readable table ``edgestack bench`` prints."""

    def f(d: dict[str, float | None], scale: float = 1.0, digits: int = 3) -> str:
        if d["median"] is None:
            return "-"
        med, lo, hi = (float(d[k]) * scale for k in ("median", "min", "max"))  # type: ignore[arg-type]
        return f"{med:.{digits}f} [{lo:.{digits}f}-{hi:.{digits}f}]"

    lines = [
        f"stack {result['stack']} ({result['path']}), {result['runs']} runs, medians [min-max]",
        f"load {f(result['load_s'])} s, cold start (load + first token) "
        f"{f(result['cold_start_s'])} s, seconds per question {f(result['seconds_per_question'])}",
    ]
    m = result["memory"]

    def size(key: str) -> str:
        return format_bytes(float(m.get(key) or 0) * MB)

    lines.append(
        f"memory ({m['kind']}): process {size('process_mb')}, of which loading llama.cpp "
        f"{size('runtime_mb')} and the stack {size('stack_mb')} (the rest is Python and "
        "edgestack); of the stack, llama.cpp reports "
        f"weights {size('weights_mb')}, KV cache {size('kv_cache_mb')}, state "
        f"{size('state_mb')}; adapters {size('adapters_mb')} on disk"
    )
    lines.append(
        f"{'stage':<14}{'load s':>22}{'prompt tok/s':>26}{'gen tok/s':>24}{'first token s':>24}"
    )
    for s in result["stages"]:
        lines.append(
            f"{s['name']:<14}{f(s['load_s']):>22}{f(s['prompt_tok_s'], digits=1):>26}"
            f"{f(s['gen_tok_s'], digits=1):>24}{f(s['ttft_s']):>24}"
        )
    return "\n".join(lines)
