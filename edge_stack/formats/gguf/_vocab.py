"""The vocabulary of a model GGUF, checked as llama.cpp's ``llama_vocab::impl::load`` reads it.

llama.cpp (``src/llama-vocab.cpp`` in llama-cpp-python 0.3.36) aborts the process on
``GGML_ASSERT(id_to_token.size() == token_to_id.size())`` when two tokens have the same text
(empty texts count as ``[EMPTY_<id>]``). A SentencePiece vocabulary without a token for every byte
crashes the first tokenization that falls back to bytes (``unordered_map::at`` thrown through the
C API); a BYTE token in a WordPiece vocabulary aborts when turned into text. It reads token texts
as C strings, so a text with a NUL byte is cut there (``a\\0b`` becomes ``a``: a duplicate, and the
same abort). A model without a vocabulary (``tokenizer.ggml.model`` ``none``/``no_vocab``) loads,
then aborts on its first tokenization. It refuses the file (a clean error, though its C API
gives no reason) on an unknown ``tokenizer.ggml.pre`` for a BPE vocabulary, a missing or
mistyped token list, a short scores or token-type array, missing BPE merges and BYTE tokens not
spelled ``<0xHH>``. Special token ids out of range and malformed
merges it accepts silently, with wrong tokens as the result; they are refused here too.

Everything runs on whole arrays (sets, numpy) so a 150k-token vocabulary costs milliseconds.
"""

from __future__ import annotations

import difflib
import re
from itertools import repeat

import gguf
import numpy as np

from ._pretypes import LLAMA_PRE_TYPES
from ._reader import Header, Unloadable, type_name, wrong_type

__all__ = ["check_vocab"]

_V = gguf.GGUFValueType
_TOK = gguf.Keys.Tokenizer

#: tokenizer.ggml.model values llama.cpp 0.3.36 knows
TOKENIZER_MODELS = (
    "no_vocab",
    "none",
    "llama",
    "bert",
    "gpt2",
    "hybriddna",
    "whitespace",
    "t5",
    "rwkv",
    "test",
    "plamo2",
    "gemma4",
)
_NO_VOCAB = ("no_vocab", "none")
_BPE = ("gpt2", "hybriddna", "whitespace", "gemma4")
_BPE_MERGES_OPTIONAL = ("gpt2", "hybriddna", "whitespace")  # with the kimi-k2 pre-tokenizer
_SPM = "llama"
_WPM = "bert"
_MERGES_OPTIONAL_PRE = "kimi-k2"  # the one BPE pre-tokenizer llama.cpp loads without merges
# llama.h's llama_token_type: UNDEFINED (0) to BYTE (6)
_TOKEN_TYPES = range(0, int(gguf.TokenType.BYTE) + 1)
_BYTE_TOKEN = re.compile(rb"<0x[0-9A-Fa-f]{2}>")

# Keys the vocabulary loader reads with get_key, and the one type it accepts for each.
_TYPED_KEYS: tuple[tuple[str, int], ...] = (
    (_TOK.MODEL, _V.STRING),
    (_TOK.PRE, _V.STRING),
    (_TOK.TOKEN_TYPE_COUNT, _V.UINT32),
    (_TOK.ADD_PREFIX, _V.BOOL),
    (_TOK.REMOVE_EXTRA_WS, _V.BOOL),
    (_TOK.ADD_BOS, _V.BOOL),
    (_TOK.ADD_EOS, _V.BOOL),
    (_TOK.ADD_SEP, _V.BOOL),
)
#: special token id keys llama.cpp reads (as uint32)
SPECIAL_ID_KEYS = (
    _TOK.BOS_ID,
    _TOK.EOS_ID,
    _TOK.EOT_ID,
    _TOK.EOM_ID,
    _TOK.UNK_ID,
    _TOK.SEP_ID,
    _TOK.PAD_ID,
    _TOK.MASK_ID,
    _TOK.FIM_PRE_ID,
    _TOK.FIM_SUF_ID,
    _TOK.FIM_MID_ID,
    _TOK.FIM_PAD_ID,
    _TOK.FIM_REP_ID,
    _TOK.FIM_SEP_ID,
    _TOK.PREFIX_ID,
    _TOK.SUFFIX_ID,
    _TOK.MIDDLE_ID,
)


def _check_types(header: Header) -> None:
    for key, wanted in _TYPED_KEYS:
        found = header.types.get(key)
        if found is not None and found != wanted:
            raise wrong_type(header, key, f"a {type_name(wanted)}")


def check_vocab(header: Header, arch: str) -> int:
    """Check the vocabulary llama.cpp would build; return its size (``n_vocab``).

    Checks: ``tokenizer.ggml.model`` one of :data:`TOKENIZER_MODELS` with a vocabulary (not
    ``none``/``no_vocab``); for a BPE vocabulary a ``tokenizer.ggml.pre`` llama.cpp knows
    (:data:`~._pretypes.LLAMA_PRE_TYPES`); a non-empty list of unique token texts without NUL
    bytes; ``scores`` (float32 or int32) and ``token_type`` (int32, values 0 to 6) with
    exactly one entry per token; BYTE tokens spelled ``<0xHH>`` (none in a WordPiece vocabulary);
    every special token id a uint32 below the token count; BPE merges present, each two known
    tokens separated by one space; a SentencePiece vocabulary with a token for each of the 256
    bytes. Limits: none beyond the file's own; the work is a few set and numpy operations.

    Raises:
        Unloadable: naming the key, the token id or merge number, and what was expected.
    """
    _check_types(header)
    model = header.metadata.get(_TOK.MODEL)
    if model is None:
        raise Unloadable(f"it has no {_TOK.MODEL}, which llama.cpp requires")
    if model not in TOKENIZER_MODELS:
        raise Unloadable(
            f"{_TOK.MODEL} is not a tokenizer llama.cpp knows (expected one of "
            f"{', '.join(TOKENIZER_MODELS)})"
        )
    if model in _NO_VOCAB:
        # llama.cpp loads it, then aborts (GGML_ASSERT type != LLAMA_VOCAB_TYPE_NONE) on the first
        # tokenization; edgestack tokenizes every prompt.
        raise Unloadable(
            f"{_TOK.MODEL} is {model!r}: the model has no vocabulary, so it cannot tokenize a "
            "prompt (llama.cpp aborts the process on the first one)"
        )
    if model in _BPE_MERGES_OPTIONAL:  # the BPE models whose pre-tokenizer llama.cpp reads
        _check_pre(header, model)
    tokens = _token_list(header)
    _check_no_nul(tokens)
    unique = set(tokens)
    _check_unique(tokens, unique)
    _check_scores_and_types(header, tokens, model)
    _check_special_ids(header, len(tokens))
    if model in _BPE:
        _check_merges(header, unique, model)
    if model == _SPM:
        _check_byte_tokens(unique)
    _check_named_tokens(header, unique)
    return len(tokens)


#: general.name parts for which llama.cpp looks tokens up with unordered_map::at (an uncaught
#: exception: the load fails) to set their attributes (llama_vocab::impl::load, 0.3.36)
NAME_TOKEN_RULES: tuple[tuple[tuple[str, ...], tuple[bytes, ...]], ...] = (
    (("phi-3", "phi3"), (b"</s>", b"<unk>", b"<s>", b"<|endoftext|>")),
)


def _check_named_tokens(header: Header, unique: set[bytes]) -> None:
    name = header.metadata.get(gguf.Keys.General.NAME)
    if not isinstance(name, str):
        return
    lowered = name.lower()
    for parts, needed in NAME_TOKEN_RULES:
        if any(p in lowered for p in parts):
            missing = [t.decode() for t in needed if t not in unique]
            if missing:
                raise Unloadable(
                    f"{gguf.Keys.General.NAME} {name!r} makes llama.cpp look up token "
                    f"{missing[0]!r}, which {_TOK.LIST} lacks (llama.cpp fails to load it); "
                    "rename the model"
                )


def _shown(text: str | bytes, limit: int = 40) -> str:
    """A metadata value quoted for a one-line message: ASCII repr, at most ``limit`` characters."""
    shown = ascii(text.decode("utf-8", "replace") if isinstance(text, bytes) else text)
    return shown if len(shown) <= limit else shown[: limit - 4] + "...'"


def _check_pre(header: Header, model: object) -> None:
    pre = header.metadata.get(_TOK.PRE)
    if not isinstance(pre, str):
        return  # absent (llama.cpp uses 'default'); a wrong type is refused with the types
    seen = pre.split("\0", 1)[0]  # llama.cpp reads it as a C string
    if not seen or seen in LLAMA_PRE_TYPES:
        return
    close = difflib.get_close_matches(seen.lower(), LLAMA_PRE_TYPES, n=1)
    hint = f", e.g. {close[0]!r}" if close else ""
    raise Unloadable(
        f"{_TOK.PRE} is {_shown(seen)}, not one of the {len(LLAMA_PRE_TYPES)} pre-tokenizer "
        f"types llama.cpp knows for a BPE vocabulary ({model}){hint} (llama.cpp fails to load "
        "it without saying why)"
    )


def _check_no_nul(tokens: list[bytes]) -> None:
    if b"\0" not in b"".join(tokens):
        return
    i = next(i for i, text in enumerate(tokens) if b"\0" in text)
    cut = tokens[i].split(b"\0", 1)[0]
    raise Unloadable(
        f"token {i} of {_TOK.LIST} holds a NUL byte, but llama.cpp reads token texts as C "
        f"strings: it would cut it to {_shown(cut) if cut else 'nothing'} (aborting the process "
        "when another token reads the same)"
    )


def _token_list(header: Header) -> list[bytes]:
    key = _TOK.LIST
    if key not in header.types:
        raise Unloadable(f"it has no {key}, which llama.cpp requires")
    if key not in header.strings:
        raise wrong_type(header, key, "an array of strings")
    tokens = header.strings[key]
    if not tokens:
        raise Unloadable(f"{key} is empty, expected at least one token")
    return tokens


def _check_unique(tokens: list[bytes], unique: set[bytes]) -> None:
    if b"" in unique:
        # llama.cpp renames empty texts to "[EMPTY_<id>]", which could clash with a real token.
        tokens = [t or f"[EMPTY_{i}]".encode() for i, t in enumerate(tokens)]
        unique = set(tokens)
    if len(unique) == len(tokens):
        return
    first: dict[bytes, int] = {}
    for i, text in enumerate(tokens):
        if text in first:
            raise Unloadable(
                f"{_TOK.LIST} has the same text at ids {first[text]} and {i}, but every token "
                "text must be unique (llama.cpp aborts on duplicates)"
            )
        first[text] = i


def _check_scores_and_types(header: Header, tokens: list[bytes], model: object) -> None:
    n = len(tokens)
    for key, allowed in ((_TOK.SCORES, (_V.FLOAT32, _V.INT32)), (_TOK.TOKEN_TYPE, (_V.INT32,))):
        if key not in header.types:
            continue
        if header.types[key] != _V.ARRAY or header.item_types[key] not in allowed:
            wanted = " or ".join(type_name(t) for t in allowed)
            raise wrong_type(header, key, f"an array of {wanted}")
        if len(header.numbers[key]) != n:
            raise Unloadable(
                f"{key} has {len(header.numbers[key])} entries, but {_TOK.LIST} has {n} tokens "
                "(expected one per token)"
            )
    if _TOK.TOKEN_TYPE not in header.numbers:
        return
    types = header.numbers[_TOK.TOKEN_TYPE]
    bad = np.flatnonzero((types < _TOKEN_TYPES.start) | (types >= _TOKEN_TYPES.stop))
    if len(bad):
        raise Unloadable(
            f"{_TOK.TOKEN_TYPE} of token {bad[0]} is {types[bad[0]]}, expected "
            f"{_TOKEN_TYPES.start} to {_TOKEN_TYPES.stop - 1} (llama_token_type)"
        )
    for i in np.flatnonzero(types == int(gguf.TokenType.BYTE)):
        if model == _WPM:
            raise Unloadable(
                f"token {i} has {_TOK.TOKEN_TYPE} BYTE, which a WordPiece vocabulary cannot have "
                "(llama.cpp aborts when it turns that token into text)"
            )
        if not _BYTE_TOKEN.fullmatch(tokens[i]):
            raise Unloadable(
                f"token {i} has {_TOK.TOKEN_TYPE} BYTE but is not spelled <0xHH>, so llama.cpp "
                "cannot turn it into text"
            )


def _check_special_ids(header: Header, n: int) -> None:
    for key in SPECIAL_ID_KEYS:
        if key not in header.types:
            continue
        if header.types[key] != _V.UINT32:
            raise wrong_type(header, key, "a uint32")
        value = header.metadata[key]
        assert isinstance(value, int)
        if value >= n:
            raise Unloadable(
                f"{key} is {value}, but {_TOK.LIST} has only {n} tokens (ids 0 to {n - 1})"
            )


def _check_merges(header: Header, unique: set[bytes], model: object) -> None:
    key = _TOK.MERGES
    if key not in header.types:
        optional = model in _BPE_MERGES_OPTIONAL
        if optional and header.metadata.get(_TOK.PRE) == _MERGES_OPTIONAL_PRE:
            return
        raise Unloadable(f"it has no {key}, which llama.cpp's BPE tokenizer ({model}) requires")
    if key not in header.strings:
        raise wrong_type(header, key, "an array of strings")
    merges = header.strings[key]
    # Whole-array operations: one space per merge, and every half a known, non-empty token.
    spaces = list(map(bytes.count, merges, repeat(b" ")))
    if spaces.count(1) == len(merges):
        halves = set(b" ".join(merges).split(b" "))
        if b"" not in halves and halves <= unique:
            return
    for i, merge in enumerate(merges):
        left, space, right = merge.partition(b" ")
        if not (space and left and right) or b" " in right or not {left, right} <= unique:
            raise Unloadable(
                f"{key} entry {i} is not two known tokens separated by one space "
                "(llama.cpp's BPE tokenizer needs 'left right' pairs from tokenizer.ggml.tokens)"
            )


def _check_byte_tokens(unique: set[bytes]) -> None:
    # SentencePiece falls back to one token per byte for text it has no piece for: <0xHH>, or
    # the byte itself; without either, llama_tokenize throws through the C API (a crash).
    for byte in range(256):
        if f"<0x{byte:02X}>".encode() not in unique and (byte == 0 or bytes([byte]) not in unique):
            raise Unloadable(
                f"{_TOK.LIST} has no token <0x{byte:02X}> for byte {byte}, which llama.cpp's "
                "SentencePiece tokenizer falls back to"
            )
