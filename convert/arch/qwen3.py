"""Qwen3 (0.6B .. 32B dense): Qwen2 without q/k/v biases, with RMSNorm on each query and key head
(``q_norm``/``k_norm``) and head sizes set apart from the hidden size (``head_dim``)."""

from __future__ import annotations

import gguf

from .llama import Qwen2


class Qwen3(Qwen2):
    arch = gguf.MODEL_ARCH.QWEN3
    model_types = ("qwen3",)

    def expected_shapes(self) -> dict[str, tuple[int, ...]]:
        h = self.hparams
        shapes = super().expected_shapes()
        for i in range(h.n_layer):
            shapes[f"blk.{i}.attn_q_norm.weight"] = (h.head_dim,)
            shapes[f"blk.{i}.attn_k_norm.weight"] = (h.head_dim,)
        return shapes
