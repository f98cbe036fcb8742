"""A random-weight checkpoint with Pythia-160M's exact shapes, built offline with numpy only.

Cost depends only on shapes, so random weights give true conversion and inference throughput.
The tokenizer is a synthetic byte-level BPE of Pythia's size (50277 tokens, GPT-2 pre-tokenizer
structure): merges are drawn at random, each producing a new token, so the file has the same size
and structure as the real one without downloading it.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np

HIDDEN, LAYERS, HEADS, FFN, VOCAB, N_TOKENS = 768, 12, 12, 3072, 50304, 50277


def _byte_alphabet() -> list[str]:
    # GPT-2's byte-to-unicode table: printable bytes map to themselves, the rest above 255.
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    chars, extra = [], 0
    for b in range(256):
        if b in keep:
            chars.append(chr(b))
        else:
            chars.append(chr(256 + extra))
            extra += 1
    return chars


def write_tokenizer(folder: Path, n_tokens: int = N_TOKENS, seed: int = 0) -> None:
    """A GPT-2-structured tokenizer.json with ``n_tokens`` tokens and random (valid) merges."""
    rng = random.Random(seed)
    vocab: dict[str, int] = {}
    tokens = _byte_alphabet()
    for t in tokens:
        vocab[t] = len(vocab)
    merges: list[list[str]] = []
    while len(vocab) < n_tokens - 1:
        # Favour short pieces so tokens stay word-sized, as in a real vocabulary.
        a = tokens[min(rng.randrange(len(tokens)), rng.randrange(len(tokens)))]
        b = tokens[min(rng.randrange(len(tokens)), rng.randrange(len(tokens)))]
        if a + b in vocab or len(a + b) > 16:
            continue
        vocab[a + b] = len(vocab)
        tokens.append(a + b)
        merges.append([a, b])
    save_gpt2_tokenizer(folder, vocab, merges)


def save_gpt2_tokenizer(folder: Path, vocab: dict[str, int], merges: list[list[str]]) -> None:
    """tokenizer.json (GPT-2 byte-level BPE + <|endoftext|>) and tokenizer_config.json."""
    eot = {
        "id": len(vocab),
        "content": "<|endoftext|>",
        "single_word": False,
        "lstrip": False,
        "rstrip": False,
        "normalized": False,
        "special": True,
    }
    byte_level = {
        "type": "ByteLevel",
        "add_prefix_space": False,
        "trim_offsets": True,
        "use_regex": True,
    }
    data = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [eot],
        "normalizer": None,
        "pre_tokenizer": byte_level,
        "post_processor": byte_level,
        "decoder": byte_level,
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": False,
            "vocab": vocab,
            "merges": merges,
        },
    }
    (folder / "tokenizer.json").write_text(json.dumps(data, ensure_ascii=False))
    config = {
        "tokenizer_class": "GPTNeoXTokenizer",
        "bos_token": "<|endoftext|>",
        "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
        "add_bos_token": False,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config))


def write_checkpoint(folder: Path, *, seed: int = 0, dtype: str = "float32") -> Path:
    """Config, tokenizer and one model.safetensors of Pythia-160M's shape in ``folder``."""
    from safetensors.numpy import save_file

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)

    def w(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape, dtype=np.float32) * 0.02).astype(dtype)

    tensors = {
        "gpt_neox.embed_in.weight": w(VOCAB, HIDDEN),
        "embed_out.weight": w(VOCAB, HIDDEN),
        "gpt_neox.final_layer_norm.weight": np.ones(HIDDEN, dtype),
        "gpt_neox.final_layer_norm.bias": np.zeros(HIDDEN, dtype),
    }
    for i in range(LAYERS):
        p = f"gpt_neox.layers.{i}."
        tensors |= {
            p + "input_layernorm.weight": np.ones(HIDDEN, dtype),
            p + "input_layernorm.bias": np.zeros(HIDDEN, dtype),
            p + "post_attention_layernorm.weight": np.ones(HIDDEN, dtype),
            p + "post_attention_layernorm.bias": np.zeros(HIDDEN, dtype),
            p + "attention.query_key_value.weight": w(3 * HIDDEN, HIDDEN),
            p + "attention.query_key_value.bias": w(3 * HIDDEN),
            p + "attention.dense.weight": w(HIDDEN, HIDDEN),
            p + "attention.dense.bias": w(HIDDEN),
            p + "mlp.dense_h_to_4h.weight": w(FFN, HIDDEN),
            p + "mlp.dense_h_to_4h.bias": w(FFN),
            p + "mlp.dense_4h_to_h.weight": w(HIDDEN, FFN),
            p + "mlp.dense_4h_to_h.bias": w(HIDDEN),
        }
    save_file(tensors, str(folder / "model.safetensors"))
    del tensors
    config = {
        "architectures": ["GPTNeoXForCausalLM"],
        "model_type": "gpt_neox",
        "hidden_act": "gelu",
        "hidden_size": HIDDEN,
        "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS,
        "intermediate_size": FFN,
        "vocab_size": VOCAB,
        "max_position_embeddings": 2048,
        "layer_norm_eps": 1e-5,
        "use_parallel_residual": True,
        "tie_word_embeddings": False,
        "bos_token_id": N_TOKENS - 1,
        "eos_token_id": N_TOKENS - 1,
        "torch_dtype": dtype,
        # Both spellings, so transformers 4.x and 5.x (and llama.cpp's converter) all read it.
        "rotary_pct": 0.25,
        "rotary_emb_base": 10000,
        "rope_parameters": {
            "rope_type": "default",
            "rope_theta": 10000.0,
            "partial_rotary_factor": 0.25,
        },
    }
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    write_tokenizer(folder)
    return folder
