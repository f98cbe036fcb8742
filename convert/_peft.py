"""Reading PEFT LoRA adapters (adapter_config.json + adapter_model.safetensors) without peft.

An adapter is read into a list of :class:`LoraModule` (one per adapted linear layer) with the
scale PEFT applies to that layer: ``alpha / r`` (or ``alpha / sqrt(r)`` with rsLoRA), where ``r``
and ``alpha`` come from ``rank_pattern``/``alpha_pattern`` when a pattern matches the module's
name exactly as PEFT matches it. What PEFT can save but a plain ``W + s * B @ A`` cannot express
(DoRA, LoRA biases, embedding adapters, ``modules_to_save``, other PEFT methods) is refused with
an :class:`~edge_stack.errors.AdapterError` instead of being silently dropped.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge_stack.errors import AdapterError, ModelFileNotFound

from .checkpoint import Checkpoint, _parse_safetensors_header

logger = logging.getLogger(__name__)

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"

# PEFT saves keys relative to the PeftModel: "base_model.model.<module>.lora_A[.<adapter>].weight"
# (the adapter name, usually "default", is removed by save_pretrained but kept by older tools).
_LORA_KEY = re.compile(
    r"^(?:base_model\.model\.)?(?P<module>.+)\.lora_(?P<ab>[AB])(?:\.(?P<name>[^.]+))?\.weight$"
)

# Config switches whose effect a GGUF (merged or adapter) cannot reproduce: key -> why.
_UNSUPPORTED_FLAGS = {
    "use_dora": "DoRA (use_dora) rescales each weight by a learned magnitude",
    "lora_bias": "LoRA biases (lora_bias) add a trained bias to lora_B",
    "use_qalora": "QA-LoRA (use_qalora) pools the input before lora_A",
    "alora_invocation_tokens": "activated LoRA (alora_invocation_tokens) only applies after a trigger",
    "layer_replication": "layer_replication changes the number of layers",
    "trainable_token_indices": "trainable_token_indices trains embedding rows outside LoRA",
    "target_parameters": "target_parameters adapts raw parameters, not linear layers",
    "modules_to_save": "modules_to_save stores fully trained copies of whole layers",
    "megatron_config": "Megatron-parallel layers are not plain linear layers",
}


@dataclass(frozen=True)
class LoraModule:
    """One adapted linear layer: its name in the base model and its PEFT scale."""

    name: str  # module name in the base model, e.g. "gpt_neox.layers.0.attention.query_key_value"
    a_key: str  # tensor names in adapter_model.safetensors
    b_key: str
    rank: int
    alpha: float
    scale: float  # alpha / r, or alpha / sqrt(r) with rsLoRA

    @property
    def weight(self) -> str:
        """The base checkpoint tensor the module changes."""
        return f"{self.name}.weight"


@dataclass
class PeftAdapter:
    """A PEFT LoRA adapter folder, with its tensors memory-mapped."""

    path: Path
    config: Mapping[str, Any]
    modules: list[LoraModule]
    tensors: Checkpoint
    #: base weights saved whole in the adapter (PEFT's save_embedding_layers): base name -> key
    copies: dict[str, str]

    @property
    def base_model(self) -> str | None:
        """``base_model_name_or_path`` from adapter_config.json: the base it was trained on."""
        value = self.config.get("base_model_name_or_path")
        return str(value) if value else None

    @property
    def lora_alpha(self) -> float:
        return float(self.config.get("lora_alpha", 8))

    @property
    def use_rslora(self) -> bool:
        return bool(self.config.get("use_rslora", False))

    def a(self, module: LoraModule) -> np.ndarray:
        """lora_A as float32 ``[r, in]``."""
        return self.tensors.read(module.a_key)

    def b(self, module: LoraModule) -> np.ndarray:
        """lora_B as float32 ``[out, r]``."""
        return self.tensors.read(module.b_key)

    def delta_shape(self, module: LoraModule) -> tuple[int, int]:
        """Shape of ``B @ A``: ``(out, in)``."""
        return (self.tensors.shape(module.b_key)[0], self.tensors.shape(module.a_key)[1])

    def trained_for(self) -> str:
        """A phrase naming the base the adapter expects, for error messages."""
        return f"it was trained on {self.base_model}" if self.base_model else "check its base model"

    def close(self) -> None:
        self.tensors.close()


def pattern_key(patterns: Iterable[str], module: str) -> str | None:
    """The first rank/alpha pattern that matches ``module``, as PEFT matches them.

    PEFT (``peft.utils.other.get_pattern_key``) takes a pattern as a regex that must match the
    whole module name or a dot-separated suffix of it: ``(.*\\.)?(<pattern>)$``.
    """
    for key in patterns:
        if re.match(rf"(.*\.)?({key})$", module):
            return key
    return None


def targets(target_modules: Any, module: str) -> bool:
    """Whether ``target_modules`` (a list of names, or one regex) selects ``module`` in PEFT."""
    if target_modules is None:
        return True
    if isinstance(target_modules, str):
        # "all-linear" is expanded by PEFT when the adapter is created; any linear layer fits.
        return target_modules == "all-linear" or re.fullmatch(target_modules, module) is not None
    names = [str(t) for t in target_modules]
    return module in names or any(module.endswith(f".{t}") for t in names)


def load_adapter(path: str | os.PathLike[str]) -> PeftAdapter:
    """Read a PEFT LoRA adapter folder, refusing anything that is not plain LoRA."""
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise ModelFileNotFound(
            f"adapter folder {folder} does not exist; give a PEFT adapter folder"
        )
    config = _read_config(folder)
    weights = folder / ADAPTER_WEIGHTS
    if not weights.is_file():
        hint = " (adapter_model.bin: re-save with save_pretrained(safe_serialization=True))"
        raise ModelFileNotFound(
            f"{folder} has no {ADAPTER_WEIGHTS}"
            + (
                hint
                if (folder / "adapter_model.bin").exists()
                else "; save the adapter with save_pretrained()"
            )
        )
    tensors = Checkpoint(folder, dict(config), _parse_safetensors_header(weights))
    try:
        modules, copies = _modules(folder, config, tensors)
    except BaseException:
        tensors.close()
        raise
    logger.debug("adapter %s: %d modules", folder, len(modules))
    return PeftAdapter(folder, config, modules, tensors, copies)


def _read_config(folder: Path) -> dict[str, Any]:
    file = folder / ADAPTER_CONFIG
    if not file.is_file():
        raise ModelFileNotFound(
            f"{folder} has no {ADAPTER_CONFIG}; is it a PEFT adapter folder (saved with save_pretrained())?"
        )
    try:
        config = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise AdapterError(f"{file} is not valid JSON ({exc}); save the adapter again") from None
    if not isinstance(config, dict):
        raise AdapterError(f"{file} must hold a JSON object")
    peft_type = config.get("peft_type")
    if peft_type != "LORA":
        raise AdapterError(
            f"{file}: peft_type {peft_type!r} is not supported; edgestack reads LoRA adapters "
            "(peft_type LORA) only"
        )
    bias = config.get("bias", "none")
    if bias != "none":
        raise AdapterError(
            f"{file}: bias {bias!r} is not supported (the adapter changes base biases); "
            "train with bias='none', or merge with peft's merge_and_unload() and convert the result"
        )
    for key, why in _UNSUPPORTED_FLAGS.items():
        if config.get(key):
            raise AdapterError(
                f"{file}: {key} is set, which is not supported: {why}; merge with peft's "
                "merge_and_unload() and convert the merged model instead"
            )
    for key in ("r", "lora_alpha"):
        value = config.get(key)
        if value is not None and (not isinstance(value, int | float) or isinstance(value, bool)):
            raise AdapterError(f"{file}: {key} must be a number, found {value!r}")
    for key in ("rank_pattern", "alpha_pattern"):
        if not isinstance(config.get(key) or {}, dict):
            raise AdapterError(f"{file}: {key} must be an object of module pattern -> number")
    return config


def _modules(
    folder: Path, config: Mapping[str, Any], tensors: Checkpoint
) -> tuple[list[LoraModule], dict[str, str]]:
    where = folder / ADAPTER_WEIGHTS
    pairs: dict[str, dict[str, str]] = {}
    names: set[str] = set()
    copies: dict[str, str] = {}
    for key in tensors.names():
        if "lora_embedding_" in key:
            raise AdapterError(
                f"{where}: {key} is an embedding LoRA, which is not supported; target linear "
                "layers only, or merge with peft's merge_and_unload() and convert the result"
            )
        if "lora_magnitude_vector" in key:
            raise AdapterError(
                f"{where}: {key} is a DoRA magnitude; DoRA adapters are not supported"
            )
        match = _LORA_KEY.match(key)
        if match is None:
            # PEFT saves whole embedding / LM-head weights next to the LoRA tensors when an
            # embedding layer is targeted (save_embedding_layers="auto"); the fit check makes
            # sure they are unchanged copies of the base.
            # A wrapped layer keeps its own weight as "<module>.base_layer.weight".
            copies[key.removeprefix("base_model.model.").replace(".base_layer.", ".")] = key
            continue
        if match["name"]:
            names.add(match["name"])
        pairs.setdefault(match["module"], {})[match["ab"]] = key
    if len(names) > 1:
        raise AdapterError(
            f"{where} holds several adapters ({', '.join(sorted(names))}); save them one per folder"
        )
    if not pairs:
        raise AdapterError(f"{where} has no LoRA tensors (lora_A / lora_B)")

    r = config.get("r", 8)
    alpha = config.get("lora_alpha", 8)
    rank_pattern: dict[str, Any] = config.get("rank_pattern") or {}
    alpha_pattern: dict[str, Any] = config.get("alpha_pattern") or {}
    rslora = bool(config.get("use_rslora", False))
    modules: list[LoraModule] = []
    for module, ab in pairs.items():
        if set(ab) != {"A", "B"}:
            missing = ({"A", "B"} - set(ab)).pop()
            raise AdapterError(
                f"{where}: module {module} has no lora_{missing} tensor; the adapter is incomplete"
            )
        a_shape, b_shape = tensors.shape(ab["A"]), tensors.shape(ab["B"])
        if len(a_shape) != 2 or len(b_shape) != 2 or a_shape[0] != b_shape[1]:
            raise AdapterError(
                f"{where}: module {module} has lora_A {list(a_shape)} and lora_B {list(b_shape)}; "
                "expected [r, in] and [out, r]"
            )
        rank_key = pattern_key(rank_pattern, module)
        alpha_key = pattern_key(alpha_pattern, module)
        rank = int(rank_pattern[rank_key] if rank_key is not None else r)
        mod_alpha = float(alpha_pattern[alpha_key] if alpha_key is not None else alpha)
        if a_shape[0] != rank:
            raise AdapterError(
                f"{where}: module {module} has rank {a_shape[0]} but adapter_config.json gives it "
                f"r={rank}; the config does not belong to these weights"
            )
        if not targets(config.get("target_modules"), module):
            logger.warning(
                "%s: module %s is not among target_modules; merged anyway", where, module
            )
        scale = mod_alpha / math.sqrt(rank) if rslora else mod_alpha / rank
        modules.append(LoraModule(module, ab["A"], ab["B"], rank, mod_alpha, scale))
    return modules, copies
