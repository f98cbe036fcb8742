"""Check a GGUF file before llama.cpp sees it.

llama.cpp can take the whole process down on a malformed file, and a truncated model or a
mismatched adapter otherwise surfaces as a cryptic load failure. :func:`check_gguf` walks the
header itself, with every length bound-checked against the file size (so random bytes can neither
allocate gigabytes nor loop for ages), applies the checks llama.cpp's ``gguf.cpp`` makes, checks
that every tensor's data lies inside the file, and returns a :class:`GGUFSummary`.
:func:`check_adapter_fits` mirrors ``llama_adapter_lora_init``'s checks of an adapter against its
base (``llama-adapter.cpp``), so a mismatch is refused with both shapes named.

The header is parsed here rather than with ``gguf.GGUFReader``: the reader builds numpy views for
every array element (1.7 s for a Pythia-sized vocabulary, measured) and loops over array lengths
it has not checked against the file size. Keys, types, sizes and magic all come from ``gguf``.
"""

from __future__ import annotations

import logging
import mmap
import struct
from functools import lru_cache
from pathlib import Path
from types import MappingProxyType
from typing import Any

import gguf

from ._gguf_summary import (
    ArraySummary,
    GGUFSummary,
    Kind,
    TensorInfo,
    context_length,
    file_type_name,
    lora_alpha,
    tokenizer_info,
)
from .errors import AdapterError, GGUFFileError, ModelFileNotFound

__all__ = ["GGUFSummary", "TensorInfo", "check_adapter_fits", "check_gguf"]

logger = logging.getLogger(__name__)

# ggml.h limits that gguf.cpp enforces (the gguf package has no constants for them).
_GGML_MAX_DIMS = 4
_GGML_MAX_NAME = 64
# The smallest possible header entries, used to bound the counts the header claims.
_MIN_KV_BYTES = 8 + 1 + 4 + 1  # key length, 1-byte key, value type, 1-byte value
_MIN_TENSOR_INFO_BYTES = 8 + 1 + 4 + 4 + 8  # name length, 1-byte name, n_dims, type, offset
_FIXED_HEADER = struct.Struct("<IIQQ")  # magic, version, n_tensors, n_kv
# Arrays up to this length are kept whole in the metadata; longer ones are summarized.
_ARRAY_KEEP = 64
_ARRAY_HEAD = 5
# llama.cpp's only adapter type (llama-adapter.cpp compares adapter.type with it).
_LORA = "lora"
_LORA_A, _LORA_B = ".lora_a", ".lora_b"
_LORA_IGNORED = "_norm.weight"  # llama.cpp skips these adapter tensors

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
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_INT64_MAX = 2**63 - 1
_ABSURD_BYTES = 2**48  # a length beyond this (256 TiB) is corruption, not truncation


class _Bad(Exception):
    """Internal: the reason a file is invalid (wrapped into GGUFFileError with its path)."""


class _Truncated(_Bad):
    pass


def _hint(kind: Kind) -> str:
    if kind == "adapter":
        return "re-create it with `edgestack export-lora` (or copy it again)"
    return "re-create it with `edgestack convert` (or copy/download it again)"


def _invalid(path: Path, reason: str, kind: Kind) -> GGUFFileError:
    return GGUFFileError(f"{path} is not a valid GGUF file: {reason}; {_hint(kind)}")


# --- the header walk -----------------------------------------------------------------------------


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

    def short(self, end: int) -> _Bad:
        """The error for a read that would end at byte ``end``, past the end of the file."""
        if end - self.pos > _ABSURD_BYTES:
            # No GGUF file is that big: a corrupt length, not a cut-off copy.
            return _Bad(
                f"its {self.where} claims {end - self.pos} bytes at byte {self.pos}: it is corrupt"
            )
        return _Truncated(
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

    def skip_strings(self, n: int) -> None:
        # The hot loop of a 50k-token vocabulary: kept to plain local operations.
        buf, pos, size, unpack = self.buf, self.pos, self.size, _U64.unpack_from
        for _ in range(n):
            if pos + 8 > size:
                raise self.short(pos + 8)
            pos += 8 + unpack(buf, pos)[0]
        if pos > size:
            raise self.short(pos)
        self.pos = pos


def _type_name(raw: int) -> str:
    try:
        return _V(raw).name.lower()
    except ValueError:
        return str(raw)


def _read_value(r: _Reader, raw_type: int, key: str) -> object:
    scalar = _SCALARS.get(raw_type)
    if scalar is not None:
        return r.unpack(scalar)
    if raw_type == _V.STRING:
        return r.string()
    if raw_type != _V.ARRAY:
        raise _Bad(f"key '{key}' has invalid value type {raw_type}")
    item_type, n = r.u32(), r.u64()
    item = _SCALARS.get(item_type)
    if item is not None:
        r.need(n * item.size)  # before touching anything: n may be absurd
        count = min(n, _ARRAY_KEEP if n <= _ARRAY_KEEP else _ARRAY_HEAD)
        values = [item.unpack_from(r.buf, r.pos + i * item.size)[0] for i in range(count)]
        r.pos += n * item.size
    elif item_type == _V.STRING:
        r.need(8 * n)  # every string has at least its 8-byte length
        start = r.pos
        r.skip_strings(n)
        end, r.pos = r.pos, start
        count = min(n, _ARRAY_KEEP if n <= _ARRAY_KEEP else _ARRAY_HEAD)
        values = [r.string() for _ in range(count)]
        r.pos = end
    else:
        # gguf.cpp has no nested arrays either.
        raise _Bad(f"key '{key}' is an array of invalid type {_type_name(item_type)}")
    if n <= _ARRAY_KEEP:
        return values
    return ArraySummary(_type_name(item_type), n, tuple(values))


def _read_metadata(r: _Reader, n_kv: int) -> dict[str, object]:
    metadata: dict[str, object] = {}
    for i in range(n_kv):
        r.where = f"metadata (key {i + 1} of {n_kv})"
        key = r.string()
        if not key:
            raise _Bad(f"metadata key {i} is empty")
        if key in metadata:
            raise _Bad(f"metadata key '{key}' appears twice")
        r.where = f"metadata (key '{key}')"
        raw_type = r.u32()
        if key == gguf.Keys.General.ALIGNMENT and raw_type != _V.UINT32:
            raise _Bad(f"{key} must be a uint32, not {_type_name(raw_type)}")
        metadata[key] = _read_value(r, raw_type, key)
    return metadata


def _alignment(metadata: dict[str, object]) -> int:
    key = gguf.Keys.General.ALIGNMENT
    if key not in metadata:
        return gguf.GGUF_DEFAULT_ALIGNMENT
    value = metadata[key]  # a uint32, checked while reading
    assert isinstance(value, int)
    if value == 0 or value & (value - 1):
        raise _Bad(f"{key} is {value}, not a power of two")
    return value


def _read_tensor_infos(r: _Reader, n_tensors: int) -> list[tuple[str, tuple[int, ...], int, int]]:
    infos: list[tuple[str, tuple[int, ...], int, int]] = []
    seen: set[str] = set()
    for i in range(n_tensors):
        r.where = f"tensor table (tensor {i + 1} of {n_tensors})"
        raw_name = r.raw_string()
        name = raw_name.decode("utf-8", errors="replace")
        if len(raw_name) >= _GGML_MAX_NAME:
            raise _Bad(f"tensor name '{name[:80]}' is longer than llama.cpp's {_GGML_MAX_NAME - 1}")
        if name in seen:
            raise _Bad(f"tensor '{name}' appears twice")
        seen.add(name)
        r.where = f"tensor table (tensor '{name}')"
        n_dims = r.u32()
        if n_dims > _GGML_MAX_DIMS:
            raise _Bad(f"tensor '{name}' has {n_dims} dimensions (at most {_GGML_MAX_DIMS})")
        shape = tuple(r.u64() for _ in range(n_dims))
        if any(d > _INT64_MAX for d in shape):
            raise _Bad(f"tensor '{name}' has a negative dimension")
        raw_type, offset = r.u32(), r.u64()
        infos.append((name, shape, raw_type, offset))
    return infos


def _tensor_nbytes(name: str, shape: tuple[int, ...], raw_type: int) -> tuple[str, int]:
    try:
        qtype = gguf.GGMLQuantizationType(raw_type)
        block, type_size = gguf.GGML_QUANT_SIZES[qtype]
    except (ValueError, KeyError):
        raise _Bad(f"tensor '{name}' has unknown ggml type {raw_type}") from None
    ne0 = shape[0] if shape else 1
    if ne0 % block:
        raise _Bad(
            f"tensor '{name}' of type {qtype.name} has rows of {ne0} values, "
            f"not a multiple of its block size {block}"
        )
    n_elements = 1
    for dim in shape:
        n_elements *= dim
    nbytes = n_elements // block * type_size
    if nbytes > _INT64_MAX:
        raise _Bad(f"tensor '{name}' with shape {list(shape)} is impossibly large")
    return qtype.name, nbytes


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


def _parse(path: Path, size: int, kind: Kind) -> GGUFSummary:
    """Walk and check the header of ``path`` (``size`` bytes); tensor data is never read."""
    if size < _FIXED_HEADER.size:
        what = "empty" if size == 0 else f"only {size} bytes long"
        raise _invalid(path, f"the file is {what}, shorter than a GGUF header", kind)
    with path.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        try:
            return _parse_mapped(path, mm, size, kind)
        except _Bad as exc:
            raise _invalid(path, str(exc), kind) from None


def _parse_mapped(path: Path, mm: mmap.mmap, size: int, kind: Kind) -> GGUFSummary:
    magic, version, n_tensors, n_kv = _FIXED_HEADER.unpack_from(mm, 0)
    if magic != gguf.GGUF_MAGIC:
        raise _Bad(
            f"it does not start with the GGUF magic (found {bytes(mm[:4])!r})"
            + _magic_hint(bytes(mm[:64]))
        )
    if version == 0:
        raise _Bad("its version field is 0")
    if version & 0xFFFF == 0:
        raise _Bad(f"version field {version:#x}: a big-endian GGUF file, not for this machine")
    if version == 1:
        raise _Bad("it is GGUF version 1, which llama.cpp no longer reads")
    if not 2 <= version <= gguf.GGUF_VERSION:
        raise _Bad(
            f"GGUF version {version} is not supported (this edgestack reads 2 to {gguf.GGUF_VERSION})"
        )
    least = _FIXED_HEADER.size + n_tensors * _MIN_TENSOR_INFO_BYTES + n_kv * _MIN_KV_BYTES
    if least > size:
        raise _Bad(
            f"its header claims {n_tensors} tensors and {n_kv} metadata keys, which need at "
            f"least {least} bytes, but the file has only {size}: it is cut short or corrupt"
        )

    r = _Reader(mm, size)
    r.pos = _FIXED_HEADER.size
    metadata = _read_metadata(r, n_kv)
    alignment = _alignment(metadata)
    infos = _read_tensor_infos(r, n_tensors)
    data_offset = _pad(r.pos, alignment)

    tensors: list[TensorInfo] = []
    expected = 0  # gguf.cpp wants the tensors back to back, each padded to the alignment
    for name, shape, raw_type, offset in infos:
        type_name, nbytes = _tensor_nbytes(name, shape, raw_type)
        if offset != expected:
            raise _Bad(f"tensor '{name}' has data offset {offset}, expected {expected}")
        tensors.append(TensorInfo(name, shape, type_name, nbytes, data_offset + offset))
        expected += _pad(nbytes, alignment)
    end = max((t.offset + t.nbytes for t in tensors), default=min(data_offset, size))
    if end > size:
        last = max(tensors, key=lambda t: t.offset + t.nbytes)
        raise _Truncated(
            f"it is truncated: its tensor data ends at byte {end} but the file has only {size} "
            f"bytes ({end - size} bytes missing, tensor '{last.name}' and maybe others are cut)"
        )
    return _summarize(path, size, version, metadata, tuple(tensors), alignment, data_offset)


def _summarize(
    path: Path,
    size: int,
    version: int,
    metadata: dict[str, object],
    tensors: tuple[TensorInfo, ...],
    alignment: int,
    data_offset: int,
) -> GGUFSummary:
    general = gguf.Keys.General
    arch = metadata.get(general.ARCHITECTURE)
    if not isinstance(arch, str) or not arch:
        raise _Bad(f"it has no {general.ARCHITECTURE}")
    gtype = metadata.get(general.TYPE, gguf.GGUFType.MODEL)
    name = metadata.get(general.NAME)
    return GGUFSummary(
        path=path,
        size_bytes=size,
        version=version,
        kind="adapter" if gtype == gguf.GGUFType.ADAPTER else "model",
        arch=arch,
        name=name if isinstance(name, str) else None,
        file_type=file_type_name(metadata.get(general.FILE_TYPE), tensors),
        n_params=sum(t.n_elements for t in tensors),
        tensors=tensors,
        metadata=MappingProxyType(metadata),
        tokenizer=tokenizer_info(metadata),
        context_length=context_length(metadata, arch),
        lora_alpha=lora_alpha(metadata) if gtype == gguf.GGUFType.ADAPTER else None,
        alignment=alignment,
        data_offset=data_offset,
    )


@lru_cache(maxsize=64)
def _parse_cached(path: Path, size: int, mtime_ns: int, inode: int, kind: Kind) -> GGUFSummary:
    # Keyed on size/mtime/inode too, so a file replaced on disk is parsed again; the kind only
    # changes the hint in error messages.
    del mtime_ns, inode
    return _parse(path, size, kind)


# --- public checks -------------------------------------------------------------------------------


def check_gguf(path: Path, *, kind: Kind | None = "model") -> GGUFSummary:
    """Validate ``path`` as a GGUF ``kind`` before llama.cpp opens it, and describe it.

    Checks: the file exists and is a file; GGUF magic and version; the header's counts fit the
    file; every key, type, tensor name, shape, type and offset as llama.cpp's gguf.cpp checks
    them; every tensor's data inside the file; ``general.architecture`` present and known; and
    that the file is of the kind asked for (an adapter with ``adapter.type`` lora and only
    ``.lora_a``/``.lora_b`` pairs, or a model that is not an adapter).

    ``kind=None`` accepts either (``edgestack inspect``); ``summary.kind`` then says which it is,
    and an adapter is still checked as one.

    Raises:
        ModelFileNotFound: no such file.
        GGUFFileError: anything else; the message names the file and what to do.
    """
    path = Path(path).expanduser()
    what = {"adapter": "LoRA adapter", "model": "model", None: "GGUF"}[kind]
    try:
        st = path.stat()
    except FileNotFoundError:
        raise ModelFileNotFound(
            f"{what} file {path.absolute()} does not exist; check the path"
        ) from None
    if path.is_dir():
        raise GGUFFileError(
            f"{path} is a folder, but a {what} .gguf file is expected"
            + (
                "; convert a checkpoint folder with `edgestack convert` first"
                if kind == "model"
                else "; export a PEFT adapter folder with `edgestack export-lora` first"
            )
        )
    resolved = path.resolve()
    summary = _parse_cached(resolved, st.st_size, st.st_mtime_ns, st.st_ino, kind or "model")
    kind = kind or summary.kind
    try:
        _check_arch(summary)
        _check_kind(summary, kind, path)
    except _Bad as exc:
        raise _invalid(path, str(exc), kind) from None
    logger.debug(
        "%s: GGUF v%d %s %s, %d tensors",
        path,
        summary.version,
        summary.arch,
        summary.file_type,
        summary.n_tensors,
    )
    return summary


def _check_arch(summary: GGUFSummary) -> None:
    if summary.arch not in gguf.MODEL_ARCH_NAMES.values():
        raise _Bad(f"its architecture '{summary.arch}' is not one llama.cpp knows")


def _check_kind(summary: GGUFSummary, kind: Kind, path: Path) -> None:
    general = gguf.Keys.General
    gtype = summary.metadata.get(general.TYPE, gguf.GGUFType.MODEL)
    if kind == "model":
        if gtype == gguf.GGUFType.ADAPTER:
            raise GGUFFileError(
                f"{path} is a LoRA adapter, not a model: give it as the stage's `lora` "
                "(with its base model as `model`)"
            )
        if gtype != gguf.GGUFType.MODEL:
            raise GGUFFileError(f"{path} is a GGUF '{gtype}' file, not a model")
        return
    if gtype != gguf.GGUFType.ADAPTER:
        raise GGUFFileError(
            f"{path} is a {gtype if isinstance(gtype, str) else 'model'} GGUF, not a LoRA adapter "
            f"({general.TYPE} is {gtype!r}); give a model as the stage's `model`, and an adapter "
            "made with `edgestack export-lora` as its `lora`"
        )
    adapter_type = summary.metadata.get(gguf.Keys.Adapter.TYPE)
    if adapter_type != _LORA:
        raise _Bad(f"it is an adapter of type {adapter_type!r}, but llama.cpp loads only '{_LORA}'")
    _lora_pairs(summary)


def _lora_pairs(summary: GGUFSummary) -> dict[str, tuple[TensorInfo, TensorInfo]]:
    """``base tensor name -> (lora_a, lora_b)``, checked as llama-adapter.cpp pairs them."""
    halves: dict[str, dict[str, TensorInfo]] = {}
    for tensor in summary.tensors:
        for suffix in (_LORA_A, _LORA_B):
            if tensor.name.endswith(suffix):
                halves.setdefault(tensor.name[: -len(suffix)], {})[suffix] = tensor
                break
        else:
            if not tensor.name.endswith(_LORA_IGNORED):
                raise _Bad(f"adapter tensor '{tensor.name}' is neither a .lora_a nor a .lora_b")
    pairs: dict[str, tuple[TensorInfo, TensorInfo]] = {}
    for base, half in halves.items():
        if len(half) != 2:
            missing = _LORA_B if _LORA_A in half else _LORA_A
            raise _Bad(f"adapter tensor '{base}{missing}' is missing (its pair is there)")
        pairs[base] = (half[_LORA_A], half[_LORA_B])
    if not pairs:
        raise _Bad("the adapter has no LoRA tensors")
    return pairs


def _shape(t: TensorInfo) -> str:
    return "[" + ", ".join(str(t.dim(i)) for i in range(max(2, len(t.shape)))) + "]"


def check_adapter_fits(adapter: Path | GGUFSummary, base: Path | GGUFSummary) -> None:
    """Refuse an adapter that llama.cpp would not apply to ``base``, naming tensor and shapes.

    Mirrors llama-adapter.cpp: same architecture; every ``<name>.lora_a``/``.lora_b`` pair names
    a base tensor ``<name>``; in ggml order a base weight is ``[n_in, n_out]``, ``lora_a`` is
    ``[n_in, r]`` and ``lora_b`` is ``[r, n_out]`` (for ``token_embd`` the roles of A and B are
    swapped: ``lora_a`` is ``[r, n_vocab]`` and ``lora_b`` is ``[r, n_embd]``).
    Either argument may be a path or a summary from :func:`check_gguf`.

    Raises:
        AdapterError: the adapter does not fit the base.
        GGUFFileError / ModelFileNotFound: as :func:`check_gguf`.
    """
    a = adapter if isinstance(adapter, GGUFSummary) else check_gguf(adapter, kind="adapter")
    b = base if isinstance(base, GGUFSummary) else check_gguf(base, kind="model")
    if a.arch != b.arch:
        raise AdapterError(
            f"adapter {a.path} is for architecture '{a.arch}', but base model {b.path} is "
            f"'{b.arch}'; export the adapter against the base it was trained on"
        )
    base_tensors = b.tensor_map()
    for name, (lora_a, lora_b) in _lora_pairs_checked(a).items():
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


def _lora_pairs_checked(summary: GGUFSummary) -> dict[str, tuple[TensorInfo, TensorInfo]]:
    try:
        return _lora_pairs(summary)
    except _Bad as exc:
        raise _invalid(summary.path, str(exc), "adapter") from None


def clear_cache() -> None:
    """Forget parsed headers (tests rewrite files in place within one mtime tick)."""
    _parse_cached.cache_clear()
