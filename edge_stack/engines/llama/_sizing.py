"""How many tokens a stage's context needs: the default ``n_ctx`` of a stage that sets none.

A stage's prompt is its template's own text plus what fills its placeholders: the question (at
most the stack's ``max_question_tokens``) and earlier stages' outputs (each at most that stage's
``max_tokens`` generated tokens, counted twice: see below). Add the stage's own ``max_tokens``
and the context does not overflow for a question within the limit. The sum is rounded up to :data:`N_CTX_STEP`, the size
llama.cpp rounds every KV cache stream up to anyway (``GGML_PAD(n_ctx_seq, 256)`` in
``src/llama-context.cpp``), so the rounding costs no memory. An explicit ``n_ctx`` always wins.

A value's tokens can differ slightly inside the prompt from on their own (it may merge with the
template's text next to it): :data:`PLACEHOLDER_SLACK` tokens per placeholder cover that. A
stage's output is tokenized again from its text, and the tokens a model generated need not be
the ones its tokenizer would choose for that text: a trained model's outputs come back as about
as many tokens, a random model's (the benchmarks') up to 2.3 times as many were seen, as words
glued together split into pieces. :data:`OUTPUT_FACTOR` allows twice. Past any of this the
context rule still holds: the ask fails with
:class:`~edge_stack.errors.ContextOverflowError` naming the stage, and an explicit ``n_ctx``
fixes it.

Pure arithmetic: the engine counts the template's tokens with the model loaded, the planner
(``edgestack plan``) with only its vocabulary.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from ...formats._template import Field, Rendered, Template, render
from ...util._limits import MAX_N_CTX

__all__ = [
    "CONTEXT_BYTES",
    "N_CTX_STEP",
    "OUTPUT_FACTOR",
    "PLACEHOLDER_SLACK",
    "fixed_tokens",
    "group_by_size",
    "kv_cell_bytes",
    "round_n_ctx",
    "stage_need",
]

#: llama.cpp's granularity: every KV cache stream holds a multiple of this many cells
N_CTX_STEP = 256
#: extra tokens allowed per placeholder (merges at its edges)
PLACEHOLDER_SLACK = 2
#: an earlier stage's output counts as this many times its max_tokens (tokenized again)
OUTPUT_FACTOR = 2
#: what a llama.cpp context costs beyond its KV cache (compute and output buffers, scheduler,
#: graph): about 3.5 MB measured per Pythia-160M stage. Stages on one base share a context
#: unless giving some a context of their own saves more KV cache than this (every stream of a
#: shared context is as large as its largest stage's).
CONTEXT_BYTES = 4_000_000


def round_n_ctx(tokens: int) -> int:
    """``tokens`` rounded up to llama.cpp's granularity (at least one step, at most MAX_N_CTX)."""
    steps = max(1, -(-tokens // N_CTX_STEP))
    return min(steps * N_CTX_STEP, MAX_N_CTX)


def fixed_tokens(template: Template, tokenize: Callable[[Rendered], list[int]]) -> int:
    """Tokens of the template's own text, BOS included (``tokenize`` is the stage's)."""
    empty = {part.name: "" for part in template.parts if isinstance(part, Field)}
    return len(tokenize(render(template, empty)))


def stage_need(
    template: Template,
    *,
    fixed: int,
    max_tokens: int,
    max_question_tokens: int,
    output_tokens: Mapping[str, int],
) -> int:
    """Tokens a stage can need: its template's ``fixed`` tokens, each placeholder at its limit
    (``{question}``: ``max_question_tokens``; ``{stage}``: :data:`OUTPUT_FACTOR` times
    ``output_tokens[stage]``, that stage's max_tokens) plus :data:`PLACEHOLDER_SLACK`, and its
    own ``max_tokens``."""
    need = fixed + max_tokens
    for part in template.parts:
        if isinstance(part, Field):
            if part.name == "question":
                limit = max_question_tokens
            else:
                limit = OUTPUT_FACTOR * output_tokens[part.name]
            need += limit + PLACEHOLDER_SLACK
    return need


def kv_cell_bytes(n_layer: int, k_width: int, v_width: int, kv_cache_type: str) -> float:
    """Bytes of one KV cache cell: a key and a value row (``k_width``, ``v_width`` values: the
    KV heads times their size) in every layer, at ``kv_cache_type`` ("f16", "q8_0", ...)."""
    import gguf

    block, size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[kv_cache_type.upper()]]
    return n_layer * (k_width + v_width) * size / block


def group_by_size(cells: Sequence[tuple[str, int]], cell_bytes: float) -> list[list[str]]:
    """Stages (name, KV cells) on one base split into the groups that share a context: each
    group costs its size x its largest stage's cells x ``cell_bytes`` plus :data:`CONTEXT_BYTES`,
    and the total is the least (groups are runs of stages sorted by size). Singletons get a
    context of their own."""
    ordered = sorted(cells, key=lambda c: (c[1], c[0]))
    n = len(ordered)
    best: list[tuple[float, int]] = [(0.0, 0)] + [(float("inf"), 0)] * n
    for end in range(1, n + 1):
        for start in range(end):
            cost = best[start][0] + (end - start) * ordered[end - 1][1] * cell_bytes
            cost += CONTEXT_BYTES
            if cost < best[end][0]:
                best[end] = (cost, start)
    groups: list[list[str]] = []
    end = n
    while end:
        start = best[end][1]
        groups.append([name for name, _ in ordered[start:end]])
        end = start
    order = {name: i for i, (name, _) in enumerate(cells)}
    return sorted((sorted(g, key=order.__getitem__) for g in groups), key=lambda g: order[g[0]])
