"""``edgestack plan``: whether a stack fits a device, before anything is loaded.

The estimate adds what a loaded stack holds (as PSS: shared file pages counted once):

- weights: each distinct model file's tensor data, memory-mapped once however many stages use
  it (llama.cpp maps it whole);
- vocabularies and llama.cpp's own allocations: :data:`RUNTIME_BYTES` once, plus
  :data:`VOCAB_BYTES_PER_TOKEN` per vocabulary entry of each loaded model;
- adapters: each distinct adapter file's tensor data (read into memory);
- KV caches: cells x layers x (key + value width) x the cache type's bytes, per context as the
  engine makes them (docs/stack-manifest.md, ``memory``): cells are each stage's n_ctx rounded
  up to 256 (llama.cpp's granularity), one stream per stage of a shared context, every stream
  as large as its largest stage's;
- compute buffers: what a context touches of llama.cpp's compute and output buffers, per
  sequence (:func:`compute_bytes`), and :data:`CONTEXT_FIXED_BYTES` per context;
- the process itself (Python, numpy, the llama.cpp library): :data:`PROCESS_BYTES`.

In low-memory mode the figure is the peak: the largest of (one base, its vocabulary, one stage's
adapter and context) plus the vocabularies of the other bases. Stage n_ctx values without an
explicit ``n_ctx`` are sized exactly as the engine sizes them (the templates are tokenized with
each model's vocabulary alone; no weights are read).

The constants were measured with llama-cpp-python 0.3.36 on x86-64 Linux;
``benchmarks/small_devices.py`` compares the estimate with the measured PSS of the benchmark
stack in every memory mode (goal: within 10%). Tokens per second per stage is the bandwidth
bound of :mod:`._devices`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ..engines.llama._sizing import group_by_size, round_n_ctx, stage_need
from ..engines.llama._sizing import kv_cell_bytes as _cell_bytes
from ..manifest import StackSpec, StageSpec
from ..util._units import format_bytes
from ._devices import Device

__all__ = [
    "PROCESS_BYTES",
    "RUNTIME_BYTES",
    "VOCAB_BYTES_PER_TOKEN",
    "Estimate",
    "ModelShape",
    "Plan",
    "Suggestion",
    "estimate",
    "format_plan",
    "kv_cell_bytes",
    "model_shape",
    "plan_stack",
]

#: Python, numpy and the llama.cpp library in an edgestack process (measured 28 MB)
PROCESS_BYTES = 30_000_000
#: llama.cpp's allocations at its first model load (backend, thread pool; measured 7.4 MB)
RUNTIME_BYTES = 7_400_000
#: a loaded model's vocabulary per entry (token texts, maps, merges; 19.6 MB for 50,304)
VOCAB_BYTES_PER_TOKEN = 390
#: a vocabulary loaded alone (low-memory mode, bases not in memory; 13 MB for 50,304)
VOCAB_ONLY_BYTES_PER_TOKEN = 260
#: llama.cpp's micro-batch, as the engine sets it
N_UBATCH = 32
#: what a llama.cpp context holds beyond its KV cache and buffers (scheduler, graph, backend;
#: measured 1 to 3 MB for Pythia-160M contexts)
CONTEXT_FIXED_BYTES = 1_500_000


@dataclass(frozen=True)
class ModelShape:
    """What the estimate needs of a model GGUF (from its header only)."""

    path: Path
    tensor_bytes: int
    #: bytes one generated token reads: every weight, but one row of the token embedding
    read_bytes: int
    n_vocab: int
    n_layer: int
    n_embd: int
    n_ff: int
    #: n_head_kv x key head size, n_head_kv x value head size
    k_width: int
    v_width: int
    #: bytes of the weights if quantized to Q4_0 (matrices whose rows are whole 32-blocks)
    q4_0_bytes: int
    file_type: str


def _meta_int(metadata: Mapping[str, object], key: str, default: int = 0) -> int:
    value = metadata.get(key, default)
    if isinstance(value, list):  # per-layer values: the largest
        value = max((v for v in value if isinstance(v, int)), default=default)
    return int(value) if isinstance(value, int) and not isinstance(value, bool) else default


def model_shape(path: Path) -> ModelShape:
    """The shape of the model at ``path`` (its GGUF header, checked; no tensor data read)."""
    import gguf

    from ..formats.gguf._check import check_gguf

    summary = check_gguf(path, kind="model")
    meta, arch = summary.metadata, summary.arch
    llm, att = gguf.Keys.LLM, gguf.Keys.Attention
    n_embd = _meta_int(meta, llm.EMBEDDING_LENGTH.format(arch=arch))
    n_head = max(1, _meta_int(meta, att.HEAD_COUNT.format(arch=arch), 1))
    n_head_kv = _meta_int(meta, att.HEAD_COUNT_KV.format(arch=arch), n_head)
    head_k = _meta_int(meta, att.KEY_LENGTH.format(arch=arch), n_embd // n_head)
    head_v = _meta_int(meta, att.VALUE_LENGTH.format(arch=arch), n_embd // n_head)
    tensors = {t.name: t for t in summary.tensors}
    embd = tensors.get("token_embd.weight")
    read = summary.tensor_bytes
    if embd is not None and "output.weight" in tensors:  # untied: one row of the embedding
        read -= embd.nbytes - embd.nbytes // max(1, embd.dim(1))
    q4 = 0
    for t in summary.tensors:
        small = t.type in ("Q4_0", "Q4_1", "IQ4_NL", "IQ4_XS", "Q3_K", "Q2_K", "Q4_K")
        if len(t.shape) >= 2 and t.dim(0) % 32 == 0 and not small:
            q4 += t.n_elements // 32 * 18
        else:
            q4 += t.nbytes
    n_vocab = summary.tokenizer.n_tokens if summary.tokenizer else 0
    return ModelShape(
        path=path,
        tensor_bytes=summary.tensor_bytes,
        read_bytes=read,
        n_vocab=n_vocab,
        n_layer=_meta_int(meta, llm.BLOCK_COUNT.format(arch=arch)),
        n_embd=n_embd,
        n_ff=_meta_int(meta, llm.FEED_FORWARD_LENGTH.format(arch=arch)),
        k_width=n_head_kv * head_k,
        v_width=n_head_kv * head_v,
        q4_0_bytes=q4,
        file_type=summary.file_type,
    )


def kv_cell_bytes(shape: ModelShape, kv_cache_type: str) -> float:
    """Bytes of one KV cache cell (one token, every layer, key and value) of cache type
    ``kv_cache_type`` ("f16", "q8_0", ...)."""
    return _cell_bytes(shape.n_layer, shape.k_width, shape.v_width, kv_cache_type)


def compute_bytes(shape: ModelShape) -> int:
    """What one sequence of a context touches of llama.cpp's compute and output buffers: the
    activations of a micro-batch (hidden states, attention and feed-forward intermediates, with
    a LoRA adapter's) and rows of logits (measured 3.5 to 4.3 MB for a Pythia-160M stage; a
    shared context's buffers grow by about as much per sequence, as llama.cpp plans its graph
    again for each adapter)."""
    return 8 * N_UBATCH * (8 * shape.n_embd + 2 * shape.n_ff) + 16 * shape.n_vocab


@dataclass(frozen=True)
class ContextPlan:
    """One llama.cpp context of the estimate."""

    model: Path
    kv_cache_type: str
    stages: tuple[str, ...]
    #: cells per sequence (stream) and sequences
    cells: int
    n_seq: int
    kv_bytes: int
    compute_bytes: int


@dataclass(frozen=True)
class Estimate:
    """Bytes of a stack in one configuration (all figures are PSS estimates)."""

    memory: str
    weights_bytes: dict[str, int]
    adapters_bytes: dict[str, int]
    contexts: tuple[ContextPlan, ...]
    vocab_bytes: int
    runtime_bytes: int
    process_bytes: int
    #: the peak (low-memory mode) or the whole stack loaded
    total_bytes: int
    #: the stage whose call is the peak (low-memory mode)
    peak_stage: str | None = None

    @property
    def kv_bytes(self) -> int:
        return sum(c.kv_bytes for c in self.contexts)

    @property
    def compute_bytes(self) -> int:
        return sum(c.compute_bytes for c in self.contexts)

    @property
    def stack_bytes(self) -> int:
        """The total without the process's own :data:`PROCESS_BYTES` (what benchmarks measure
        as the growth of a process's PSS)."""
        return self.total_bytes - self.process_bytes


def _context(
    shape: ModelShape, kv_type: str, stages: list[str], cells: int, *, n_seq: int
) -> ContextPlan:
    kv = math.ceil(n_seq * cells * kv_cell_bytes(shape, kv_type))
    return ContextPlan(
        model=shape.path,
        kv_cache_type=kv_type,
        stages=tuple(stages),
        cells=cells,
        n_seq=n_seq,
        kv_bytes=kv,
        compute_bytes=n_seq * compute_bytes(shape) + CONTEXT_FIXED_BYTES,
    )


def estimate(
    stages: tuple[StageSpec, ...],
    shapes: Mapping[Path, ModelShape],
    adapter_bytes: Mapping[Path, int],
    n_ctx: Mapping[str, int],
    *,
    memory: str,
    weights: Mapping[Path, int] | None = None,
) -> Estimate:
    """The memory of ``stages`` (local ones; paths resolved) with contexts of ``n_ctx`` tokens,
    held as ``memory`` says; ``weights`` replaces a model's tensor bytes (a requantized base)."""
    local = [s for s in stages if s.remote is None and s.model is not None]

    def base(s: StageSpec) -> Path:
        assert s.model is not None
        return s.model.resolve()

    def wbytes(path: Path) -> int:
        return (weights or {}).get(path, shapes[path].tensor_bytes)

    names = {p: p.name for p in {base(s) for s in local}}
    if memory == "low":
        peak, peak_stage, best = 0, None, None
        for s in local:
            path = base(s)
            ctx = _context(
                shapes[path], s.kv_cache_type, [s.name], round_n_ctx(n_ctx[s.name]), n_seq=1
            )
            others = sum(VOCAB_ONLY_BYTES_PER_TOKEN * shapes[p].n_vocab for p in names if p != path)
            lora = adapter_bytes.get(s.lora.resolve(), 0) if s.lora else 0
            total = (
                wbytes(path)
                + VOCAB_BYTES_PER_TOKEN * shapes[path].n_vocab
                + others
                + lora
                + ctx.kv_bytes
                + ctx.compute_bytes
            )
            if total > peak:
                peak, peak_stage, best = total, s.name, (path, s, ctx, others, lora)
        assert best is not None
        path, s, ctx, others, lora = best
        return Estimate(
            memory=memory,
            weights_bytes={names[path]: wbytes(path)},
            adapters_bytes={s.lora.name: lora} if s.lora else {},
            contexts=(ctx,),
            vocab_bytes=VOCAB_BYTES_PER_TOKEN * shapes[path].n_vocab + others,
            runtime_bytes=RUNTIME_BYTES,
            process_bytes=PROCESS_BYTES,
            total_bytes=peak + RUNTIME_BYTES + PROCESS_BYTES,
            peak_stage=peak_stage,
        )
    # As the engine makes them: stages on one base and cache type share a context (unless
    # below one micro-batch, or of sizes so different that contexts of their own cost less),
    # else each has its own.
    candidates: dict[tuple[Path, str], list[StageSpec]] = {}
    groups: list[tuple[Path, str, list[str]]] = []
    for s in local:
        if memory != "shared" or n_ctx[s.name] < N_UBATCH:
            groups.append((base(s), s.kv_cache_type, [s.name]))
        else:
            candidates.setdefault((base(s), s.kv_cache_type), []).append(s)
    for (path, kv_type), members in candidates.items():
        cells = [(m.name, round_n_ctx(n_ctx[m.name])) for m in members]
        for group in group_by_size(cells, kv_cell_bytes(shapes[path], kv_type)):
            groups.append((path, kv_type, group))
    contexts = [
        _context(
            shapes[path],
            kv_type,
            names_,
            max(round_n_ctx(n_ctx[m]) for m in names_),
            n_seq=len(names_),
        )
        for path, kv_type, names_ in groups
    ]
    adapters = {p.name: adapter_bytes[p] for p in {s.lora.resolve() for s in local if s.lora}}
    vocab = sum(VOCAB_BYTES_PER_TOKEN * shapes[p].n_vocab for p in names)
    weights_out = {names[p]: wbytes(p) for p in names}
    total = (
        sum(weights_out.values())
        + sum(adapters.values())
        + vocab
        + sum(c.kv_bytes + c.compute_bytes for c in contexts)
        + RUNTIME_BYTES
        + PROCESS_BYTES
    )
    return Estimate(
        memory=memory,
        weights_bytes=weights_out,
        adapters_bytes=adapters,
        contexts=tuple(contexts),
        vocab_bytes=vocab,
        runtime_bytes=RUNTIME_BYTES,
        process_bytes=PROCESS_BYTES,
        total_bytes=total,
    )


@dataclass(frozen=True)
class StagePlan:
    """One stage of a plan."""

    name: str
    model: str
    n_ctx: int
    n_ctx_auto: bool
    kv_cache_type: str
    kv_bytes: int
    #: bytes one generated token reads (weights, adapter, half the context's KV cells)
    read_bytes: int
    tok_s_bound: float


@dataclass(frozen=True)
class Suggestion:
    """A change to the stack and what it does to the estimate."""

    change: str
    how: str
    estimate: Estimate
    fits: bool


@dataclass(frozen=True)
class Plan:
    """``edgestack plan``'s answer."""

    stack: str
    path: Path
    device: Device
    estimate: Estimate
    stages: tuple[StagePlan, ...]
    fits: bool
    suggestions: tuple[Suggestion, ...] = field(default=())
    remote_stages: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        def est(e: Estimate) -> dict[str, Any]:
            return {
                "memory": e.memory,
                "total_bytes": e.total_bytes,
                "stack_bytes": e.stack_bytes,
                "weights_bytes": e.weights_bytes,
                "adapters_bytes": e.adapters_bytes,
                "kv_cache_bytes": e.kv_bytes,
                "compute_bytes": e.compute_bytes,
                "vocab_bytes": e.vocab_bytes,
                "runtime_bytes": e.runtime_bytes,
                "process_bytes": e.process_bytes,
                "peak_stage": e.peak_stage,
                "contexts": [
                    {
                        "model": c.model.name,
                        "kv_cache_type": c.kv_cache_type,
                        "stages": list(c.stages),
                        "sequences": c.n_seq,
                        "cells": c.cells,
                        "kv_cache_bytes": c.kv_bytes,
                        "compute_bytes": c.compute_bytes,
                    }
                    for c in e.contexts
                ],
            }

        return {
            "stack": self.stack,
            "path": str(self.path),
            "device": {
                "name": self.device.name,
                "total_bytes": self.device.total_bytes,
                "usable_bytes": self.device.usable_bytes,
                "bandwidth_bytes_per_s": round(self.device.bandwidth),
                "source": self.device.source,
            },
            "fits": self.fits,
            "estimate": est(self.estimate),
            "stages": [
                {
                    "name": s.name,
                    "model": s.model,
                    "n_ctx": s.n_ctx,
                    "n_ctx_auto": s.n_ctx_auto,
                    "kv_cache_type": s.kv_cache_type,
                    "kv_cache_bytes": s.kv_bytes,
                    "read_bytes_per_token": s.read_bytes,
                    "tok_s_bound": round(s.tok_s_bound, 1),
                }
                for s in self.stages
            ],
            "remote_stages": list(self.remote_stages),
            "suggestions": [
                {"change": g.change, "how": g.how, "fits": g.fits, "estimate": est(g.estimate)}
                for g in self.suggestions
            ],
        }


Sizer = Callable[[int, bool], dict[str, int]]


def stack_sizer(spec: StackSpec, *, verbose: bool = False) -> Sizer:
    """``sizer(max_question_tokens, explicit)`` -> each local stage's n_ctx as the engine sizes
    it (with ``explicit`` False, as if no stage set n_ctx); the templates are tokenized once,
    with each model's vocabulary alone (no weights read)."""
    from ..engines.llama._engine import stage_tokenizer
    from ..engines.llama._model import LlamaModel
    from ..engines.llama._sizing import fixed_tokens

    local = [s for s in spec.stages if s.remote is None and s.model is not None]
    fixed: dict[str, int] = {}
    vocabs: dict[Path, LlamaModel] = {}
    try:
        for s in local:
            assert s.model is not None
            path = s.model.resolve()
            if path not in vocabs:
                vocabs[path] = LlamaModel.load(path, verbose=verbose, vocab_only=True)
            fixed[s.name] = fixed_tokens(s.template, stage_tokenizer(s, vocabs[path]))
    finally:
        for model in vocabs.values():
            model.close()
    outputs = {s.name: s.max_tokens for s in spec.stages}

    def sizer(max_question_tokens: int, explicit: bool = True) -> dict[str, int]:
        sizes = {}
        for s in local:
            if explicit and not s.n_ctx_auto:
                sizes[s.name] = s.n_ctx
                continue
            need = stage_need(
                s.template,
                fixed=fixed[s.name],
                max_tokens=s.max_tokens,
                max_question_tokens=max_question_tokens,
                output_tokens=outputs,
            )
            sizes[s.name] = round_n_ctx(need)
        return sizes

    return sizer


def _stage_plans(
    local: list[StageSpec],
    shapes: Mapping[Path, ModelShape],
    adapter_bytes: Mapping[Path, int],
    n_ctx: Mapping[str, int],
    device: Device,
) -> tuple[StagePlan, ...]:
    out = []
    for s in local:
        assert s.model is not None
        shape = shapes[s.model.resolve()]
        cells = round_n_ctx(n_ctx[s.name])
        kv = math.ceil(cells * kv_cell_bytes(shape, s.kv_cache_type))
        lora = adapter_bytes.get(s.lora.resolve(), 0) if s.lora else 0
        read = shape.read_bytes + lora + kv // 2  # on average, half of the stage's n_ctx cells
        out.append(
            StagePlan(
                name=s.name,
                model=shape.path.name,
                n_ctx=n_ctx[s.name],
                n_ctx_auto=s.n_ctx_auto,
                kv_cache_type=s.kv_cache_type,
                kv_bytes=kv,
                read_bytes=read,
                tok_s_bound=device.bandwidth / read if read else 0.0,
            )
        )
    return tuple(out)


def plan_stack(
    spec: StackSpec, device: Device, *, memory: str | None = None, sizer: Sizer | None = None
) -> Plan:
    """The plan of ``spec`` on ``device`` (``memory`` overrides the stack's mode); ``sizer``
    replaces :func:`stack_sizer` (tests)."""
    from ..formats.gguf._check import check_gguf

    memory = spec.memory if memory is None else memory
    local = [s for s in spec.stages if s.remote is None and s.model is not None]
    shapes: dict[Path, ModelShape] = {}
    adapters: dict[Path, int] = {}
    for s in local:
        assert s.model is not None
        path = s.model.resolve()
        if path not in shapes:
            shapes[path] = model_shape(path)
        if s.lora is not None and s.lora.resolve() not in adapters:
            adapters[s.lora.resolve()] = check_gguf(s.lora.resolve(), kind="adapter").tensor_bytes
    sizer = stack_sizer(spec) if sizer is None else sizer
    n_ctx = sizer(spec.question_tokens, True)
    stages = tuple(local)

    def run(
        memory: str = memory,
        n_ctx: Mapping[str, int] = n_ctx,
        kv: str | None = None,
        weights: Mapping[Path, int] | None = None,
    ) -> Estimate:
        staged = stages if kv is None else tuple(replace(s, kv_cache_type=kv) for s in stages)
        return estimate(staged, shapes, adapters, n_ctx, memory=memory, weights=weights)

    current = run()
    fits = current.total_bytes <= device.usable_bytes
    suggestions: list[Suggestion] = []
    if not fits and local:
        suggestions = _suggest(spec, shapes, run, n_ctx, sizer, memory, device)
    return Plan(
        stack=spec.name,
        path=spec.path,
        device=device,
        estimate=current,
        stages=_stage_plans(local, shapes, adapters, n_ctx, device),
        fits=fits,
        suggestions=tuple(suggestions),
        remote_stages=tuple(s.name for s in spec.stages if s.remote is not None),
    )


def _suggest(
    spec: StackSpec,
    shapes: Mapping[Path, ModelShape],
    run: Callable[..., Estimate],
    n_ctx: Mapping[str, int],
    sizer: Sizer,
    memory: str,
    device: Device,
) -> list[Suggestion]:
    """The changes that shrink the estimate, cheapest first (to make and in quality): the KV
    cache type, smaller contexts, low-memory mode, a 4-bit base; then all of them together."""
    usable = device.usable_bytes
    found: list[Suggestion] = []
    changes: dict[str, Any] = {}
    local = [s for s in spec.stages if s.remote is None]

    def add(change: str, how: str, est: Estimate, **kwargs: Any) -> None:
        found.append(Suggestion(change, how, est, est.total_bytes <= usable))
        changes.update(kwargs)

    quantizable_kv = all(
        shapes[s.model.resolve()].k_width % 32 == 0 and shapes[s.model.resolve()].v_width % 32 == 0
        for s in local
        if s.model is not None
    )
    if quantizable_kv and any(s.kv_cache_type in ("f16", "f32", "bf16") for s in local):
        add(
            'kv_cache_type = "q8_0"',
            'set kv_cache_type = "q8_0" in [defaults] (half the KV cache of f16, logits change '
            "slightly)",
            run(kv="q8_0"),
            kv="q8_0",
        )
    limit = max(16, spec.question_tokens // 2)
    sized = sizer(limit, False)
    smaller = run(n_ctx=sized)
    if smaller.total_bytes < run().total_bytes:
        explicit = any(not s.n_ctx_auto for s in local)
        add(
            f"smaller contexts (max_question_tokens = {limit})",
            (
                "remove the explicit n_ctx values (stages are then sized for their prompts) and "
                if explicit
                else ""
            )
            + f"set max_question_tokens = {limit} at the top of stack.toml (longer questions "
            "are refused)",
            smaller,
            n_ctx=sized,
        )
    if memory != "low":
        add(
            'memory = "low"',
            'set memory = "low" at the top of stack.toml (or edgestack ask --low-memory): one '
            "stage's context at a time, slower per question",
            run(memory="low"),
            memory="low",
        )
    q4 = {p: s.q4_0_bytes for p, s in shapes.items() if s.q4_0_bytes < s.tensor_bytes}
    if q4:
        names = ", ".join(sorted(p.name for p in q4))
        add(
            "Q4_0 base",
            f"edgestack quantize {names} -o base.q4_0.gguf --type q4_0 and point model at it "
            "(repacked for the ARM dotprod kernels of a Pi 5, the fastest type there; half "
            "the bytes each token reads; check quality with edgestack eval)",
            run(weights=q4),
            weights=q4,
        )
    if len(found) > 1 and not any(g.fits for g in found):
        add(" + ".join(g.change for g in found), "all of the above", run(**changes))
    return found


def format_plan(plan: Plan) -> str:
    """The plan as text for people (sizes in decimal units, as edgestack prints them)."""
    e = plan.estimate
    d = plan.device
    lines = [
        f'stack {plan.stack} ({plan.path}), memory "{e.memory}", device {d.name}: '
        f"{format_bytes(d.usable_bytes)} usable"
        + (f" of {format_bytes(d.total_bytes)}" if d.total_bytes else ""),
        f"  ({d.source})",
        "",
    ]
    rows: list[tuple[str, int]] = []
    for name, n in e.weights_bytes.items():
        rows.append((f"weights {name}", n))
    for name, n in e.adapters_bytes.items():
        rows.append((f"adapter {name}", n))
    for c in e.contexts:
        what = f"{c.n_seq} sequences x {c.cells}" if c.n_seq > 1 else f"{c.cells}"
        rows.append((f"KV cache {c.model.name} {c.kv_cache_type}: {what} cells", c.kv_bytes))
        rows.append((f"compute buffers ({', '.join(c.stages)})", c.compute_bytes))
    rows.append(("vocabularies", e.vocab_bytes))
    rows.append(("llama.cpp runtime", e.runtime_bytes))
    rows.append(("process (Python, libraries)", e.process_bytes))
    width = max(len(r[0]) for r in rows)
    lines += [f"  {label:<{width}}  {format_bytes(n):>9}" for label, n in rows]
    peak = f" (peak: stage {e.peak_stage})" if e.peak_stage else ""
    verdict = (
        f"fits, {format_bytes(d.usable_bytes - e.total_bytes)} to spare"
        if plan.fits
        else f"does NOT fit: {format_bytes(e.total_bytes - d.usable_bytes)} over"
    )
    lines.append(f"  {'total' + peak:<{width}}  {format_bytes(e.total_bytes):>9}  {verdict}")
    lines.append("")
    lines.append(f"  {'stage':<12} {'n_ctx':>11} {'KV':>9} {'read/token':>11} {'tok/s bound':>12}")
    for s in plan.stages:
        n_ctx = f"{s.n_ctx}{' auto' if s.n_ctx_auto else ''}"
        lines.append(
            f"  {s.name:<12} {n_ctx:>11} {format_bytes(s.kv_bytes):>9} "
            f"{format_bytes(s.read_bytes):>11} {s.tok_s_bound:>12.0f}"
        )
    lines.append(
        f"  (tok/s bound: {d.bandwidth / 1e9:.1f} GB/s over the bytes a token reads; llama.cpp "
        "runs below it)"
    )
    if plan.remote_stages:
        lines.append(f"  remote stages (not counted): {', '.join(plan.remote_stages)}")
    if plan.suggestions:
        lines += ["", "to make it fit (cheapest first):"]
        for g in plan.suggestions:
            mark = "fits" if g.fits else "not enough"
            lines.append(
                f"  {g.change}: {format_bytes(g.estimate.total_bytes)} "
                f"({format_bytes(g.estimate.total_bytes - e.total_bytes)}), {mark}"
            )
            lines.append(f"      {g.how}")
    return "\n".join(lines)
