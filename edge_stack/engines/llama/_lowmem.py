"""Low-memory mode (``memory = "low"``, ``--low-memory``): only the running stage's context exists.

For devices where even one context per base is too much. Each stage call loads the stage's base
model if it is not the one in memory (freeing the other: one base at a time), makes the stage's
context (KV cache, adapter, compute buffers), runs, and frees the context again; freed memory is
handed back to the system (glibc's ``malloc_trim``). Peak memory is therefore one base plus one
stage's context, whatever the number of stages.

The price is paid per stage call: making the context (llama.cpp allocates and clears the KV
cache, loads the adapter and plans its graph) and the fixed start of the prompt, which no context
keeps between calls: it comes back from the on-disk prompt cache (read, checksummed and loaded:
milliseconds), or, with EDGESTACK_NO_PROMPT_CACHE=1, is evaluated again. Stacks with several
bases also load a base whenever the next stage is on another one. README, "Performance", gives
the measured seconds per question.

Prompts are tokenized with the base in memory when it is the stage's, else with that base's
vocabulary loaded alone (``vocab_only``: no weights; kept once loaded), so the pipeline can
tokenize any stage's prompt while another stage runs. One stage call runs at a time in the whole
stack.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from ...errors import EdgeStackError
from ...formats._template import Rendered, tokenize_rendered
from .._backend import Chunk, GenerationParams
from ._runner import (
    LlamaRunner,
    Turn,
    _in_stage,
    check_stage_files,
    local_stages,
    stage_n_ctx,
    stage_specials,
)

if TYPE_CHECKING:
    from ...manifest import StackSpec, StageSpec
    from ._context import LlamaContext
    from ._model import LlamaModel
    from ._prompt_cache import PromptCache

__all__ = ["LowMemoryRunner", "LowMemoryStages", "Residency", "load_low_memory"]

logger = logging.getLogger(__name__)


def give_back_memory() -> None:
    """Return freed heap memory to the system (glibc keeps it otherwise; no-op elsewhere)."""
    with contextlib.suppress(AttributeError, OSError):  # not glibc
        ctypes.CDLL(None).malloc_trim(0)


class Residency:
    """The one base model in memory, the vocabularies of the others, and the stack-wide turn."""

    def __init__(self, *, verbose: bool) -> None:
        self.verbose = verbose
        #: held for a whole stage call: one stage (so one context) at a time
        self.turn = Turn("this low-memory stack")
        self._model: LlamaModel | None = None
        self._vocabs: dict[Path, LlamaModel] = {}
        # Model swaps against tokenization (which may use the model in memory).
        self._lock = threading.Lock()
        #: base models loaded so far (the first load included)
        self.loads = 0

    @contextlib.contextmanager
    def vocab(self, path: Path) -> Iterator[LlamaModel]:
        """A model with the vocabulary of the base at ``path``, kept in memory while in use."""
        from ._model import LlamaModel

        with self._lock:
            if self._model is not None and self._model.path == path:
                yield self._model
                return
            model = self._vocabs.get(path)
            if model is None:
                model = self._vocabs[path] = LlamaModel.load(
                    path, verbose=self.verbose, vocab_only=True
                )
            yield model

    def model(self, path: Path) -> LlamaModel:
        """The base at ``path``, loaded if it is not the one in memory (that one is freed first).
        Call with :attr:`turn` held, or before the stack is in use."""
        from ._model import LlamaModel

        with self._lock:
            if self._model is not None and self._model.path == path:
                return self._model
            if self._model is not None:
                self._model.close()
                self._model = None
                give_back_memory()
            self._model = LlamaModel.load(path, verbose=self.verbose)
            self.loads += 1
            return self._model

    def close(self) -> None:
        with self._lock:
            if self._model is not None:
                self._model.close()
                self._model = None
            for model in self._vocabs.values():
                model.close()
            self._vocabs.clear()


class LowMemoryRunner(LlamaRunner):
    """A stage whose context is made for each call and freed after it."""

    def __init__(
        self,
        stage: StageSpec,
        residency: Residency,
        *,
        n_ctx: int,
        threads: int | None,
        prompt_cache: PromptCache | None,
    ) -> None:
        assert stage.model is not None
        self._path = stage.model.resolve()
        self._residency = residency
        with residency.vocab(self._path) as model:
            super().__init__(
                stage, model, None, threads=threads, prompt_cache=prompt_cache, n_ctx=n_ctx
            )
            self._specials, self._bos = stage_specials(stage, model)

    @property
    def model(self) -> LlamaModel:
        """The stage's base if in memory, else its vocabulary (no weights)."""
        with self._residency.vocab(self._path) as model:
            return model

    def tokenize(self, prompt: Rendered) -> list[int]:
        with self._residency.vocab(self._path) as model:
            return tokenize_rendered(
                prompt,
                special_tokens=self._specials,
                tokenize_text=lambda text: model.tokenize(text, add_bos=False, special=False),
                bos=self._bos,
            )

    def generate(
        self, tokens: Sequence[int], params: GenerationParams, cancel: threading.Event
    ) -> Iterator[Chunk]:
        with self._residency.turn:
            context = self._open()
            try:
                yield from self._generate(tokens, params, cancel)
            finally:
                context.close()
                give_back_memory()

    def generate_batch(
        self,
        prompts: Sequence[Sequence[int]],
        params: GenerationParams,
        cancel: threading.Event,
        *,
        batch_size: int,
        pack_prompts: bool = False,
    ) -> list[Chunk]:
        with self._residency.turn:
            self._residency.model(self._path)
            try:
                return super().generate_batch(
                    prompts, params, cancel, batch_size=batch_size, pack_prompts=pack_prompts
                )
            finally:
                if self.batch_context is not None:
                    self.batch_context.close()
                    self.batch_context = None
                give_back_memory()

    def _open(self) -> LlamaContext:
        from ._context import LlamaContext

        started = time.perf_counter()
        model = self._residency.model(self._path)
        self._context = LlamaContext(
            model,
            n_ctx=self.n_ctx,
            n_threads=self._threads,
            lora=self.stage.lora,
            lora_scale=self.stage.lora_scale,
            kv_cache_type=self.stage.kv_cache_type,
        )
        # A fresh context holds nothing: the prompt cache is asked every time.
        self._first = True
        logger.debug(
            "stage %s: context made in %.1f ms",
            self.stage.name,
            1e3 * (time.perf_counter() - started),
        )
        return self._context


class LowMemoryStages:
    """What :func:`load_low_memory` sets up for the engine."""

    def __init__(self, residency: Residency) -> None:
        self.residency = residency
        self.runners: dict[str, LlamaRunner] = {}
        self.n_ctx: dict[str, int] = {}
        self.load_seconds: dict[str, float] = {}


def load_low_memory(
    spec: StackSpec, *, threads: int | None, verbose: bool, prompt_cache: PromptCache | None
) -> LowMemoryStages:
    """Check every stage's files and set up its runner: the first stage's base is loaded (its
    first call needs it), the other bases' vocabularies only."""
    from ...formats.gguf._check import check_adapter_fits
    from ._lib import check_file

    residency = Residency(verbose=verbose)
    engine = LowMemoryStages(residency)
    try:
        first = local_stages(spec)[0]
        check_stage_files(spec, first)
        assert first.model is not None
        residency.model(first.model.resolve())
        tokenizers: dict[str, Callable[[Rendered], list[int]]] = {}
        for stage in local_stages(spec):
            where = f"{spec.path}, stage {stage.name}"
            started = time.perf_counter()
            try:
                check_stage_files(spec, stage)
                assert stage.model is not None
                with residency.vocab(stage.model.resolve()) as vocab:
                    if stage.lora is not None:
                        check_file(stage.lora, "adapter")
                        check_adapter_fits(stage.lora, vocab.path)
                    if stage.grammar is not None:
                        vocab.check_grammar(stage.grammar)
            except EdgeStackError as exc:
                raise _in_stage(exc, where) from exc
            engine.load_seconds[stage.name] = time.perf_counter() - started
        for stage in local_stages(spec):
            engine.runners[stage.name] = LowMemoryRunner(
                stage,
                residency,
                n_ctx=0,
                threads=threads,
                prompt_cache=prompt_cache,
            )
            tokenizers[stage.name] = engine.runners[stage.name].tokenize
        engine.n_ctx = stage_n_ctx(spec, tokenizers)
        for name, runner in engine.runners.items():
            runner._n_ctx = engine.n_ctx[name]
    except BaseException:
        residency.close()
        raise
    return engine
