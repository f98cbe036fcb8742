"""Tiny complete model GGUFs (gptneox, llama, qwen2) and LoRA adapters, written with GGUFWriter.

Each model has random f32 weights and a byte-level BPE vocabulary llama.cpp accepts, so llama.cpp
loads it and decodes with it. ``write_model`` takes overrides for any metadata key, token list,
token types, merges or tensor, which is how the tests build files llama.cpp chokes on.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import gguf
import numpy as np

M = gguf.MODEL_TENSOR
V = gguf.GGUFValueType
GPTNEOX = gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.GPTNEOX]
LLAMA = gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA]
QWEN2 = gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.QWEN2]
ARCHS = (GPTNEOX, LLAMA, QWEN2)
N_EMBD, N_FF, N_HEAD, N_LAYER = 32, 64, 4, 2
RANK = 4
HEAD_DIM = N_EMBD // N_HEAD


def tname(tensor: gguf.MODEL_TENSOR, bid: int | None = None, suffix: str = "weight") -> str:
    name = gguf.TENSOR_NAMES[tensor]
    return f"{name.format(bid=bid) if bid is not None else name}.{suffix}"


def _byte_tokens() -> list[str]:
    """GPT-2's byte-to-unicode alphabet: a byte-level BPE vocabulary llama.cpp accepts."""
    keep = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
    chars = dict(zip(keep, keep, strict=True))
    extra = 0
    for b in range(256):
        if b not in chars:
            chars[b] = 256 + extra
            extra += 1
    return [chr(chars[b]) for b in range(256)]


TOKENS = [*_byte_tokens(), "ab"]
MERGES = ["a b"]
N_VOCAB = len(TOKENS)


def model_shapes(
    arch: str = LLAMA, n_embd: int = N_EMBD, n_ff: int = N_FF, n_vocab: int = N_VOCAB
) -> dict[str, tuple[int, ...]]:
    """Tensor name -> numpy shape (numpy order is GGUF's reversed: [n_out, n_in])."""
    shapes: dict[str, tuple[int, ...]] = {
        tname(M.TOKEN_EMBD): (n_vocab, n_embd),
        tname(M.OUTPUT_NORM): (n_embd,),
    }
    if arch == GPTNEOX:
        shapes[tname(M.OUTPUT_NORM, suffix="bias")] = (n_embd,)
    shapes[tname(M.OUTPUT)] = (n_vocab, n_embd)
    for i in range(N_LAYER):
        shapes[tname(M.ATTN_NORM, i)] = (n_embd,)
        if arch == GPTNEOX:
            shapes[tname(M.ATTN_NORM, i, "bias")] = (n_embd,)
            shapes[tname(M.ATTN_QKV, i)] = (3 * n_embd, n_embd)
            shapes[tname(M.ATTN_QKV, i, "bias")] = (3 * n_embd,)
            shapes[tname(M.ATTN_OUT, i)] = (n_embd, n_embd)
            shapes[tname(M.ATTN_OUT, i, "bias")] = (n_embd,)
            shapes[tname(M.FFN_NORM, i)] = (n_embd,)
            shapes[tname(M.FFN_NORM, i, "bias")] = (n_embd,)
            shapes[tname(M.FFN_UP, i)] = (n_ff, n_embd)
            shapes[tname(M.FFN_UP, i, "bias")] = (n_ff,)
            shapes[tname(M.FFN_DOWN, i)] = (n_embd, n_ff)
            shapes[tname(M.FFN_DOWN, i, "bias")] = (n_embd,)
            continue
        for t in (M.ATTN_Q, M.ATTN_K, M.ATTN_V, M.ATTN_OUT):
            shapes[tname(t, i)] = (n_embd, n_embd)
        if arch == QWEN2:
            for t in (M.ATTN_Q, M.ATTN_K, M.ATTN_V):
                shapes[tname(t, i, "bias")] = (n_embd,)
        shapes[tname(M.FFN_NORM, i)] = (n_embd,)
        shapes[tname(M.FFN_GATE, i)] = (n_ff, n_embd)
        shapes[tname(M.FFN_UP, i)] = (n_ff, n_embd)
        shapes[tname(M.FFN_DOWN, i)] = (n_embd, n_ff)
    return shapes


def write(writer: gguf.GGUFWriter) -> None:
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def write_model(
    path: Path,
    *,
    arch: str = LLAMA,
    n_embd: int = N_EMBD,
    n_ff: int = N_FF,
    general_type: str | None = gguf.GGUFType.MODEL,
    drop_keys: Sequence[str] = (),
    long_vocab: int = 0,
    kv: Mapping[str, gguf.GGUFValue | None] | None = None,
    tokens: Sequence[str] | None = None,
    token_types: Sequence[int] | None = None,
    merges: Sequence[str] | None = None,
    tensors: Mapping[str, np.ndarray | None] | None = None,
    alignment: int | None = None,
) -> Path:
    """A complete tiny ``arch`` GGUF (f32, random weights) that llama.cpp can load.

    ``kv`` sets (or with None, deletes) metadata keys after the normal ones are written; key
    templates may contain ``{arch}``. ``tensors`` replaces, adds or (None) drops tensors.
    ``long_vocab`` adds that many tokens and merges (a Pythia-sized vocabulary), and as many
    embedding rows. ``alignment`` sets general.alignment (and pads the tensor data to it).
    """
    rng = np.random.default_rng(0)
    w = gguf.GGUFWriter(str(path), arch)
    if alignment is not None:
        w.add_custom_alignment(alignment)
    if general_type is not None:
        w.add_type(general_type)
    w.add_name("tiny-test-model")
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    w.add_context_length(128)
    w.add_embedding_length(n_embd)
    w.add_block_count(N_LAYER)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(N_HEAD)
    w.add_head_count_kv(N_HEAD)
    if arch == GPTNEOX:
        w.add_layer_norm_eps(1e-5)
        w.add_parallel_residual(True)
        w.add_rope_dimension_count(n_embd // N_HEAD // 2)  # partial rotary, as Pythia
    else:
        w.add_layer_norm_rms_eps(1e-5)
        w.add_rope_dimension_count(n_embd // N_HEAD)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    extra = [f"w{i}" for i in range(long_vocab)]
    all_tokens = list(tokens) if tokens is not None else TOKENS + extra
    w.add_token_list(all_tokens)
    w.add_token_types(
        list(token_types) if token_types is not None else [gguf.TokenType.NORMAL] * len(all_tokens)
    )
    w.add_token_merges(
        list(merges)
        if merges is not None
        else MERGES + [f"w{i} w{i + 1}" for i in range(long_vocab - 1)]
    )
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_chat_template("{{ messages[0]['content'] }}")
    arrays: dict[str, np.ndarray | None] = {
        name: (rng.standard_normal(shape) * 0.1).astype(np.float32)
        for name, shape in model_shapes(arch, n_embd, n_ff, N_VOCAB + long_vocab).items()
    }
    arrays.update(tensors or {})
    for name, array in arrays.items():
        if array is not None:
            w.add_tensor(name, array)
    for key in drop_keys:
        del w.kv_data[0][key.format(arch=arch)]
    for key, value in (kv or {}).items():
        if value is None:
            del w.kv_data[0][key.format(arch=arch)]
        else:
            w.kv_data[0][key.format(arch=arch)] = value
    write(w)
    return path


def u32(value: int) -> gguf.GGUFValue:
    return gguf.GGUFValue(value, V.UINT32)


def f32(value: float) -> gguf.GGUFValue:
    return gguf.GGUFValue(value, V.FLOAT32)


def string(value: str) -> gguf.GGUFValue:
    return gguf.GGUFValue(value, V.STRING)


def array(values: Sequence[Any], item: gguf.GGUFValueType) -> gguf.GGUFValue:
    return gguf.GGUFValue(list(values), V.ARRAY, item)


def weights(*shape: int, dtype: Any = np.float32) -> np.ndarray:
    """A small random tensor of numpy ``shape`` (to replace or add one in ``write_model``)."""
    return (np.random.default_rng(5).standard_normal(shape) * 0.1).astype(dtype)


def write_adapter(
    path: Path,
    *,
    arch: str = LLAMA,
    n_embd: int = N_EMBD,
    n_ff: int = N_FF,
    targets: Sequence[str] = (tname(M.ATTN_Q, 0), tname(M.FFN_UP, 1), tname(M.ATTN_V, 1)),
    general_type: str | None = gguf.GGUFType.ADAPTER,
    adapter_type: str = "lora",
    alpha: float = 8.0,
    rank_b: int = RANK,
    extra: dict[str, tuple[int, ...]] | None = None,
    drop: Sequence[str] = (),
    kv: Mapping[str, gguf.GGUFValue | None] | None = None,
) -> Path:
    """A LoRA adapter GGUF for the tensors ``targets`` of a llama base with these sizes.

    ``kv`` sets (or with None, deletes) metadata keys, as in :func:`write_model`.

    GGUF (ggml) order: base weight [n_in, n_out], lora_a [n_in, r], lora_b [r, n_out]; numpy
    shapes are the reverse. token_embd swaps the roles (lora_a [r, n_vocab], lora_b [r, n_embd]).
    """
    rng = np.random.default_rng(1)
    shapes = model_shapes(LLAMA, n_embd, n_ff)
    w = gguf.GGUFWriter(str(path), arch)
    if general_type is not None:
        w.add_type(general_type)
    w.add_string(gguf.Keys.Adapter.TYPE, adapter_type)
    w.add_float32(gguf.Keys.Adapter.LORA_ALPHA, alpha)
    tensors: dict[str, tuple[int, ...]] = {}
    for name in targets:
        n_out, n_in = shapes[name]
        if name == tname(M.TOKEN_EMBD):
            tensors[name + ".lora_a"] = (n_out, RANK)  # ggml [r, n_vocab]
            tensors[name + ".lora_b"] = (n_in, rank_b)  # ggml [r, n_embd]
        else:
            tensors[name + ".lora_a"] = (RANK, n_in)  # ggml [n_in, r]
            tensors[name + ".lora_b"] = (n_out, rank_b)  # ggml [r, n_out]
    tensors.update(extra or {})
    for name, shape in tensors.items():
        if name not in drop:
            w.add_tensor(name, (rng.standard_normal(shape) * 0.01).astype(np.float32))
    for key, value in (kv or {}).items():
        if value is None:
            del w.kv_data[0][key.format(arch=arch)]
        else:
            w.kv_data[0][key.format(arch=arch)] = value
    write(w)
    return path
