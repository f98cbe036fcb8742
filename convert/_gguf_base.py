"""A GGUF model as the base of a LoRA export: ``export-lora ADAPTER --base BASE.gguf``.

A user may have the base only as a GGUF (from a GGUF repository or a package) and a PEFT adapter
trained on the same weights. Everything the export needs is in the GGUF: the architecture and
hyperparameters (metadata), hence the tensor names and re-layouts (the converter's own arch spec,
built from a config.json rewritten from that metadata), and every weight's shape (tensor infos).
Weights are read (dequantized by gguf) only to compare an embedding copy the adapter saved.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import gguf
import numpy as np

from edge_stack.errors import UnsupportedArchitecture
from edge_stack.formats.gguf._check import check_gguf

from .arch import FAMILIES, ArchSpec, spec_for_config

__all__ = ["GGUFBase", "is_gguf_file", "open_gguf_base"]

# llama.cpp architecture -> the Hugging Face model_type whose spec lays tensors out the same way
_MODEL_TYPES = {
    "gptneox": "gpt_neox",
    "llama": "llama",
    "qwen2": "qwen2",
    "qwen3": "qwen3",
    "gemma3": "gemma3_text",
    "phi3": "phi3",
}


# tensor type prefix -> largest rounding error relative to the row's largest value (a block's
# scale is at most the row's largest value over the type's largest level: 2^-(bits-1), doubled)
_ROUNDING = (
    ("F32", 2**-7),
    ("F16", 2**-7),
    ("BF16", 2**-7),
    ("Q8", 2**-6),
    ("Q6", 2**-4),
    ("Q5", 2**-3),
    ("IQ4", 2**-2),
    ("Q4", 2**-2),
)


def is_gguf_file(path: str | Path) -> bool:
    """Whether ``path`` is a file that starts with GGUF's magic."""
    p = Path(path).expanduser()
    if not p.is_file():
        return False
    with p.open("rb") as f:
        return f.read(4) == b"GGUF"


class GGUFBase:
    """The parts of :class:`~.checkpoint.Checkpoint` the LoRA fit check reads, from a GGUF.

    ``names()`` are the Hugging Face names (of ``candidates``, the adapter's modules) whose GGUF
    tensor the file has; shapes are in numpy order.
    """

    def __init__(self, path: Path, spec: ArchSpec, candidates: Sequence[str]) -> None:
        self.path = path
        self.spec = spec
        self._reader: gguf.GGUFReader | None = None
        infos = {t.name: t for t in check_gguf(path, kind="model").tensors}
        self._shapes: dict[str, tuple[int, ...]] = {}
        self._gguf: dict[str, str] = {}
        self._types: dict[str, str] = {}
        for name in candidates:
            target = spec.gguf_name_or_none(name)
            if target is not None and target in infos:
                self._shapes[name] = tuple(reversed(infos[target].shape))
                self._gguf[name] = target
                self._types[name] = infos[target].type

    def names(self) -> list[str]:
        return list(self._shapes)

    def shape(self, name: str) -> tuple[int, ...]:
        return self._shapes[name]

    def read_rows(self, name: str, rows: slice | np.ndarray) -> np.ndarray:
        """Rows of a weight, dequantized to float32 (in the GGUF's row order)."""
        if self._reader is None:
            self._reader = gguf.GGUFReader(self.path)
        tensor = next(t for t in self._reader.tensors if t.name == self._gguf[name])
        data = gguf.quants.dequantize(np.asarray(tensor.data[rows]), tensor.tensor_type)
        return np.asarray(data, dtype=np.float32)

    def rounding(self, name: str) -> float:
        """How far a stored value may be from the original, relative to its row's largest."""
        kind = self._types[name]
        for prefix, step in _ROUNDING:
            if kind.startswith(prefix):
                return step
        return 0.5  # 1-3 bit types: anything of the right shape

    def close(self) -> None:
        self._reader = None


def _config(summary: Any) -> dict[str, Any]:
    """A config.json equivalent of a GGUF's metadata, for the converter's arch specs."""
    arch = summary.arch
    md = summary.metadata
    model_type = _MODEL_TYPES.get(arch)
    if model_type is None:
        raise UnsupportedArchitecture(
            f"{summary.path} is a '{arch}' GGUF; export-lora --base reads GGUF bases of "
            f"{', '.join(_MODEL_TYPES)} ({FAMILIES})"
        )

    def key(template: str, default: object = None) -> Any:
        return md.get(template.format(arch=arch), default)

    n_embd = int(key(gguf.Keys.LLM.EMBEDDING_LENGTH))
    n_head = int(key(gguf.Keys.Attention.HEAD_COUNT))
    head_dim = int(key(gguf.Keys.Attention.KEY_LENGTH, n_embd // n_head))
    tokens = summary.tokenizer.n_tokens if summary.tokenizer else 0
    infos = summary.tensor_map()
    n_vocab = int(key(gguf.Keys.LLM.VOCAB_SIZE, 0)) or tokens or infos["token_embd.weight"].dim(1)
    n_rot = int(key(gguf.Keys.Rope.DIMENSION_COUNT, head_dim))
    config: dict[str, Any] = {
        "model_type": model_type,
        "vocab_size": n_vocab,
        "hidden_size": n_embd,
        "num_hidden_layers": int(key(gguf.Keys.LLM.BLOCK_COUNT)),
        "num_attention_heads": n_head,
        "num_key_value_heads": int(key(gguf.Keys.Attention.HEAD_COUNT_KV, n_head)),
        "head_dim": head_dim,
        "query_pre_attn_scalar": head_dim,
        "intermediate_size": int(key(gguf.Keys.LLM.FEED_FORWARD_LENGTH)),
        "max_position_embeddings": int(key(gguf.Keys.LLM.CONTEXT_LENGTH)),
        "rope_theta": float(key(gguf.Keys.Rope.FREQ_BASE, 10000.0)),
        "tie_word_embeddings": "output.weight" not in infos,
        "partial_rotary_factor": n_rot / head_dim,
        "rotary_pct": n_rot / head_dim,
    }
    if arch == "phi3":
        config.pop("head_dim")
    return config


def open_gguf_base(path: Path, candidates: Sequence[str]) -> GGUFBase:
    """The GGUF model at ``path`` as a LoRA base (checked as the runtime checks models)."""
    summary = check_gguf(path, kind="model")
    spec = spec_for_config(_config(summary), [], str(path))
    return GGUFBase(path, spec, candidates)
