"""Random PEFT LoRA adapters over the tiny models of model_builders, built with peft offline.

PEFT initialises lora_B to zero (an adapter that changes nothing); here B (and A) are drawn
randomly after get_peft_model, so every adapted module changes the logits clearly and a wrong
scale, permutation or orientation shows up as a large logit difference.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Linear layers adapted per architecture (PEFT target_modules, suffix form). transformers 5 calls
# GPT-NeoX's output layer lm_head, 4.x embed_out: both are listed.
TARGETS: dict[str, list[str]] = {
    "gptneox": [
        "query_key_value",
        "dense",
        "dense_h_to_4h",
        "dense_4h_to_h",
        "lm_head",
        "embed_out",
    ],
    "llama": [
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
        "lm_head",
    ],
}
TARGETS["phi3"] = ["qkv_proj", "o_proj", "gate_up_proj", "down_proj", "lm_head"]
TARGETS["qwen2"] = TARGETS["mistral"] = TARGETS["llama"]
# tied embeddings: a LoRA on lm_head would change the input embedding too (refused)
TARGETS["qwen3"] = TARGETS["gemma3"] = [t for t in TARGETS["llama"] if t != "lm_head"]

# Regex target_modules (the other form PEFT accepts): attention only.
REGEX_TARGETS = {
    "gptneox": r".*\.attention\.(query_key_value|dense)",
    "llama": r".*\.self_attn\.(q|k|v|o)_proj",
}
REGEX_TARGETS["phi3"] = r".*\.self_attn\.(qkv|o)_proj"
for _arch in ("qwen2", "mistral", "qwen3", "gemma3"):
    REGEX_TARGETS[_arch] = REGEX_TARGETS["llama"]

# Per-module rank and alpha (PEFT patterns: regex on the module name or a dotted suffix of it).
PATTERNS: dict[str, tuple[dict[str, int], dict[str, float]]] = {
    "gptneox": (
        {"layers.0.attention.query_key_value": 4, "dense_4h_to_h": 2},
        {"dense_h_to_4h": 4, r"layers\.1\.attention\..*": 32, "lm_head": 3},
    ),
    "llama": (
        {"layers.0.self_attn.q_proj": 4, "down_proj": 2, "k_proj": 6},
        {"up_proj": 4, r"layers\.1\.self_attn\..*": 32, "lm_head": 3},
    ),
}
PATTERNS["phi3"] = (
    {"layers.0.self_attn.qkv_proj": 4, "down_proj": 2},
    {"gate_up_proj": 4, r"layers\.1\.self_attn\..*": 32, "lm_head": 3},
)
for _arch in ("qwen2", "mistral", "qwen3", "gemma3"):
    PATTERNS[_arch] = PATTERNS["llama"]

#: adapter kinds the tests cover
KINDS = ("plain", "rslora", "patterns", "regex")


@dataclass
class BuiltAdapter:
    """An adapter folder and peft's own logits for the probe tokens."""

    path: Path
    peft_logits: Any  # unmerged PeftModel forward
    merged_logits: Any  # after merge_and_unload()
    base_logits: Any  # the base alone, to show the adapter matters


def lora_config(arch: str, kind: str, *, r: int = 8, alpha: float = 16) -> Any:
    from peft import LoraConfig

    kwargs: dict[str, Any] = {"r": r, "lora_alpha": alpha, "lora_dropout": 0.0, "bias": "none"}
    if kind == "plain":
        kwargs["target_modules"] = TARGETS[arch]
    elif kind == "rslora":
        kwargs.update(target_modules=TARGETS[arch], use_rslora=True)
    elif kind == "patterns":
        ranks, alphas = PATTERNS[arch]
        kwargs.update(target_modules=TARGETS[arch], rank_pattern=ranks, alpha_pattern=alphas)
    elif kind == "regex":
        kwargs["target_modules"] = REGEX_TARGETS[arch]
    else:
        raise ValueError(kind)
    return LoraConfig(task_type="CAUSAL_LM", **kwargs)


def randomize_lora(model: Any, *, seed: int, std: float = 0.08) -> None:
    """Draw every lora_A/lora_B at random (B is zero after get_peft_model)."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * std)


def _logits(model: Any, token_ids: list[int]) -> Any:
    import torch

    with torch.no_grad():
        return model(torch.tensor([token_ids])).logits[0].float().numpy()


def build_adapter(
    base_dir: Path, out_dir: Path, arch: str, kind: str, token_ids: list[int], *, seed: int = 1
) -> BuiltAdapter:
    """Train-free random adapter of ``kind`` over the checkpoint in ``base_dir``, saved to ``out_dir``."""
    import torch
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32).eval()
    base = _logits(model, token_ids)
    peft_model = get_peft_model(model, lora_config(arch, kind)).eval()
    randomize_lora(peft_model, seed=seed)
    peft_model.save_pretrained(out_dir)
    unmerged = _logits(peft_model, token_ids)
    merged = _logits(peft_model.merge_and_unload(), token_ids)
    return BuiltAdapter(out_dir, unmerged, merged, base)


def build_adapter_on(
    model: Any, out_dir: Path, config: Any, *, seed: int = 1, std: float = 0.08
) -> Path:
    """Save a random adapter for an in-memory ``model`` (a base of some other shape)."""
    from peft import get_peft_model

    peft_model = get_peft_model(model, config)
    randomize_lora(peft_model, seed=seed, std=std)
    peft_model.save_pretrained(out_dir)
    return out_dir


def merged_reference(base_dir: Path, adapters: list[Path], token_ids: list[int]) -> Any:
    """peft's logits after merging several adapters one after the other."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32).eval()
    for path in adapters:
        model = PeftModel.from_pretrained(model, path).merge_and_unload()
    return _logits(model.eval(), token_ids)
