"""Architectures the converter knows: hyperparameters -> GGUF keys, tensor names, re-layouts."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from edge_stack.errors import UnsupportedArchitecture

from ._base import ArchSpec, Config, HParams, TensorPlan
from .gemma3 import Gemma3
from .gptneox import GPTNeoX
from .llama import Llama, Mistral, Qwen2
from .phi3 import Phi3
from .qwen3 import Qwen3

__all__ = [
    "FAMILIES",
    "SPECS",
    "ArchSpec",
    "Config",
    "HParams",
    "TensorPlan",
    "arch_for",
    "spec_for_config",
]

SPECS: tuple[type[ArchSpec], ...] = (GPTNeoX, Llama, Mistral, Qwen2, Qwen3, Gemma3, Phi3)
#: what the families are, for error messages
FAMILIES = (
    "GPT-NeoX/Pythia, Llama/SmolLM2/TinyLlama/Llama 2, Mistral, Qwen2, Qwen3, Gemma 3 (text), "
    "Phi-3/Phi-4-mini"
)


def spec_for_config(config: Mapping[str, Any], names: Sequence[str], where: str) -> ArchSpec:
    """The spec for a config.json (by its ``model_type``) and the checkpoint's tensor names."""
    model_type = config.get("model_type")
    for spec in SPECS:
        if model_type in spec.model_types:
            return spec(Config(config, where), names)
    supported = ", ".join(t for s in SPECS for t in s.model_types)
    archs = config.get("architectures") or []
    found = f"model_type {model_type!r}" + (f" ({', '.join(map(str, archs))})" if archs else "")
    hint = ""
    if model_type == "gemma3":
        hint = "; Gemma 3 with vision: convert its text model (Gemma3ForCausalLM, gemma3_text)"
    raise UnsupportedArchitecture(
        f"{where}: {found} is not supported; edgestack converts {supported} ({FAMILIES}){hint}"
    )


def arch_for(ckpt: Any) -> ArchSpec:
    """The spec for an opened checkpoint (``edge_stack.convert.checkpoint.Checkpoint``)."""
    return spec_for_config(ckpt.config, ckpt.names(), str(ckpt.path / "config.json"))
