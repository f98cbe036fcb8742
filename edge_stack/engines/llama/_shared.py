"""One llama.cpp context shared by every stage on one base model.

A stack's stages usually share one base GGUF and differ by their LoRA adapter. Giving each stage a
context of its own costs each one llama.cpp's compute and output buffers and scheduler; a
:class:`SharedContext` is one native context whose KV cache holds one *sequence* per stage
(llama.cpp's ``n_seq_max`` with ``kv_unified = false``: every sequence has a stream of its own
cells), and each stage is a :class:`~edge_stack.engines.llama._context.LlamaContext` made with
``share=`` that context and ``seq=`` its number (:meth:`SharedContext.sequence`). A stage keeps
its cached prompt prefix in its own sequence, so the fixed prefix survives the other stages'
calls; its adapter is loaded once and set on the native context before each of its decodes when
another stage's is set (``llama_set_adapters_lora``, after which llama.cpp re-plans its graph:
about 1 to 7 ms, counted in :attr:`SharedContext.switches`).

Why streams and not one pool of cells for all stages (``kv_unified = true``), which would hold
less: results must be bit-identical to a context of the stage's own. llama.cpp's attention
kernels split the cells they read into chunks and tiles by the number of cells in view
(``n_kv``, from the highest cell in use); in a pool, other stages' cells change that number and
where a stage's cells fall, so the sums are grouped differently and near-ties can flip. A stream
holds only its stage's cells, at the same places as in a context of its own: the same ``n_kv``,
the same micro-batches, the same bits.

Every stream has the same size (llama.cpp's ``n_ctx_seq``: the largest of the stages' ``n_ctx``,
rounded up to 256 cells), so the cache costs what separate contexts of that size cost; what is
saved is everything else a context holds. Calls on one shared context must not interleave (one
set of logits, one adapter at a time): the engine runs one stage call at a time on it.
"""

from __future__ import annotations

import os
import weakref
from typing import TYPE_CHECKING

from ...errors import EngineError
from ._context import LlamaContext

if TYPE_CHECKING:
    from ._model import LlamaModel

__all__ = ["SharedContext"]


class SharedContext(LlamaContext):
    """A native context with ``n_seq`` sequences of ``n_ctx`` tokens each; :meth:`sequence`
    gives each stage its own. Used only through its sequences; closing it closes them."""

    def __init__(
        self,
        model: LlamaModel,
        *,
        n_ctx: int,
        n_seq: int,
        n_threads: int | None = None,
        n_batch: int = 512,
        n_ubatch: int = 32,
        flash_attn: bool = True,
        kv_cache_type: str = "f16",
    ) -> None:
        if n_seq < 1:
            raise EngineError(f"a shared context holds at least one sequence, not {n_seq}")
        self._n_seq = n_seq
        self._views: weakref.WeakSet[LlamaContext] = weakref.WeakSet()
        self._taken: set[int] = set()
        self._active: LlamaContext | None = None
        #: adapter switches so far (each one makes llama.cpp re-plan its graph once)
        self.switches = 0
        super().__init__(
            model,
            n_ctx=n_ctx,
            n_threads=n_threads,
            n_batch=n_batch,
            n_ubatch=n_ubatch,
            flash_attn=flash_attn,
            kv_cache_type=kv_cache_type,
        )

    @property
    def n_seq(self) -> int:
        """How many sequences (stages) this context holds."""
        return self._n_seq

    def sequence(
        self,
        *,
        n_ctx: int | None = None,
        lora: str | os.PathLike[str] | None = None,
        lora_scale: float = 1.0,
    ) -> LlamaContext:
        """A context for one stage: the next free sequence, with its own adapter and at most
        ``n_ctx`` tokens (default: the stream's size)."""
        seq = next((s for s in range(self._n_seq) if s not in self._taken), None)
        if seq is None:
            raise EngineError(f"all {self._n_seq} sequences of this shared context are taken")
        view = LlamaContext(
            self.model,
            n_ctx=self.n_ctx if n_ctx is None else n_ctx,
            n_batch=self.n_batch,
            n_ubatch=self.n_ubatch,
            flash_attn=self.flash_attn,
            lora=lora,
            lora_scale=lora_scale,
            kv_cache_type=self.kv_cache_type,
            share=self,
            seq=seq,
        )
        self._taken.add(seq)
        self._views.add(view)
        return view

    def _switched(self, view: LlamaContext | None) -> None:
        if view is not None:
            self.switches += 1
        self._active = view

    def _close_views(self) -> None:
        for view in list(self._views):
            view.close()
        self._views = weakref.WeakSet()
        self._active = None
