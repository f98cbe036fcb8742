"""A Hugging Face byte-level BPE tokenizer (``tokenizer.json``) as GGUF ``tokenizer.*`` metadata.

:func:`load_vocab` reads ``tokenizer.json`` (and ``tokenizer_config.json``,
``special_tokens_map.json`` and ``chat_template.jinja`` when present) into a :class:`Vocab`;
:meth:`Vocab.write` adds it to a ``gguf.GGUFWriter``. The GGUF must make llama.cpp tokenize
exactly like transformers does, so everything that changes token boundaries is taken from the
tokenizer itself:

- the pre-tokenizer type from its structure (:func:`detect_pre`, see ``_pretokenizer``);
- tokens in id order, added tokens as control (special) or user-defined (not special) tokens,
  which llama.cpp splits out of text the way ``tokenizers`` does;
- whether a bos/eos token is added, from the post-processor: transformers 5 ignores
  ``add_bos_token`` in ``tokenizer_config.json`` when ``tokenizer.json`` exists.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge_stack.errors import ModelFileNotFound, TokenizerError
from edge_stack.formats.gguf._keys import TOKENIZER_NORMALIZER, TOKENIZER_SPACE_PREFIX

from ._pretokenizer import check_normalizer, detect_pre, match_pre_type
from ._spm import SpmParts, is_spm_json, spm_from_json, spm_from_model
from ._vocab_checks import check_merges, check_texts, checked_id, shown, vocab_by_id

if TYPE_CHECKING:
    import gguf

__all__ = ["Vocab", "detect_pre", "load_vocab"]

logger = logging.getLogger(__name__)

# gguf.TokenType values; spelled as ints here so importing this module stays cheap, and checked
# against gguf's enum in the tests.
NORMAL, CONTROL, USER_DEFINED, UNUSED = 1, 3, 4, 5

_SPECIAL_NAMES = ("bos", "eos", "unk", "pad")


@dataclass(frozen=True)
class Vocab:
    """Everything llama.cpp needs to tokenize like the Hugging Face tokenizer.

    ``tokens``/``token_types`` have exactly ``n_vocab`` entries (id order, padded with unused
    placeholder tokens); ``merges`` are ``"left right"`` strings in rank order.
    """

    pre: str
    tokens: tuple[str, ...]
    token_types: tuple[int, ...]
    merges: tuple[str, ...]
    bos_id: int | None = None
    eos_id: int | None = None
    unk_id: int | None = None
    pad_id: int | None = None
    add_bos: bool = False
    add_eos: bool = False
    #: "NFC" when the tokenizer normalizes its input that way (Pythia's, Qwen2's), else None
    normalizer: str | None = None
    #: chat templates by name; "default" is the one llama.cpp uses unless told otherwise
    chat_templates: Mapping[str, str] = field(default_factory=dict)
    #: llama.cpp's tokenizer model: "gpt2" (byte-level BPE) or "llama" (SentencePiece, see _spm)
    model: str = "gpt2"
    #: SentencePiece scores, one per token ("llama" only)
    scores: tuple[float, ...] = ()
    #: tokenizer.ggml.add_space_prefix ("llama" only)
    add_space_prefix: bool | None = None
    #: "first": no space prefix for a text that starts with a space (transformers' Metaspace)
    space_prefix_rule: str | None = None

    @property
    def chat_template(self) -> str | None:
        """The default chat template, if the tokenizer has one."""
        return self.chat_templates.get("default")

    def write(self, writer: gguf.GGUFWriter) -> None:
        """Add every ``tokenizer.*`` key to ``writer`` (model, pre, tokens, ids, flags, templates)."""
        import gguf

        writer.add_tokenizer_model(self.model)
        writer.add_tokenizer_pre(self.pre)
        writer.add_token_list(list(self.tokens))
        if self.scores:
            writer.add_token_scores(list(self.scores))
        writer.add_token_types([gguf.TokenType(t) for t in self.token_types])
        if self.merges:
            writer.add_token_merges(list(self.merges))
        if self.add_space_prefix is not None:
            writer.add_add_space_prefix(self.add_space_prefix)
        if self.space_prefix_rule is not None:
            writer.add_string(TOKENIZER_SPACE_PREFIX, self.space_prefix_rule)
        for name, token_id in zip(
            _SPECIAL_NAMES, (self.bos_id, self.eos_id, self.unk_id, self.pad_id), strict=True
        ):
            if token_id is not None:
                getattr(writer, f"add_{name}_token_id")(token_id)
        writer.add_add_bos_token(self.add_bos)
        writer.add_add_eos_token(self.add_eos)
        # Written key by key (not add_chat_template's list form) so the file is byte-identical
        # from run to run: gguf collects the names in a set.
        named = {
            re.sub(r"[^A-Za-z0-9_]", "_", name): template
            for name, template in sorted(self.chat_templates.items())
            if name != "default"
        }
        for name, template in named.items():
            writer.add_string(gguf.Keys.Tokenizer.CHAT_TEMPLATE_N.format(name=name), template)
        if named:
            writer.add_array(gguf.Keys.Tokenizer.CHAT_TEMPLATES, list(named))
        if self.chat_template is not None:
            writer.add_chat_template(self.chat_template)
        if self.normalizer is not None:
            writer.add_string(TOKENIZER_NORMALIZER, self.normalizer)


def load_vocab(model_dir: Path, *, n_vocab: int) -> Vocab:
    """Read the tokenizer in ``model_dir`` for a model with ``n_vocab`` embedding rows.

    ``tokenizer.json`` (byte-level BPE, or SentencePiece-style BPE with byte fallback) is read
    as transformers reads it; without one, a SentencePiece ``tokenizer.model``.
    Raises :class:`ModelFileNotFound` without either and :class:`TokenizerError` for anything
    that cannot be converted exactly (Unigram, an unknown pre-tokenizer structure, more tokens
    than ``n_vocab``, duplicate token texts, ...).
    """
    model_dir = Path(model_dir)
    path = model_dir / "tokenizer.json"
    sp_path = model_dir / "tokenizer.model"
    if not path.is_file() and not sp_path.is_file():
        raise ModelFileNotFound(
            f"no tokenizer.json or tokenizer.model in {model_dir}; the converter needs the "
            "model's tokenizer (save it with tokenizer.save_pretrained into the model folder)"
        )
    config = _read_json(model_dir / "tokenizer_config.json", required=False)
    special_map = _read_json(model_dir / "special_tokens_map.json", required=False)
    where = path if path.is_file() else sp_path
    try:
        if not path.is_file():
            added = _config_added_tokens(config, model_dir)
            parts = spm_from_model(sp_path, config, special_map, added, n_vocab=n_vocab)
            return _spm_vocab(parts, config, model_dir)
        data = _read_json(path)
        if is_spm_json(data):
            parts = spm_from_json(data, config, special_map, n_vocab=n_vocab)
            return _spm_vocab(parts, config, model_dir)
        return _build(data, config, special_map, model_dir, n_vocab=n_vocab)
    except TokenizerError as exc:
        message = str(exc)
        if str(model_dir) not in message:
            message = f"{where}: {message}"
        raise TokenizerError(message) from None


def _spm_vocab(parts: SpmParts, config: dict[str, Any], model_dir: Path) -> Vocab:
    if parts.special["eos"] is None:
        logger.warning("%s: the tokenizer names no eos token", model_dir)
    return Vocab(
        pre="default",
        tokens=parts.tokens,
        token_types=parts.types,
        merges=(),
        bos_id=parts.special["bos"],
        eos_id=parts.special["eos"],
        unk_id=parts.special["unk"],
        pad_id=parts.special["pad"],
        add_bos=parts.add_bos,
        add_eos=parts.add_eos,
        chat_templates=_chat_templates(config, model_dir),
        model="llama",
        scores=parts.scores,
        add_space_prefix=parts.add_space_prefix,
        space_prefix_rule=parts.prefix_rule,
    )


def _config_added_tokens(config: dict[str, Any], model_dir: Path) -> list[dict[str, Any]]:
    """Added tokens of a folder without tokenizer.json: tokenizer_config's added_tokens_decoder,
    then added_tokens.json (content -> id, not special)."""
    found: dict[int, dict[str, Any]] = {}
    decoder = config.get("added_tokens_decoder") or {}
    if isinstance(decoder, dict):
        for key, value in decoder.items():
            if isinstance(value, dict) and str(key).isdigit() and "content" in value:
                found[int(key)] = {**value, "id": int(key)}
    extra = _read_json(model_dir / "added_tokens.json", required=False)
    for content, token_id in extra.items():
        if isinstance(token_id, int) and token_id not in found:
            found[token_id] = {"id": token_id, "content": content, "special": False}
    return [found[i] for i in sorted(found)]


def _read_json(path: Path, *, required: bool = True) -> dict[str, Any]:
    if not path.is_file() and not required:
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise TokenizerError(f"cannot read {path}: {exc}; re-save the tokenizer") from None
    if not isinstance(data, dict):
        raise TokenizerError(f"{path} is not a JSON object; re-save the tokenizer")
    return data


def _build(
    data: dict[str, Any],
    config: dict[str, Any],
    special_map: dict[str, Any],
    model_dir: Path,
    *,
    n_vocab: int,
) -> Vocab:
    model = data.get("model") or {}
    _check_bpe_model(model)
    pre = match_pre_type(data)
    tokens, types, replaced = _tokens(model, data.get("added_tokens") or [], n_vocab=n_vocab)
    merges = _merges(model.get("merges") or [])
    size = 1 + max(i for i, kind in enumerate(types) if kind != UNUSED)
    holes = [i for i in range(size) if types[i] == UNUSED]
    check_merges(merges, tokens, replaced=replaced, holes=holes)
    ids = _SpecialIds(model.get("vocab") or {}, data.get("added_tokens") or [])
    special: dict[str, int | None] = {}
    for name in _SPECIAL_NAMES:
        value = config.get(f"{name}_token", special_map.get(f"{name}_token"))
        special[name] = ids.find(value, f"{name}_token")
    add_bos, bos_added, add_eos, eos_added = _post_processor_flags(data.get("post_processor"))
    for name, added, flag in (("bos", bos_added, add_bos), ("eos", eos_added, add_eos)):
        if flag and added != special[name]:
            if special[name] is not None:
                logger.warning(
                    "%s: the post-processor adds token %d as %s, tokenizer_config.json names %d; "
                    "using the post-processor's",
                    model_dir,
                    added,
                    name,
                    special[name],
                )
            special[name] = added
    if special["eos"] is None:
        logger.warning(
            "%s: the tokenizer names no eos token; llama.cpp will fall back to its default id",
            model_dir,
        )
    return Vocab(
        pre=pre.name,
        tokens=tokens,
        token_types=types,
        merges=merges,
        bos_id=special["bos"],
        eos_id=special["eos"],
        unk_id=special["unk"],
        pad_id=special["pad"],
        add_bos=add_bos,
        add_eos=add_eos,
        chat_templates=_chat_templates(config, model_dir),
        normalizer=check_normalizer(data.get("normalizer")),
    )


def _check_bpe_model(model: dict[str, Any]) -> None:
    kind = model.get("type")
    if kind is None and "merges" in model and "vocab" in model:
        kind = "BPE"  # very old tokenizer.json files leave the type out
    if kind != "BPE":
        what = {"Unigram": "Unigram (SentencePiece)", "WordPiece": "WordPiece (BERT)"}
        raise TokenizerError(
            f"tokenizer.json model is {what.get(str(kind), repr(kind))}; only byte-level BPE "
            "tokenizers (GPT-2, Pythia, SmolLM, Llama 3, Qwen2 style) are supported"
        )
    if model.get("byte_fallback"):
        raise TokenizerError(
            "tokenizer.json is a SentencePiece-style BPE with byte_fallback; only byte-level BPE "
            "tokenizers are supported"
        )
    for key in ("continuing_subword_prefix", "end_of_word_suffix", "dropout"):
        if model.get(key):
            raise TokenizerError(
                f"tokenizer.json BPE model sets {key}={model[key]!r}, which llama.cpp does not "
                "implement; only plain byte-level BPE can be converted"
            )


def _tokens(
    model: dict[str, Any], added: list[dict[str, Any]], *, n_vocab: int
) -> tuple[tuple[str, ...], tuple[int, ...], dict[str, tuple[int, str]]]:
    """Tokens and types in id order (padded to ``n_vocab``), and the vocab texts whose ids an
    added token took (text -> (id, added token))."""
    vocab = model.get("vocab")
    if not isinstance(vocab, dict) or not vocab:
        raise TokenizerError("tokenizer.json BPE model has no vocab")
    by_id = {i: (text, NORMAL) for i, text in vocab_by_id(vocab).items()}
    replaced: dict[str, tuple[int, str]] = {}  # vocab text -> (its id, the added token there)
    for token in added:
        # The raw content, not its byte-level spelling: llama.cpp finds control and user-defined
        # tokens by searching the input text for it, as tokenizers does.
        kind = CONTROL if token.get("special") else USER_DEFINED
        content = token.get("content")
        if not isinstance(content, str):
            raise TokenizerError(
                f"tokenizer.json added token {shown(token.get('id'))} has content "
                f"{shown(content)}, expected a string; fix the tokenizer"
            )
        i = checked_id(token.get("id"), f"added token {shown(content)}")
        if i in by_id and by_id[i][0] != content:
            replaced[by_id[i][0]] = (i, content)
        by_id[i] = (content, kind)
        if token.get("lstrip") or token.get("rstrip") or token.get("single_word"):
            logger.warning(
                "added token %r strips whitespace or matches single words only; llama.cpp "
                "matches it anywhere without stripping, so text next to it may tokenize differently",
                token["content"],
            )
    size = max(by_id) + 1
    if n_vocab < size:
        raise TokenizerError(
            f"config.json vocab_size is {n_vocab} but the tokenizer has ids up to {size - 1} "
            f"({size} tokens); the model's embedding must have a row per token"
        )
    tokens: list[str] = []
    types: list[int] = []
    for i in range(n_vocab):
        text, kind = by_id.get(i, (f"[PAD{i}]", UNUSED))
        tokens.append(text)
        types.append(kind)
    check_texts(tokens)
    seen: dict[str, int] = {}
    for i, text in enumerate(tokens):
        if text in seen:
            raise TokenizerError(
                f"token text {text!r} appears twice (ids {seen[text]} and {i}); llama.cpp needs "
                "every token text to be unique"
            )
        seen[text] = i
    if size < n_vocab:
        logger.info("padding the vocab from %d to %d tokens (config vocab_size)", size, n_vocab)
    return tuple(tokens), tuple(types), replaced


def _merges(merges: Sequence[Any]) -> tuple[str, ...]:
    out: list[str] = []
    for rank, merge in enumerate(merges):
        if isinstance(merge, str):
            parts = merge.split(" ")
        elif isinstance(merge, list | tuple) and all(isinstance(p, str) for p in merge):
            parts = list(merge)
        else:
            parts = []
        if len(parts) != 2 or not all(parts) or any(" " in p for p in parts):
            raise TokenizerError(
                f"tokenizer.json merge #{rank} {shown(merge)} is not a pair of non-empty tokens "
                "without spaces; fix the tokenizer"
            )
        out.append(f"{parts[0]} {parts[1]}")
    return tuple(out)


@cache
def _byte_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map used by byte-level vocabularies."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
    mapping = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + extra)
            extra += 1
    return mapping


def _byte_level(text: str) -> str:
    table = _byte_to_unicode()
    return "".join(table[b] for b in text.encode("utf-8"))


class _SpecialIds:
    """Finds the id of a special token named in tokenizer_config.json."""

    def __init__(self, vocab: dict[str, int], added: list[dict[str, Any]]) -> None:
        self._vocab = vocab
        self._added = {str(t["content"]): int(t["id"]) for t in added}

    def find(self, value: Any, key: str) -> int | None:
        if isinstance(value, dict):
            value = value.get("content")
        if value is None:
            return None
        if not isinstance(value, str):
            raise TokenizerError(f"tokenizer_config.json {key} is {value!r}, not a token string")
        if value in self._added:
            return self._added[value]
        for spelling in (value, _byte_level(value)):
            if spelling in self._vocab:
                return int(self._vocab[spelling])
        logger.warning("%s %r is not a token of the tokenizer; leaving it unset", key, value)
        return None


def _post_processor_flags(proc: Any) -> tuple[bool, int | None, bool, int | None]:
    """(add_bos, bos id, add_eos, eos id) as the post-processor adds them to a single text."""
    if proc is None:
        return False, None, False, None
    kind = proc.get("type")
    if kind == "ByteLevel":
        return False, None, False, None
    if kind == "Sequence":
        add_bos, bos, add_eos, eos = False, None, False, None
        for inner in proc.get("processors", []):
            b, b_id, e, e_id = _post_processor_flags(inner)
            if b:
                add_bos, bos = True, b_id
            if e:
                add_eos, eos = True, e_id
        return add_bos, bos, add_eos, eos
    if kind == "TemplateProcessing":
        return _template_flags(proc)
    raise TokenizerError(
        f"tokenizer.json post_processor {kind!r} is not supported; byte-level BPE models use "
        "ByteLevel or TemplateProcessing"
    )


def _template_flags(proc: dict[str, Any]) -> tuple[bool, int | None, bool, int | None]:
    single = proc.get("single") or []
    kinds = ["Sequence" if "Sequence" in item else "SpecialToken" for item in single]
    if kinds.count("Sequence") != 1:
        raise TokenizerError(f"tokenizer.json post_processor template {single!r} is not understood")
    seq = kinds.index("Sequence")
    lead, trail = single[:seq], single[seq + 1 :]
    if len(lead) > 1 or len(trail) > 1:
        raise TokenizerError(
            "tokenizer.json post_processor adds several tokens around the text; llama.cpp can add "
            "one bos and one eos token only"
        )

    def token_id(item: dict[str, Any]) -> int:
        name = item["SpecialToken"]["id"]
        ids = ((proc.get("special_tokens") or {}).get(name) or {}).get("ids") or []
        if len(ids) != 1:
            raise TokenizerError(
                f"tokenizer.json post_processor token {name!r} maps to ids {ids}; expected one id"
            )
        return int(ids[0])

    bos = token_id(lead[0]) if lead else None
    eos = token_id(trail[0]) if trail else None
    return bos is not None, bos, eos is not None, eos


def _chat_templates(config: dict[str, Any], model_dir: Path) -> dict[str, str]:
    """Chat templates as transformers finds them: separate .jinja files win over the config."""
    templates: dict[str, str] = {}
    default = model_dir / "chat_template.jinja"
    if default.is_file():
        templates["default"] = default.read_text(encoding="utf-8")
    extra_dir = model_dir / "additional_chat_templates"
    if extra_dir.is_dir():
        for path in sorted(extra_dir.glob("*.jinja")):
            templates[path.stem] = path.read_text(encoding="utf-8")
    if templates:
        return templates
    value = config.get("chat_template")
    if isinstance(value, str):
        return {"default": value}
    if isinstance(value, list):
        for item in value:
            if isinstance(item, dict) and isinstance(item.get("template"), str):
                templates[str(item.get("name") or "default")] = item["template"]
        return templates
    if value is not None:
        raise TokenizerError(
            f"tokenizer_config.json chat_template is a {type(value).__name__}; expected a string "
            "or a list of {name, template} objects"
        )
    return templates
