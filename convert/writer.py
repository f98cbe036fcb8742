"""Streaming GGUF output: header and metadata first, then tensors row range by row range.

gguf's GGUFWriter normally keeps every tensor in memory until the end; we give it only the tensor
infos (names, shapes, types, sizes), let it write header, metadata and infos, and then stream each
tensor's data ourselves in bounded chunks. Peak memory is then one chunk, not one checkpoint.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import gguf
import numpy as np

from .arch import ArchSpec, TensorPlan
from .checkpoint import TensorSource

logger = logging.getLogger(__name__)

#: outtypes written directly (everything else goes through llama.cpp's quantizer)
DIRECT_TYPES: Mapping[str, tuple[gguf.GGMLQuantizationType, gguf.LlamaFileType]] = {
    "f32": (gguf.GGMLQuantizationType.F32, gguf.LlamaFileType.ALL_F32),
    "f16": (gguf.GGMLQuantizationType.F16, gguf.LlamaFileType.MOSTLY_F16),
    "bf16": (gguf.GGMLQuantizationType.BF16, gguf.LlamaFileType.MOSTLY_BF16),
    "q8_0": (gguf.GGMLQuantizationType.Q8_0, gguf.LlamaFileType.MOSTLY_Q8_0),
}

# Bytes of float32 input converted at a time: bounds peak memory whatever the tensor size.
_CHUNK_BYTES = 16 * 1024 * 1024

ProgressFn = Callable[[int, int], None]


class VocabWriter(Protocol):
    def write(self, writer: gguf.GGUFWriter) -> None: ...


@dataclass(frozen=True)
class _Planned:
    plan: TensorPlan
    qtype: gguf.GGMLQuantizationType
    nbytes: int


def tensor_type(
    shape: Sequence[int], outtype: gguf.GGMLQuantizationType
) -> gguf.GGMLQuantizationType:
    """The type a tensor is stored in: vectors (norms, biases) stay f32, as llama.cpp expects."""
    if len(shape) < 2 or outtype == gguf.GGMLQuantizationType.F32:
        return gguf.GGMLQuantizationType.F32
    block, _ = gguf.GGML_QUANT_SIZES[outtype]
    if shape[-1] % block:
        # A row that is not a whole number of blocks cannot be quantized; f16 is the usual fallback.
        return gguf.GGMLQuantizationType.F16
    return outtype


def _nbytes(shape: Sequence[int], qtype: gguf.GGMLQuantizationType) -> int:
    block, type_size = gguf.GGML_QUANT_SIZES[qtype]
    n = int(np.prod(shape, dtype=np.int64))
    return n // block * type_size


def _encode(rows: np.ndarray, qtype: gguf.GGMLQuantizationType) -> np.ndarray:
    if qtype == gguf.GGMLQuantizationType.F32:
        return rows.astype(np.float32, copy=False)
    if qtype == gguf.GGMLQuantizationType.F16:
        return rows.astype(np.float16)
    return gguf.quants.quantize(rows, qtype)


def _rows(plan: TensorPlan, source: TensorSource, start: int, stop: int) -> np.ndarray:
    if plan.const is not None:
        return np.asarray(plan.const[start:stop], dtype=np.float32)
    assert plan.source is not None
    index: slice | np.ndarray = slice(start, stop) if plan.rows is None else plan.rows[start:stop]
    rows = source.read_rows(plan.source, index)
    if plan.offset:
        rows += np.float32(plan.offset)
    return rows


def write_gguf(
    path: Path,
    spec: ArchSpec,
    vocab: VocabWriter,
    source: TensorSource,
    *,
    outtype: str,
    metadata: Mapping[str, Any],
    progress: ProgressFn | None = None,
) -> None:
    """Write a complete model GGUF to ``path`` (a temporary file; the caller renames it)."""
    base_type, file_type = DIRECT_TYPES[outtype]
    shapes = {name: source.shape(name) for name in source.names()}
    planned = []
    for plan in spec.plan(shapes):
        qtype = tensor_type(plan.shape, base_type)
        planned.append(_Planned(plan, qtype, _nbytes(plan.shape, qtype)))

    writer = gguf.GGUFWriter(path=None, arch=spec.arch_name)
    tokens = getattr(vocab, "tokens", None)
    _write_metadata(
        writer, dict(metadata, name=_safe_name(metadata.get("name"), tokens)), file_type
    )
    spec.write_hparams(writer)
    vocab.write(writer)
    for p in planned:
        writer.add_tensor_info(
            p.plan.gguf_name, p.plan.shape, np.dtype(np.float32), p.nbytes, p.qtype
        )

    total = sum(p.nbytes for p in planned)
    done = 0
    writer.write_header_to_file(path)
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    assert writer.fout is not None
    out = writer.fout[0]
    try:
        for p in planned:
            writer.write_padding(out, out.tell())
            written = 0
            n_rows = p.plan.shape[0] if len(p.plan.shape) > 1 else 1
            row_elems = (
                int(np.prod(p.plan.shape[1:], dtype=np.int64)) if len(p.plan.shape) > 1 else 0
            )
            step = max(1, _CHUNK_BYTES // max(1, 4 * row_elems)) if row_elems else n_rows
            for start in range(0, n_rows, step):
                stop = min(n_rows, start + step)
                if row_elems:
                    data = _encode(_rows(p.plan, source, start, stop), p.qtype)
                else:
                    data = _encode(_rows(p.plan, source, 0, p.plan.shape[0]), p.qtype)
                data.tofile(out)
                written += data.nbytes
                done += data.nbytes
                if progress is not None:
                    progress(done, total)
            if written != p.nbytes:
                raise AssertionError(
                    f"{p.plan.gguf_name}: wrote {written} bytes, planned {p.nbytes}"
                )
            writer.write_padding(out, written)
            if p.plan.source is not None:
                source.release(p.plan.source)
        out.flush()
    finally:
        writer.close()
    logger.info("wrote %s: %d tensors, %.1f MB", path, len(planned), total / 1e6)


def _safe_name(name: object, tokens: Sequence[str] | None) -> str:
    """The model's name, changed where llama.cpp would look up tokens this vocabulary lacks."""
    from edge_stack.formats.gguf._vocab import NAME_TOKEN_RULES

    text = str(name or "model")
    have = set(tokens or ())
    for parts, needed in NAME_TOKEN_RULES:
        if any(p in text.lower() for p in parts) and not all(t.decode() in have for t in needed):
            for part in parts:
                text = re.sub(re.escape(part), part.replace("3", "_3"), text, flags=re.IGNORECASE)
            logger.info("named the model %r: llama.cpp treats Phi-3 names specially", text)
    return text


def _write_metadata(writer: gguf.GGUFWriter, metadata: Mapping[str, Any], file_type: int) -> None:
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(str(metadata.get("name") or "model"))
    if metadata.get("description"):
        writer.add_description(str(metadata["description"]))
    if metadata.get("source_url"):
        writer.add_source_url(str(metadata["source_url"]))
    if metadata.get("source_repo_url"):
        writer.add_source_repo_url(str(metadata["source_repo_url"]))
    writer.add_file_type(int(file_type))
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
