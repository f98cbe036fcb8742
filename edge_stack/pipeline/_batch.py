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
from ..util._paths import edit_hint
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
    pack_prompts: bool = False,
) -> list[Answer]:
    """Answer ``questions`` (see :meth:`edge_stack.Stack.ask_batch`)."""
    if not isinstance(batch_size, int) or not 1 <= batch_size <= 64:
        raise BadArgument(f"batch_size must be an integer from 1 to 64, got {batch_size!r}")
    for q in questions:
        if not isinstance(q, str):
            raise TypeError(f"every question must be a str, got {type(q).__name__}")
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
            runner = stack.runner(stage.name)
            prompts = [runner.tokenize(r) for r in rendered]
            for tokens in prompts:
                if len(tokens) + params.max_tokens > runner.n_ctx:
                    raise ContextOverflowError(
                        f"stack {stack.name} ({spec.path}), stage {stage.name}: a prompt is "
                        f"{len(tokens)} tokens and max_tokens is {params.max_tokens}, "
                        f"{len(tokens) + params.max_tokens} in all, but n_ctx is {runner.n_ctx}; "
                        "shorten the question or lower max_tokens (--max-tokens), or raise "
                        f"n_ctx: {edit_hint(spec.path, 'n_ctx')}"
                    )
            chunks, times = _generate(runner, prompts, params, cancel, batch_size, pack_prompts)
            if cancel.is_set():
                raise Cancelled(f"stack {stack.name}: cancelled during stage {stage.name}")
        for i, chunk in enumerate(chunks):
            output = chunk.text.strip()
            traces[i].append(
                StageTrace(
                    name=stage.name,
                    prompt=rendered[i].text,
                    output=output,
                    prompt_tokens=len(prompts[i]),
                    completion_tokens=chunk.n_tokens,
                    seconds=times[i],
                )
            )
            values[i][stage.name] = output
    # Each answer's own time: the decode calls its stages were part of, not the whole batch's.
    return [
        Answer(
            text=t[-1].output,
            stages=tuple(t),
            stack=stack.name,
            question=q,
            seconds=sum(s.seconds for s in t),
        )
        for q, t in zip(questions, traces, strict=True)
    ]


def _generate(
    runner: StageRunner,
    prompts: list[list[int]],
    params: GenerationParams,
    cancel: threading.Event,
    batch_size: int,
    pack_prompts: bool,
) -> tuple[list[Chunk], list[float]]:
    """Each prompt's chunk and its seconds: from the start of the decode call that produced it
    (``batch_size`` prompts together) until its own output was complete."""
    batched = getattr(runner, "generate_batch", None)
    chunks: list[Chunk] = []
    times: list[float] = []
    if batched is not None:
        for first in range(0, len(prompts), batch_size):
            group = prompts[first : first + batch_size]
            started = time.perf_counter()
            result: list[Chunk] = batched(
                group, params, cancel, batch_size=batch_size, pack_prompts=pack_prompts
            )
            whole = time.perf_counter() - started
            chunks += result
            # Each prompt's own time when the engine measured it, else its group's.
            times += [whole if c.seconds is None else c.seconds for c in result]
            if cancel.is_set():
                break
        return chunks, times
    # A backend without batched decoding (the test fake): one prompt after the other.
    for tokens in prompts:
        started = time.perf_counter()
        parts, n = [], 0
        for chunk in runner.generate(tokens, params, cancel):
            parts.append(chunk.text)
            n += chunk.n_tokens
        chunks.append(Chunk("".join(parts), n))
        times.append(time.perf_counter() - started)
    return chunks, times
