"""A Hugging Face checkpoint folder: config.json and safetensors weights, read lazily.

Weights are memory-mapped and read row range by row range, so converting never holds the whole
checkpoint in memory: after a tensor is written its pages are handed back to the kernel.
The safetensors header is parsed here (it is 8 bytes of length and a JSON table) rather than
through ``safetensors.safe_open``, because we need byte offsets for bounded, row-wise reads and
numpy has no bfloat16.
"""

from __future__ import annotations

import json
import logging
import mmap
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from edge_stack.errors import CheckpointError, ModelFileNotFound

logger = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
SAFETENSORS_FILE = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
# Largest JSON header we accept; real headers are a few hundred KB at most.
_MAX_HEADER_BYTES = 100 * 1024 * 1024

# safetensors dtype -> (numpy dtype as stored, bytes per element). bf16 is kept as raw uint16.
_DTYPES: dict[str, tuple[np.dtype[Any], int]] = {
    "F32": (np.dtype("<f4"), 4),
    "F16": (np.dtype("<f2"), 2),
    "BF16": (np.dtype("<u2"), 2),
    "F64": (np.dtype("<f8"), 8),
}


class TensorSource(Protocol):
    """What the writer reads weights from: a checkpoint, or a checkpoint with LoRA merged in."""

    def names(self) -> list[str]: ...

    def shape(self, name: str) -> tuple[int, ...]: ...

    def read_rows(self, name: str, rows: slice | np.ndarray) -> np.ndarray: ...

    def release(self, name: str) -> None: ...


@dataclass(frozen=True)
class _TensorEntry:
    file: Path
    dtype: str
    shape: tuple[int, ...]
    begin: int  # absolute byte offset in the file
    end: int


def _read_json(path: Path, what: str) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ModelFileNotFound(f"{what} {path} does not exist") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise CheckpointError(
            f"{path} is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg}); "
            "re-save the checkpoint with save_pretrained()"
        ) from None


def _parse_safetensors_header(path: Path) -> dict[str, _TensorEntry]:
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise CheckpointError(
                f"{path} is truncated: {size} bytes, too short for a safetensors header"
            )
        (n,) = struct.unpack("<Q", head)
        if n > min(size - 8, _MAX_HEADER_BYTES):
            raise CheckpointError(
                f"{path} is not a valid safetensors file (header claims {n} bytes, file has {size}); "
                "it may be truncated: download or save it again"
            )
        raw = f.read(n)
    try:
        header = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise CheckpointError(
            f"{path} has a corrupt safetensors header; download or save it again"
        ) from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path} has a corrupt safetensors header; download or save it again")
    data_start = 8 + n
    entries: dict[str, _TensorEntry] = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (begin, end) = info["dtype"], tuple(info["shape"]), info["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise CheckpointError(f"{path}: tensor {name!r} has a malformed header entry") from None
        if dtype not in _DTYPES:
            raise CheckpointError(
                f"{path}: tensor {name!r} has dtype {dtype}; supported are {', '.join(_DTYPES)} "
                "(quantized or integer checkpoints cannot be converted; save a float one)"
            )
        expected = int(np.prod(shape, dtype=np.int64)) * _DTYPES[dtype][1]
        if end - begin != expected:
            raise CheckpointError(
                f"{path}: tensor {name!r} of shape {list(shape)} {dtype} should take {expected} bytes, "
                f"the header gives {end - begin}"
            )
        if data_start + end > size:
            raise CheckpointError(
                f"{path} is truncated: tensor {name!r} ends at byte {data_start + end} but the file has "
                f"{size} bytes; download or save it again"
            )
        entries[name] = _TensorEntry(path, dtype, shape, data_start + begin, data_start + end)
    return entries


def _weight_files(folder: Path) -> list[Path]:
    index = folder / SAFETENSORS_INDEX
    if index.is_file():
        data = _read_json(index, "safetensors index")
        weight_map = data.get("weight_map") if isinstance(data, dict) else None
        if not isinstance(weight_map, dict) or not weight_map:
            raise CheckpointError(
                f"{index} has no weight_map; re-save the checkpoint with save_pretrained()"
            )
        shards = sorted({str(v) for v in weight_map.values()})
        missing = [s for s in shards if not (folder / s).is_file()]
        if missing:
            raise ModelFileNotFound(
                f"{index} names shard {missing[0]} but {folder / missing[0]} does not exist "
                f"({len(missing)} of {len(shards)} shards missing); download the checkpoint again"
            )
        return [folder / s for s in shards]
    single = folder / SAFETENSORS_FILE
    if single.is_file():
        return [single]
    others = sorted(folder.glob("*.safetensors"))
    if others:
        return others
    if any((folder / n).exists() for n in ("pytorch_model.bin", "pytorch_model.bin.index.json")):
        raise CheckpointError(
            f"{folder} has only pytorch_model.bin weights; edgestack reads safetensors only (they load "
            'without running pickled code). Re-save with: python -c "from transformers import '
            f"AutoModelForCausalLM as M; M.from_pretrained('{folder}').save_pretrained('{folder}')\""
        )
    raise ModelFileNotFound(
        f"no weights in {folder}: expected {SAFETENSORS_FILE} or {SAFETENSORS_INDEX}"
    )


class Checkpoint:
    """A checkpoint folder: its ``config`` and memory-mapped tensors, read row range by row range."""

    def __init__(
        self, path: Path, config: dict[str, Any], entries: dict[str, _TensorEntry]
    ) -> None:
        self.path = path
        self.config = config
        self._entries = entries
        self._maps: dict[Path, mmap.mmap] = {}

    # --- TensorSource -------------------------------------------------------------------------

    def names(self) -> list[str]:
        return list(self._entries)

    def shape(self, name: str) -> tuple[int, ...]:
        return self._entries[name].shape

    def dtype(self, name: str) -> str:
        """The stored safetensors dtype name (F32, F16, BF16, F64)."""
        return self._entries[name].dtype

    def read_rows(self, name: str, rows: slice | np.ndarray) -> np.ndarray:
        """Rows of a tensor (elements of a 1-D one) as a new float32 array."""
        view = self._view(name)
        part = view[rows]
        if self._entries[name].dtype == "BF16":
            out = (part.astype(np.uint32) << 16).view(np.float32)
        else:
            out = part.astype(np.float32)
        if isinstance(rows, slice) and view.ndim > 0:
            # The rows are copied: their mapped pages can go now, not only when the tensor is done
            # (a 50k x 768 embedding would otherwise stay resident while it is written).
            start, stop, _ = rows.indices(view.shape[0])
            row_bytes = view[0].nbytes if view.ndim > 1 else view.itemsize
            entry = self._entries[name]
            self._drop(entry.file, entry.begin + start * row_bytes, entry.begin + stop * row_bytes)
        return out

    def read(self, name: str) -> np.ndarray:
        """A whole tensor as float32."""
        return self.read_rows(name, slice(None))

    def release(self, name: str) -> None:
        """Hand the tensor's pages back to the kernel: they count in our memory until we do."""
        entry = self._entries[name]
        self._drop(entry.file, entry.begin, entry.end)

    def close(self) -> None:
        maps, self._maps = self._maps, {}
        for mm in maps.values():
            try:
                mm.close()
            except BufferError:
                # A numpy view still points into the map: one held by the traceback of the
                # exception (often Ctrl-C) that is closing us, in a read_rows frame. Closing
                # would fail over it and hide that exception; the map goes with the last view.
                logger.debug("%s: a tensor view is still alive; unmapped when it goes", self.path)

    def __enter__(self) -> Checkpoint:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    # --- internals -----------------------------------------------------------------------------

    def _drop(self, file: Path, begin: int, end: int) -> None:
        mm = self._maps.get(file)
        if mm is None or not hasattr(mmap, "MADV_DONTNEED") or end <= begin:
            return
        start = begin - begin % mmap.PAGESIZE
        mm.madvise(mmap.MADV_DONTNEED, start, end - start)

    def _view(self, name: str) -> np.ndarray:
        try:
            entry = self._entries[name]
        except KeyError:
            raise CheckpointError(f"{self.path} has no tensor {name!r}") from None
        mm = self._maps.get(entry.file)
        if mm is None:
            with entry.file.open("rb") as f:
                if os.fstat(f.fileno()).st_size == 0:
                    raise CheckpointError(f"{entry.file} is empty")
                mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
            self._maps[entry.file] = mm
        np_dtype, _ = _DTYPES[entry.dtype]
        count = (entry.end - entry.begin) // np_dtype.itemsize
        flat = np.frombuffer(mm, dtype=np_dtype, count=count, offset=entry.begin)
        return flat.reshape(entry.shape) if entry.shape else flat.reshape(())


def open_checkpoint(path: str | os.PathLike[str]) -> Checkpoint:
    """Open a checkpoint folder (config.json + safetensors), checking every header up front."""
    folder = Path(path).expanduser()
    if not folder.exists():
        raise ModelFileNotFound(f"checkpoint folder {folder} does not exist")
    if not folder.is_dir():
        raise CheckpointError(
            f"{folder} is a file; give the checkpoint FOLDER (with config.json and *.safetensors)"
        )
    config = _read_json(folder / CONFIG_FILE, "config file")
    if not isinstance(config, dict):
        raise CheckpointError(f"{folder / CONFIG_FILE} must hold a JSON object")
    entries: dict[str, _TensorEntry] = {}
    for file in _weight_files(folder):
        for name, entry in _parse_safetensors_header(file).items():
            if name in entries:
                raise CheckpointError(
                    f"tensor {name!r} appears in both {entries[name].file} and {file}"
                )
            entries[name] = entry
    if not entries:
        raise CheckpointError(f"{folder} has safetensors files but no tensors in them")
    logger.debug("opened %s: %d tensors", folder, len(entries))
    return Checkpoint(folder, config, entries)
