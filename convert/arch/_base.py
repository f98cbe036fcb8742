"""What every architecture shares: reading config.json (transformers 4.x and 5.x spellings),
hyperparameters, and the plan of tensors to write."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

import gguf
import numpy as np

from edge_stack.errors import CheckpointError

# Buffers some checkpoints carry that are not weights (recomputed by every runtime).
_IGNORED_SUFFIXES = (".rotary_emb.inv_freq", ".attention.bias", ".attention.masked_bias")


class Config:
    """config.json with the lookups that differ between transformers versions, and clear errors."""

    def __init__(self, raw: Mapping[str, Any], where: str) -> None:
        self.raw = raw
        self.where = where

    def get(self, *keys: str, default: Any = None) -> Any:
        """The first of ``keys`` present (older spelling last), else ``default``."""
        for key in keys:
            if self.raw.get(key) is not None:
                return self.raw[key]
        return default

    def require_int(self, *keys: str) -> int:
        value = self.get(*keys)
        if value is None:
            raise CheckpointError(
                f"{self.where} has no {keys[0]!r}; the checkpoint's config is incomplete"
            )
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise CheckpointError(
                f"{self.where}: {keys[0]} must be a positive integer, found {value!r}"
            )
        return value

    def common_hparams(self) -> dict[str, Any]:
        """The hyperparameters every architecture spells the same way."""
        return {
            "n_vocab": self.require_int("vocab_size"),
            "n_ctx": self.require_int("max_position_embeddings"),
            "n_layer": self.require_int("num_hidden_layers"),
            "n_ff": self.require_int("intermediate_size"),
            "tie_embeddings": bool(self.get("tie_word_embeddings", default=False)),
            "rope_theta": float(self.rope.get("rope_theta", 10000.0)),
        }

    @property
    def rope(self) -> dict[str, Any]:
        """Rope settings merged from 5.x ``rope_parameters`` and 4.x ``rope_theta``/``rope_scaling``."""
        merged: dict[str, Any] = {}
        for key in ("rope_scaling", "rope_parameters"):  # 5.x wins
            part = self.raw.get(key)
            if isinstance(part, Mapping):
                merged.update(part)
        if "rope_theta" not in merged:
            theta = self.get("rope_theta", "rotary_emb_base")
            if theta is not None:
                merged["rope_theta"] = theta
        if "rope_type" not in merged and "type" in merged:
            merged["rope_type"] = merged["type"]
        return merged


@dataclass(frozen=True)
class HParams:
    """The hyperparameters llama.cpp needs, read from config.json."""

    n_vocab: int
    n_ctx: int
    n_embd: int
    n_layer: int
    n_head: int
    n_head_kv: int
    n_ff: int
    head_dim: int
    n_rot: int
    rope_theta: float
    norm_eps: float
    tie_embeddings: bool
    parallel_residual: bool = False
    rope_scaling: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class TensorPlan:
    """One tensor of the output file and where its data comes from.

    ``shape`` is in numpy (row-major, Hugging Face) order. Data comes from ``source`` (a checkpoint
    tensor, whose rows are taken in ``rows`` order when a re-layout permutes them) or ``const``.
    """

    gguf_name: str
    shape: tuple[int, ...]
    source: str | None = None
    rows: np.ndarray | None = None
    const: np.ndarray | None = field(default=None, compare=False)
    #: added to every value (Gemma's norms store w where llama.cpp multiplies by 1 + w)
    offset: float = 0.0


class ArchSpec:
    """Base of the per-architecture specs: map names, permute rows, write hyperparameters."""

    #: gguf's architecture enum value
    arch: ClassVar[gguf.MODEL_ARCH]
    #: Hugging Face ``model_type`` values this spec converts
    model_types: ClassVar[tuple[str, ...]]

    def __init__(self, config: Config, names: Sequence[str]) -> None:
        self.config = config
        self.hf_names = list(names)
        self.hparams = self.read_hparams(config)
        self._name_map = gguf.get_tensor_name_map(self.arch, self.hparams.n_layer)

    @property
    def arch_name(self) -> str:
        return gguf.MODEL_ARCH_NAMES[self.arch]

    # --- per architecture ----------------------------------------------------------------------

    def read_hparams(self, config: Config) -> HParams:
        raise NotImplementedError

    def write_hparams(self, writer: gguf.GGUFWriter) -> None:
        h = self.hparams
        writer.add_context_length(h.n_ctx)
        writer.add_embedding_length(h.n_embd)
        writer.add_block_count(h.n_layer)
        writer.add_feed_forward_length(h.n_ff)
        writer.add_head_count(h.n_head)
        writer.add_head_count_kv(h.n_head_kv)
        writer.add_rope_freq_base(h.rope_theta)
        writer.add_rope_dimension_count(h.n_rot)
        writer.add_vocab_size(h.n_vocab)
        if h.head_dim * h.n_head != h.n_embd:
            writer.add_key_length(h.head_dim)
            writer.add_value_length(h.head_dim)

    def row_permutation(self, hf_name: str, n_rows: int) -> np.ndarray | None:
        """Output row order for a tensor (a re-layout), or None when rows stay as they are.

        Every re-layout the converter makes is a permutation of output rows, so a LoRA B matrix
        (out x r) is re-laid out with the very same permutation.
        """
        return None

    def extra_plans(self) -> list[TensorPlan]:
        """Tensors llama.cpp needs that the checkpoint does not hold (zero biases, rope factors...)."""
        return []

    def value_offset(self, hf_name: str) -> float:
        """A constant added to every value of a tensor (0 for all but Gemma's norms)."""
        return 0.0

    # --- shared --------------------------------------------------------------------------------

    def gguf_name(self, hf_name: str) -> str | None:
        """The GGUF tensor name for a checkpoint tensor, or None for buffers we skip."""
        if hf_name.endswith(_IGNORED_SUFFIXES):
            return None
        found = self._name_map.get_type_and_name(hf_name, try_suffixes=(".weight", ".bias"))
        if found is None:
            raise CheckpointError(
                f"{self.config.where}: tensor {hf_name!r} has no place in a {self.arch_name} GGUF; "
                "is the checkpoint a plain causal LM of this architecture?"
            )
        return found[1]

    def gguf_name_or_none(self, hf_name: str) -> str | None:
        """The GGUF tensor name for a module weight, or None (also for names without the
        checkpoint's outer ``model.`` prefix, as adapters trained on the bare model have)."""
        for name in (hf_name, f"model.{hf_name}"):
            found = self._name_map.get_type_and_name(name, try_suffixes=(".weight", ".bias"))
            if found is not None:
                return found[1]
        return None

    def plan(self, shape_of: Mapping[str, tuple[int, ...]]) -> list[TensorPlan]:
        """Every tensor to write, in file order."""
        plans: list[TensorPlan] = []
        for name in self.hf_names:
            target = self.gguf_name(name)
            if target is not None:
                plans.append(TensorPlan(target, shape_of[name], name))
        plans += self.extra_plans()
        # Shapes first: a config that disagrees with the weights is the clearest message.
        self._check_shapes(plans)
        return [
            p
            if p.source is None
            else replace(
                p,
                rows=self.row_permutation(p.source, p.shape[0]),
                offset=self.value_offset(p.source),
            )
            for p in plans
        ]

    def expected_shapes(self) -> dict[str, tuple[int, ...]]:
        """GGUF name -> numpy-order shape, for the tensors whose shape follows from hparams."""
        h = self.hparams
        shapes: dict[str, tuple[int, ...]] = {
            "token_embd.weight": (h.n_vocab, h.n_embd),
            "output.weight": (h.n_vocab, h.n_embd),
        }
        for i in range(h.n_layer):
            shapes[f"blk.{i}.ffn_up.weight"] = (h.n_ff, h.n_embd)
            shapes[f"blk.{i}.ffn_down.weight"] = (h.n_embd, h.n_ff)
        return shapes

    def _check_shapes(self, plans: Sequence[TensorPlan]) -> None:
        expected = self.expected_shapes()
        for p in plans:
            want = expected.get(p.gguf_name)
            if want is not None and tuple(p.shape) != want:
                raise CheckpointError(
                    f"{self.config.where}: tensor {p.source or p.gguf_name} has shape {list(p.shape)}, "
                    f"config.json implies {list(want)} (vocab_size {self.hparams.n_vocab}, "
                    f"hidden_size {self.hparams.n_embd}); the config does not match the weights"
                )
        names = {p.gguf_name for p in plans}
        if "token_embd.weight" not in names:
            raise CheckpointError(
                f"{self.config.where}: the checkpoint has no token embedding tensor"
            )
