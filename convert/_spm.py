"""SentencePiece-style tokenizers as llama.cpp's ``llama`` (SPM) vocabulary.

llama.cpp's SPM tokenizer (``llm_tokenizer_spm_session`` in ``src/llama-vocab.cpp``) replaces
spaces by ``▁``, optionally puts one ``▁`` in front of each text (``add_space_prefix``), splits the
text into characters and then, over and over, merges the adjacent pair whose concatenation is a
token with the highest score (leftmost on ties); symbols that are not tokens become byte tokens
``<0xHH>``. That is SentencePiece's BPE algorithm, so it reproduces:

- a SentencePiece BPE ``tokenizer.model`` (Llama 2, TinyLlama, Mistral, Gemma): its own scores;
- a ``tokenizer.json`` BPE model with ``byte_fallback`` (what transformers makes of those): a
  token's score is minus the rank of the first merge that makes it, which orders merges exactly
  as the BPE model does, provided every pair of tokens whose concatenation is a token is one of
  the merges (llama.cpp merges any such pair; checked, else a :class:`TokenizerError`).

Unigram models are refused: their Viterbi segmentation is llama.cpp's ``t5`` tokenizer, which has
no byte fallback, and the ``llama`` tokenizer's greedy merging is not Viterbi.

Where the space prefix goes: SentencePiece itself and transformers' legacy ``Prepend("▁")``
normalizer put one ``▁`` in front of every text (llama.cpp's ``add_space_prefix``). transformers
5's Llama tokenizers (``Metaspace(prepend_scheme="first")``) do not when the text already starts
with a space; that is recorded under ``edge_stack.formats.gguf._keys.TOKENIZER_SPACE_PREFIX``
and edgestack's runtime then drops that one space before llama.cpp adds its own.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_stack.errors import TokenizerError

from ._spm_proto import SpmModel, read_spm_model
from ._vocab_checks import check_texts, checked_id, shown, vocab_by_id

__all__ = ["SPACE", "SpmParts", "is_spm_json", "spm_from_json", "spm_from_model"]

logger = logging.getLogger(__name__)

#: SentencePiece's visible space
SPACE = "▁"
# gguf.TokenType values (the same numbers as SentencePiece's piece types)
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
_BYTE_TOKEN = re.compile(r"<0x[0-9A-F]{2}>")
# transformers 5 tokenizer classes that rebuild the pipeline instead of reading tokenizer.json's
# normalizer and pre-tokenizer (models/*/tokenization_*.py): class -> space prefix rule
_CLASS_PREFIX = {"LlamaTokenizer": "first", "CodeLlamaTokenizer": "first", "GemmaTokenizer": "none"}
_SPECIAL_NAMES = ("bos", "eos", "unk", "pad")


@dataclass(frozen=True)
class SpmParts:
    """A ``llama`` vocabulary: ``n_vocab`` tokens with scores and types, and its settings."""

    tokens: tuple[str, ...]
    scores: tuple[float, ...]
    types: tuple[int, ...]
    #: llama.cpp's tokenizer.ggml.add_space_prefix
    add_space_prefix: bool
    #: "first" when no prefix goes in front of a text that starts with a space, else None
    prefix_rule: str | None
    special: Mapping[str, int | None]
    add_bos: bool
    add_eos: bool


def is_spm_json(data: Mapping[str, Any]) -> bool:
    """Whether a parsed tokenizer.json is SentencePiece-style rather than byte-level BPE."""
    model = data.get("model") or {}
    if model.get("type") == "Unigram" or model.get("byte_fallback"):
        return True
    pre = data.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]
    return any(isinstance(s, dict) and s.get("type") == "Metaspace" for s in steps)


def _class_rule(config: Mapping[str, Any]) -> str | None:
    name = str(config.get("tokenizer_class") or "").removesuffix("Fast")
    rule = _CLASS_PREFIX.get(name)
    if rule == "first" and config.get("add_prefix_space") is False:
        return "none"
    return rule


def _json_rule(data: Mapping[str, Any]) -> str:
    """The space prefix of tokenizer.json's own normalizer + pre-tokenizer: always/first/none."""
    normalizer = data.get("normalizer")
    norms = (
        normalizer.get("normalizers", [])
        if isinstance(normalizer, dict) and normalizer.get("type") == "Sequence"
        else [normalizer]
        if normalizer
        else []
    )
    rule = "none"
    replaced = False
    for norm in norms:
        kind = norm.get("type") if isinstance(norm, dict) else None
        if kind == "Prepend" and norm.get("prepend") == SPACE and not replaced:
            rule = "always"
        elif (
            kind == "Replace"
            and norm.get("pattern") == {"String": " "}
            and norm.get("content") == SPACE
        ):
            replaced = True
        else:
            raise TokenizerError(
                f"tokenizer.json has normalizer step {kind!r}, which llama.cpp's SentencePiece "
                "tokenizer does not apply; only Prepend('▁') and Replace(' ', '▁') convert exactly"
            )
    pre = data.get("pre_tokenizer")
    steps = (
        pre.get("pretokenizers", [])
        if isinstance(pre, dict) and pre.get("type") == "Sequence"
        else [pre]
        if pre
        else []
    )
    for step in steps:
        kind = step.get("type") if isinstance(step, dict) else None
        if kind == "Metaspace" and step.get("replacement", SPACE) == SPACE:
            scheme = step.get("prepend_scheme") or (
                "always" if step.get("add_prefix_space", True) else "never"
            )
            rule = {"always": "always", "first": "first"}.get(scheme, "none")
            replaced = True
            if step.get("split", False):
                rule = f"{rule}+split"
        elif kind == "Split" and step.get("pattern") == {"String": " "}:
            continue  # Gemma's: after Replace there is no " " left to split on
        else:
            raise TokenizerError(
                f"tokenizer.json has pre-tokenizer step {kind!r}, which llama.cpp's SentencePiece "
                "tokenizer does not apply; only Metaspace('▁') converts exactly"
            )
    if not replaced:
        raise TokenizerError(
            "tokenizer.json never turns spaces into '▁' (no Replace normalizer, no Metaspace "
            "pre-tokenizer), but llama.cpp's SentencePiece tokenizer always does"
        )
    return rule


def _post_flags(proc: Any, ids: Mapping[str, int]) -> tuple[bool, int | None, bool, int | None]:
    """(add_bos, bos id, add_eos, eos id) from a TemplateProcessing post-processor."""
    if not isinstance(proc, dict):
        return False, None, False, None
    if proc.get("type") == "Sequence":
        out: tuple[bool, int | None, bool, int | None] = (False, None, False, None)
        for inner in proc.get("processors", []):
            flags = _post_flags(inner, ids)
            out = (
                out[0] or flags[0],
                flags[1] if flags[0] else out[1],
                out[2] or flags[2],
                flags[3] if flags[2] else out[3],
            )
        return out
    if proc.get("type") != "TemplateProcessing":
        return False, None, False, None
    single = proc.get("single") or []
    seq = [i for i, item in enumerate(single) if "Sequence" in item]
    if len(seq) != 1:
        raise TokenizerError(f"tokenizer.json post_processor template {single!r} is not understood")
    lead, trail = single[: seq[0]], single[seq[0] + 1 :]
    if len(lead) > 1 or len(trail) > 1:
        raise TokenizerError(
            "tokenizer.json post_processor adds several tokens around the text; llama.cpp can add "
            "one bos and one eos token only"
        )

    def token_id(item: dict[str, Any]) -> int | None:
        name = item["SpecialToken"]["id"]
        found = ((proc.get("special_tokens") or {}).get(name) or {}).get("ids") or []
        return int(found[0]) if len(found) == 1 else ids.get(name)

    bos = token_id(lead[0]) if lead else None
    eos = token_id(trail[0]) if trail else None
    return bos is not None, bos, eos is not None, eos


def _special_ids(
    config: Mapping[str, Any], special_map: Mapping[str, Any], ids: Mapping[str, int]
) -> dict[str, int | None]:
    found: dict[str, int | None] = {}
    for name in _SPECIAL_NAMES:
        value = config.get(f"{name}_token", special_map.get(f"{name}_token"))
        if isinstance(value, dict):
            value = value.get("content")
        found[name] = ids.get(value) if isinstance(value, str) else None
        if isinstance(value, str) and found[name] is None:
            logger.warning(
                "%s_token %r is not a token of the tokenizer; leaving it unset", name, value
            )
    return found


def _pad(
    tokens: list[str], scores: list[float], types: list[int], n_vocab: int
) -> tuple[tuple[str, ...], tuple[float, ...], tuple[int, ...]]:
    if len(tokens) > n_vocab:
        raise TokenizerError(
            f"config.json vocab_size is {n_vocab} but the tokenizer has {len(tokens)} tokens; the "
            "model's embedding must have a row per token"
        )
    for i in range(len(tokens), n_vocab):
        tokens.append(f"[PAD{i}]")
        scores.append(-1e9)
        types.append(UNUSED)
    check_texts(tokens)
    seen: dict[str, int] = {}
    for i, text in enumerate(tokens):
        if text in seen:
            raise TokenizerError(
                f"token text {text!r} appears twice (ids {seen[text]} and {i}); llama.cpp needs "
                "every token text to be unique"
            )
        seen[text] = i
    return tuple(tokens), tuple(scores), tuple(types)


def _check_bytes(tokens: Sequence[str], types: Sequence[int], where: str) -> None:
    have = {t for t, k in zip(tokens, types, strict=True) if k == BYTE}
    missing = [b for b in range(256) if f"<0x{b:02X}>" not in have]
    if missing:
        raise TokenizerError(
            f"{where} has no byte token <0x{missing[0]:02X}> ({len(missing)} of 256 missing): "
            "without byte_fallback, text outside the vocabulary becomes <unk>, which llama.cpp's "
            "SentencePiece tokenizer cannot reproduce; retrain with byte_fallback=True"
        )


def _added(
    tokens: list[str], types: list[int], added: Sequence[Mapping[str, Any]], where: str
) -> None:
    """Added tokens: special ones are control tokens, others user-defined (split out first)."""
    for token in added:
        i = checked_id(token.get("id"), f"added token {shown(token.get('content'))}")
        if i >= len(tokens):
            tokens.extend(f"[PAD{j}]" for j in range(len(tokens), i + 1))
            types.extend([UNUSED] * (i + 1 - len(types)))
        if types[i] in (UNKNOWN, BYTE):
            continue
        tokens[i] = str(token["content"])
        types[i] = CONTROL if token.get("special") else USER_DEFINED
        if token.get("lstrip") or token.get("rstrip") or token.get("single_word"):
            logger.warning(
                "%s: added token %r strips whitespace or matches single words only; llama.cpp "
                "matches it anywhere without stripping",
                where,
                token["content"],
            )


def spm_from_json(
    data: Mapping[str, Any],
    config: Mapping[str, Any],
    special_map: Mapping[str, Any],
    *,
    n_vocab: int,
) -> SpmParts:
    """A ``llama`` vocabulary from a SentencePiece-style ``tokenizer.json`` (parsed)."""
    model = data.get("model") or {}
    if model.get("type") == "Unigram":
        raise TokenizerError(
            "tokenizer.json is a Unigram model; llama.cpp's SentencePiece ('llama') tokenizer "
            "merges like BPE and its Unigram ('t5') tokenizer has no byte fallback, so neither "
            "reproduces it exactly; supported are byte-level BPE and SentencePiece BPE tokenizers"
        )
    if model.get("type") not in ("BPE", None) or not model.get("byte_fallback"):
        raise TokenizerError(
            "tokenizer.json has a Metaspace pre-tokenizer but its model is not BPE with "
            "byte_fallback; llama.cpp's SentencePiece tokenizer needs byte tokens <0x00>..<0xFF> "
            "for text outside the vocabulary"
        )
    for key in ("continuing_subword_prefix", "end_of_word_suffix", "dropout"):
        if model.get(key):
            raise TokenizerError(
                f"tokenizer.json BPE model sets {key}={model[key]!r}, which llama.cpp does not "
                "implement"
            )
    rule = _class_rule(config) or _json_rule(data)
    vocab = model.get("vocab")
    if not isinstance(vocab, dict) or not vocab:
        raise TokenizerError("tokenizer.json BPE model has no vocab")
    by_id = vocab_by_id(vocab)
    size = max(by_id) + 1
    tokens = [f"[PAD{i}]" for i in range(size)]
    types = [UNUSED] * size
    for i, text in by_id.items():
        tokens[i] = text
        types[i] = BYTE if _BYTE_TOKEN.fullmatch(text) else NORMAL
    unk = model.get("unk_token")
    if unk in vocab:
        types[int(vocab[unk])] = UNKNOWN
    _added(tokens, types, data.get("added_tokens") or [], "tokenizer.json")
    _check_bytes(tokens, types, "tokenizer.json")
    scores = _merge_scores(tokens, types, model.get("merges") or [], rule.endswith("+split"))
    ids = {t: i for i, t in enumerate(tokens)}
    special = _special_ids(config, special_map, ids)
    if special["unk"] is None and isinstance(unk, str):
        special["unk"] = ids.get(unk)
    add_bos, bos, add_eos, eos = _post_flags(data.get("post_processor"), ids)
    if "add_bos_token" in config or "add_eos_token" in config:
        # transformers rebuilds the post-processor from these when the config names them
        add_bos = bool(config.get("add_bos_token", False))
        add_eos = bool(config.get("add_eos_token", False))
        bos, eos = special["bos"], special["eos"]
    for name, flag, token_id in (("bos", add_bos, bos), ("eos", add_eos, eos)):
        if flag and token_id is not None:
            special[name] = token_id
    rule = rule.removesuffix("+split")
    all_tokens, all_scores, all_types = _pad(tokens, scores, types, n_vocab)
    return SpmParts(
        tokens=all_tokens,
        scores=all_scores,
        types=all_types,
        add_space_prefix=rule in ("always", "first"),
        prefix_rule="first" if rule == "first" else None,
        special=special,
        add_bos=add_bos,
        add_eos=add_eos,
    )


def _merge_scores(
    tokens: Sequence[str], types: Sequence[int], merges: Sequence[Any], split: bool
) -> list[float]:
    """Scores under which llama.cpp's greedy merging makes the BPE model's merges.

    A token made by merge number ``r`` (its first) scores ``-r``; other tokens score below every
    merge. Raises when llama.cpp would merge a pair the BPE model never merges.
    """
    rank: dict[tuple[str, str], int] = {}
    made: dict[str, int] = {}
    for r, merge in enumerate(merges):
        parts = merge.split(" ") if isinstance(merge, str) else [str(p) for p in merge]
        if len(parts) != 2 or not all(parts):
            raise TokenizerError(f"tokenizer.json merge #{r} {merge!r} is not a pair of tokens")
        pair = (parts[0], parts[1])
        rank.setdefault(pair, r)
        made.setdefault(pair[0] + pair[1], r)
    n = len(merges)
    # Only normal tokens take part in merging: user-defined and control tokens are split out of
    # the text before it (and byte tokens are never formed from characters).
    mergeable = {t for t, k in zip(tokens, types, strict=True) if k == NORMAL}
    scores: list[float] = []
    for i, (text, kind) in enumerate(zip(tokens, types, strict=True)):
        first = made.get(text)
        scores.append(float(-first) if first is not None and kind == NORMAL else float(-n - i))
        if kind != NORMAL or len(text) < 2:
            continue
        for cut in range(1, len(text)):
            left, right = text[:cut], text[cut:]
            if left in mergeable and right in mergeable and (left, right) not in rank:
                if split and right.startswith(SPACE):
                    continue  # Metaspace(split=True) never lets a word merge across a '▁'
                raise TokenizerError(
                    f"tokenizer.json has tokens {left!r}, {right!r} and {text!r} but no merge "
                    f"'{left} {right}': llama.cpp's SentencePiece tokenizer merges any two tokens "
                    "that make a token, so it would tokenize differently; this BPE was not made "
                    "from a SentencePiece model (convert its tokenizer.model instead, if it has one)"
                )
    if split and any(SPACE in t[1:] for t, k in zip(tokens, types, strict=True) if k == NORMAL):
        raise TokenizerError(
            "tokenizer.json's Metaspace splits words at '▁' but the vocabulary has tokens with "
            "'▁' inside; llama.cpp's SentencePiece tokenizer would merge across words"
        )
    return scores


def spm_from_model(
    path: Path,
    config: Mapping[str, Any],
    special_map: Mapping[str, Any],
    added: Sequence[Mapping[str, Any]],
    *,
    n_vocab: int,
) -> SpmParts:
    """A ``llama`` vocabulary from a SentencePiece ``tokenizer.model`` (and the folder's configs)."""
    spm: SpmModel = read_spm_model(path)
    problem = None
    if spm.model_type != "bpe":
        problem = (
            f"is a SentencePiece {spm.model_type} model; llama.cpp's SentencePiece tokenizer "
            "reproduces BPE models only (Llama 2, Mistral, Gemma)"
        )
    elif spm.normalizer != "identity":
        problem = (
            f"normalizes text with rule {spm.normalizer!r}, which llama.cpp does not apply; only "
            "'identity' converts exactly (train with normalization_rule_name='identity')"
        )
    elif spm.remove_extra_whitespaces:
        problem = (
            "removes extra whitespace (remove_extra_whitespaces), which llama.cpp does not do; "
            "train with remove_extra_whitespaces=False"
        )
    elif not spm.escape_whitespaces or spm.treat_whitespace_as_suffix:
        problem = "does not mark spaces as a '▁' prefix, which llama.cpp always does"
    if problem:
        raise TokenizerError(f"{path} {problem}")
    tokens, scores, types = list(spm.pieces), list(spm.scores), list(spm.types)
    _added(tokens, types, added, str(path))
    while len(scores) < len(tokens):
        scores.append(-1000.0)
    _check_bytes(tokens, types, str(path))
    ids = {t: i for i, t in enumerate(tokens)}
    special = _special_ids(config, special_map, ids)
    for name, sp_id in (("bos", spm.bos_id), ("eos", spm.eos_id), ("unk", spm.unk_id)):
        if special[name] is None and 0 <= sp_id < len(tokens):
            special[name] = sp_id
    if special["pad"] is None and 0 <= spm.pad_id < len(tokens):
        special["pad"] = spm.pad_id
    rule = _class_rule(config) or ("always" if spm.add_dummy_prefix else "none")
    all_tokens, all_scores, all_types = _pad(tokens, scores, types, n_vocab)
    return SpmParts(
        tokens=all_tokens,
        scores=all_scores,
        types=all_types,
        add_space_prefix=rule in ("always", "first"),
        prefix_rule="first" if rule == "first" else None,
        special=special,
        add_bos=bool(config.get("add_bos_token", False)),
        add_eos=bool(config.get("add_eos_token", False)),
    )
