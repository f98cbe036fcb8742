"""The real backend: llama.cpp through :mod:`edge_stack.engines.llama._model`.

One :class:`~edge_stack.engines.llama._model.LlamaModel` per distinct GGUF file, memory-mapped and shared by
every stage that names it; one :class:`~edge_stack.engines.llama._model.LlamaContext` per stage, with the
stage's LoRA adapter attached to that context (never ``Llama(lora_path=...)``, which copies the
base). Each context keeps its KV cache between calls, so the fixed start of a stage's prompt is
evaluated once. Every file is checked before llama.cpp sees it: sha256 pins here, GGUF structure
and adapter fit in ``_model`` (``formats.gguf``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

from ...errors import EdgeStackError, EngineError
from ...formats._template import Rendered, Segment, tokenize_rendered
from ...manifest import StackSpec, StageSpec
from ...util._env import settings
from ...util._pins import check_pin
from .._backend import Chunk, GenerationParams
from ._prompt_cache import PromptCache

if TYPE_CHECKING:
    from ._batch import BatchContext
    from ._context import LlamaContext
    from ._model import LlamaModel

logger = logging.getLogger(__name__)


class LlamaRunner:
    """One stage on llama.cpp: the shared model and this stage's own context."""

    def __init__(
        self,
        stage: StageSpec,
        model: LlamaModel,
        context: LlamaContext,
        *,
        threads: int | None = None,
        prompt_cache: PromptCache | None = None,
    ) -> None:
        self.stage = stage
        self.model = model
        self.context = context
        self._threads = threads
        self._prompt_cache = prompt_cache
        # The prompt cache is consulted on the first call only (the context keeps the prefix after).
        self._first = True
        self._to_save: list[int] = []
        #: the context for batched calls, made on first use (its KV cache holds n_seq prompts)
        self.batch_context: BatchContext | None = None
        # Only the specials the template can contain matter for splitting it.
        literal = "".join(p for p in stage.template.parts if isinstance(p, str))
        self._specials = {s: t for s, t in model.special_tokens().items() if s in literal}
        self._bos: tuple[int, ...] = (model.bos,) if model.add_bos and model.bos >= 0 else ()

    @property
    def n_ctx(self) -> int:
        return self.context.n_ctx

    def _text_tokens(self, text: str) -> list[int]:
        return self.model.tokenize(text, add_bos=False, special=False)

    def tokenize(self, prompt: Rendered) -> list[int]:
        return tokenize_rendered(
            prompt, special_tokens=self._specials, tokenize_text=self._text_tokens, bos=self._bos
        )

    def generate(
        self, tokens: Sequence[int], params: GenerationParams, cancel: threading.Event
    ) -> Iterator[Chunk]:
        restored: list[int] = []
        if self._first:
            self._first = False
            self._to_save, restored = self._first_call(tokens)
        yielded = False
        try:
            for chunk in self._stream(tokens, params, cancel):
                yielded = True
                yield chunk
        except EngineError:
            # llama_decode failed on top of a prefix from the prompt cache: that file goes, and
            # the prompt is evaluated from scratch (unless text was already passed on).
            if (
                not restored
                or self._prompt_cache is None
                or not self.context.last_stats.cached_tokens
            ):
                raise
            self._prompt_cache.discard(self.context, restored)
            self.context.reset()
            if yielded:
                raise
            self._to_save = restored
            yield from self._stream(tokens, params, cancel)
        # Saved once this prompt has been evaluated in whole (not after a cancel or an error).
        done = self.context.last_stats.finish_reason not in ("", "cancelled")
        if self._to_save and self._prompt_cache is not None and done:
            self._prompt_cache.store(self.context, self._to_save)
            self._to_save = []

    def _stream(
        self, tokens: Sequence[int], params: GenerationParams, cancel: threading.Event
    ) -> Iterator[Chunk]:
        stream = self.context.generate(tokens, **asdict(params), cancel=cancel)
        try:
            for item in stream:
                # id -1 carries held-back text at the end, not a new token.
                yield Chunk(item.text, 0 if item.id < 0 else 1)
        finally:
            stream.close()

    def _first_call(self, tokens: Sequence[int]) -> tuple[list[int], list[int]]:
        """On the first call, restore the fixed prompt start from the prompt cache; returns the
        tokens to save after this call when they were not there, and those restored."""
        if self._prompt_cache is None:
            return [], []
        # The last token of the fixed text may merge with what follows it: only the common
        # part counts, in whole micro-batches (the only part a context reuses).
        n = 0
        for a, b in zip(self._fixed_start()[:-1], tokens, strict=False):
            if a != b:
                break
            n += 1
        n = min(n, len(tokens) - 1) // self.context.n_ubatch * self.context.n_ubatch
        if n == 0 or self.context.cached_tokens:
            return [], []
        prefix = [int(t) for t in tokens[:n]]
        if self._prompt_cache.restore(self.context, prefix):
            return [], prefix
        return prefix, []

    def _fixed_start(self) -> list[int]:
        head = []
        for part in self.stage.template.parts:
            if not isinstance(part, str):
                break
            head.append(part)
        if not head:
            return []
        return self.tokenize(Rendered((Segment("".join(head), inserted=False),)))

    def generate_batch(
        self,
        prompts: Sequence[Sequence[int]],
        params: GenerationParams,
        cancel: threading.Event,
        *,
        batch_size: int,
    ) -> list[Chunk]:
        """Generate after each prompt, ``batch_size`` sequences per decode step (llama.cpp's
        batched decoding); one Chunk (whole raw output, token count) per prompt, in order."""
        from ._batch import BatchContext

        ctx = self.batch_context
        # A context made for bigger batches serves smaller ones as well, keeping its cache.
        if ctx is None or ctx.n_seq < batch_size:
            if ctx is not None:
                ctx.close()
            self.batch_context = None
            ctx = self.batch_context = BatchContext(
                self.model,
                n_ctx=self.stage.n_ctx,
                n_seq=batch_size,
                n_threads=self._threads,
                lora=self.stage.lora,
                lora_scale=self.stage.lora_scale,
                kv_cache_type=self.stage.kv_cache_type,
            )
        chunks: list[Chunk] = []
        for start in range(0, len(prompts), batch_size):
            outs = ctx.generate_batch(
                prompts[start : start + batch_size],
                **asdict(params),
                cancel=cancel,
            )
            chunks.extend(Chunk(o.text, o.stats.completion_tokens) for o in outs)
            if cancel.is_set():
                break
        return chunks

    def close(self) -> None:
        """Free this stage's contexts (the shared model is the engine's)."""
        self.context.close()
        if self.batch_context is not None:
            self.batch_context.close()
            self.batch_context = None


def _in_stage(exc: EdgeStackError, where: str) -> EdgeStackError:
    """The same error with the stack file and stage in front of its message."""
    try:
        new = type(exc)(f"{where}: {exc}")
    except Exception:  # an error class with a different constructor: keep it as it is
        return exc
    new.__cause__ = exc.__cause__
    return new


class Engine:
    """Loads every model and context of a stack; :meth:`close` frees them all."""

    def __init__(
        self, spec: StackSpec, *, threads: int | None = None, verbose: bool | None = None
    ) -> None:
        from ._context import LlamaContext
        from ._model import LlamaModel, set_llama_logging

        verbose = settings().verbose if verbose is None else verbose
        if verbose:
            set_llama_logging(True)
        self.spec = spec
        cache = (
            None
            if settings().no_prompt_cache
            else PromptCache(settings().data_dir / "prompt-cache")
        )
        self.models: dict[Path, LlamaModel] = {}
        self.runners: dict[str, LlamaRunner] = {}
        #: seconds each stage took to load (its model, if first to use it, and its context)
        self.load_seconds: dict[str, float] = {}
        self._closed = False
        try:
            for stage in spec.stages:
                where = f"{spec.path}, stage {stage.name}"
                started = time.perf_counter()
                try:
                    # Pins first: a file that is not the pinned one is never parsed at all.
                    check_pin(stage.model, stage.sha256, where=f"{where}, key 'sha256'")
                    if stage.lora is not None:
                        check_pin(
                            stage.lora, stage.lora_sha256, where=f"{where}, key 'lora_sha256'"
                        )
                    key = stage.model.resolve()
                    model = self.models.get(key)
                    if model is None:
                        model = LlamaModel.load(key, verbose=verbose)
                        self.models[key] = model
                    if stage.grammar is not None:
                        # Token references need the vocabulary: checked at load, not first ask.
                        model.check_grammar(stage.grammar)
                    context = LlamaContext(
                        model,
                        n_ctx=stage.n_ctx,
                        n_threads=threads,
                        lora=stage.lora,
                        lora_scale=stage.lora_scale,
                        kv_cache_type=stage.kv_cache_type,
                    )
                except EdgeStackError as exc:
                    raise _in_stage(exc, where) from exc
                self.runners[stage.name] = LlamaRunner(
                    stage, model, context, threads=threads, prompt_cache=cache
                )
                self.load_seconds[stage.name] = time.perf_counter() - started
                logger.debug(
                    "stage %s: %s%s, n_ctx %d",
                    stage.name,
                    stage.model.name,
                    f" + {stage.lora.name}" if stage.lora else "",
                    stage.n_ctx,
                )
        except BaseException:
            self.close()
            raise

    def runner(self, stage: str) -> LlamaRunner:
        return self.runners[stage]

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for runner in self.runners.values():
            runner.close()
        for model in self.models.values():
            model.close()
        self.runners.clear()
        self.models.clear()
