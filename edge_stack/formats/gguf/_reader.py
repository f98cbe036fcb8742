"""Walk a GGUF header with every length bound-checked against the file size.

The header is parsed here rather than with ``gguf.GGUFReader``: the reader builds numpy views for
every array element (1.7 s for a Pythia-sized vocabulary, measured) and loops over array lengths
it has not checked against the file size. Here random bytes can neither allocate gigabytes nor
loop for ages, and the checks llama.cpp's ``gguf.cpp`` makes are applied on the way. Keys, types,
sizes and magic all come from ``gguf``; tensor data is never read.

:func:`read_header` returns a :class:`Header`: the metadata as :mod:`edge_stack.formats.gguf._summary`
keeps it, plus what only the deeper checks need (each key's GGUF type, every array in full), which
is dropped once they have run.
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass, field
from typing import Any

import gguf
import numpy as np

from ._summary import ArraySummary, TensorInfo

__all__ = [
    "TENSOR_ALIGNMENT",
    "Bad",
    "Header",
    "Truncated",
    "Unloadable",
    "check_mapped_alignment",
    "read_header",
    "type_name",
    "wrong_type",
]

# ggml.h limits that gguf.cpp enforces (the gguf package has no constants for them).
_GGML_MAX_DIMS = 4
_GGML_MAX_NAME = 64
#: ggml's TENSOR_ALIGNMENT (ggml/src/ggml-impl.h): llama.cpp maps a model's tensor data in place
#: and aborts (GGML_ASSERT in ggml_backend_cpu_buffer_from_ptr) on data not aligned to it
TENSOR_ALIGNMENT = 32
# The smallest possible header entries, used to bound the counts the header claims.
_MIN_KV_BYTES = 8 + 1 + 4 + 1  # key length, 1-byte key, value type, 1-byte value
_MIN_TENSOR_INFO_BYTES = 8 + 1 + 4 + 4 + 8  # name length, 1-byte name, n_dims, type, offset
FIXED_HEADER = struct.Struct("<IIQQ")  # magic, version, n_tensors, n_kv
# Arrays up to this length are kept whole in the metadata; longer ones are summarized.
_ARRAY_KEEP = 64
_ARRAY_HEAD = 5

_V = gguf.GGUFValueType
_SCALARS: dict[int, struct.Struct] = {
    _V.UINT8: struct.Struct("<B"),
    _V.INT8: struct.Struct("<b"),
    _V.UINT16: struct.Struct("<H"),
    _V.INT16: struct.Struct("<h"),
    _V.UINT32: struct.Struct("<I"),
    _V.INT32: struct.Struct("<i"),
    _V.FLOAT32: struct.Struct("<f"),
    _V.BOOL: struct.Struct("<?"),
    _V.UINT64: struct.Struct("<Q"),
    _V.INT64: struct.Struct("<q"),
    _V.FLOAT64: struct.Struct("<d"),
}
# numpy element types of the numeric arrays (bools as the bytes gguf stores)
_NUMPY: dict[int, str] = {
    _V.UINT8: "<u1",
    _V.INT8: "<i1",
    _V.UINT16: "<u2",
    _V.INT16: "<i2",
    _V.UINT32: "<u4",
    _V.INT32: "<i4",
    _V.FLOAT32: "<f4",
    _V.BOOL: "<u1",
    _V.UINT64: "<u8",
    _V.INT64: "<i8",
    _V.FLOAT64: "<f8",
}
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_INT64_MAX = 2**63 - 1
_ABSURD_BYTES = 2**48  # a length beyond this (256 TiB) is corruption, not truncation


class Bad(Exception):
    """The reason a file is invalid (the caller wraps it into GGUFFileError with its path)."""


class Truncated(Bad):
    """The file ends before its header or tensor data does."""


class Unloadable(Bad):
    """A well-formed GGUF whose metadata or tensors llama.cpp's model loader cannot use."""


def type_name(raw: int) -> str:
    """The GGUF value type's name ("uint32", "array", ...), or the number for an unknown one."""
    try:
        return _V(raw).name.lower()
    except ValueError:
        return str(raw)


def wrong_type(header: Header, key: str, wanted: str) -> Unloadable:
    """The error for ``key`` stored with a type llama.cpp does not read (``wanted``: "a uint32")."""
    raw = header.types[key]
    found = type_name(raw)
    if raw == _V.ARRAY:
        found += f" of {type_name(header.item_types[key])}"
    return Unloadable(f"{key} has type {found}, but llama.cpp reads {wanted}")


@dataclass
class Header:
    """A parsed header: metadata, tensors, and the typed detail the model checks look at."""

    version: int
    #: key -> value as the summary shows it (long arrays summarized)
    metadata: dict[str, object]
    #: key -> GGUF value type (``gguf.GGUFValueType``)
    types: dict[str, int] = field(default_factory=dict)
    #: key -> element type, for array keys
    item_types: dict[str, int] = field(default_factory=dict)
    #: key -> every element, for arrays of strings (raw bytes, as llama.cpp compares them)
    strings: dict[str, list[bytes]] = field(default_factory=dict)
    #: key -> every element, for numeric arrays (a copy: the file's mapping is closed later)
    numbers: dict[str, np.ndarray] = field(default_factory=dict)
    tensors: tuple[TensorInfo, ...] = ()
    alignment: int = gguf.GGUF_DEFAULT_ALIGNMENT
    data_offset: int = 0


class _Reader:
    """Bounds-checked little-endian reads from the mapped file."""

    def __init__(self, buf: mmap.mmap | bytes, size: int) -> None:
        self.buf = buf
        self.size = size
        self.pos = 0
        self.where = "header"

    def need(self, n: int) -> None:
        if n > self.size - self.pos:
            raise self.short(self.pos + n)

    def short(self, end: int) -> Bad:
        """The error for a read that would end at byte ``end``, past the end of the file."""
        if end - self.pos > _ABSURD_BYTES:
            # No GGUF file is that big: a corrupt length, not a cut-off copy.
            return Bad(
                f"its {self.where} claims {end - self.pos} bytes at byte {self.pos}: it is corrupt"
            )
        return Truncated(
            f"it is cut short inside its {self.where} "
            f"(at least {end - self.size} bytes missing after byte {self.size})"
        )

    def unpack(self, fmt: struct.Struct) -> Any:
        self.need(fmt.size)
        value = fmt.unpack_from(self.buf, self.pos)[0]
        self.pos += fmt.size
        return value

    def u32(self) -> int:
        return int(self.unpack(_U32))

    def u64(self) -> int:
        return int(self.unpack(_U64))

    def raw_string(self) -> bytes:
        n = self.u64()
        self.need(n)
        data = bytes(self.buf[self.pos : self.pos + n])
        self.pos += n
        return data

    def string(self) -> str:
        return self.raw_string().decode("utf-8", errors="replace")

    def strings(self, n: int) -> list[bytes]:
        # The hot loop of a 50k-token vocabulary: kept to plain local operations.
        buf, pos, size, unpack = self.buf, self.pos, self.size, _U64.unpack_from
        out: list[bytes] = []
        append = out.append
        for _ in range(n):
            if pos + 8 > size:
                raise self.short(pos + 8)
            end = pos + 8 + unpack(buf, pos)[0]
            if end > size:
                raise self.short(end)
            append(buf[pos + 8 : end])
            pos = end
        self.pos = pos
        return out


def _read_array(r: _Reader, header: Header, key: str) -> object:
    item_type, n = r.u32(), r.u64()
    header.item_types[key] = item_type
    keep = n if n <= _ARRAY_KEEP else _ARRAY_HEAD
    values: list[Any]
    if item_type in _SCALARS:
        item = _SCALARS[item_type]
        r.need(n * item.size)  # before touching anything: n may be absurd
        array = np.frombuffer(r.buf, dtype=_NUMPY[item_type], count=n, offset=r.pos).copy()
        header.numbers[key] = array
        values = [item.unpack_from(r.buf, r.pos + i * item.size)[0] for i in range(keep)]
        r.pos += n * item.size
    elif item_type == _V.STRING:
        r.need(8 * n)  # every string has at least its 8-byte length
        strings = r.strings(n)
        header.strings[key] = strings
        values = [s.decode("utf-8", errors="replace") for s in strings[:keep]]
    else:
        # gguf.cpp has no nested arrays either.
        raise Bad(f"key '{key}' is an array of invalid type {type_name(item_type)}")
    if n <= _ARRAY_KEEP:
        return values
    return ArraySummary(type_name(item_type), n, tuple(values))


def _read_metadata(r: _Reader, header: Header, n_kv: int) -> None:
    metadata = header.metadata
    for i in range(n_kv):
        r.where = f"metadata (key {i + 1} of {n_kv})"
        key = r.string()
        if not key:
            raise Bad(f"metadata key {i} is empty")
        if key in metadata:
            raise Bad(f"metadata key '{key}' appears twice")
        r.where = f"metadata (key '{key}')"
        raw_type = r.u32()
        if key == gguf.Keys.General.ALIGNMENT and raw_type != _V.UINT32:
            raise Bad(f"{key} must be a uint32, not {type_name(raw_type)}")
        header.types[key] = raw_type
        scalar = _SCALARS.get(raw_type)
        if scalar is not None:
            metadata[key] = r.unpack(scalar)
        elif raw_type == _V.STRING:
            metadata[key] = r.string()
        elif raw_type == _V.ARRAY:
            metadata[key] = _read_array(r, header, key)
        else:
            raise Bad(f"key '{key}' has invalid value type {raw_type}")


def _alignment(metadata: dict[str, object]) -> int:
    key = gguf.Keys.General.ALIGNMENT
    if key not in metadata:
        return gguf.GGUF_DEFAULT_ALIGNMENT
    value = metadata[key]  # a uint32, checked while reading
    assert isinstance(value, int)
    if value == 0 or value & (value - 1):
        raise Bad(f"{key} is {value}, not a power of two")
    return value


def _read_tensor_infos(r: _Reader, n_tensors: int) -> list[tuple[str, tuple[int, ...], int, int]]:
    infos: list[tuple[str, tuple[int, ...], int, int]] = []
    seen: set[str] = set()
    for i in range(n_tensors):
        r.where = f"tensor table (tensor {i + 1} of {n_tensors})"
        raw_name = r.raw_string()
        name = raw_name.decode("utf-8", errors="replace")
        if len(raw_name) >= _GGML_MAX_NAME:
            raise Bad(f"tensor name '{name[:80]}' is longer than llama.cpp's {_GGML_MAX_NAME - 1}")
        if name in seen:
            raise Bad(f"tensor '{name}' appears twice")
        seen.add(name)
        r.where = f"tensor table (tensor '{name}')"
        n_dims = r.u32()
        if n_dims > _GGML_MAX_DIMS:
            raise Bad(f"tensor '{name}' has {n_dims} dimensions (at most {_GGML_MAX_DIMS})")
        shape = tuple(r.u64() for _ in range(n_dims))
        if any(d > _INT64_MAX for d in shape):
            raise Bad(f"tensor '{name}' has a negative dimension")
        raw_type, offset = r.u32(), r.u64()
        infos.append((name, shape, raw_type, offset))
    return infos


def _tensor_nbytes(name: str, shape: tuple[int, ...], raw_type: int) -> tuple[str, int]:
    try:
        qtype = gguf.GGMLQuantizationType(raw_type)
        block, type_size = gguf.GGML_QUANT_SIZES[qtype]
    except (ValueError, KeyError):
        raise Bad(f"tensor '{name}' has unknown ggml type {raw_type}") from None
    ne0 = shape[0] if shape else 1
    if ne0 % block:
        raise Bad(
            f"tensor '{name}' of type {qtype.name} has rows of {ne0} values, "
            f"not a multiple of its block size {block}"
        )
    n_elements = 1
    for dim in shape:
        n_elements *= dim
    nbytes = n_elements // block * type_size
    if nbytes > _INT64_MAX:
        raise Bad(f"tensor '{name}' with shape {list(shape)} is impossibly large")
    return qtype.name, nbytes


def check_mapped_alignment(header: Header) -> None:
    """Refuse a model whose tensor data llama.cpp cannot map in place.

    gguf.cpp accepts any power of two as ``general.alignment``; llama.cpp then memory-maps the
    model and aborts the process unless each tensor's data starts at a multiple of
    :data:`TENSOR_ALIGNMENT` bytes from the start of the file (what ``general.alignment`` 32, the
    default, or any multiple of it guarantees).

    Raises:
        Unloadable: naming the first misaligned tensor, its offset and the alignment.
    """
    if header.alignment % TENSOR_ALIGNMENT == 0:
        return
    for tensor in header.tensors:
        if tensor.offset % TENSOR_ALIGNMENT:
            raise Unloadable(
                f"tensor '{tensor.name}' starts at byte {tensor.offset}, not a multiple of "
                f"{TENSOR_ALIGNMENT} ({gguf.Keys.General.ALIGNMENT} is {header.alignment}), so "
                "llama.cpp aborts when it maps the file"
            )


def _pad(n: int, alignment: int) -> int:
    return (n + alignment - 1) // alignment * alignment


def _magic_hint(head: bytes) -> str:
    """What a file that is not GGUF most likely is."""
    if head.startswith(b"PK\x03\x04"):
        return " (it is a zip archive: a PyTorch .bin/.pt checkpoint?)"
    if head.startswith(b"version https://git-lfs"):
        return " (it is a Git LFS pointer, not the file itself: run `git lfs pull`)"
    if head.lstrip()[:1] == b"<":
        return " (it looks like an HTML/XML page: a failed download?)"
    if len(head) > 8 and head[8:9] == b"{":
        return " (it looks like a safetensors file: convert its folder with `edgestack convert`)"
    if head[:4] in (b"lmgg", b"fmgg", b"tjgg", b"algg"):
        return " (it is an old GGML/GGJT file, which llama.cpp no longer reads)"
    return ""


def read_header(mm: mmap.mmap, size: int) -> Header:
    """Walk and check the header of a mapped GGUF file of ``size`` bytes.

    Raises:
        Bad: the reason the file is not a GGUF file llama.cpp's gguf.cpp would read
            (:class:`Truncated` when it is cut short).
    """
    magic, version, n_tensors, n_kv = FIXED_HEADER.unpack_from(mm, 0)
    if magic != gguf.GGUF_MAGIC:
        raise Bad(
            f"it does not start with the GGUF magic (found {bytes(mm[:4])!r})"
            + _magic_hint(bytes(mm[:64]))
        )
    if version == 0:
        raise Bad("its version field is 0")
    if version & 0xFFFF == 0:
        raise Bad(f"version field {version:#x}: a big-endian GGUF file, not for this machine")
    if version == 1:
        raise Bad("it is GGUF version 1, which llama.cpp no longer reads")
    if not 2 <= version <= gguf.GGUF_VERSION:
        raise Bad(
            f"GGUF version {version} is not supported (this edgestack reads 2 to {gguf.GGUF_VERSION})"
        )
    least = FIXED_HEADER.size + n_tensors * _MIN_TENSOR_INFO_BYTES + n_kv * _MIN_KV_BYTES
    if least > size:
        raise Bad(
            f"its header claims {n_tensors} tensors and {n_kv} metadata keys, which need at "
            f"least {least} bytes, but the file has only {size}: it is cut short or corrupt"
        )

    r = _Reader(mm, size)
    r.pos = FIXED_HEADER.size
    header = Header(version=version, metadata={})
    _read_metadata(r, header, n_kv)
    header.alignment = _alignment(header.metadata)
    infos = _read_tensor_infos(r, n_tensors)
    header.data_offset = data_offset = _pad(r.pos, header.alignment)

    tensors: list[TensorInfo] = []
    expected = 0  # gguf.cpp wants the tensors back to back, each padded to the alignment
    for name, shape, raw_type, offset in infos:
        type_name_, nbytes = _tensor_nbytes(name, shape, raw_type)
        if offset != expected:
            raise Bad(f"tensor '{name}' has data offset {offset}, expected {expected}")
        tensors.append(TensorInfo(name, shape, type_name_, nbytes, data_offset + offset))
        expected += _pad(nbytes, header.alignment)
    end = max((t.offset + t.nbytes for t in tensors), default=min(data_offset, size))
    if end > size:
        last = max(tensors, key=lambda t: t.offset + t.nbytes)
        raise Truncated(
            f"it is truncated: its tensor data ends at byte {end} but the file has only {size} "
            f"bytes ({end - size} bytes missing, tensor '{last.name}' and maybe others are cut)"
        )
    header.tensors = tuple(tensors)
    return header
