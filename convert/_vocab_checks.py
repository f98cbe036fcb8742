"""Checks of a tokenizer's vocabulary before it is written to GGUF.

What llama.cpp (or edgestack's own GGUF check, ``edge_stack.formats.gguf._vocab``) would refuse
or abort on is refused here, while the tokenizer's file is still at hand to name: token ids that
are not whole numbers, two tokens with one id, a token text with a NUL character (llama.cpp reads
token texts as C strings and cuts them there: two texts then clash and it aborts), a BPE model
without merges or with merges that do not join two of its tokens. Without these checks the
converter wrote a GGUF that every ``edgestack ask`` then refused, saying only to re-convert it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from edge_stack.errors import TokenizerError

__all__ = ["check_merges", "check_texts", "checked_id", "shown", "vocab_by_id"]

_SHOWN = 40  # longest token text quoted in a message
_FIX = "fix the tokenizer, or save it again with transformers' save_pretrained"


def shown(text: object) -> str:
    """``text`` quoted for a one-line message (repr, at most :data:`_SHOWN` characters)."""
    quoted = repr(text)
    return quoted if len(quoted) <= _SHOWN else quoted[: _SHOWN - 4] + "...'"


def checked_id(value: Any, what: str) -> int:
    """``value`` as a token id: a whole number from 0 (not a float, bool or string).

    ``what`` names where it comes from ("vocab token 'a'", "added token '<s>'").
    """
    if isinstance(value, bool) or not isinstance(value, int):
        raise TokenizerError(
            f"tokenizer.json {what} has id {shown(value)}, expected a whole number; {_FIX}"
        )
    if value < 0:
        raise TokenizerError(f"tokenizer.json has a negative token id {value} ({what}); {_FIX}")
    return value


def vocab_by_id(vocab: Mapping[Any, Any]) -> dict[int, str]:
    """A tokenizer.json ``model.vocab`` (text -> id) as id -> text; two texts with one id (the
    second would silently replace the first) are refused."""
    by_id: dict[int, str] = {}
    for text, raw in vocab.items():
        i = checked_id(raw, f"vocab token {shown(text)}")
        if i in by_id:
            raise TokenizerError(
                f"tokenizer.json vocab gives id {i} to both {shown(by_id[i])} and {shown(text)}, "
                f"but every token needs an id of its own; {_FIX}"
            )
        by_id[i] = str(text)
    return by_id


def check_texts(tokens: Iterable[str]) -> None:
    """Refuse a token text with a NUL character: llama.cpp cuts token texts there (it reads them
    as C strings), so two tokens can end up the same and it aborts loading the model."""
    for i, text in enumerate(tokens):
        if "\0" in text:
            raise TokenizerError(
                f"token {i} {shown(text)} contains a NUL character (U+0000), where llama.cpp "
                "cuts token texts (it would read "
                f"{shown(text.split(chr(0), 1)[0]) if text[0] != chr(0) else 'an empty text'} "
                "and can abort loading the model); remove it from the tokenizer"
            )


def check_merges(
    merges: Sequence[str],
    tokens: Sequence[str],
    *,
    replaced: Mapping[str, tuple[int, str]] | None = None,
    holes: Sequence[int] = (),
) -> None:
    """Refuse BPE merges llama.cpp cannot use: none at all, or one whose halves are not two
    tokens of the final vocabulary (``tokens``). ``replaced`` maps a vocab text to (its id, the
    added token that took that id) and ``holes`` are ids no token has, to say why a merge's
    token is missing."""
    if not merges:
        raise TokenizerError(
            "tokenizer.json BPE model has no merges, which llama.cpp's BPE tokenizer needs (a "
            f"BPE tokenizer without merges was never trained); {_FIX}"
        )
    known = set(tokens)
    for rank, merge in enumerate(merges):
        for half in merge.split(" "):
            if half in known:
                continue
            why = "which is not a token of its vocabulary"
            if holes:
                why += f", where no token has id {holes[0]}"
            if replaced and half in replaced:
                i, added = replaced[half]
                why = f"whose id {i} the added token {shown(added)} takes"
            raise TokenizerError(
                f"tokenizer.json merge #{rank} {shown(merge)} names {shown(half)}, {why} "
                f"(llama.cpp needs every merge to join two tokens); {_FIX}"
            )
