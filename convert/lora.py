"""LoRA adapters on GGUF models: merged into the weights, or exported as a GGUF LoRA adapter.

Merging (:func:`merged_source`) wraps a checkpoint so the writer reads ``W + scale * s * B @ A``
(float32, per module; several adapters add up) instead of ``W``; every other tensor passes through.

Exporting (:func:`export_lora`) writes the A/B pairs as a GGUF adapter that llama.cpp applies at
run time over the GGUF of the same base. Two things make that exact:

- the base conversion permutes output rows of some weights (GPT-NeoX's fused q/k/v, Llama's q/k
  rope layout); ``B`` (``[out, r]``) gets the same row permutation, ``A`` needs none.
- llama.cpp scales every pair by ``adapter.lora.alpha / r`` (``r`` = that pair's rank) times the
  user's scale, with one alpha per file. PEFT's true per-module scale (``alpha_m / r_m``, or
  ``alpha_m / sqrt(r_m)`` with rsLoRA, ``alpha_m`` and ``r_m`` from the rank/alpha patterns) is
  folded into ``B`` as ``s_m / (alpha_file / r_m)``, so llama.cpp's product comes out as PEFT's.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np

from edge_stack._version import __version__
from edge_stack.errors import AdapterError, BadArgument
from edge_stack.util._atomic import atomic_output, check_output

from ._gguf_base import GGUFBase
from ._gguf_base import GGUFBase as GGUFBaseType
from ._peft import LoraModule, PeftAdapter, load_adapter
from .arch import ArchSpec
from .checkpoint import Checkpoint, TensorSource
from .writer import DIRECT_TYPES, tensor_type

__all__ = ["EXPORT_TYPES", "check_fits", "export_lora", "merged_source"]

logger = logging.getLogger(__name__)

#: --outtype values of export-lora: tensor type and file type
EXPORT_TYPES: dict[str, tuple[gguf.GGMLQuantizationType, gguf.LlamaFileType]] = {
    name: DIRECT_TYPES[name] for name in ("f32", "f16", "q8_0")
}


@dataclass(frozen=True)
class Fit:
    """Where one adapter module lands in the base checkpoint."""

    module: LoraModule
    weight: str  # checkpoint tensor name
    #: B @ A is the transpose of the weight (PEFT's fan_in_fan_out for Conv1D-style layers)
    transposed: bool


def check_fits(adapter: PeftAdapter, ckpt: Checkpoint | GGUFBase, spec: ArchSpec) -> list[Fit]:
    """Place every module of ``adapter`` on a weight of ``ckpt``, or raise one AdapterError.

    Nothing is written before this passes, so a mismatched adapter leaves no output behind.
    """
    names = set(ckpt.names())
    problems: list[str] = []
    fits: list[Fit] = []
    fan_in_fan_out = bool(adapter.config.get("fan_in_fan_out", False))
    for module in adapter.modules:
        weight = _find_weight_name(module.weight, names)
        delta = adapter.delta_shape(module)
        if (
            weight is None
            and module.name.endswith(("lm_head", "embed_out"))
            and spec.hparams.tie_embeddings
        ):
            problems.append(
                f"adapter {adapter.path} changes {module.name}, but base {ckpt.path} ties its output "
                "layer to the input embeddings, so a LoRA on it would change both; train without "
                f"{module.name} in target_modules, or merge with peft and convert the merged model"
            )
            continue
        if weight is None:
            problems.append(
                f"adapter {adapter.path} changes {module.name} (lora_B @ lora_A is {list(delta)}), "
                f"which base {ckpt.path} ({spec.arch_name}) does not have; {adapter.trained_for()}"
            )
            continue
        shape = tuple(ckpt.shape(weight))
        # PEFT ignores fan_in_fan_out for torch.nn.Linear (every layer of our architectures), so
        # the straight orientation wins; the transpose is only for Conv1D-style checkpoints.
        if shape == delta:
            fits.append(Fit(module, weight, transposed=False))
        elif fan_in_fan_out and shape == delta[::-1] and len(shape) == 2:
            fits.append(Fit(module, weight, transposed=True))
        else:
            problems.append(
                f"adapter {adapter.path} does not fit base {ckpt.path}: module {module.name} has "
                f"lora_B @ lora_A {list(delta)} but the base weight {weight} is {list(shape)}; "
                f"{adapter.trained_for()}"
            )
    for name, key in adapter.copies.items():
        problem = _check_copy(adapter, ckpt, name, key)
        if problem:
            problems.append(problem)
    if problems:
        more = f" (and {len(problems) - 1} more mismatched modules)" if len(problems) > 1 else ""
        raise AdapterError(problems[0] + more)
    return fits


def _check_copy(
    adapter: PeftAdapter, ckpt: Checkpoint | GGUFBase, name: str, key: str
) -> str | None:
    """A base weight saved whole in the adapter must be the base's own (we apply LoRA only)."""
    found = _find_weight_name(name, set(ckpt.names()))
    if found is None or tuple(ckpt.shape(found)) != tuple(adapter.tensors.shape(key)):
        return (
            f"adapter {adapter.path} holds a full tensor {key} {list(adapter.tensors.shape(key))} "
            f"that base {ckpt.path} does not have in that shape (resized vocabulary, or "
            f"modules_to_save?); only plain LoRA is supported; {adapter.trained_for()}"
        )
    if not _same_values(adapter, key, ckpt, found):
        return (
            f"adapter {adapter.path} holds a changed copy of {found} (a trained or resized "
            "embedding); only LoRA changes are supported: merge with peft's merge_and_unload() "
            "and convert the merged model instead"
        )
    return None


def _same_values(adapter: PeftAdapter, key: str, ckpt: Checkpoint | GGUFBase, name: str) -> bool:
    # The copy may have been saved at another precision than the checkpoint (a base stored in f32
    # but trained in bf16): equal up to bf16 rounding (2^-8 relative) counts as unchanged. A GGUF
    # base may be quantized: equal up to its type's rounding, relative to each row's largest value.
    # Compared in row blocks so an embedding copy never costs two whole matrices of memory.
    rounding = ckpt.rounding(name) if isinstance(ckpt, GGUFBaseType) else None
    n_rows = ckpt.shape(name)[0] if ckpt.shape(name) else 1
    for start in range(0, n_rows, 4096):
        rows = slice(start, start + 4096)
        copy, base = adapter.tensors.read_rows(key, rows), ckpt.read_rows(name, rows)
        if rounding is None:
            same = np.allclose(copy, base, rtol=2**-7, atol=1e-30)
        else:
            limit = rounding * np.abs(base).max(axis=-1, keepdims=True) + 1e-30
            same = bool(np.all(np.abs(copy - base) <= limit))
        if not same:
            return False
    return True


# Module names transformers renames in memory but not on disk: transformers 5 calls GPT-NeoX's
# output layer "lm_head" (so PEFT saves it as such), its checkpoints keep "embed_out".
_ALIASES = {"lm_head.weight": "embed_out.weight", "embed_out.weight": "lm_head.weight"}


def _find_weight_name(name: str, names: set[str]) -> str | None:
    if name in names:
        return name
    if _ALIASES.get(name) in names:
        return _ALIASES[name]
    # An adapter trained on the bare transformer (no LM head wrapper) names modules without the
    # checkpoint's outer prefix ("layers.0..." vs "model.layers.0..."): accept one unique match.
    found = [n for n in names if n.endswith("." + name)]
    return found[0] if len(found) == 1 else None


# --- merging ---------------------------------------------------------------------------------


class _MergedSource:
    """A checkpoint whose adapted weights read as ``W + sum(scale * s * B @ A)`` (float32)."""

    def __init__(
        self, ckpt: Checkpoint, deltas: dict[str, list[tuple[PeftAdapter, Fit, float]]]
    ) -> None:
        self._ckpt = ckpt
        self._deltas = deltas

    def names(self) -> list[str]:
        return self._ckpt.names()

    def shape(self, name: str) -> tuple[int, ...]:
        return self._ckpt.shape(name)

    def read_rows(self, name: str, rows: slice | np.ndarray) -> np.ndarray:
        w = self._ckpt.read_rows(name, rows)
        for adapter, fit, factor in self._deltas.get(name, ()):
            a, b = adapter.a(fit.module), adapter.b(fit.module)
            # Rows of the weight are rows of B @ A (or columns, when it is transposed).
            part = a[:, rows].T @ b.T if fit.transposed else b[rows] @ a
            w += np.float32(factor) * part
        return w

    def release(self, name: str) -> None:
        self._ckpt.release(name)


def merged_source(
    ckpt: Checkpoint,
    spec: ArchSpec,
    adapter_dirs: Sequence[str | os.PathLike[str]],
    *,
    scale: float = 1.0,
) -> TensorSource:
    """``ckpt`` with every adapter in ``adapter_dirs`` merged in (checked to fit first)."""
    deltas: dict[str, list[tuple[PeftAdapter, Fit, float]]] = {}
    for folder in adapter_dirs:
        adapter = load_adapter(folder)
        # The adapters' tensors stay memory-mapped for the writer; they close with the process.
        for fit in check_fits(adapter, ckpt, spec):
            deltas.setdefault(fit.weight, []).append((adapter, fit, scale * fit.module.scale))
        logger.info("merging %s: %d modules", adapter.path, len(adapter.modules))
    return _MergedSource(ckpt, deltas)


# --- export ----------------------------------------------------------------------------------


def _file_alpha(adapter: PeftAdapter) -> float:
    """The one alpha the GGUF adapter carries: the config's, so plain adapters keep B as it is."""
    alpha = adapter.lora_alpha
    return alpha if alpha > 0 else 0.0


def _fold(module: LoraModule, alpha: float) -> float:
    """Factor on B so that llama.cpp's ``alpha / r`` times it equals PEFT's scale of the module."""
    # llama.cpp: scale = alpha ? user * alpha / rank : user (llama-adapter.h, get_scale)
    return module.scale / (alpha / module.rank) if alpha else module.scale


def export_tensors(
    adapter: PeftAdapter, spec: ArchSpec, fits: Sequence[Fit], alpha: float
) -> list[tuple[str, np.ndarray]]:
    """``(gguf name, float32 array)`` for every lora_a/lora_b, re-laid out like the base."""
    out: list[tuple[str, np.ndarray]] = []
    for fit in fits:
        target = spec.gguf_name_or_none(fit.weight)
        if target is None:
            raise AdapterError(
                f"adapter {adapter.path}: {fit.weight} has no tensor in a {spec.arch_name} GGUF"
            )
        a, b = adapter.a(fit.module), adapter.b(fit.module)
        if fit.transposed:  # (B @ A).T = A.T @ B.T
            a, b = b.T, a.T
        perm = spec.row_permutation(fit.weight, b.shape[0])
        if perm is not None:
            b = b[perm]
        b = np.ascontiguousarray(b * np.float32(_fold(fit.module, alpha)), dtype=np.float32)
        out.append((f"{target}.lora_a", np.ascontiguousarray(a, dtype=np.float32)))
        out.append((f"{target}.lora_b", b))
    return out


def export_lora(
    adapter: str | os.PathLike[str],
    base: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    outtype: str = "f32",
    force: bool = False,
) -> Path:
    """Write PEFT adapter ``adapter`` as a GGUF LoRA adapter for the GGUF of ``base``.

    ``adapter`` and ``base`` are folders or Hub ids; ``base`` is the Hugging Face checkpoint the
    adapter was trained on (its conversion decides the layout the adapter must follow), or a
    GGUF model of the same weights (its metadata and tensors decide it, see ``_gguf_base``).
    ``outtype`` is f32, f16 or q8_0 (q8_0 keeps rows that are not whole blocks at f16).
    """
    from ._gguf_base import is_gguf_file
    from .arch import arch_for
    from .checkpoint import open_checkpoint
    from .hub import resolve_model_dir

    target = Path(out)
    check_output(target, force=force)
    types = EXPORT_TYPES.get(outtype.lower())
    if types is None:
        raise BadArgument(
            f"unknown --outtype {outtype!r} for a LoRA adapter; choose one of {', '.join(EXPORT_TYPES)}"
        )
    adapter_dir = resolve_model_dir(_spec(adapter), kind="adapter")
    if is_gguf_file(os.fspath(base)):
        tensors, gspec, alpha, gguf_name = _from_gguf_base(adapter_dir, Path(base).expanduser())
        with atomic_output(target, force=force) as tmp:
            _write_adapter(
                tmp,
                gspec,
                tensors,
                alpha,
                types,
                name=_display_name(adapter, adapter_dir),
                base=gguf_name,
            )
        logger.info("exported %s -> %s over GGUF %s", adapter_dir, target, base)
        return target
    base_dir = resolve_model_dir(_spec(base), kind="model")
    with open_checkpoint(base_dir) as ckpt:
        spec = arch_for(ckpt)
        lora = load_adapter(adapter_dir)
        try:
            fits = check_fits(lora, ckpt, spec)
            alpha = _file_alpha(lora)
            tensors = export_tensors(lora, spec, fits, alpha)
            base_name = lora.base_model
        finally:
            lora.close()
    with atomic_output(target, force=force) as tmp:
        _write_adapter(
            tmp,
            spec,
            tensors,
            alpha,
            types,
            name=_display_name(adapter, adapter_dir),
            base=base_name or _display_name(base, base_dir),
        )
    logger.info("exported %s -> %s (%d tensors, %s)", adapter_dir, target, len(tensors), outtype)
    return target


def _from_gguf_base(
    adapter_dir: Path, base: Path
) -> tuple[list[tuple[str, np.ndarray]], ArchSpec, float, str]:
    """Export tensors for an adapter over a GGUF base: (tensors, spec, alpha, base name)."""
    from edge_stack.formats.gguf._check import check_gguf

    from ._gguf_base import open_gguf_base

    lora = load_adapter(adapter_dir)
    gbase = open_gguf_base(base, [m.weight for m in lora.modules] + list(lora.copies))
    try:
        fits = check_fits(lora, gbase, gbase.spec)
        alpha = _file_alpha(lora)
        tensors = export_tensors(lora, gbase.spec, fits, alpha)
    finally:
        lora.close()
        gbase.close()
    summary = check_gguf(base, kind="model")
    return tensors, gbase.spec, alpha, str(lora.base_model or summary.name or base.name)


def _spec(value: str | os.PathLike[str]) -> str | Path:
    return value if isinstance(value, str) else Path(value)


def _display_name(spec: str | os.PathLike[str], folder: Path) -> str:
    """The folder's name, or for a Hub id its repository name (not the snapshot's commit)."""
    if Path(spec).expanduser().exists():
        return folder.name
    return str(spec).split("@")[0].rstrip("/").split("/")[-1]


def _write_adapter(
    path: Path,
    spec: ArchSpec,
    tensors: Sequence[tuple[str, np.ndarray]],
    alpha: float,
    types: tuple[gguf.GGMLQuantizationType, gguf.LlamaFileType],
    *,
    name: str,
    base: str,
) -> None:
    outtype, file_type = types
    writer = gguf.GGUFWriter(path=path, arch=spec.arch_name)
    try:
        writer.add_type(gguf.GGUFType.ADAPTER)
        writer.add_name(name)
        writer.add_description(f"LoRA adapter exported by edgestack {__version__} for {base}")
        writer.add_base_model_count(1)
        writer.add_base_model_name(0, base)
        writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
        writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, float(alpha))
        writer.add_file_type(int(file_type))
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        for tensor_name, data in tensors:
            qtype = tensor_type(data.shape, outtype)
            if qtype == gguf.GGMLQuantizationType.F32:
                writer.add_tensor(tensor_name, data)
            elif qtype == gguf.GGMLQuantizationType.F16:
                writer.add_tensor(tensor_name, data.astype(np.float16))
            else:
                writer.add_tensor(tensor_name, gguf.quants.quantize(data, qtype), raw_dtype=qtype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()
    # The runtime checks every adapter before llama.cpp sees it; ours must pass that check too.
    from edge_stack.formats.gguf._check import check_gguf

    check_gguf(path, kind="adapter")
