"""The tokenizer part of the converter: tokenizer.json -> GGUF tokenizer.* keys.

The central check: for every pre-tokenizer structure we support, a tokenizer trained here
(tests/tokenizer_builders.py), written into a vocab-only GGUF and loaded by the real llama.cpp,
tokenizes awkward texts exactly like transformers does.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from edge_stack.convert._pretokenizer import GPT2_PATTERN, PRE_TYPES
from edge_stack.convert.tokenizer import (
    CONTROL,
    NORMAL,
    UNUSED,
    USER_DEFINED,
    Vocab,
    detect_pre,
    load_vocab,
)
from edge_stack.errors import ModelFileNotFound, TokenizerError

from tokenizer_builders import (
    CHATML_TEMPLATE,
    KINDS,
    LLAMA3_PATTERN,
    QWEN2_PATTERN,
    build_tokenizer,
    n_tokens,
)

N_VOCAB = 640  # every builder's tokenizer has fewer tokens; the rest are padding slots

#: the llama.cpp pre type each builder's structure must map to
EXPECTED_PRE = {
    "gpt2": "gpt-2",
    "pythia": "gpt-2",
    "smollm": "smollm",
    "llama3": "llama-bpe",
    "qwen2": "qwen2",
}

AWKWARD_TEXTS = [
    "",
    " ",
    "   ",
    "\n",
    "\n\n\n",
    "\t",
    "\t\t x",
    "Hello world",
    " Hello world",
    "  two leading spaces",
    "trailing   ",
    "I'm sure DON'T you'll we've they'd she's it's I'M WE'LL 're 'S",
    "1 12 123 1234 12345 123456 1234567",
    "12345678901234567890",
    "3.14159, 1,299.99 and -42e-7",
    "٣٤٥ ½ Ⅻ x² ①",  # numbers that are not ASCII digits
    "Café naïve résumé Zürich jalapeño Łódź",
    "日本語のテキストです。中文文本。한국어 문장.",
    "😀😂👍🏽🚀❤️🇫🇷👨‍👩‍👧 emoji",
    "Привет мир, Ελληνικά, مرحبا, नमस्ते",
    "line1\nline2\r\nline3\n\n  \n\tindented\n",
    "a  b   c    d     e          f",
    "x\u00a0y\u3000z\u2009w",  # no-break, ideographic, thin spaces
    "tabs\tand\nnewlines \n \t \r\n",
    "def f(x):\n    return x**2  # comment\n\n\nclass A:\n\tpass\n",
    '{"k": [1, 2, 3], "s": "v"}  <div class="x">hi</div>',
    "~!@#$%^&*()_+`-=[]{}|;':\",./<>? Ω≈ç√∫",
    "<|endoftext|>",
    "a<|endoftext|>b",
    " <|endoftext|> <|endoftext|><|endoftext|>\n",
    "Hello <|im_start|>user\nhi<|im_end|>\n",
    "<|begin_of_text|>x<|eot_id|><|start_header_id|>",
    "<tool_call>{}</tool_call> and <tool_call",
    "<|endoftext",
    "a" * 300,
    "ab " * 100,
]


# --- building blocks ----------------------------------------------------------------------------


@pytest.fixture(scope="session")
def tokenizer_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], Path]:
    """Every builder kind, with merges in both spellings."""
    root = tmp_path_factory.mktemp("tokenizers")
    return {
        (kind, form): build_tokenizer(kind, root / f"{kind}-{form}", merges=form)
        for kind in KINDS
        for form in ("pairs", "strings")
    }


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _edit_json(path: Path, **changes: Any) -> None:
    data = json.loads(path.read_text())
    for key, value in changes.items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    path.write_text(json.dumps(data))


def _write_vocab_gguf(vocab: Vocab, path: Path) -> Path:
    """A header-only GGUF (llama architecture, no tensors) that llama.cpp loads with vocab_only."""
    import gguf

    writer = gguf.GGUFWriter(str(path), gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA])
    writer.add_context_length(256)
    writer.add_embedding_length(32)
    writer.add_block_count(1)
    writer.add_feed_forward_length(64)
    writer.add_head_count(4)
    writer.add_head_count_kv(4)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(len(vocab.tokens))
    vocab.write(writer)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


class _LlamaVocab:
    """llama.cpp's tokenizer over a vocab-only GGUF, through the low-level API."""

    def __init__(self, path: Path) -> None:
        # edgestack's own loader: backend initialised once, llama.cpp's log routed (or dropped)
        # through the one process-wide callback the runtime uses.
        from edge_stack.engines.llama._lib import lib

        self._lib = llama_cpp = lib()
        params = llama_cpp.llama_model_default_params()
        params.vocab_only = True
        self.model = llama_cpp.llama_model_load_from_file(str(path).encode(), params)
        assert self.model, f"llama.cpp could not load {path}"
        self.vocab = llama_cpp.llama_model_get_vocab(self.model)

    def tokenize(
        self, text: str, *, add_special: bool = True, parse_special: bool = True
    ) -> list[int]:
        data = text.encode("utf-8")
        size = len(data) + 8
        out = (self._lib.llama_token * size)()
        n = self._lib.llama_tokenize(
            self.vocab, data, len(data), out, size, add_special, parse_special
        )
        assert n >= 0, f"llama_tokenize failed ({n})"
        return list(out[:n])

    def detokenize(self, tokens: list[int]) -> bytes:
        buf = ctypes.create_string_buffer(256)
        pieces = []
        for token in tokens:
            n = self._lib.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, True)
            assert n >= 0
            pieces.append(buf.raw[:n])
        return b"".join(pieces)

    def attr(self, token: int) -> int:
        return int(self._lib.llama_vocab_get_attr(self.vocab, token))

    def chat_template(self, name: str | None = None) -> str | None:
        raw = self._lib.llama_model_chat_template(self.model, name.encode() if name else None)
        return raw.decode() if raw else None

    def close(self) -> None:
        if self.model:
            self._lib.llama_model_free(self.model)
            self.model = None


@contextlib.contextmanager
def _llama(vocab: Vocab, tmp_path: Path) -> Iterator[_LlamaVocab]:
    model = _LlamaVocab(_write_vocab_gguf(vocab, tmp_path / "vocab.gguf"))
    try:
        yield model
    finally:
        model.close()


def _hf(path: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path))


# --- llama.cpp tokenizes exactly like transformers -----------------------------------------------


@pytest.mark.llama
@pytest.mark.torch
@pytest.mark.parametrize("form", ["pairs", "strings"])
@pytest.mark.parametrize("kind", KINDS)
def test_llama_cpp_tokenizes_like_transformers(
    kind: str, form: str, tokenizer_dirs: dict[tuple[str, str], Path], tmp_path: Path
) -> None:
    folder = tokenizer_dirs[kind, form]
    vocab = load_vocab(folder, n_vocab=N_VOCAB)
    assert vocab.pre == EXPECTED_PRE[kind]
    hf = _hf(folder)
    mismatches = []
    with _llama(vocab, tmp_path) as llama:
        for text in AWKWARD_TEXTS:
            # special tokens in the text: split out by both (transformers' default)
            want = hf(text)["input_ids"]
            got = llama.tokenize(text, add_special=True, parse_special=True)
            if got != want:
                mismatches.append(("special", text, got, want))
            # special tokens as plain text: tokenizers' split_special_tokens
            want = hf(text, split_special_tokens=True)["input_ids"]
            got = llama.tokenize(text, add_special=True, parse_special=False)
            if got != want:
                mismatches.append(("plain", text, got, want))
    assert not mismatches, f"{kind}: {len(mismatches)} mismatches, first: {mismatches[0]}"


@pytest.mark.llama
@pytest.mark.torch
@pytest.mark.parametrize("kind", KINDS)
def test_llama_cpp_detokenizes_like_transformers(
    kind: str, tokenizer_dirs: dict[tuple[str, str], Path], tmp_path: Path
) -> None:
    folder = tokenizer_dirs[kind, "pairs"]
    hf = _hf(folder)
    with _llama(load_vocab(folder, n_vocab=N_VOCAB), tmp_path) as llama:
        for text in AWKWARD_TEXTS:
            ids = hf(text, add_special_tokens=False)["input_ids"]
            assert llama.detokenize(ids) == hf.decode(ids).encode("utf-8"), text


@pytest.mark.llama
@pytest.mark.torch
@pytest.mark.parametrize(
    ("kind", "bos_first"),
    [("gpt2", False), ("pythia", False), ("smollm", False), ("llama3", True), ("qwen2", False)],
)
def test_bos_added_exactly_when_transformers_adds_it(
    kind: str, bos_first: bool, tokenizer_dirs: dict[tuple[str, str], Path], tmp_path: Path
) -> None:
    folder = tokenizer_dirs[kind, "pairs"]
    hf = _hf(folder)
    vocab = load_vocab(folder, n_vocab=N_VOCAB)
    assert vocab.add_bos is bos_first
    assert vocab.add_eos is False
    with _llama(vocab, tmp_path) as llama:
        assert llama.tokenize("Hi there") == hf("Hi there")["input_ids"]
        assert (llama.tokenize("Hi there")[0] == hf.bos_token_id) is bos_first
        # add_special=False never adds it
        assert (
            llama.tokenize("Hi there", add_special=False)
            == hf("Hi there", add_special_tokens=False)["input_ids"]
        )


@pytest.mark.llama
@pytest.mark.torch
def test_llama3_regex_without_ignore_merges(
    tokenizer_dirs: dict[tuple[str, str], Path], tmp_path: Path
) -> None:
    folder = _copy(tokenizer_dirs["llama3", "pairs"], tmp_path / "tok")
    data = json.loads((folder / "tokenizer.json").read_text())
    data["model"]["ignore_merges"] = False
    (folder / "tokenizer.json").write_text(json.dumps(data))
    vocab = load_vocab(folder, n_vocab=N_VOCAB)
    assert vocab.pre == "smaug-bpe"
    hf = _hf(folder)
    with _llama(vocab, tmp_path) as llama:
        for text in AWKWARD_TEXTS:
            assert llama.tokenize(text) == hf(text)["input_ids"], text


@pytest.mark.llama
@pytest.mark.torch
@pytest.mark.parametrize(("variant", "normalized"), [("gptneox", True), ("llama", False)])
def test_nfc_tokenizers_normalize_before_llama_cpp(
    variant: str,
    normalized: bool,
    tiny_model: Callable[[str], Path],
    tiny_gguf: Callable[..., Path],
) -> None:
    """llama.cpp does not NFC-normalize byte-level BPE input; edgestack's runtime does it first
    when the tokenizer did (the converter records it), so decomposed text still matches."""
    import gguf

    from edge_stack.engines.llama import LlamaModel
    from edge_stack.formats.gguf._keys import TOKENIZER_NORMALIZER

    path = tiny_gguf(variant, "f32")
    field = gguf.GGUFReader(path).fields.get(TOKENIZER_NORMALIZER)
    assert (field.contents() if field else None) == ("NFC" if normalized else None)
    hf = _hf(tiny_model(variant))
    model = LlamaModel.load(path)
    try:
        for text in ("Cafe\u0301 au lait", "A\u030angstro\u0308m", "plain ascii"):
            ids = hf(text, add_special_tokens=False)["input_ids"]
            assert model.tokenize(text, add_bos=False, special=False) == ids, text
    finally:
        model.close()


# --- what the GGUF carries ----------------------------------------------------------------------


@pytest.mark.llama
@pytest.mark.torch
@pytest.mark.parametrize("kind", KINDS)
def test_special_ids_and_token_types(
    kind: str, tokenizer_dirs: dict[tuple[str, str], Path], tmp_path: Path
) -> None:
    import gguf
    import llama_cpp.llama_cpp as llama_cpp

    folder = tokenizer_dirs[kind, "pairs"]
    hf = _hf(folder)
    vocab = load_vocab(folder, n_vocab=N_VOCAB)
    assert (vocab.bos_id, vocab.eos_id, vocab.unk_id, vocab.pad_id) == (
        hf.bos_token_id,
        hf.eos_token_id,
        hf.unk_token_id,
        hf.pad_token_id,
    )
    added = {t.content: (i, t.special) for i, t in hf.added_tokens_decoder.items()}
    for content, (token_id, special) in added.items():
        assert vocab.tokens[token_id] == content
        assert vocab.token_types[token_id] == (CONTROL if special else USER_DEFINED)
    assert set(vocab.token_types[: len(hf)]) <= {NORMAL, CONTROL, USER_DEFINED}

    path = _write_vocab_gguf(vocab, tmp_path / "vocab.gguf")
    fields = gguf.GGUFReader(str(path)).fields
    keys = gguf.Keys.Tokenizer

    def scalar(key: str) -> Any:
        return fields[key].contents() if key in fields else None

    assert scalar(keys.MODEL) == "gpt2"
    assert scalar(keys.PRE) == EXPECTED_PRE[kind]
    assert scalar(keys.EOS_ID) == hf.eos_token_id
    assert scalar(keys.BOS_ID) == hf.bos_token_id
    assert scalar(keys.ADD_BOS) is vocab.add_bos
    assert len(fields[keys.LIST].contents()) == N_VOCAB
    assert fields[keys.TOKEN_TYPE].contents() == list(vocab.token_types)

    llama = _LlamaVocab(path)
    try:
        assert llama_cpp.llama_vocab_n_tokens(llama.vocab) == N_VOCAB
        assert llama_cpp.llama_vocab_eos(llama.vocab) == hf.eos_token_id
        assert llama_cpp.llama_vocab_is_eog(llama.vocab, hf.eos_token_id)
        for _content, (token_id, special) in added.items():
            want = (
                llama_cpp.LLAMA_TOKEN_ATTR_CONTROL
                if special
                else llama_cpp.LLAMA_TOKEN_ATTR_USER_DEFINED
            )
            assert llama.attr(token_id) & want
        assert llama.attr(N_VOCAB - 1) & llama_cpp.LLAMA_TOKEN_ATTR_UNUSED
    finally:
        llama.close()


def test_token_type_values_are_ggufs() -> None:
    import gguf

    assert (NORMAL, CONTROL, USER_DEFINED, UNUSED) == (
        gguf.TokenType.NORMAL,
        gguf.TokenType.CONTROL,
        gguf.TokenType.USER_DEFINED,
        gguf.TokenType.UNUSED,
    )


@pytest.mark.llama
@pytest.mark.parametrize("kind", ["smollm", "llama3", "qwen2"])
def test_chat_template_carried(
    kind: str, tokenizer_dirs: dict[tuple[str, str], Path], tmp_path: Path
) -> None:
    folder = tokenizer_dirs[kind, "pairs"]
    config = json.loads((folder / "tokenizer_config.json").read_text())
    vocab = load_vocab(folder, n_vocab=N_VOCAB)
    assert vocab.chat_template == config["chat_template"]
    with _llama(vocab, tmp_path) as llama:
        assert llama.chat_template() == config["chat_template"]


@pytest.mark.llama
def test_chat_templates_list_form_and_jinja_file(
    tokenizer_dirs: dict[tuple[str, str], Path], tmp_path: Path
) -> None:
    folder = _copy(tokenizer_dirs["qwen2", "pairs"], tmp_path / "tok")
    templates = [
        {"name": "default", "template": CHATML_TEMPLATE},
        {"name": "tool_use", "template": "{{ 'tools' }}"},
    ]
    _edit_json(folder / "tokenizer_config.json", chat_template=templates)
    vocab = load_vocab(folder, n_vocab=N_VOCAB)
    assert dict(vocab.chat_templates) == {"default": CHATML_TEMPLATE, "tool_use": "{{ 'tools' }}"}
    with _llama(vocab, tmp_path) as llama:
        assert llama.chat_template() == CHATML_TEMPLATE
        assert llama.chat_template("tool_use") == "{{ 'tools' }}"
    # transformers 5 saves the template as chat_template.jinja, which wins over the config
    (folder / "chat_template.jinja").write_text("{{ 'from jinja' }}")
    assert load_vocab(folder, n_vocab=N_VOCAB).chat_templates == {"default": "{{ 'from jinja' }}"}


def test_no_chat_template_when_absent(tokenizer_dirs: dict[tuple[str, str], Path]) -> None:
    vocab = load_vocab(tokenizer_dirs["gpt2", "pairs"], n_vocab=N_VOCAB)
    assert vocab.chat_template is None


@pytest.mark.parametrize("kind", KINDS)
def test_both_merge_spellings_give_the_same_vocab(
    kind: str, tokenizer_dirs: dict[tuple[str, str], Path]
) -> None:
    pairs = load_vocab(tokenizer_dirs[kind, "pairs"], n_vocab=N_VOCAB)
    strings = load_vocab(tokenizer_dirs[kind, "strings"], n_vocab=N_VOCAB)
    assert pairs == strings
    assert pairs.merges and all(len(m.split(" ")) == 2 for m in pairs.merges)


@pytest.mark.parametrize("kind", KINDS)
def test_builders_are_deterministic(kind: str, tmp_path: Path) -> None:
    a = build_tokenizer(kind, tmp_path / "a")
    b = build_tokenizer(kind, tmp_path / "b")
    assert len(load_vocab(a, n_vocab=n_tokens(a)).tokens) == n_tokens(a)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        assert (a / name).read_bytes() == (b / name).read_bytes()


@pytest.mark.llama
@pytest.mark.torch
def test_padding_slots(tokenizer_dirs: dict[tuple[str, str], Path], tmp_path: Path) -> None:
    folder = tokenizer_dirs["llama3", "pairs"]
    hf = _hf(folder)
    size = len(hf)
    vocab = load_vocab(folder, n_vocab=size + 3)
    assert vocab.tokens[size:] == tuple(f"[PAD{i}]" for i in range(size, size + 3))
    assert vocab.token_types[size:] == (UNUSED,) * 3
    exact = load_vocab(folder, n_vocab=size)
    assert len(exact.tokens) == size and UNUSED not in exact.token_types
    with _llama(vocab, tmp_path) as llama:
        for text in ("[PAD606] plain", "Hello <|eot_id|>"):
            assert llama.tokenize(text) == hf(text)["input_ids"]


# --- detect_pre from the structure alone -------------------------------------------------------


def _tokenizer_json(
    pre_tokenizer: Any, *, normalizer: Any = None, ignore_merges: bool = False
) -> dict[str, Any]:
    return {
        "normalizer": normalizer,
        "pre_tokenizer": pre_tokenizer,
        "model": {"type": "BPE", "ignore_merges": ignore_merges, "vocab": {}, "merges": []},
    }


def _byte_level(*, use_regex: bool, add_prefix_space: bool = False) -> dict[str, Any]:
    return {
        "type": "ByteLevel",
        "add_prefix_space": add_prefix_space,
        "trim_offsets": True,
        "use_regex": use_regex,
    }


def _split(pattern: str, behavior: str = "Isolated") -> dict[str, Any]:
    return {"type": "Split", "pattern": {"Regex": pattern}, "behavior": behavior, "invert": False}


def _seq(*steps: dict[str, Any]) -> dict[str, Any]:
    return {"type": "Sequence", "pretokenizers": list(steps)}


_EXPLICIT = "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])"

DETECT_CASES = [
    ("gpt2", _tokenizer_json(_byte_level(use_regex=True)), "gpt-2"),
    (
        "pythia (NFC)",
        _tokenizer_json(_byte_level(use_regex=True), normalizer={"type": "NFC"}),
        "gpt-2",
    ),
    (
        "smollm",
        _tokenizer_json(
            _seq({"type": "Digits", "individual_digits": True}, _byte_level(use_regex=True))
        ),
        "smollm",
    ),
    (
        "llama3",
        _tokenizer_json(
            _seq(_split(LLAMA3_PATTERN), _byte_level(use_regex=False)), ignore_merges=True
        ),
        "llama-bpe",
    ),
    (
        "llama3 explicit-case spelling",
        _tokenizer_json(
            _seq(
                _split(LLAMA3_PATTERN.replace("(?i:'s|'t|'re|'ve|'m|'ll|'d)", _EXPLICIT)),
                _byte_level(use_regex=False),
            ),
            ignore_merges=True,
        ),
        "llama-bpe",
    ),
    (
        "llama3 regex without ignore_merges",
        _tokenizer_json(_seq(_split(LLAMA3_PATTERN), _byte_level(use_regex=False))),
        "smaug-bpe",
    ),
    (
        "qwen2",
        _tokenizer_json(
            _seq(_split(QWEN2_PATTERN), _byte_level(use_regex=False)),
            normalizer={"type": "NFC"},
        ),
        "qwen2",
    ),
    (
        "gpt2 regex as an explicit Split",
        _tokenizer_json(_seq(_split(GPT2_PATTERN), _byte_level(use_regex=False))),
        "gpt-2",
    ),
]


@pytest.mark.parametrize(("name", "data", "pre"), DETECT_CASES, ids=[c[0] for c in DETECT_CASES])
def test_detect_pre(name: str, data: dict[str, Any], pre: str) -> None:
    assert detect_pre(data) == pre


@pytest.mark.parametrize("kind", KINDS)
def test_detect_pre_on_trained_tokenizers(
    kind: str, tokenizer_dirs: dict[tuple[str, str], Path]
) -> None:
    data = json.loads((tokenizer_dirs[kind, "pairs"] / "tokenizer.json").read_text())
    assert detect_pre(data) == EXPECTED_PRE[kind]


def test_pre_type_table_names_are_unique_structures() -> None:
    keys = [(p.steps, p.ignore_merges) for p in PRE_TYPES]
    assert len(keys) == len(set(keys))


UNKNOWN_STRUCTURES = [
    ("whitespace", _tokenizer_json({"type": "Whitespace"}), "Whitespace"),
    ("no pre_tokenizer", _tokenizer_json(None), "no pre_tokenizer"),
    (
        "prefix space",
        _tokenizer_json(_byte_level(use_regex=True, add_prefix_space=True)),
        "add_prefix_space",
    ),
    (
        "grouped digits",
        _tokenizer_json(
            _seq({"type": "Digits", "individual_digits": False}, _byte_level(use_regex=True))
        ),
        "Digits(grouped)",
    ),
    (
        "other regex",
        _tokenizer_json(_seq(_split(r"\p{L}+|\s+"), _byte_level(use_regex=False))),
        "matches no llama.cpp",
    ),
    (
        "split + byte-level regex",
        _tokenizer_json(_seq(_split(LLAMA3_PATTERN), _byte_level(use_regex=True))),
        " matches no llama.cpp",
    ),
    (
        "removed split",
        _tokenizer_json(_seq(_split(LLAMA3_PATTERN, "Removed"), _byte_level(use_regex=False))),
        "Isolated",
    ),
    (
        "qwen2 with ignore_merges",
        _tokenizer_json(
            _seq(_split(QWEN2_PATTERN), _byte_level(use_regex=False)), ignore_merges=True
        ),
        "ignore_merges=True",
    ),
    (
        "lowercase",
        _tokenizer_json(_byte_level(use_regex=True), normalizer={"type": "Lowercase"}),
        "normalizer",
    ),
    ("no byte level", _tokenizer_json(_split(LLAMA3_PATTERN)), "no ByteLevel"),
]


@pytest.mark.parametrize(
    ("name", "data", "message"), UNKNOWN_STRUCTURES, ids=[c[0] for c in UNKNOWN_STRUCTURES]
)
def test_unknown_structure_is_an_error(name: str, data: dict[str, Any], message: str) -> None:
    with pytest.raises(TokenizerError, match=r"supported|normalizer") as info:
        detect_pre(data)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


# --- bad inputs ----------------------------------------------------------------------------------


def _set_model(path: Path, model: dict[str, Any]) -> None:
    _edit_json(path / "tokenizer.json", model=model)


BAD_MODELS = [
    (
        "unigram",
        {"type": "Unigram", "unk_id": 0, "vocab": [["<unk>", 0.0]]},
        "Unigram (SentencePiece)",
    ),
    ("wordpiece", {"type": "WordPiece", "vocab": {"[UNK]": 0}}, "WordPiece"),
    (
        "byte fallback",
        {"type": "BPE", "byte_fallback": True, "vocab": {"a": 0}, "merges": []},
        "byte_fallback",
    ),
    (
        "subword prefix",
        {"type": "BPE", "continuing_subword_prefix": "##", "vocab": {"a": 0}, "merges": []},
        "continuing_subword_prefix",
    ),
]


@pytest.mark.parametrize(("name", "model", "message"), BAD_MODELS, ids=[c[0] for c in BAD_MODELS])
def test_non_byte_level_bpe_is_an_error(
    name: str,
    model: dict[str, Any],
    message: str,
    tokenizer_dirs: dict[tuple[str, str], Path],
    tmp_path: Path,
) -> None:
    folder = _copy(tokenizer_dirs["gpt2", "pairs"], tmp_path / "tok")
    _set_model(folder, model)
    with pytest.raises(TokenizerError, match=r"byte-level BPE|llama\.cpp does not") as info:
        load_vocab(folder, n_vocab=N_VOCAB)
    assert message in str(info.value)
    assert str(folder) in str(info.value)


def test_sentencepiece_only_folder_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "tokenizer.model").write_bytes(b"\x00")
    with pytest.raises(
        TokenizerError, match=r"SentencePiece tokenizer\.model but no tokenizer\.json"
    ):
        load_vocab(tmp_path, n_vocab=N_VOCAB)


def test_missing_tokenizer_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ModelFileNotFound, match=r"no tokenizer\.json in"):
        load_vocab(tmp_path, n_vocab=N_VOCAB)


def test_unreadable_tokenizer_json_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "tokenizer.json").write_text('{"model": ')
    with pytest.raises(TokenizerError, match=r"cannot read .*tokenizer\.json"):
        load_vocab(tmp_path, n_vocab=N_VOCAB)


def test_config_vocab_smaller_than_tokenizer_is_an_error(
    tokenizer_dirs: dict[tuple[str, str], Path],
) -> None:
    folder = tokenizer_dirs["qwen2", "pairs"]
    size = len(json.loads((folder / "tokenizer.json").read_text())["model"]["vocab"]) + 4
    load_vocab(folder, n_vocab=size)
    with pytest.raises(
        TokenizerError, match=f"vocab_size is {size - 1} but the tokenizer has ids up to {size - 1}"
    ):
        load_vocab(folder, n_vocab=size - 1)


def test_duplicate_token_text_is_an_error(
    tokenizer_dirs: dict[tuple[str, str], Path], tmp_path: Path
) -> None:
    folder = _copy(tokenizer_dirs["gpt2", "pairs"], tmp_path / "tok")
    data = json.loads((folder / "tokenizer.json").read_text())
    data["added_tokens"].append(
        {
            "id": 601,
            "content": "the",
            "single_word": False,
            "lstrip": False,
            "rstrip": False,
            "normalized": True,
            "special": False,
        }
    )
    if "the" not in data["model"]["vocab"]:
        data["model"]["vocab"]["the"] = 599
    (folder / "tokenizer.json").write_text(json.dumps(data))
    with pytest.raises(TokenizerError, match="appears twice"):
        load_vocab(folder, n_vocab=N_VOCAB)


def test_unsupported_post_processor_is_an_error(
    tokenizer_dirs: dict[tuple[str, str], Path], tmp_path: Path
) -> None:
    folder = _copy(tokenizer_dirs["gpt2", "pairs"], tmp_path / "tok")
    _edit_json(
        folder / "tokenizer.json",
        post_processor={"type": "RobertaProcessing", "sep": ["</s>", 2], "cls": ["<s>", 0]},
    )
    with pytest.raises(TokenizerError, match="post_processor 'RobertaProcessing' is not supported"):
        load_vocab(folder, n_vocab=N_VOCAB)


def test_unknown_structure_error_names_the_file(
    tokenizer_dirs: dict[tuple[str, str], Path], tmp_path: Path
) -> None:
    folder = _copy(tokenizer_dirs["gpt2", "pairs"], tmp_path / "tok")
    _edit_json(folder / "tokenizer.json", pre_tokenizer={"type": "Whitespace"})
    with pytest.raises(TokenizerError, match=r"tokenizer\.json: .*'Whitespace' is not supported"):
        load_vocab(folder, n_vocab=N_VOCAB)
