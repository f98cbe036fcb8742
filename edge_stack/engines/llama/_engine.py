"""The real backend: llama.cpp through :mod:`edge_stack.engines.llama._model`.

One :class:`~edge_stack.engines.llama._model.LlamaModel` per distinct GGUF file, memory-mapped and
shared by every stage that names it (never ``Llama(lora_path=...)``, which copies the base).
How the stages hold their contexts is the stack's ``memory`` mode (docs/stack-manifest.md):

- ``shared`` (the default): the stages on one base model (and KV cache type) share one llama.cpp
  context, each stage a sequence of its KV cache with its own adapter
  (:mod:`edge_stack.engines.llama._shared`); one stage call at a time runs on it;
- ``separate``: one context per stage, its adapter attached there (stages on one base can then
  run at the same time from different threads);
- ``low``: only the running stage's context exists, and one base model at a time
  (:mod:`edge_stack.engines.llama._lowmem`).

Contexts keep their KV cache between calls, so the fixed start of a stage's prompt is evaluated
once (in ``low`` mode it comes back from the on-disk prompt cache). A stage without ``n_ctx``
gets what its template, the stack's ``max_question_tokens`` and ``max_tokens`` can need
(:mod:`edge_stack.engines.llama._sizing`). Every file is checked before llama.cpp sees it: sha256
pins here, GGUF structure and adapter fit in ``_model`` (``formats.gguf``).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING

from ...errors import EdgeStackError, EngineError
from ...manifest import MEMORY_MODES, StackSpec, StageSpec
from ...util._env import settings
from ._prompt_cache import PromptCache
from ._runner import (
    LlamaRunner,
    Turn,
    _in_stage,
    check_stage_files,
    local_stages,
    stage_n_ctx,
    stage_specials,
    stage_tokenizer,
)
from ._sizing import group_by_size, kv_cell_bytes, round_n_ctx

if TYPE_CHECKING:
    from ._context import LlamaContext
    from ._model import LlamaModel

__all__ = ["Engine", "LlamaRunner", "Turn", "local_stages", "stage_specials", "stage_tokenizer"]

logger = logging.getLogger(__name__)


class Engine:
    """Loads every model and context of a stack; :meth:`close` frees them all.

    ``memory`` overrides the stack's ``memory`` mode ("shared", "separate" or "low").
    """

    def __init__(
        self,
        spec: StackSpec,
        *,
        threads: int | None = None,
        verbose: bool | None = None,
        memory: str | None = None,
    ) -> None:
        from ._model import set_llama_logging

        verbose = settings().verbose if verbose is None else verbose
        if verbose:
            set_llama_logging(True)
        memory = spec.memory if memory is None else memory
        if memory not in MEMORY_MODES:
            raise EngineError(f"unknown memory mode {memory!r}; use one of {MEMORY_MODES}")
        self.spec = spec
        self.memory = memory
        self._cache = (
            None
            if settings().no_prompt_cache
            else PromptCache(settings().data_dir / "prompt-cache")
        )
        self.models: dict[Path, LlamaModel] = {}
        self.runners: dict[str, LlamaRunner] = {}
        #: each stage's context size in tokens (its n_ctx, or the size it was given)
        self.n_ctx: dict[str, int] = {}
        #: the contexts stages share (memory "shared"), by base model, KV cache type and number
        self.shared: dict[tuple[Path, str, int], LlamaContext] = {}
        #: seconds each stage took to load (its model, if first to use it, and its context)
        self.load_seconds: dict[str, float] = {}
        self._residency: object = None
        self._closed = False
        try:
            if memory == "low":
                from ._lowmem import load_low_memory

                low = load_low_memory(
                    spec, threads=threads, verbose=verbose, prompt_cache=self._cache
                )
                self._residency = low.residency
                self.runners, self.n_ctx = low.runners, low.n_ctx
                self.load_seconds = low.load_seconds
            else:
                self._load(threads=threads, verbose=verbose, share=memory == "shared")
        except BaseException:
            self.close()
            raise

    def _load(self, *, threads: int | None, verbose: bool, share: bool) -> None:
        from ._context import LlamaContext
        from ._model import LlamaModel
        from ._shared import SharedContext

        spec = self.spec
        tokenizers = {}
        for stage in local_stages(spec):
            where = f"{spec.path}, stage {stage.name}"
            started = time.perf_counter()
            try:
                check_stage_files(spec, stage)
                assert stage.model is not None
                key = stage.model.resolve()
                model = self.models.get(key)
                if model is None:
                    model = self.models[key] = LlamaModel.load(key, verbose=verbose)
                if stage.grammar is not None:
                    # Token references need the vocabulary: checked at load, not first ask.
                    model.check_grammar(stage.grammar)
            except EdgeStackError as exc:
                raise _in_stage(exc, where) from exc
            tokenizers[stage.name] = stage_tokenizer(stage, model)
            self.load_seconds[stage.name] = time.perf_counter() - started
        self.n_ctx = stage_n_ctx(spec, tokenizers)
        candidates: dict[tuple[Path, str], list[StageSpec]] = {}
        for stage in local_stages(spec):
            assert stage.model is not None
            # A context below one micro-batch of 32 tokens uses smaller ones: not shareable.
            if share and self.n_ctx[stage.name] >= 32:
                base = (stage.model.resolve(), stage.kv_cache_type)
                candidates.setdefault(base, []).append(stage)
        sharing: dict[str, tuple[Path, str, int]] = {}
        for (path, kv_type), members in candidates.items():
            cells = [(s.name, round_n_ctx(self.n_ctx[s.name])) for s in members]
            groups = group_by_size(cells, _cell_bytes(self.models[path], kv_type))
            for number, group in enumerate(g for g in groups if len(g) > 1):
                key3 = (path, kv_type, number)
                self.shared[key3] = SharedContext(
                    self.models[path],
                    n_ctx=max(self.n_ctx[name] for name in group),
                    n_seq=len(group),
                    n_threads=threads,
                    kv_cache_type=kv_type,
                )
                sharing.update(dict.fromkeys(group, key3))
        turns = {key: Turn(f"the context shared by stages on {key[0].name}") for key in self.shared}
        for stage in local_stages(spec):
            where = f"{spec.path}, stage {stage.name}"
            started = time.perf_counter()
            assert stage.model is not None
            pair = sharing.get(stage.name)
            model = self.models[stage.model.resolve()]
            n_ctx = self.n_ctx[stage.name]
            try:
                shared = None if pair is None else self.shared[pair]
                if shared is not None:
                    assert isinstance(shared, SharedContext)
                    context = shared.sequence(
                        n_ctx=n_ctx, lora=stage.lora, lora_scale=stage.lora_scale
                    )
                else:
                    context = LlamaContext(
                        model,
                        n_ctx=n_ctx,
                        n_threads=threads,
                        lora=stage.lora,
                        lora_scale=stage.lora_scale,
                        kv_cache_type=stage.kv_cache_type,
                    )
            except EdgeStackError as exc:
                raise _in_stage(exc, where) from exc
            self.runners[stage.name] = LlamaRunner(
                stage,
                model,
                context,
                threads=threads,
                prompt_cache=self._cache,
                turn=None if pair is None else turns[pair],
            )
            self.load_seconds[stage.name] += time.perf_counter() - started
            logger.debug(
                "stage %s: %s%s, n_ctx %d%s",
                stage.name,
                stage.model.name,
                f" + {stage.lora.name}" if stage.lora else "",
                n_ctx,
                " (shared context)" if shared is not None else "",
            )

    @property
    def adapter_switches(self) -> int:
        """Adapter switches on the shared contexts so far (each costs llama.cpp a re-plan)."""
        return sum(getattr(ctx, "switches", 0) for ctx in self.shared.values())

    def runner(self, stage: str) -> LlamaRunner:
        return self.runners[stage]

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for runner in self.runners.values():
            runner.close()
        for ctx in self.shared.values():
            ctx.close()
        close = getattr(self._residency, "close", None)
        if close is not None:
            close()
        for model in self.models.values():
            model.close()
        self.runners.clear()
        self.shared.clear()
        self.models.clear()


def _cell_bytes(model: LlamaModel, kv_cache_type: str) -> float:
    """Bytes of one KV cache cell of ``model`` at ``kv_cache_type``."""
    from ._lib import lib

    llama = lib()
    n_head_kv = llama.llama_model_n_head_kv(model.ptr)
    head_k, head_v = model.head_dims()
    return kv_cell_bytes(
        llama.llama_model_n_layer(model.ptr), n_head_kv * head_k, n_head_kv * head_v, kv_cache_type
    )
