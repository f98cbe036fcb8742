"""Choose llama.cpp's pre-tokenizer type (``tokenizer.ggml.pre``) from a tokenizer's structure.

A byte-level BPE tokenizer splits text into words before merging. In ``tokenizer.json`` that
split is described by the normalizer, the pre-tokenizer (``ByteLevel``, ``Split`` with a regex,
``Digits``, or a ``Sequence`` of them) and the BPE model's ``ignore_merges`` flag. llama.cpp
instead has a fixed list of pre-tokenizer types, each a list of regexes applied in order
(``llm_tokenizer_bpe`` in ``src/llama-vocab.cpp``) plus a few flags (``ignore_merges``).

We reduce the tokenizer's structure to a canonical list of split steps and look it up in a table
of the llama.cpp types whose regexes we checked against the llama.cpp vendored in
llama-cpp-python 0.3.36. Nothing is guessed from hashes of known vocabularies, so a tokenizer a user
trained with the same structure converts the same way; any other structure is an error, because
a wrong pre-tokenizer silently changes every token boundary.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from edge_stack.errors import TokenizerError

#: the split regex ``tokenizers``' ``ByteLevel(use_regex=True)`` applies (GPT-2's). llama.cpp's
#: GPT2 type uses the same pattern without the final ``|\s+`` and its hand-written matcher
#: (``unicode_regex_split_custom_gpt2``) covers that trailing-whitespace case itself.
GPT2_PATTERN = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"

#: Llama 3's Split pattern (tokenizer.json spelling); llama.cpp's LLAMA3 type uses it with the
#: case-insensitive group spelled out as ``(?:'[sS]|'[tT]|...)``.
LLAMA3_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

#: Qwen2's Split pattern: Llama 3's with single digits (``\p{N}`` instead of ``\p{N}{1,3}``).
QWEN2_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# The two spellings of the case-insensitive contractions; both mean the same thing.
_CONTRACTIONS_I = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)"
_CONTRACTIONS_EXPLICIT = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])"

# A step is ("regex", pattern) or ("digits", "individual"); a structure is a tuple of steps.
Step = tuple[str, str]


@dataclass(frozen=True)
class PreType:
    """One llama.cpp pre-tokenizer type and the tokenizer.json structure it reproduces."""

    name: str
    steps: tuple[Step, ...]
    ignore_merges: bool
    #: what llama.cpp applies for this type (src/llama-vocab.cpp), kept here as the evidence
    llama_cpp_regexes: tuple[str, ...]
    family: str


_LLAMA_CPP_GPT2 = GPT2_PATTERN.removesuffix(r"|\s+")
_LLAMA_CPP_LLAMA3 = LLAMA3_PATTERN.replace(_CONTRACTIONS_I, _CONTRACTIONS_EXPLICIT)
_LLAMA_CPP_QWEN2 = QWEN2_PATTERN.replace(_CONTRACTIONS_I, _CONTRACTIONS_EXPLICIT)

#: every structure we convert; the first whose steps and ignore_merges match wins
PRE_TYPES: tuple[PreType, ...] = (
    # "gpt-2" -> LLAMA_VOCAB_PRE_TYPE_GPT2 (also mpt, olmo): the ByteLevel regex alone.
    PreType("gpt-2", (("regex", GPT2_PATTERN),), False, (_LLAMA_CPP_GPT2,), "GPT-2/Pythia"),
    # "smollm" -> LLAMA_VOCAB_PRE_TYPE_SMOLLM (shared with starcoder, refact, ...): every digit
    # on its own ("\p{N}"), then the GPT-2 regex.
    PreType(
        "smollm",
        (("digits", "individual"), ("regex", GPT2_PATTERN)),
        False,
        (r"\p{N}", _LLAMA_CPP_GPT2),
        "SmolLM",
    ),
    # "llama-bpe" -> LLAMA_VOCAB_PRE_TYPE_LLAMA3, which also sets ignore_merges.
    PreType("llama-bpe", (("regex", LLAMA3_PATTERN),), True, (_LLAMA_CPP_LLAMA3,), "Llama 3"),
    # "smaug-bpe" -> LLAMA_VOCAB_PRE_TYPE_SMAUG: the same regex without ignore_merges, which is what
    # a Llama 3-style tokenizer trained with tokenizers' defaults has.
    PreType(
        "smaug-bpe",
        (("regex", LLAMA3_PATTERN),),
        False,
        (_LLAMA_CPP_LLAMA3,),
        "Llama 3 (without ignore_merges)",
    ),
    # "qwen2" -> LLAMA_VOCAB_PRE_TYPE_QWEN2.
    PreType("qwen2", (("regex", QWEN2_PATTERN),), False, (_LLAMA_CPP_QWEN2,), "Qwen2"),
)


def _canonical_regex(pattern: str) -> str:
    return pattern.replace(_CONTRACTIONS_EXPLICIT, _CONTRACTIONS_I)


def _short(obj: Any, limit: int = 120) -> str:
    text = json.dumps(obj, ensure_ascii=False)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _supported() -> str:
    return (
        "supported structures: GPT-2/Pythia (ByteLevel with its regex), SmolLM (Digits individual "
        "+ ByteLevel), Llama 3 (Split with the Llama 3 regex + ByteLevel without regex), Qwen2 "
        "(Split with the Qwen2 regex + ByteLevel without regex)"
    )


def check_normalizer(normalizer: Any) -> str | None:
    """Accept no normalizer or NFC only, and return it ("NFC" or None).

    llama.cpp does not normalize byte-level BPE input, so the converter records NFC in the GGUF
    (``edge_stack.formats.gguf._keys.TOKENIZER_NORMALIZER``) and edgestack's runtime applies it first.
    """
    if normalizer is None:
        return None
    kind = normalizer.get("type") if isinstance(normalizer, dict) else None
    if kind == "NFC":
        return "NFC"
    if kind == "Sequence" and all(
        isinstance(n, dict) and n.get("type") == "NFC" for n in normalizer.get("normalizers", [])
    ):
        return "NFC" if normalizer.get("normalizers") else None
    raise TokenizerError(
        f"tokenizer.json has normalizer {_short(normalizer)}, which llama.cpp does not apply to "
        "byte-level BPE; only no normalizer or NFC can be converted exactly"
    )


def _steps(pre_tokenizer: Any) -> tuple[Step, ...]:
    """Flatten the pre-tokenizer into canonical split steps; raise on anything we cannot map."""
    if pre_tokenizer is None:
        raise TokenizerError(
            "tokenizer.json has no pre_tokenizer, so it is not byte-level BPE; " + _supported()
        )
    parts = (
        pre_tokenizer.get("pretokenizers", [])
        if pre_tokenizer.get("type") == "Sequence"
        else [pre_tokenizer]
    )
    steps: list[Step] = []
    for index, part in enumerate(parts):
        kind = part.get("type")
        if kind == "ByteLevel":
            if index != len(parts) - 1:
                raise TokenizerError(
                    f"tokenizer.json pre_tokenizer has ByteLevel before other steps "
                    f"({_short(pre_tokenizer)}); llama.cpp needs it last. {_supported()}"
                )
            if part.get("add_prefix_space", False):
                raise TokenizerError(
                    "tokenizer.json pre_tokenizer ByteLevel has add_prefix_space=true; llama.cpp "
                    "never adds a prefix space to byte-level BPE, so this cannot be converted "
                    "exactly. " + _supported()
                )
            if part.get("use_regex", True):
                steps.append(("regex", GPT2_PATTERN))
            return tuple(steps)
        if kind == "Split":
            pattern = part.get("pattern", {})
            regex = pattern.get("Regex") if isinstance(pattern, dict) else None
            if regex is None or part.get("behavior") != "Isolated" or part.get("invert", False):
                raise TokenizerError(
                    f"tokenizer.json pre_tokenizer has a Split step {_short(part)}; only an "
                    "Isolated, non-inverted regex split can be converted. " + _supported()
                )
            steps.append(("regex", _canonical_regex(regex)))
        elif kind == "Digits":
            steps.append(("digits", "individual" if part.get("individual_digits") else "grouped"))
        else:
            raise TokenizerError(
                f"tokenizer.json pre_tokenizer step {kind!r} is not supported. " + _supported()
            )
    raise TokenizerError(
        f"tokenizer.json pre_tokenizer {_short(pre_tokenizer)} has no ByteLevel step, so it is "
        "not byte-level BPE; " + _supported()
    )


def match_pre_type(tokenizer_json: dict[str, Any]) -> PreType:
    """The :class:`PreType` whose llama.cpp regexes reproduce ``tokenizer_json``'s splitting."""
    check_normalizer(tokenizer_json.get("normalizer"))
    steps = _steps(tokenizer_json.get("pre_tokenizer"))
    model = tokenizer_json.get("model") or {}
    ignore_merges = bool(model.get("ignore_merges", False))
    for pre in PRE_TYPES:
        if pre.steps == steps and pre.ignore_merges == ignore_merges:
            return pre
    described = " + ".join(
        f"Split({value})" if kind == "regex" else f"Digits({value})" for kind, value in steps
    )
    raise TokenizerError(
        f"tokenizer.json splits text as [{described}] with ignore_merges={ignore_merges}, which "
        f"matches no llama.cpp pre-tokenizer type edgestack knows; {_supported()}"
    )


def detect_pre(tokenizer_json: dict[str, Any]) -> str:
    """llama.cpp's ``tokenizer.ggml.pre`` value for a byte-level BPE ``tokenizer.json`` (parsed).

    Chosen from the structure (normalizer, pre-tokenizer steps and their regexes and flags, the
    model's ``ignore_merges``), never from the vocabulary. Raises :class:`TokenizerError` for a
    structure llama.cpp cannot reproduce exactly.
    """
    return match_pre_type(tokenizer_json).name
