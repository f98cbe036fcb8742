"""Phi-3 and Phi-4-mini (model_type ``phi3``): fused ``qkv_proj`` and ``gate_up_proj``.

Hugging Face stores q, k and v as one ``[q; k; v]`` matrix and the MLP's gate and up as one
``[gate; up]`` matrix; llama.cpp's phi3 (``src/models/phi3.cpp``) reads the same layouts as
``attn_qkv`` and a double-height ``ffn_up`` (its SwiGLU splits it gate first), and runs NeoX rope,
so no tensor (and no LoRA matrix) is re-laid out. Partial rotary embeddings
(``partial_rotary_factor``, Phi-4-mini) set ``rope.dimension_count``; LongRoPE's per-frequency
factors become ``rope_factors_long``/``rope_factors_short`` with the attention factor
transformers uses.
"""

from __future__ import annotations

import math

import gguf
import numpy as np

from edge_stack.errors import CheckpointError

from ._base import ArchSpec, Config, HParams, TensorPlan


class Phi3(ArchSpec):
    arch = gguf.MODEL_ARCH.PHI3
    model_types = ("phi3",)

    def read_hparams(self, config: Config) -> HParams:
        where = config.where
        n_embd = config.require_int("hidden_size")
        n_head = config.require_int("num_attention_heads")
        n_head_kv = config.get("num_key_value_heads", default=n_head)
        if n_embd % n_head or not isinstance(n_head_kv, int) or n_head % n_head_kv:
            raise CheckpointError(
                f"{where}: hidden_size {n_embd}, num_attention_heads {n_head} and "
                f"num_key_value_heads {n_head_kv!r} must divide each other for llama.cpp's phi3"
            )
        head_dim = n_embd // n_head
        if config.get("head_dim") not in (None, head_dim):
            raise CheckpointError(
                f"{where}: head_dim {config.get('head_dim')} is not hidden_size / "
                f"num_attention_heads = {head_dim}, which llama.cpp's phi3 requires"
            )
        if config.get("hidden_act", default="silu") != "silu":
            raise CheckpointError(
                f"{where}: hidden_act {config.get('hidden_act')!r} is not supported; llama.cpp's "
                "phi3 uses SiLU (SwiGLU)"
            )
        rope = config.rope
        kind = str(rope.get("rope_type", "default")).lower()
        if kind not in ("default", "longrope", "su"):
            raise CheckpointError(
                f"{where}: rope type {kind!r} is not supported for Phi-3; supported: default, "
                "longrope"
            )
        partial = float(
            rope.get("partial_rotary_factor") or config.get("partial_rotary_factor", default=1.0)
        )
        n_rot = int(partial * head_dim)
        if n_rot < 2 or n_rot % 2:
            raise CheckpointError(
                f"{where}: partial_rotary_factor {partial} gives {n_rot} rotary dimensions; "
                "llama.cpp needs an even number of at least 2"
            )
        common = config.common_hparams()
        self.original_ctx = int(
            rope.get("original_max_position_embeddings")
            or config.get("original_max_position_embeddings", default=common["n_ctx"])
        )
        window = config.get("sliding_window")
        self.sliding_window = int(window) if isinstance(window, int) else 0
        return HParams(
            **common,
            n_embd=n_embd,
            n_head=n_head,
            n_head_kv=n_head_kv,
            head_dim=head_dim,
            n_rot=n_rot,
            norm_eps=float(config.get("rms_norm_eps", default=1e-5)),
            rope_scaling={} if kind == "default" else dict(rope),
        )

    def write_hparams(self, writer: gguf.GGUFWriter) -> None:
        h = self.hparams
        super().write_hparams(writer)
        writer.add_layer_norm_rms_eps(h.norm_eps)
        writer.add_rope_scaling_orig_ctx_len(self.original_ctx)
        # llama.cpp's phi3 ignores it (its sliding window is off); written as llama.cpp's
        # converter does, 0 for none
        writer.add_sliding_window(self.sliding_window)
        if h.rope_scaling:
            scale = h.n_ctx / self.original_ctx
            factor = h.rope_scaling.get("attention_factor")
            if factor is None:
                factor = (
                    math.sqrt(1 + math.log(scale) / math.log(self.original_ctx))
                    if scale > 1.0
                    else 1.0
                )
            writer.add_rope_scaling_attn_factors(float(factor))

    def extra_plans(self) -> list[TensorPlan]:
        h = self.hparams
        if not h.rope_scaling:
            return []
        plans = []
        for key, tensor in (
            ("long_factor", gguf.MODEL_TENSOR.ROPE_FACTORS_LONG),
            ("short_factor", gguf.MODEL_TENSOR.ROPE_FACTORS_SHORT),
        ):
            values = np.asarray(h.rope_scaling.get(key) or [], dtype=np.float32)
            if values.shape != (h.n_rot // 2,):
                raise CheckpointError(
                    f"{self.config.where}: rope {key} has {values.size} values, expected "
                    f"{h.n_rot // 2} (half the rotary dimensions)"
                )
            name = gguf.TENSOR_NAMES[tensor] + ".weight"
            plans.append(TensorPlan(name, values.shape, const=values))
        return plans

    def expected_shapes(self) -> dict[str, tuple[int, ...]]:
        h = self.hparams
        shapes = super().expected_shapes()
        kv = h.n_head_kv * h.head_dim
        for i in range(h.n_layer):
            shapes[f"blk.{i}.attn_qkv.weight"] = (h.n_embd + 2 * kv, h.n_embd)
            shapes[f"blk.{i}.attn_output.weight"] = (h.n_embd, h.n_embd)
            shapes[f"blk.{i}.ffn_up.weight"] = (2 * h.n_ff, h.n_embd)
        return shapes
