"""Tiny random Hugging Face checkpoints, one per architecture variant, built offline in tests.

Weights are drawn with a larger spread than transformers' initialiser (and biases and norm
weights are made non-trivial) so that logits differ clearly between tokens: a conversion mistake
then shows up as a large logit difference instead of hiding in near-uniform noise.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tokenizer_builders import build_tokenizer

# variant -> (architecture, tokenizer kind, config overrides)
VARIANTS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "gptneox": ("gptneox", "pythia", {}),
    "gptneox-sequential": ("gptneox", "gpt2", {"use_parallel_residual": False}),
    "gptneox-tied-nobias": (
        "gptneox",
        "gpt2",
        {"tie_word_embeddings": True, "attention_bias": False},
    ),
    "gptneox-full-rotary": ("gptneox", "pythia", {"rotary_pct": 1.0}),
    # heads of 32 values: the smallest that a quantized (q8_0, q4_0) KV cache can hold
    "gptneox-wide-heads": ("gptneox", "pythia", {"num_attention_heads": 2}),
    "llama": ("llama", "llama3", {}),
    "llama-tied-mha": ("llama", "smollm", {"tie_word_embeddings": True, "num_key_value_heads": 4}),
    "qwen2": ("qwen2", "qwen2", {}),
    "qwen2-tied": ("qwen2", "qwen2", {"tie_word_embeddings": True}),
    # Llama 2 / TinyLlama: SentencePiece tokenizer (tokenizer.json, or tokenizer.model alone)
    "llama-spm": ("llama", "spm-llama", {}),
    "llama-spm-model": ("llama", "spm-llama:model", {"num_key_value_heads": 4}),
    "mistral": ("mistral", "spm-llama", {"sliding_window": 4096}),
    # head_dim 32 with 4 heads: attention is wider than the hidden size, as in Qwen3
    "qwen3": ("qwen3", "qwen2", {"head_dim": 32, "tie_word_embeddings": True}),
    # a 4-token sliding window on layer 0, so the window is exercised on short texts
    "gemma3": (
        "gemma3",
        "spm-gemma",
        {
            "head_dim": 32,
            "query_pre_attn_scalar": 32,
            "sliding_window": 4,
            "layer_types": ["sliding_attention", "full_attention"],
        },
    ),
    "phi3": ("phi3", "spm-phi3", {}),
    # Phi-4-mini's shape: partial rotary, tied embeddings, LongRoPE factors, GQA
    "phi3-longrope": (
        "phi3",
        "gpt2",
        {
            "partial_rotary_factor": 0.5,
            "tie_word_embeddings": True,
            "num_key_value_heads": 2,
            "max_position_embeddings": 1024,
            "original_max_position_embeddings": 256,
            "rope_scaling": {
                "type": "longrope",
                "short_factor": [1.0, 1.3, 2.0, 3.1],
                "long_factor": [1.0, 2.2, 4.0, 7.0],
            },
        },
    ),
}

SMALL = {
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "max_position_embeddings": 256,
}


def _config(arch: str, n_vocab: int, overrides: dict[str, Any]) -> Any:
    from transformers import (
        Gemma3TextConfig,
        GPTNeoXConfig,
        LlamaConfig,
        MistralConfig,
        Phi3Config,
        Qwen2Config,
        Qwen3Config,
    )

    if arch == "gptneox":
        rotary_pct = overrides.pop("rotary_pct", 0.25)
        cfg = GPTNeoXConfig(vocab_size=n_vocab, intermediate_size=256, **(SMALL | overrides))
        # transformers 5 keeps this in rope_parameters; 4.x had rotary_pct. Set whichever exists.
        params = getattr(cfg, "rope_parameters", None)
        if isinstance(params, dict):
            params["partial_rotary_factor"] = rotary_pct
        else:
            cfg.rotary_pct = rotary_pct
        return cfg
    base = {"vocab_size": n_vocab, "intermediate_size": 128, "num_key_value_heads": 2} | SMALL
    base.update(overrides)
    if arch == "phi3":
        base.setdefault("pad_token_id", None)
        base.setdefault("num_key_value_heads", 4)
    classes = {
        "llama": LlamaConfig,
        "mistral": MistralConfig,
        "qwen2": Qwen2Config,
        "qwen3": Qwen3Config,
        "gemma3": Gemma3TextConfig,
        "phi3": Phi3Config,
    }
    return classes[arch](**base)


def build_model(
    variant: str,
    out_dir: Path,
    *,
    seed: int = 0,
    pad_vocab_to: int = 64,
    std: float = 0.15,
) -> Path:
    """Save a random ``variant`` checkpoint (config, safetensors, tokenizer) in ``out_dir``.

    The config's vocab_size is the tokenizer's size rounded up to ``pad_vocab_to`` (as Pythia
    does), so the converter's padding path is exercised too.
    """
    import torch

    arch, tok_kind, overrides = VARIANTS[variant]
    out_dir.mkdir(parents=True, exist_ok=True)
    if tok_kind.startswith("spm-"):
        from spm_builders import build_spm_tokenizer

        kind, _, form = tok_kind.removeprefix("spm-").partition(":")
        build_spm_tokenizer(kind, out_dir, form=form or "json")
    else:
        build_tokenizer(tok_kind, out_dir)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(out_dir)
    n_vocab = -(-len(tok) // pad_vocab_to) * pad_vocab_to
    cfg = _config(arch, n_vocab, dict(overrides))
    cfg.bos_token_id = tok.bos_token_id
    cfg.eos_token_id = tok.eos_token_id
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            else:
                p.normal_(0.0, std)
    model.save_pretrained(out_dir)
    return out_dir


def rewrite_config(model_dir: Path, **changes: Any) -> dict[str, Any]:
    """Edit config.json in place (None deletes a key) and return the new config."""
    path = model_dir / "config.json"
    cfg = json.loads(path.read_text())
    for key, value in changes.items():
        if value is None:
            cfg.pop(key, None)
        else:
            cfg[key] = value
    path.write_text(json.dumps(cfg, indent=2))
    return cfg


def hf_logits(model_dir: Path, token_ids: list[int]) -> Any:
    """Reference logits (n_tokens, n_vocab) from transformers, float32, on the CPU."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model.eval()
    with torch.no_grad():
        out = model(torch.tensor([token_ids]))
    return out.logits[0].numpy()


def llama_logits(gguf_path: Path, token_ids: list[int]) -> Any:
    """Logits (n_tokens, n_vocab) for every position, through llama.cpp (test-side reference)."""
    import numpy as np
    from llama_cpp import Llama

    llm = Llama(str(gguf_path), n_ctx=256, logits_all=True, verbose=False, n_threads=1)
    try:
        llm.eval(token_ids)
        return np.array(llm.scores[: len(token_ids)], dtype=np.float32)
    finally:
        llm.close()
