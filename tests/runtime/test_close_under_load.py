"""close() while another thread generates, on real llama.cpp: nothing is freed under a running
decode, the generation in flight ends cleanly (finished, or a one-line EngineError), and every
native object is freed once close() returns.

The model (tests/logit_builders.py) never ends a text, so every generation runs to its
max_tokens unless something stops it: the tests do not depend on where a random model stops.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from edge_stack import Stack, StageFinished, Token
from edge_stack.engines.llama import LlamaContext, LlamaModel
from edge_stack.engines.llama._batch import BatchContext
from edge_stack.engines.llama._engine import Engine
from edge_stack.errors import EngineError

from logit_builders import known_logits_gguf
from stack_builders import write_stack

pytestmark = [pytest.mark.llama, pytest.mark.torch]

TOKENS = 200


@pytest.fixture(scope="module")
def known(tmp_path_factory: pytest.TempPathFactory, tiny_model: Callable[[str], Path]) -> Path:
    return known_logits_gguf(tmp_path_factory, tiny_model("gptneox"))[0]


def _wait(condition: Callable[[], bool], worker: threading.Thread) -> None:
    while not condition():
        assert worker.is_alive(), "the worker ended before the condition held"
        time.sleep(0.001)


def test_stack_close_waits_for_the_stage_in_flight(known: Path, tmp_path: Path) -> None:
    path = write_stack(
        tmp_path / "s",
        f"""
        version = 1
        [defaults]
        model = "known.gguf"
        n_ctx = 256
        max_tokens = {TOKENS}
        [[stages]]
        name = "first"
        prompt = "{{question}}"
        [[stages]]
        name = "second"
        prompt = "{{first}}"
        max_tokens = 10
        """,
        {"known.gguf": known},
    )
    stack = Stack.load(path, threads=1)
    engine = stack._backend
    assert isinstance(engine, Engine)
    contexts = [r.context for r in engine.runners.values()]
    models = list(engine.models.values())
    seen: list[object] = []

    def ask() -> None:
        try:
            for event in stack.stream("x"):
                seen.append(event if not isinstance(event, Token) else "token")
        except EngineError as exc:
            seen.append(exc)

    worker = threading.Thread(target=ask)
    worker.start()
    _wait(lambda: seen.count("token") >= 3, worker)
    stack.close()  # from this thread, while the worker generates stage "first"
    closed_at = len(seen)
    worker.join(timeout=120)
    assert not worker.is_alive()
    # close() returned only after stage "first" had generated all of its tokens ...
    finished = [e for e in seen[:closed_at] if isinstance(e, StageFinished)]
    assert [(f.stage, f.trace.completion_tokens) for f in finished] == [("first", TOKENS)]
    # ... and the next stage was refused rather than run on freed memory.
    error = seen[-1]
    assert isinstance(error, EngineError) and "is closed" in str(error), seen[-3:]
    assert seen[seen.index(finished[0]) + 1 :] == [error]
    assert all(c._ctx is None for c in contexts) and all(m._ptr is None for m in models)


def test_context_close_during_generate_ends_it_with_an_error(known: Path) -> None:
    with LlamaModel.load(known) as model:
        ctx = LlamaContext(model, n_ctx=TOKENS + 10, n_threads=1)
        got: list[object] = []

        def generate() -> None:
            try:
                for item in ctx.generate([5, 6, 7], max_tokens=TOKENS):
                    got.append(item.id)
            except EngineError as exc:
                got.append(exc)

        worker = threading.Thread(target=generate)
        worker.start()
        _wait(lambda: len(got) >= 5, worker)
        ctx.close()
        worker.join(timeout=60)
        assert not worker.is_alive()
        assert isinstance(got[-1], EngineError) and "closed" in str(got[-1])
        assert 5 <= len(got) - 1 < TOKENS
        assert ctx._ctx is None and model._open_contexts == 0


def test_model_close_during_generate_frees_after_the_context(known: Path) -> None:
    model = LlamaModel.load(known)
    ctx = LlamaContext(model, n_ctx=TOKENS + 10, n_threads=1)
    got: list[object] = []

    def generate() -> None:
        try:
            for item in ctx.generate([5, 6, 7], max_tokens=TOKENS):
                got.append(item.id)
        except EngineError as exc:
            got.append(exc)

    worker = threading.Thread(target=generate)
    worker.start()
    _wait(lambda: len(got) >= 5, worker)
    model.close()  # closes its contexts first, each waiting for its decode in flight
    worker.join(timeout=60)
    assert isinstance(got[-1], EngineError) and "closed" in str(got[-1])
    assert ctx._ctx is None and model._ptr is None


def test_batch_close_waits_for_the_batch(known: Path) -> None:
    with LlamaModel.load(known) as model:
        ctx = BatchContext(model, n_ctx=TOKENS + 10, n_seq=3, n_threads=1)
        started = threading.Event()
        real_step = ctx._decode_step

        def step(seqs: list[int], toks: list[int]) -> None:
            started.set()
            real_step(seqs, toks)

        ctx._decode_step = step  # type: ignore[method-assign]
        result: list[object] = []
        worker = threading.Thread(
            target=lambda: result.append(
                ctx.generate_batch([[5, 6], [7, 8], [9, 10]], max_tokens=TOKENS)
            )
        )
        worker.start()
        assert started.wait(60)
        ctx.close()
        worker.join(timeout=60)
        (outs,) = result
        assert [o.stats.completion_tokens for o in outs] == [TOKENS] * 3  # type: ignore[attr-defined]
        assert ctx._ctx is None
        with pytest.raises(EngineError, match="closed"):
            ctx.generate_batch([[5, 6]], max_tokens=1)
