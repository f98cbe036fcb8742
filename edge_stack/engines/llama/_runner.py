"""A stage on llama.cpp: its runner (:class:`LlamaRunner`), tokenizer and context size.

Shared by the engine (:mod:`edge_stack.engines.llama._engine`, memory "shared" and "separate")
and low-memory mode (:mod:`edge_stack.engines.llama._lowmem`). See the engine for how contexts
are held.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import fields
from typing import TYPE_CHECKING, Any

from ...errors import EdgeStackError, EngineError
from ...formats._template import Rendered, Segment, tokenize_rendered
from ...manifest import StackSpec, StageSpec
from ...util._pins import check_pin
from .._backend import Chunk, GenerationParams
from ._sizing import fixed_tokens, round_n_ctx, stage_need

if TYPE_CHECKING:
    from ._batch import BatchContext
    from ._context import LlamaContext
    from ._model import LlamaModel
    from ._prompt_cache import PromptCache

__all__ = [
    "LlamaRunner",
    "Turn",
    "check_stage_files",
    "local_stages",
    "stage_n_ctx",
    "stage_specials",
    "stage_tokenizer",
]

logger = logging.getLogger(__name__)


class Turn:
    """A lock held for a whole stage call; refuses re-entry from the thread that holds it (a
    call from inside a stream loop would otherwise wait for itself)."""

    def __init__(self, what: str) -> None:
        self.what = what
        self._lock = threading.Lock()
        self._owner: int | None = None

    def __enter__(self) -> None:
        me = threading.get_ident()
        if self._owner == me:
            raise EngineError(
                f"{self.what} is already running a stage on this thread (a call from inside a "
                "stream loop); finish or close that stream first"
            )
        self._lock.acquire()
        self._owner = me

    def __exit__(self, *exc: object) -> None:
        self._owner = None
        self._lock.release()


def stage_specials(stage: StageSpec, model: LlamaModel) -> tuple[dict[str, int], tuple[int, ...]]:
    """The special tokens ``stage``'s template can contain (the only ones parsed in its prompts)
    and the BOS token ``model`` adds, if any."""
    literal = "".join(p for p in stage.template.parts if isinstance(p, str))
    specials = {s: t for s, t in model.special_tokens().items() if s in literal}
    bos: tuple[int, ...] = (model.bos,) if model.add_bos and model.bos >= 0 else ()
    return specials, bos


def stage_tokenizer(stage: StageSpec, model: LlamaModel) -> Callable[[Rendered], list[int]]:
    """Tokens of a rendered prompt of ``stage`` on ``model`` (BOS if the model wants one; only
    the specials the template itself can contain are parsed)."""
    specials, bos = stage_specials(stage, model)

    def text_tokens(text: str) -> list[int]:
        return model.tokenize(text, add_bos=False, special=False)

    def tokenize(prompt: Rendered) -> list[int]:
        return tokenize_rendered(
            prompt, special_tokens=specials, tokenize_text=text_tokens, bos=bos
        )

    return tokenize


def local_stages(spec: StackSpec) -> tuple[StageSpec, ...]:
    """The stages llama.cpp runs in this process: a stage with a remote ``engine`` is the
    remote engine's (engines/_load.py gives it a runner of its own)."""
    return tuple(s for s in spec.stages if s.remote is None)


def stage_n_ctx(
    spec: StackSpec, tokenizers: dict[str, Callable[[Rendered], list[int]]]
) -> dict[str, int]:
    """Each stage's context size: its own ``n_ctx``, else what it can need, rounded up."""
    outputs = {s.name: s.max_tokens for s in spec.stages}
    sizes: dict[str, int] = {}
    for stage in local_stages(spec):
        if not stage.n_ctx_auto:
            sizes[stage.name] = stage.n_ctx
            continue
        need = stage_need(
            stage.template,
            fixed=fixed_tokens(stage.template, tokenizers[stage.name]),
            max_tokens=stage.max_tokens,
            max_question_tokens=spec.question_tokens,
            output_tokens=outputs,
        )
        sizes[stage.name] = round_n_ctx(need)
    return sizes


class LlamaRunner:
    """One stage on llama.cpp: the shared model and this stage's context (its own, or its
    sequence of a context shared with the other stages on the same base)."""

    def __init__(
        self,
        stage: StageSpec,
        model: LlamaModel,
        context: LlamaContext | None,
        *,
        threads: int | None = None,
        prompt_cache: PromptCache | None = None,
        n_ctx: int | None = None,
        turn: Turn | None = None,
    ) -> None:
        self.stage = stage
        self._model = model
        self._context = context
        self._threads = threads
        self._prompt_cache = prompt_cache
        if n_ctx is None:
            if context is None:
                raise EngineError(f"stage {stage.name}: give n_ctx or a context")
            n_ctx = context.n_ctx
        self._n_ctx = n_ctx
        #: held for a whole call when the context is shared (None: the pipeline's stage lock
        #: is enough)
        self._turn = turn
        # The prompt cache is consulted on the first call only (the context keeps the prefix after).
        self._first = True
        self._to_save: list[int] = []
        #: the context for batched calls, made on first use (its KV cache holds n_seq prompts)
        self.batch_context: BatchContext | None = None
        self._tokenize = stage_tokenizer(stage, model)

    @property
    def model(self) -> LlamaModel:
        return self._model

    @property
    def context(self) -> LlamaContext:
        """This stage's context (in low-memory mode: the one of its last call, closed)."""
        if self._context is None:
            raise EngineError(f"stage {self.stage.name} has no context until its first call")
        return self._context

    @property
    def n_ctx(self) -> int:
        return self._n_ctx

    def tokenize(self, prompt: Rendered) -> list[int]:
        return self._tokenize(prompt)

    def _holding(self) -> contextlib.AbstractContextManager[None]:
        return self._turn if self._turn is not None else contextlib.nullcontext()

    def generate(
        self, tokens: Sequence[int], params: GenerationParams, cancel: threading.Event
    ) -> Iterator[Chunk]:
        with self._holding():
            yield from self._generate(tokens, params, cancel)

    def _generate(
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
        stream = self.context.generate(tokens, **_kwargs(params), cancel=cancel)
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
        pack_prompts: bool = False,
    ) -> list[Chunk]:
        """Generate after each prompt, ``batch_size`` sequences per decode step (llama.cpp's
        batched decoding); one Chunk (whole raw output, token count) per prompt, in order.
        ``pack_prompts``: see :class:`~edge_stack.engines.llama._batch.BatchContext`."""
        from ._batch import BatchContext

        ctx = self.batch_context
        # A context made for bigger batches serves smaller ones as well, keeping its cache.
        if ctx is None or ctx.n_seq < batch_size or ctx.pack_prompts != pack_prompts:
            if ctx is not None:
                ctx.close()
            self.batch_context = None
            ctx = self.batch_context = BatchContext(
                self.model,
                n_ctx=self.n_ctx,
                n_seq=batch_size,
                n_threads=self._threads,
                lora=self.stage.lora,
                lora_scale=self.stage.lora_scale,
                kv_cache_type=self.stage.kv_cache_type,
                pack_prompts=pack_prompts,
            )
        chunks: list[Chunk] = []
        for start in range(0, len(prompts), batch_size):
            outs = ctx.generate_batch(
                prompts[start : start + batch_size],
                **_kwargs(params),
                cancel=cancel,
            )
            chunks.extend(Chunk(o.text, o.stats.completion_tokens, o.seconds) for o in outs)
            if cancel.is_set():
                break
        return chunks

    def close(self) -> None:
        """Free this stage's contexts (the shared model and shared context are the engine's)."""
        if self._context is not None:
            self._context.close()
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


def check_stage_files(spec: StackSpec, stage: StageSpec) -> None:
    """The sha256 pins of a stage's model and adapter (before any file is parsed)."""
    where = f"{spec.path}, stage {stage.name}"
    if stage.model is None:
        raise EngineError(f"{where}: the stage has no model file to run on llama.cpp")
    check_pin(stage.model, stage.sha256, where=f"{where}, key 'sha256'")
    if stage.lora is not None:
        check_pin(stage.lora, stage.lora_sha256, where=f"{where}, key 'lora_sha256'")


def _kwargs(params: GenerationParams) -> dict[str, Any]:
    """``params`` as keyword arguments: a shallow ``asdict`` (whose deep copy costs more than a
    short stage's generation loop; the values are immutable)."""
    return {f.name: getattr(params, f.name) for f in fields(params)}
