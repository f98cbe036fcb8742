"""What a GGUF file holds, as plain frozen values (``edgestack inspect`` prints these).

:mod:`edge_stack.formats.gguf._check` parses and validates the file; this module only describes it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import gguf

Kind = Literal["model", "adapter"]


@dataclass(frozen=True)
class ArraySummary:
    """A long metadata array (token list, merges, ...), kept as its length and first items."""

    item_type: str
    length: int
    head: tuple[object, ...]

    def __str__(self) -> str:
        shown = ", ".join(repr(item) for item in self.head)
        return f"[{self.item_type} x {self.length}: {shown}, ...]"


@dataclass(frozen=True)
class TensorInfo:
    """One tensor's header entry. ``shape`` is in GGUF (ggml ``ne``) order: fastest dim first."""

    name: str
    shape: tuple[int, ...]
    type: str
    nbytes: int
    #: absolute byte offset of the tensor's data in the file
    offset: int

    @property
    def n_elements(self) -> int:
        count = 1
        for dim in self.shape:
            count *= dim
        return count

    def dim(self, i: int) -> int:
        """``ne[i]`` as ggml sees it: dimensions past ``len(shape)`` are 1."""
        return self.shape[i] if i < len(self.shape) else 1


@dataclass(frozen=True)
class TokenizerInfo:
    """The tokenizer a model GGUF carries (``tokenizer.*`` keys)."""

    model: str | None
    pre: str | None
    n_tokens: int
    bos_id: int | None
    eos_id: int | None
    add_bos: bool | None
    has_chat_template: bool


@dataclass(frozen=True)
class GGUFSummary:
    """A validated GGUF file: header facts, tensors and metadata (no tensor data is read)."""

    path: Path
    size_bytes: int
    version: int
    kind: Kind
    arch: str
    name: str | None
    #: llama.cpp's file type name ("Q8_0", "F16", ...); for files without general.file_type,
    #: the type most of the tensor bytes have
    file_type: str
    n_params: int
    tensors: tuple[TensorInfo, ...]
    metadata: Mapping[str, object]
    tokenizer: TokenizerInfo | None
    context_length: int | None
    #: adapter.lora.alpha of an adapter (None for models, or when the adapter has none)
    lora_alpha: float | None
    alignment: int
    data_offset: int

    @property
    def n_tensors(self) -> int:
        return len(self.tensors)

    @property
    def tensor_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)

    def tensor_map(self) -> dict[str, TensorInfo]:
        return {t.name: t for t in self.tensors}


def file_type_name(value: object, tensors: tuple[TensorInfo, ...]) -> str:
    """llama.cpp's name for ``general.file_type`` (``MOSTLY_Q8_0`` -> ``Q8_0``)."""
    if isinstance(value, int) and not isinstance(value, bool):
        guessed = value & gguf.LlamaFileType.GUESSED
        try:
            name = gguf.LlamaFileType(value & ~gguf.LlamaFileType.GUESSED).name
        except ValueError:
            return f"unknown ({value})"
        name = name.removeprefix("MOSTLY_").removeprefix("ALL_")
        return f"{name} (guessed)" if guessed else name
    # No file type written (adapters usually have none): the type holding most bytes.
    by_type: dict[str, int] = {}
    for tensor in tensors:
        by_type[tensor.type] = by_type.get(tensor.type, 0) + tensor.nbytes
    return max(by_type, key=by_type.__getitem__) if by_type else "none"


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _str(value: object) -> str | None:
    return value if isinstance(value, str) else None


def tokenizer_info(metadata: Mapping[str, object]) -> TokenizerInfo | None:
    """The tokenizer facts, or None when the file has no ``tokenizer.ggml.model``."""
    keys = gguf.Keys.Tokenizer
    if keys.MODEL not in metadata:
        return None
    tokens = metadata.get(keys.LIST)
    if isinstance(tokens, ArraySummary):
        n_tokens = tokens.length
    elif isinstance(tokens, list):
        n_tokens = len(tokens)
    else:
        n_tokens = 0
    add_bos = metadata.get(keys.ADD_BOS)
    return TokenizerInfo(
        model=_str(metadata.get(keys.MODEL)),
        pre=_str(metadata.get(keys.PRE)),
        n_tokens=n_tokens,
        bos_id=_int(metadata.get(keys.BOS_ID)),
        eos_id=_int(metadata.get(keys.EOS_ID)),
        add_bos=add_bos if isinstance(add_bos, bool) else None,
        has_chat_template=isinstance(metadata.get(keys.CHAT_TEMPLATE), str),
    )


def context_length(metadata: Mapping[str, object], arch: str) -> int | None:
    return _int(metadata.get(gguf.Keys.LLM.CONTEXT_LENGTH.format(arch=arch)))


def lora_alpha(metadata: Mapping[str, object]) -> float | None:
    value = metadata.get(gguf.Keys.Adapter.LORA_ALPHA)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return None
