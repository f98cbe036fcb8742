"""A SentencePiece ``tokenizer.model`` read without protobuf: pieces, scores, types and settings.

The file is a serialized ``sentencepiece.ModelProto`` (``sentencepiece_model.proto``); the
converter needs four of its fields, so the protobuf wire format is decoded here directly
(varints, fixed32 floats, length-delimited messages) with every length bound-checked, instead of
depending on the ``protobuf`` package at conversion time. The ``sentencepiece`` library itself is
the reference the tests compare against.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

from edge_stack.errors import TokenizerError

__all__ = ["MAX_MODEL_BYTES", "SpmModel", "read_spm_model"]

#: largest tokenizer.model accepted (real ones are 0.5-5 MB; Gemma 3's 262k pieces are 4.7 MB)
MAX_MODEL_BYTES = 64 * 1024 * 1024

# sentencepiece_model.proto: TrainerSpec.ModelType
_MODEL_TYPES = {1: "unigram", 2: "bpe", 3: "word", 4: "char"}


@dataclass(frozen=True)
class SpmModel:
    """What llama.cpp's ``llama`` tokenizer needs from a SentencePiece model."""

    pieces: tuple[str, ...]
    scores: tuple[float, ...]
    #: SentencePiece piece types, numbered as llama.cpp's token types (1 normal .. 6 byte)
    types: tuple[int, ...]
    model_type: str
    byte_fallback: bool
    normalizer: str
    add_dummy_prefix: bool
    remove_extra_whitespaces: bool
    escape_whitespaces: bool
    treat_whitespace_as_suffix: bool
    unk_id: int
    bos_id: int
    eos_id: int
    pad_id: int


class _Bad(Exception):
    pass


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise _Bad("a varint runs past its message")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def _fields(buf: bytes) -> list[tuple[int, int | float | bytes]]:
    """``(field number, value)`` of one message: ints, float32s (wire type 5) or bytes."""
    out: list[tuple[int, int | float | bytes]] = []
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        value: int | float | bytes
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 1:
            if pos + 8 > len(buf):
                raise _Bad("a fixed64 field runs past its message")
            value, pos = struct.unpack_from("<d", buf, pos)[0], pos + 8
        elif wire == 2:
            size, pos = _varint(buf, pos)
            if pos + size > len(buf):
                raise _Bad("a length-delimited field runs past its message")
            value, pos = buf[pos : pos + size], pos + size
        elif wire == 5:
            if pos + 4 > len(buf):
                raise _Bad("a fixed32 field runs past its message")
            value, pos = struct.unpack_from("<f", buf, pos)[0], pos + 4
        else:
            raise _Bad(f"field {number} has wire type {wire}, which SentencePiece never writes")
        out.append((number, value))
    return out


def _last(fields: list[tuple[int, int | float | bytes]], number: int, default: object) -> object:
    found = default
    for n, value in fields:
        if n == number:
            found = value
    return found


def _int(value: object) -> int:
    if not isinstance(value, int):
        raise _Bad("an integer field holds another wire type")
    return value - (1 << 64) if value >= 1 << 63 else value


def _piece(raw: bytes) -> tuple[str, float, int]:
    fields = _fields(raw)
    text = _last(fields, 1, b"")
    score = _last(fields, 2, 0.0)
    kind = _int(_last(fields, 3, 1))
    if not isinstance(text, bytes) or not isinstance(score, float):
        raise _Bad("a piece has a malformed text or score")
    return text.decode("utf-8"), score, kind


def read_spm_model(path: Path) -> SpmModel:
    """Parse ``path`` (a SentencePiece ``tokenizer.model``).

    Raises:
        TokenizerError: unreadable, larger than :data:`MAX_MODEL_BYTES`, or not a model proto.
    """
    try:
        size = path.stat().st_size
        if size > MAX_MODEL_BYTES:
            raise TokenizerError(
                f"{path} is {size} bytes, more than the {MAX_MODEL_BYTES} a SentencePiece model "
                "may have here; is it really a tokenizer.model?"
            )
        data = path.read_bytes()
    except OSError as exc:
        raise TokenizerError(f"cannot read {path}: {exc}; copy the tokenizer again") from None
    try:
        top = _fields(data)
        pieces = [_piece(v) for n, v in top if n == 1 and isinstance(v, bytes)]
        trainer_raw = _last(top, 2, b"")
        normalizer_raw = _last(top, 3, b"")
        if not isinstance(trainer_raw, bytes) or not isinstance(normalizer_raw, bytes):
            raise _Bad("the trainer or normalizer spec is not a message")
        trainer = _fields(trainer_raw)
        norm = _fields(normalizer_raw)
        name = _last(norm, 1, b"")
        if not isinstance(name, bytes):
            raise _Bad("the normalizer name is not a string")
        model = SpmModel(
            pieces=tuple(p[0] for p in pieces),
            scores=tuple(p[1] for p in pieces),
            types=tuple(p[2] for p in pieces),
            model_type=_MODEL_TYPES.get(_int(_last(trainer, 3, 1)), "unknown"),
            byte_fallback=bool(_int(_last(trainer, 35, 0))),
            normalizer=name.decode("utf-8") or "nmt_nfkc",
            add_dummy_prefix=bool(_int(_last(norm, 3, 1))),
            remove_extra_whitespaces=bool(_int(_last(norm, 4, 1))),
            escape_whitespaces=bool(_int(_last(norm, 5, 1))),
            treat_whitespace_as_suffix=bool(_int(_last(trainer, 24, 0))),
            unk_id=_int(_last(trainer, 40, 0)),
            bos_id=_int(_last(trainer, 41, 1)),
            eos_id=_int(_last(trainer, 42, 2)),
            pad_id=_int(_last(trainer, 43, -1)),
        )
    except (_Bad, UnicodeDecodeError) as exc:
        raise TokenizerError(
            f"{path} is not a SentencePiece model ({exc}); copy tokenizer.model again"
        ) from None
    if not model.pieces:
        raise TokenizerError(f"{path} has no pieces; is it really a SentencePiece tokenizer.model?")
    return model
