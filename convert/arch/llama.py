"""Llama (SmolLM2, Llama 2/3.x, TinyLlama), Mistral and Qwen2: RMSNorm, SwiGLU, grouped-query
attention."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import Any

import gguf
import numpy as np

from edge_stack.errors import CheckpointError

from ._base import ArchSpec, Config, HParams, TensorPlan

logger = logging.getLogger(__name__)

_SUPPORTED_ROPE = ("default", "linear", "llama3")


class Llama(ArchSpec):
    arch = gguf.MODEL_ARCH.LLAMA
    model_types = ("llama",)
    #: llama.cpp's llama graph uses "normal" rope (adjacent pairs); Hugging Face rotates halves,
    #: so q and k rows are permuted. Qwen2 runs NeoX rope in llama.cpp and needs no permutation.
    permute_qk = True

    def read_hparams(self, config: Config) -> HParams:
        n_embd = config.require_int("hidden_size")
        n_head = config.require_int("num_attention_heads")
        n_head_kv = config.get("num_key_value_heads", default=n_head)
        if not isinstance(n_head_kv, int) or n_head_kv <= 0 or n_head % n_head_kv:
            raise CheckpointError(
                f"{config.where}: num_key_value_heads {n_head_kv!r} must divide num_attention_heads {n_head}"
            )
        head_dim = config.get("head_dim") or n_embd // n_head
        rope = config.rope
        rope_type = rope.get("rope_type", "default")
        if rope_type not in _SUPPORTED_ROPE:
            raise CheckpointError(
                f"{config.where}: rope type {rope_type!r} is not supported; supported: "
                f"{', '.join(_SUPPORTED_ROPE)}"
            )
        if config.get("hidden_act", default="silu") != "silu":
            raise CheckpointError(
                f"{config.where}: hidden_act {config.get('hidden_act')!r} is not supported; "
                f"llama.cpp's {self.arch_name} uses SiLU (SwiGLU)"
            )
        return HParams(
            **config.common_hparams(),
            n_embd=n_embd,
            n_head=n_head,
            n_head_kv=n_head_kv,
            head_dim=head_dim,
            n_rot=head_dim,
            norm_eps=float(config.get("rms_norm_eps", default=1e-6)),
            rope_scaling={} if rope_type == "default" else dict(rope),
        )

    def write_hparams(self, writer: gguf.GGUFWriter) -> None:
        super().write_hparams(writer)
        writer.add_layer_norm_rms_eps(self.hparams.norm_eps)
        scaling = self.hparams.rope_scaling
        if scaling.get("rope_type") == "linear":
            writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
            writer.add_rope_scaling_factor(float(scaling["factor"]))

    def row_permutation(self, hf_name: str, n_rows: int) -> np.ndarray | None:
        if not self.permute_qk:
            return None
        h = self.hparams
        if ".self_attn.q_proj." in hf_name:
            n_heads = h.n_head
        elif ".self_attn.k_proj." in hf_name:
            n_heads = h.n_head_kv
        else:
            return None
        if n_rows != n_heads * h.head_dim:
            raise CheckpointError(
                f"{self.config.where}: {hf_name} has {n_rows} rows, expected {n_heads} heads x "
                f"{h.head_dim} = {n_heads * h.head_dim}"
            )
        # Within each head, Hugging Face orders rotary pairs as (i, i + d/2); llama.cpp wants them
        # adjacent (2i, 2i + 1): output row 2i + j of a head comes from row j * d/2 + i.
        half = h.head_dim // 2
        head, i, j = np.meshgrid(np.arange(n_heads), np.arange(half), np.arange(2), indexing="ij")
        return (head * h.head_dim + j * half + i).reshape(-1)

    def extra_plans(self) -> list[TensorPlan]:
        scaling = self.hparams.rope_scaling
        if scaling.get("rope_type") != "llama3":
            return []
        factors = _llama3_rope_factors(self.hparams, scaling, self.config.where)
        return [TensorPlan("rope_freqs.weight", factors.shape, const=factors)]

    def expected_shapes(self) -> dict[str, tuple[int, ...]]:
        h = self.hparams
        shapes = super().expected_shapes()
        for i in range(h.n_layer):
            shapes[f"blk.{i}.attn_q.weight"] = (h.n_head * h.head_dim, h.n_embd)
            shapes[f"blk.{i}.attn_k.weight"] = (h.n_head_kv * h.head_dim, h.n_embd)
            shapes[f"blk.{i}.attn_v.weight"] = (h.n_head_kv * h.head_dim, h.n_embd)
            shapes[f"blk.{i}.attn_output.weight"] = (h.n_embd, h.n_head * h.head_dim)
            shapes[f"blk.{i}.ffn_gate.weight"] = (h.n_ff, h.n_embd)
        return shapes


class Mistral(Llama):
    """Mistral 7B and its derivatives: llama.cpp runs them as llama.

    llama.cpp's llama graph has no sliding-window attention (llama.cpp's own converter writes
    Mistral as llama without it), so a ``sliding_window`` is only reported: positions further
    apart than the window attend to each other in llama.cpp, not in transformers.
    """

    model_types = ("mistral",)

    def read_hparams(self, config: Config) -> HParams:
        hparams = super().read_hparams(config)
        window = config.get("sliding_window")
        if isinstance(window, int) and 0 < window < hparams.n_ctx:
            logger.warning(
                "%s: sliding_window %d is not kept (llama.cpp's llama has none): contexts longer "
                "than %d tokens attend further back than in transformers",
                config.where,
                window,
                window,
            )
        return hparams


class Qwen2(Llama):
    arch = gguf.MODEL_ARCH.QWEN2
    model_types = ("qwen2",)
    permute_qk = False

    def read_hparams(self, config: Config) -> HParams:
        if config.get("use_sliding_window", default=False):
            raise CheckpointError(
                f"{config.where}: use_sliding_window is true; sliding-window Qwen2 is not supported"
            )
        return super().read_hparams(config)


def _llama3_rope_factors(h: HParams, scaling: Mapping[str, Any], where: str) -> np.ndarray:
    """Per-frequency divisors llama.cpp applies for Llama 3's rope scaling (rope_freqs.weight)."""
    try:
        factor = float(scaling["factor"])
        low = float(scaling.get("low_freq_factor", 1.0))
        high = float(scaling.get("high_freq_factor", 4.0))
        old_ctx = float(scaling.get("original_max_position_embeddings", 8192))
    except (KeyError, TypeError, ValueError):
        raise CheckpointError(f"{where}: llama3 rope scaling needs a numeric 'factor'") from None
    inv_freq = 1.0 / (h.rope_theta ** (np.arange(0, h.head_dim, 2, dtype=np.float64) / h.head_dim))
    wavelen = 2 * math.pi / inv_freq
    low_wavelen, high_wavelen = old_ctx / low, old_ctx / high
    smooth = (old_ctx / wavelen - low) / (high - low)
    scaled = np.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
    medium = (wavelen <= low_wavelen) & (wavelen >= high_wavelen)
    scaled = np.where(medium, (1 - smooth) * inv_freq / factor + smooth * inv_freq, scaled)
    return (inv_freq / scaled).astype(np.float32)
