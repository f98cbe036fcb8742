""":meth:`edge_stack.Stack.ask_batch`: many questions through the stack, stage by stage, together.

Every question goes through stage 1 before any goes to stage 2, so each stage runs its prompts
in batches (llama.cpp's batched decoding, :mod:`edge_stack.engines.llama._batch`) and then hands all of
its outputs on. The answers are the ones :meth:`~edge_stack.Stack.ask` gives one by one.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import Protocol

from ..engines._backend import Chunk, GenerationParams, StageRunner
from ..errors import BadArgument, Cancelled, ContextOverflowError
from ..formats._template import render
from ..manifest import StackSpec
from ._events import Answer, StageTrace


class _Pipeline(Protocol):
    """What batching needs of a :class:`~edge_stack.pipeline._stack.Stack` (which imports this
    module, so this module does not import it)."""

    @property
    def spec(self) -> StackSpec: ...

    @property
    def name(self) -> str: ...

    def _hold(self, stage: str) -> AbstractContextManager[None]: ...

    def runner(self, stage: str) -> StageRunner: ...


#: prompts per decode step unless the caller says otherwise
DEFAULT_BATCH_SIZE = 8


def ask_batch(
    stack: _Pipeline,
    questions: Sequence[str],
    *,
    batch_size: int,
    params_for: dict[str, GenerationParams],
    cancel: threading.Event,
) -> list[Answer]:
    """Answer ``questions`` (see :meth:`edge_stack.Stack.ask_batch`)."""
    if not isinstance(batch_size, int) or not 1 <= batch_size <= 64:
        raise BadArgument(f"batch_size must be an integer from 1 to 64, got {batch_size!r}")
    for q in questions:
        if not isinstance(q, str):
            raise TypeError(f"every question must be a str, got {type(q).__name__}")
    start = time.perf_counter()
    values: list[dict[str, str]] = [{"question": q} for q in questions]
    traces: list[list[StageTrace]] = [[] for _ in questions]
    if not questions:
        return []
    spec = stack.spec
    for stage in spec.stages:
        params = params_for[stage.name]
        rendered = [render(stage.template, v) for v in values]
        with stack._hold(stage.name):
            if cancel.is_set():
                raise Cancelled(f"stack {stack.name}: cancelled before stage {stage.name}")
            stage_start = time.perf_counter()
            runner = stack.runner(stage.name)
            prompts = [runner.tokenize(r) for r in rendered]
            for tokens in prompts:
                if len(tokens) + params.max_tokens > runner.n_ctx:
                    raise ContextOverflowError(
                        f"stack {stack.name} ({spec.path}), stage {stage.name}: a prompt is "
                        f"{len(tokens)} tokens and max_tokens is {params.max_tokens}, "
                        f"{len(tokens) + params.max_tokens} in all, but n_ctx is {runner.n_ctx}; "
                        "raise n_ctx or lower max_tokens in stack.toml, or shorten the input"
                    )
            chunks = _generate(runner, prompts, params, cancel, batch_size)
            if cancel.is_set():
                raise Cancelled(f"stack {stack.name}: cancelled during stage {stage.name}")
            seconds = time.perf_counter() - stage_start
        for i, chunk in enumerate(chunks):
            output = chunk.text.strip()
            traces[i].append(
                StageTrace(
                    name=stage.name,
                    prompt=rendered[i].text,
                    output=output,
                    prompt_tokens=len(prompts[i]),
                    completion_tokens=chunk.n_tokens,
                    seconds=seconds,
                )
            )
            values[i][stage.name] = output
    total = time.perf_counter() - start
    return [
        Answer(text=t[-1].output, stages=tuple(t), stack=stack.name, question=q, seconds=total)
        for q, t in zip(questions, traces, strict=True)
    ]


def _generate(
    runner: StageRunner,
    prompts: list[list[int]],
    params: GenerationParams,
    cancel: threading.Event,
    batch_size: int,
) -> list[Chunk]:
    batched = getattr(runner, "generate_batch", None)
    if batched is not None:
        result: list[Chunk] = batched(prompts, params, cancel, batch_size=batch_size)
        return result
    # A backend without batched decoding (the test fake): one prompt after the other.
    chunks = []
    for tokens in prompts:
        parts, n = [], 0
        for chunk in runner.generate(tokens, params, cancel):
            parts.append(chunk.text)
            n += chunk.n_tokens
        chunks.append(Chunk("".join(parts), n))
    return chunks
