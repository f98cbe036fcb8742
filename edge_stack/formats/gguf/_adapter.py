"""LoRA adapter GGUFs, checked as ``llama_adapter_lora_init`` (``src/llama-adapter.cpp``) does.

:func:`check_lora_structure` refuses an adapter llama.cpp would not load at all;
:func:`check_fits` an adapter it would refuse for a given base, with both shapes named.
"""

from __future__ import annotations

import gguf

from ...errors import AdapterError
from ._reader import Bad
from ._summary import GGUFSummary, TensorInfo

__all__ = ["check_fits", "check_lora_structure", "lora_pairs"]

# llama.cpp's only adapter type (llama-adapter.cpp compares adapter.type with it).
LORA = "lora"
_LORA_A, _LORA_B = ".lora_a", ".lora_b"
_LORA_IGNORED = "_norm.weight"  # llama.cpp skips these adapter tensors


def check_lora_structure(summary: GGUFSummary) -> None:
    """An adapter of type lora made of ``.lora_a``/``.lora_b`` pairs.

    Raises:
        Bad: what is wrong (the caller names the file).
    """
    adapter_type = summary.metadata.get(gguf.Keys.Adapter.TYPE)
    if adapter_type != LORA:
        raise Bad(f"it is an adapter of type {adapter_type!r}, but llama.cpp loads only '{LORA}'")
    lora_pairs(summary)


def lora_pairs(summary: GGUFSummary) -> dict[str, tuple[TensorInfo, TensorInfo]]:
    """``base tensor name -> (lora_a, lora_b)``, checked as llama-adapter.cpp pairs them.

    Raises:
        Bad: a tensor that is neither half of a pair, a half without its pair, or no pairs.
    """
    halves: dict[str, dict[str, TensorInfo]] = {}
    for tensor in summary.tensors:
        for suffix in (_LORA_A, _LORA_B):
            if tensor.name.endswith(suffix):
                halves.setdefault(tensor.name[: -len(suffix)], {})[suffix] = tensor
                break
        else:
            if not tensor.name.endswith(_LORA_IGNORED):
                raise Bad(f"adapter tensor '{tensor.name}' is neither a .lora_a nor a .lora_b")
    pairs: dict[str, tuple[TensorInfo, TensorInfo]] = {}
    for base, half in halves.items():
        if len(half) != 2:
            missing = _LORA_B if _LORA_A in half else _LORA_A
            raise Bad(f"adapter tensor '{base}{missing}' is missing (its pair is there)")
        pairs[base] = (half[_LORA_A], half[_LORA_B])
    if not pairs:
        raise Bad("the adapter has no LoRA tensors")
    return pairs


def _shape(t: TensorInfo) -> str:
    return "[" + ", ".join(str(t.dim(i)) for i in range(max(2, len(t.shape)))) + "]"


def check_fits(
    a: GGUFSummary, b: GGUFSummary, pairs: dict[str, tuple[TensorInfo, TensorInfo]]
) -> None:
    """Refuse adapter ``a`` (its ``pairs`` from :func:`lora_pairs`) if llama.cpp would for base ``b``.

    In ggml order a base weight is ``[n_in, n_out]``, ``lora_a`` is ``[n_in, r]`` and ``lora_b``
    is ``[r, n_out]``; for ``token_embd`` the roles of A and B are swapped (``lora_a`` is
    ``[r, n_vocab]`` and ``lora_b`` is ``[r, n_embd]``).

    Raises:
        AdapterError: another architecture, a tensor the base lacks, or shapes that differ.
    """
    if a.arch != b.arch:
        raise AdapterError(
            f"adapter {a.path} is for architecture '{a.arch}', but base model {b.path} is "
            f"'{b.arch}'; export the adapter against the base it was trained on"
        )
    base_tensors = b.tensor_map()
    for name, (lora_a, lora_b) in pairs.items():
        weight = base_tensors.get(name)
        if weight is None:
            raise AdapterError(
                f"adapter {a.path} changes tensor '{name}', which base model {b.path} does not "
                "have; is it the base the adapter was trained on?"
            )
        if name.endswith(gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.TOKEN_EMBD] + ".weight"):
            fits = weight.dim(0) == lora_b.dim(1) and weight.dim(1) == lora_a.dim(1)
            expected = f"lora_a [r, {weight.dim(1)}] and lora_b [r, {weight.dim(0)}]"
        else:
            fits = weight.dim(0) == lora_a.dim(0) and weight.dim(1) == lora_b.dim(1)
            expected = f"lora_a [{weight.dim(0)}, r] and lora_b [r, {weight.dim(1)}]"
            if fits and lora_a.dim(1) != lora_b.dim(0):
                raise AdapterError(
                    f"adapter {a.path}: tensor '{name}' has lora_a {_shape(lora_a)} and lora_b "
                    f"{_shape(lora_b)}, whose ranks differ; re-export the adapter"
                )
        if not fits:
            raise AdapterError(
                f"adapter {a.path} does not fit base model {b.path}: tensor '{name}' is "
                f"{_shape(weight)} in the base, but the adapter has lora_a {_shape(lora_a)} and "
                f"lora_b {_shape(lora_b)} (expected {expected}); it was made for another model"
            )
