"""Quantizing GGUF files with llama.cpp's own quantizer (``llama_model_quantize``).

No quantizer is written here: llama.cpp picks the per-tensor types of each file type (q4_k_m keeps
some tensors at q6_k, rows that are not whole blocks fall back to another type, ...).
"""

from __future__ import annotations

import ctypes
import logging
import os
from collections.abc import Mapping
from pathlib import Path

import gguf

from edge_stack._atomic import atomic_output, check_output
from edge_stack.errors import BadArgument, QuantizeError

__all__ = ["QUANT_TYPES", "quant_type_names", "quantize"]

logger = logging.getLogger(__name__)


def _type_name(ftype: gguf.LlamaFileType) -> str:
    return ftype.name.removeprefix("ALL_").removeprefix("MOSTLY_").lower()


#: every llama.cpp file type by its lower-case name (``q4_k_m``, ``q8_0``, ``f16``, ``iq4_xs``...)
QUANT_TYPES: Mapping[str, gguf.LlamaFileType] = {
    _type_name(t): t for t in gguf.LlamaFileType if t is not gguf.LlamaFileType.GUESSED
}

#: file types that are not quantized: quantizing from them loses nothing twice
_FLOAT_TYPES = frozenset(
    {gguf.LlamaFileType.ALL_F32, gguf.LlamaFileType.MOSTLY_F16, gguf.LlamaFileType.MOSTLY_BF16}
)


def _llama_types() -> dict[str, int]:
    """QUANT_TYPES plus any type the installed llama.cpp knows and gguf does not (yet)."""
    from edge_stack._llama_lib import lib

    found = {name: int(t) for name, t in QUANT_TYPES.items()}
    llama = lib()
    for attr in dir(llama):
        if attr.startswith("LLAMA_FTYPE_") and attr != "LLAMA_FTYPE_GUESSED":
            name = attr.removeprefix("LLAMA_FTYPE_").removeprefix("ALL_").removeprefix("MOSTLY_")
            found.setdefault(name.lower(), int(getattr(llama, attr)))
    return found


def quant_type_names() -> list[str]:
    """Every type name :func:`quantize` accepts, sorted."""
    return sorted(_llama_types())


def quantize(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    *,
    qtype: str,
    force: bool = False,
    threads: int | None = None,
    allow_requantize: bool = False,
) -> Path:
    """Quantize the GGUF model ``src`` to ``dst`` as ``qtype`` (e.g. ``"q4_k_m"``); return ``dst``.

    ``src`` should be f32, f16 or bf16: quantizing an already quantized file compounds the
    rounding, so it is refused unless ``allow_requantize``. ``dst`` is written to a temporary file
    and renamed at the end; an existing ``dst`` is replaced only with ``force``.
    """
    from edge_stack._llama_lib import check_file, default_threads, llama_errors, reason
    from edge_stack._llama_lib import lib as llama_lib

    source, target = Path(src), Path(dst)
    types = _llama_types()
    name = qtype.strip().lower()
    if name not in types:
        raise BadArgument(
            f"unknown quantization type {qtype!r}; choose one of: {', '.join(sorted(types))}"
        )
    check_output(target, force=force)
    check_file(source, "model")
    if target.exists() and target.resolve() == source.resolve():
        raise BadArgument(f"input and output are the same file ({source}); write to a new path")
    if not allow_requantize:
        _refuse_requantize(source, name)

    lib = llama_lib()
    params = lib.llama_model_quantize_default_params()
    params.nthread = threads or default_threads()
    params.ftype = types[name]
    params.allow_requantize = allow_requantize
    with atomic_output(target, force=force) as tmp, llama_errors() as errors:
        logger.info("quantizing %s -> %s (%s)", source, target, name)
        rc = lib.llama_model_quantize(os.fsencode(source), os.fsencode(tmp), ctypes.byref(params))
        if rc != 0:
            raise QuantizeError(
                f"llama.cpp could not quantize {source} to {name}: {reason(errors)}" + _hint(name)
            )
    return target


def _refuse_requantize(source: Path, name: str) -> None:
    reader = gguf.GGUFReader(source)
    field = reader.get_field(gguf.Keys.General.FILE_TYPE)
    if field is None:
        return  # llama.cpp guesses the type from the tensors; let it decide
    ftype = int(field.contents())
    if ftype in {int(t) for t in _FLOAT_TYPES}:
        return
    try:
        have = _type_name(gguf.LlamaFileType(ftype))
    except ValueError:
        have = f"file type {ftype}"
    raise QuantizeError(
        f"{source} is already quantized ({have}); quantizing it again to {name} compounds the "
        "rounding: quantize the f32/f16/bf16 file instead, or pass --allow-requantize"
    )


def _hint(name: str) -> str:
    if name.startswith("iq") or name in {"q2_k_s", "iq1_s", "iq1_m"}:
        return (
            " (this type needs an importance matrix, which edgestack does not compute; try q4_k_m)"
        )
    return ""
