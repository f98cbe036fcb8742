"""Checking a GGUF file against a reference: top-1 agreement, KL divergence, max |logit difference|.

Both models see the same token ids: the probe texts are tokenized once, with the CANDIDATE's
tokenizer (a tokenizer mistake in the candidate therefore does not show here; the converter's
tokenizer tests cover that). The reference is another GGUF (through llama.cpp, e.g. the f32
conversion) or a Hugging Face model folder (through transformers and torch, imported only then).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from edge_stack.errors import BadArgument, ModelFileNotFound

__all__ = [
    "DEFAULT_THRESHOLDS",
    "PROBE_TEXTS",
    "TextResult",
    "Thresholds",
    "VerifyReport",
    "default_thresholds",
    "verify",
]

logger = logging.getLogger(__name__)

#: varied on purpose: prose, digits and arithmetic, code, non-ASCII text, lists and newlines
PROBE_TEXTS: tuple[str, ...] = (
    "The quick brown fox jumps over the lazy dog while the farmer watches from the old barn.",
    "Tom has 12 apples and buys 7 more. Then he gives 5 to Anna. How many apples does he have? 14",
    "def add(a, b):\n    return a + b\n\nprint(add(2, 3))  # prints 5\n",
    "Zürich, São Paulo and Kraków are cities; naïve café owners say “déjà vu” — 東京 too.",
    "Steps:\n1. Mix flour and water.\n2. Let it rest for 30 minutes.\n3. Bake at 220 °C.",
)


@dataclass(frozen=True)
class Thresholds:
    """The candidate passes when top-1 agreement >= ``min_top1`` and mean KL <= ``max_kl``."""

    min_top1: float
    max_kl: float


#: Defaults by the candidate's file type (``general.file_type``). Measured on tiny random-weight
#: GPT-NeoX and Llama models (hidden 64, 2 layers) against their f32 conversion, top-1 / mean KL:
#: f32 vs transformers 0.996-1.0 / <=1.3e-6; f16 vs transformers 0.996-1.0 / <=2.8e-6;
#: bf16 0.98-0.99 / <=1.1e-4; q8_0 0.94-0.97 / <=1.1e-3; q6_k 0.94-0.95 / <=1.1e-3;
#: q5_k_m 0.72-0.85 / <=3.1e-2; q4_k_m 0.70-0.85 / <=3.6e-2; q4_0 0.40-0.66 / <=0.17;
#: q3_k_m 0.48-0.70 / <=0.12; q2_k 0.40-0.64 / <=0.17; a DIFFERENT random model 0.0 / 1.44.
#: Random weights are chaotic (near-ties flip easily), trained models agree better, so the
#: limits sit below these numbers with a margin and still fail a wrong or different model.
DEFAULT_THRESHOLDS: Mapping[str, Thresholds] = {
    "f32": Thresholds(min_top1=0.98, max_kl=1e-3),
    "f16": Thresholds(min_top1=0.95, max_kl=5e-3),
    "bf16": Thresholds(min_top1=0.90, max_kl=1e-2),
    "q8_0": Thresholds(min_top1=0.85, max_kl=2e-2),
    "q6_k": Thresholds(min_top1=0.80, max_kl=5e-2),
    "q5": Thresholds(min_top1=0.60, max_kl=0.1),
    "q4": Thresholds(min_top1=0.35, max_kl=0.3),
    "low": Thresholds(min_top1=0.25, max_kl=0.5),
}


def default_thresholds(file_type: str) -> Thresholds:
    """The default thresholds for a file type name such as ``q4_k_m`` (see DEFAULT_THRESHOLDS)."""
    name = file_type.lower()
    if name in DEFAULT_THRESHOLDS:
        return DEFAULT_THRESHOLDS[name]
    for prefix, key in (("q6", "q6_k"), ("q5", "q5"), ("q4", "q4"), ("iq4", "q4"), ("q8", "q8_0")):
        if name.startswith(prefix):
            return DEFAULT_THRESHOLDS[key]
    return DEFAULT_THRESHOLDS["low"]  # q3, q2, iq1-3, ternary, unknown


@dataclass(frozen=True)
class TextResult:
    """Metrics over the positions of one probe text."""

    text: str
    n_tokens: int
    top1_agreement: float
    mean_kl: float
    max_abs_dlogit: float


@dataclass(frozen=True)
class VerifyReport:
    """Result of :func:`verify`; ``passed`` compares the overall metrics with ``thresholds``."""

    candidate: str
    reference: str
    reference_kind: Literal["gguf", "transformers"]
    file_type: str
    texts: tuple[TextResult, ...]
    top1_agreement: float
    mean_kl: float
    max_abs_dlogit: float
    thresholds: Thresholds
    passed: bool

    def summary(self) -> str:
        """One line: verdict, metrics and thresholds."""
        verdict = "PASS" if self.passed else "FAIL"
        return (
            f"{verdict} {self.file_type}: top-1 agreement {self.top1_agreement:.3f} "
            f"(min {self.thresholds.min_top1}), mean KL {self.mean_kl:.2e} "
            f"(max {self.thresholds.max_kl:.0e}), max |dlogit| {self.max_abs_dlogit:.3g} "
            f"over {sum(t.n_tokens for t in self.texts)} positions"
        )

    def to_dict(self) -> dict[str, Any]:
        """Everything, for ``--json``."""
        return dataclasses.asdict(self)

    def table(self) -> str:
        """Per-text lines and the summary, for people."""
        lines = [
            f"candidate {self.candidate} ({self.file_type})",
            f"reference {self.reference} ({self.reference_kind}; token ids from the candidate's "
            "tokenizer)",
            f"{'tokens':>6}  {'top-1':>6}  {'mean KL':>9}  {'max|dlogit|':>11}  text",
        ]
        for t in self.texts:
            short = t.text.replace("\n", "\\n")
            short = short if len(short) <= 40 else short[:37] + "..."
            lines.append(
                f"{t.n_tokens:>6}  {t.top1_agreement:>6.3f}  {t.mean_kl:>9.2e}  "
                f"{t.max_abs_dlogit:>11.4g}  {short}"
            )
        lines.append(self.summary())
        return "\n".join(lines)


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def compare_logits(text: str, cand: np.ndarray, ref: np.ndarray) -> TextResult:
    """Metrics for one text from candidate and reference logits ``(n_tokens, n_vocab)``."""
    log_p = _log_softmax(ref)
    log_q = _log_softmax(cand)
    kl = (np.exp(log_p) * (log_p - log_q)).sum(axis=-1)
    return TextResult(
        text=text,
        n_tokens=int(cand.shape[0]),
        top1_agreement=float((cand.argmax(-1) == ref.argmax(-1)).mean()),
        mean_kl=float(max(kl.mean(), 0.0)),
        max_abs_dlogit=float(np.abs(cand.astype(np.float64) - ref).max()),
    )


def verify(
    candidate: str | os.PathLike[str],
    reference: str | os.PathLike[str],
    *,
    texts: Sequence[str] | None = None,
    thresholds: Thresholds | Mapping[str, float] | None = None,
    threads: int | None = None,
) -> VerifyReport:
    """Compare the GGUF ``candidate`` with ``reference`` (a GGUF file or a Hugging Face folder).

    ``thresholds``: a :class:`Thresholds`, or a mapping that overrides fields of the default for
    the candidate's file type (``{"min_top1": 0.9}``). Returns the report; does not raise when
    the candidate fails (see ``report.passed``).
    """
    from edge_stack.engines.llama import LlamaModel

    cand_path = Path(candidate)
    ref_kind, ref_path = _reference_kind(reference)
    probe = tuple(texts) if texts else PROBE_TEXTS
    with LlamaModel.load(cand_path) as model:
        file_type = _file_type_name(model.metadata())
        limit = max(2, min(model.n_ctx_train or 512, 512))
        ids = [model.tokenize(t, add_bos=model.add_bos, special=False)[:limit] for t in probe]
        empty = [t for t, i in zip(probe, ids, strict=True) if not i]
        if empty:
            raise BadArgument(f"probe text {empty[0]!r} gives no tokens; give non-empty texts")
        n_vocab = model.n_vocab
        cand_logits = _gguf_logits(model, ids, threads)
    if ref_kind == "gguf":
        with LlamaModel.load(ref_path) as ref_model:
            if ref_model.n_vocab != n_vocab:
                raise _vocab_mismatch(cand_path, ref_path, n_vocab, ref_model.n_vocab)
            ref_logits = _gguf_logits(ref_model, ids, threads)
    else:
        ref_logits = _hf_logits(ref_path, ids)

    results = []
    for text, c, r in zip(probe, cand_logits, ref_logits, strict=True):
        if c.shape != r.shape:
            raise _vocab_mismatch(cand_path, ref_path, c.shape[1], r.shape[1])
        results.append(compare_logits(text, c, r))
    n = sum(r.n_tokens for r in results)
    top1 = sum(r.top1_agreement * r.n_tokens for r in results) / n
    mean_kl = sum(r.mean_kl * r.n_tokens for r in results) / n
    max_d = max(r.max_abs_dlogit for r in results)
    limits = _resolve_thresholds(file_type, thresholds)
    report = VerifyReport(
        candidate=str(cand_path),
        reference=str(ref_path),
        reference_kind=ref_kind,
        file_type=file_type,
        texts=tuple(results),
        top1_agreement=top1,
        mean_kl=mean_kl,
        max_abs_dlogit=max_d,
        thresholds=limits,
        passed=top1 >= limits.min_top1 and mean_kl <= limits.max_kl,
    )
    logger.info("verify %s: %s", cand_path, report.summary())
    return report


def _vocab_mismatch(cand: Path, ref: Path, n_cand: int, n_ref: int) -> BadArgument:
    return BadArgument(
        f"{cand} and {ref} have different vocabularies ({n_cand} vs {n_ref} tokens): the "
        "reference must be the model the candidate was converted from"
    )


def _resolve_thresholds(
    file_type: str, given: Thresholds | Mapping[str, float] | None
) -> Thresholds:
    if isinstance(given, Thresholds):
        return given
    base = default_thresholds(file_type)
    if not given:
        return base
    unknown = set(given) - {f.name for f in dataclasses.fields(Thresholds)}
    if unknown:
        raise BadArgument(f"unknown threshold {sorted(unknown)[0]!r}; use min_top1 or max_kl")
    return dataclasses.replace(base, **{k: float(v) for k, v in given.items()})


def _reference_kind(
    reference: str | os.PathLike[str],
) -> tuple[Literal["gguf", "transformers"], Path]:
    path = Path(reference).expanduser()
    if path.is_file():
        return "gguf", path
    if path.is_dir():
        return "transformers", path
    text = os.fspath(reference)
    if not path.exists() and "/" in text and not text.startswith((".", "/", "~")):
        from .hub import resolve_model_dir

        return "transformers", resolve_model_dir(text, kind="model")
    raise ModelFileNotFound(
        f"reference {reference} does not exist; give a GGUF file or a Hugging Face model folder"
    )


def _file_type_name(metadata: Mapping[str, str]) -> str:
    import gguf

    from .quantize import QUANT_TYPES

    raw = metadata.get(gguf.Keys.General.FILE_TYPE)
    if raw is None or not raw.strip().isdigit():
        return "unknown"
    names = {int(v): k for k, v in QUANT_TYPES.items()}
    return names.get(int(raw), f"type{raw}")


def _gguf_logits(model: Any, ids: Sequence[Sequence[int]], threads: int | None) -> list[np.ndarray]:
    from edge_stack.engines.llama import LlamaContext

    n_ctx = max(len(i) for i in ids)
    with LlamaContext(model, n_ctx=n_ctx, n_threads=threads) as ctx:
        return [ctx.eval_logits(i) for i in ids]


def _hf_logits(folder: Path, ids: Sequence[Sequence[int]]) -> list[np.ndarray]:
    try:
        import torch
        from transformers import AutoModelForCausalLM
    except ImportError as exc:
        raise BadArgument(
            f"the reference {folder} is a Hugging Face folder, which needs transformers and torch "
            f"({exc.name} is not installed): pip install transformers torch, or convert the "
            "folder at f32 and give that GGUF as --reference"
        ) from exc
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # our stderr is for diagnostics, not load bars
    try:
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    model.eval()
    out = []
    with torch.no_grad():
        for seq in ids:
            logits = model(torch.tensor([list(seq)], dtype=torch.long)).logits[0]
            out.append(logits.float().numpy())
    return out
