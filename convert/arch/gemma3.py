"""Gemma 3 text models (270M, 1B; ``Gemma3ForCausalLM``, model_type ``gemma3_text``).

What differs from Llama, and how llama.cpp's gemma3 (``src/models/gemma3.cpp``) gets it:

- RMSNorm multiplies by ``1 + w``: every norm weight is written as ``w + 1``;
- norms after attention and after the MLP (``post_attention_norm``, ``post_ffw_norm``), and on
  each query and key head (``attn_q_norm``, ``attn_k_norm``);
- embeddings scaled by ``sqrt(hidden_size)`` and GELU (tanh) MLPs: llama.cpp's graph does both;
- attention scaled by ``1 / sqrt(head_dim)``: llama.cpp's only choice below 27B, so a config whose
  ``query_pre_attn_scalar`` is not ``head_dim`` is refused;
- sliding-window layers (``layer_types``) with their own rope base: written as
  ``attention.sliding_window``, the per-layer ``sliding_window_pattern`` and ``rope.freq_base_swa``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import gguf

from edge_stack.errors import CheckpointError

from ._base import ArchSpec, Config, HParams

_GELU = ("gelu_pytorch_tanh", "gelu_new", "gelu_fast", "gelu")
_SLIDING, _FULL = "sliding_attention", "full_attention"


class Gemma3(ArchSpec):
    arch = gguf.MODEL_ARCH.GEMMA3
    model_types = ("gemma3_text",)

    def read_hparams(self, config: Config) -> HParams:
        where = config.where
        n_embd = config.require_int("hidden_size")
        n_head = config.require_int("num_attention_heads")
        n_head_kv = config.get("num_key_value_heads", default=n_head)
        if not isinstance(n_head_kv, int) or n_head_kv <= 0 or n_head % n_head_kv:
            raise CheckpointError(
                f"{where}: num_key_value_heads {n_head_kv!r} must divide num_attention_heads {n_head}"
            )
        head_dim = config.get("head_dim") or n_embd // n_head
        scalar = config.get("query_pre_attn_scalar", default=head_dim)
        if float(scalar) != float(head_dim):
            raise CheckpointError(
                f"{where}: query_pre_attn_scalar is {scalar}, but llama.cpp's gemma3 scales "
                f"attention by 1/sqrt(head_dim) = 1/sqrt({head_dim}); only models where the two "
                "agree (Gemma 3 270M, 1B, 4B, 12B) convert exactly"
            )
        act = config.get("hidden_activation", "hidden_act", default="gelu_pytorch_tanh")
        if act not in _GELU:
            raise CheckpointError(
                f"{where}: hidden_activation {act!r} is not supported; llama.cpp's gemma3 uses GELU"
            )
        if config.get("attn_logit_softcapping") is not None:
            raise CheckpointError(
                f"{where}: attn_logit_softcapping is set, which llama.cpp's gemma3 does not apply"
            )
        full, sliding = self._rope(config)
        common = config.common_hparams()
        common["rope_theta"] = float(full.get("rope_theta", 1_000_000.0))
        common["tie_embeddings"] = bool(config.get("tie_word_embeddings", default=True))
        self.sliding_theta = float(sliding.get("rope_theta", 10_000.0))
        self.layer_types = self._layer_types(config, common["n_layer"])
        window = config.get("sliding_window")
        self.sliding_window = int(window) if isinstance(window, int) and window > 0 else 0
        softcap = config.get("final_logit_softcapping")
        self.final_softcap = float(softcap) if softcap else 0.0
        return HParams(
            **common,
            n_embd=n_embd,
            n_head=n_head,
            n_head_kv=n_head_kv,
            head_dim=head_dim,
            n_rot=head_dim,
            norm_eps=float(config.get("rms_norm_eps", default=1e-6)),
            rope_scaling={} if full.get("rope_type", "default") == "default" else dict(full),
        )

    @staticmethod
    def _rope(config: Config) -> tuple[Mapping[str, Any], Mapping[str, Any]]:
        """Rope settings of the full-attention and the sliding-window layers (5.x and 4.x)."""
        params = config.raw.get("rope_parameters")
        if isinstance(params, Mapping) and isinstance(params.get(_FULL), Mapping):
            return params[_FULL], params.get(_SLIDING) or {}
        full = dict(config.rope)
        sliding = {"rope_theta": config.get("rope_local_base_freq", default=10_000.0)}
        for kind, where in ((full.get("rope_type", "default"), "full"), ("default", "sliding")):
            if kind not in ("default", "linear"):
                raise CheckpointError(
                    f"{config.where}: {where}-attention rope type {kind!r} is not supported for "
                    "Gemma 3; supported: default, linear"
                )
        return full, sliding

    @staticmethod
    def _layer_types(config: Config, n_layer: int) -> list[bool]:
        """Which layers use sliding-window attention (``layer_types``, else every 6th is full)."""
        types = config.get("layer_types")
        if isinstance(types, list) and len(types) == n_layer:
            bad = [t for t in types if t not in (_SLIDING, _FULL)]
            if bad:
                raise CheckpointError(
                    f"{config.where}: layer_types has {bad[0]!r}; expected {_SLIDING} or {_FULL}"
                )
            return [t == _SLIDING for t in types]
        pattern = int(config.get("sliding_window_pattern", default=6))
        return [(i + 1) % pattern != 0 for i in range(n_layer)]

    def write_hparams(self, writer: gguf.GGUFWriter) -> None:
        h = self.hparams
        super().write_hparams(writer)
        writer.add_layer_norm_rms_eps(h.norm_eps)
        if self.final_softcap:
            writer.add_final_logit_softcapping(self.final_softcap)
        if self.sliding_window and any(self.layer_types):
            writer.add_sliding_window(self.sliding_window)
            writer.add_sliding_window_pattern(self.layer_types)
            writer.add_rope_freq_base_swa(self.sliding_theta)
        if h.rope_scaling.get("rope_type") == "linear":
            # global layers only: llama.cpp keeps the sliding layers' rope unscaled
            writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
            writer.add_rope_scaling_factor(float(h.rope_scaling["factor"]))

    def value_offset(self, hf_name: str) -> float:
        return 1.0 if hf_name.endswith("norm.weight") else 0.0

    def expected_shapes(self) -> dict[str, tuple[int, ...]]:
        h = self.hparams
        shapes = super().expected_shapes()
        for i in range(h.n_layer):
            shapes[f"blk.{i}.attn_q.weight"] = (h.n_head * h.head_dim, h.n_embd)
            shapes[f"blk.{i}.attn_k.weight"] = (h.n_head_kv * h.head_dim, h.n_embd)
            shapes[f"blk.{i}.attn_v.weight"] = (h.n_head_kv * h.head_dim, h.n_embd)
            shapes[f"blk.{i}.attn_output.weight"] = (h.n_embd, h.n_head * h.head_dim)
            shapes[f"blk.{i}.ffn_gate.weight"] = (h.n_ff, h.n_embd)
            shapes[f"blk.{i}.attn_q_norm.weight"] = (h.head_dim,)
            shapes[f"blk.{i}.attn_k_norm.weight"] = (h.head_dim,)
        return shapes
