"""GPT-NeoX (Pythia, the FSLM paper's base model)."""

from __future__ import annotations

import gguf
import numpy as np

from edge_stack.errors import CheckpointError

from ._base import ArchSpec, Config, HParams, TensorPlan

# llama.cpp's GPT-NeoX graph always uses GELU; these Hugging Face activations are GELU too
# (exact or tanh-approximated, which differ by far less than f16 rounding).
_GELU_ACTS = {"gelu", "gelu_new", "gelu_fast", "gelu_pytorch_tanh", "gelu_python"}


class GPTNeoX(ArchSpec):
    arch = gguf.MODEL_ARCH.GPTNEOX
    model_types = ("gpt_neox",)

    def read_hparams(self, config: Config) -> HParams:
        n_embd = config.require_int("hidden_size")
        n_head = config.require_int("num_attention_heads")
        if n_embd % n_head:
            raise CheckpointError(
                f"{config.where}: hidden_size {n_embd} is not a multiple of num_attention_heads {n_head}"
            )
        head_dim = n_embd // n_head
        rope = config.rope
        # 5.x: rope_parameters.partial_rotary_factor; 4.x: rotary_pct (default 0.25 in both).
        partial = rope.get(
            "partial_rotary_factor", config.get("partial_rotary_factor", "rotary_pct")
        )
        partial = 0.25 if partial is None else float(partial)
        if rope.get("rope_type", "default") != "default":
            raise CheckpointError(
                f"{config.where}: rope type {rope.get('rope_type')!r} is not supported for GPT-NeoX; "
                "only the default rotary embedding converts exactly"
            )
        act = config.get("hidden_act", default="gelu")
        if act not in _GELU_ACTS:
            raise CheckpointError(
                f"{config.where}: hidden_act {act!r} is not supported; llama.cpp's GPT-NeoX uses GELU"
            )
        return HParams(
            **config.common_hparams(),
            n_embd=n_embd,
            n_head=n_head,
            n_head_kv=n_head,
            head_dim=head_dim,
            n_rot=int(partial * head_dim),
            norm_eps=float(config.get("layer_norm_eps", default=1e-5)),
            parallel_residual=bool(config.get("use_parallel_residual", default=True)),
        )

    def write_hparams(self, writer: gguf.GGUFWriter) -> None:
        super().write_hparams(writer)
        writer.add_layer_norm_eps(self.hparams.norm_eps)
        writer.add_parallel_residual(self.hparams.parallel_residual)

    def row_permutation(self, hf_name: str, n_rows: int) -> np.ndarray | None:
        # Hugging Face interleaves q, k and v per head ([q_h k_h v_h] for each head h);
        # llama.cpp splits the fused output as [all q | all k | all v].
        if ".attention.query_key_value." not in hf_name:
            return None
        h = self.hparams
        if n_rows != 3 * h.n_embd:
            raise CheckpointError(
                f"{self.config.where}: {hf_name} has {n_rows} rows, expected 3 * hidden_size = {3 * h.n_embd}"
            )
        part, head, dim = np.meshgrid(
            np.arange(3), np.arange(h.n_head), np.arange(h.head_dim), indexing="ij"
        )
        return (head * 3 * h.head_dim + part * h.head_dim + dim).reshape(-1)

    def extra_plans(self) -> list[TensorPlan]:
        h = self.hparams
        have = set(self.hf_names)
        plans: list[TensorPlan] = []
        if "embed_out.weight" not in have:
            # llama.cpp's GPT-NeoX needs its own output matrix: tied embeddings are written twice.
            plans.append(
                TensorPlan("output.weight", (h.n_vocab, h.n_embd), "gpt_neox.embed_in.weight")
            )
        # Without attention_bias the checkpoint has no attention biases, but llama.cpp requires them.
        for i in range(h.n_layer):
            for hf, gg, n in (
                ("attention.query_key_value.bias", "attn_qkv.bias", 3 * h.n_embd),
                ("attention.dense.bias", "attn_output.bias", h.n_embd),
                ("mlp.dense_h_to_4h.bias", "ffn_up.bias", h.n_ff),
                ("mlp.dense_4h_to_h.bias", "ffn_down.bias", h.n_embd),
            ):
                if f"gpt_neox.layers.{i}.{hf}" not in have:
                    zeros = np.zeros(n, dtype=np.float32)
                    plans.append(TensorPlan(f"blk.{i}.{gg}", (n,), const=zeros))
        return plans

    def expected_shapes(self) -> dict[str, tuple[int, ...]]:
        h = self.hparams
        shapes = super().expected_shapes()
        for i in range(h.n_layer):
            shapes[f"blk.{i}.attn_qkv.weight"] = (3 * h.n_embd, h.n_embd)
            shapes[f"blk.{i}.attn_output.weight"] = (h.n_embd, h.n_embd)
        return shapes
