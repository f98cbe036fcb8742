"""The checks ``edgestack build`` runs on every file it writes, before the file is kept.

- a converted or merged model: :func:`edge_stack.convert.verify.verify` against its source,
  which is the Hugging Face checkpoint through transformers when it is installed, else the f32
  GGUF conversion of the same source (for a merged stage: the f32 conversion with the same
  adapter merged in, since transformers alone cannot apply a PEFT adapter);
- an exported adapter: the quantized base with the adapter attached in llama.cpp, against the
  f32 GGUF with that adapter merged, so the export, the base's quantization and llama.cpp's
  adapter arithmetic are checked together, the way the runtime will use them.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from edge_stack.convert.verify import (
    PROBE_TEXTS,
    TextResult,
    Thresholds,
    VerifyReport,
    compare_logits,
    default_thresholds,
    verify,
)


def transformers_available() -> bool:
    """True when the Hugging Face reference (transformers + torch) can be used."""
    return all(importlib.util.find_spec(m) is not None for m in ("torch", "transformers"))


def verify_model(candidate: Path, reference: Path, *, threads: int | None) -> VerifyReport:
    """Compare a model GGUF with a reference (HF folder or GGUF file)."""
    return verify(candidate, reference, threads=threads)


def looser(*names: str) -> Thresholds:
    """The most permissive of the default thresholds of several file types."""
    limits = [default_thresholds(n) for n in names]
    return Thresholds(
        min_top1=min(t.min_top1 for t in limits), max_kl=max(t.max_kl for t in limits)
    )


def _logits(
    model_path: Path,
    ids: Sequence[Sequence[int]],
    *,
    lora: Path | None,
    scale: float,
    threads: int | None,
) -> list[np.ndarray]:
    from edge_stack.engines.llama import LlamaContext, LlamaModel

    n_ctx = max(len(i) for i in ids)
    with (
        LlamaModel.load(model_path) as model,
        LlamaContext(model, n_ctx=n_ctx, n_threads=threads, lora=lora, lora_scale=scale) as ctx,
    ):
        return [ctx.eval_logits(i) for i in ids]


def verify_adapter(
    base: Path,
    adapter: Path,
    reference: Path,
    *,
    scale: float,
    thresholds: Thresholds,
    file_type: str,
    threads: int | None,
) -> VerifyReport:
    """Base + ``adapter`` (at ``scale``) in llama.cpp against the merged ``reference`` GGUF."""
    from edge_stack.engines.llama import LlamaModel

    with LlamaModel.load(base) as model:
        limit = max(2, min(model.n_ctx_train or 512, 512))
        ids = [model.tokenize(t, add_bos=model.add_bos, special=False)[:limit] for t in PROBE_TEXTS]
    cand = _logits(base, ids, lora=adapter, scale=scale, threads=threads)
    ref = _logits(reference, ids, lora=None, scale=1.0, threads=threads)
    results: list[TextResult] = [
        compare_logits(text, c, r) for text, c, r in zip(PROBE_TEXTS, cand, ref, strict=True)
    ]
    n = sum(r.n_tokens for r in results)
    top1 = sum(r.top1_agreement * r.n_tokens for r in results) / n
    mean_kl = sum(r.mean_kl * r.n_tokens for r in results) / n
    return VerifyReport(
        candidate=f"{base} + {os.fspath(adapter)}",
        reference=str(reference),
        reference_kind="gguf",
        file_type=file_type,
        texts=tuple(results),
        top1_agreement=top1,
        mean_kl=mean_kl,
        max_abs_dlogit=max(r.max_abs_dlogit for r in results),
        thresholds=thresholds,
        passed=top1 >= thresholds.min_top1 and mean_kl <= thresholds.max_kl,
    )
