"""The tokenizer part of the converter: tokenizer.json -> GGUF tokenizer.* keys.

The central check: for every pre-tokenizer structure we support, a tokenizer trained here
(tests/tokenizer_builders.py), written into a vocab-only GGUF and loaded by the real llama.cpp,
tokenizes awkward texts exactly like transformers does.
"""

from __future__ import annotations

import contextlib
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
    LlamaVocab,
    build_tokenizer,
    n_tokens,
    write_vocab_gguf,
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


@contextlib.contextmanager
def _llama(vocab: Vocab, tmp_path: Path) -> Iterator[LlamaVocab]:
    model = LlamaVocab(write_vocab_gguf(vocab, tmp_path / "vocab.gguf"))
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

    path = write_vocab_gguf(vocab, tmp_path / "vocab.gguf")
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

    llama = LlamaVocab(path)
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
        "Unigram model",
    ),
    ("wordpiece", {"type": "WordPiece", "vocab": {"[UNK]": 0}}, "WordPiece"),
    (
        # SentencePiece-style (test_spm_tokenizer) but with a byte-level pre-tokenizer
        "byte fallback",
        {"type": "BPE", "byte_fallback": True, "vocab": {"a": 0}, "merges": []},
        "pre-tokenizer step 'ByteLevel'",
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
    with pytest.raises(TokenizerError, match=r"BPE|llama\.cpp") as info:
        load_vocab(folder, n_vocab=N_VOCAB)
    assert message in str(info.value)
    assert str(folder) in str(info.value)


def test_damaged_sentencepiece_model_is_an_error(tmp_path: Path) -> None:
    # a tokenizer.model alone converts (test_spm_tokenizer); a damaged one is one clear error
    (tmp_path / "tokenizer.model").write_bytes(b"\x0a\x99")
    with pytest.raises(TokenizerError, match=r"is not a SentencePiece model .*copy"):
        load_vocab(tmp_path, n_vocab=N_VOCAB)


def test_missing_tokenizer_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ModelFileNotFound, match=r"no tokenizer\.json or tokenizer\.model in"):
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
        data["model"]["vocab"]["the"] = 602  # an id of its own: only the text repeats
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


# --- tokenizers llama.cpp (or edgestack's GGUF check) would refuse: refused by the converter ------
# Each edits the gpt2 tokenizer.json; before, `edgestack convert` wrote a GGUF that llama.cpp
# aborted on (a NUL in a token) or that every `edgestack ask` refused ("re-convert it").


def _added(token_id: object, content: object, special: bool = True) -> dict[str, Any]:
    return {
        "id": token_id,
        "content": content,
        "single_word": False,
        "lstrip": False,
        "rstrip": False,
        "normalized": False,
        "special": special,
    }


def _unmerged(data: dict[str, Any]) -> str:
    """A vocab token no merge names."""
    named = {half for merge in data["model"]["merges"] for half in merge}
    return next(t for t in data["model"]["vocab"] if t not in named and t != "Ġ")


REFUSED_TOKENIZERS: dict[str, tuple[Callable[[dict[str, Any]], None], str]] = {
    "nul-in-added-token": (
        lambda d: d["added_tokens"].append(_added(601, "x\u0000y")),
        "token 601 'x\\x00y' contains a NUL character (U+0000), where llama.cpp cuts token "
        "texts (it would read 'x'",
    ),
    "nul-in-vocab-token": (
        lambda d: (
            d["model"]["vocab"].update({"a\u0000": 599})
            or d["model"]["vocab"].pop(next(t for t, i in d["model"]["vocab"].items() if i == 599))
        ),
        "token 599 'a\\x00' contains a NUL character",
    ),
    "nul-first": (
        lambda d: d["added_tokens"].append(_added(601, "\u0000")),
        "token 601 '\\x00' contains a NUL character (U+0000), where llama.cpp cuts token texts "
        "(it would read an empty text",
    ),
    "two-tokens-one-id": (
        lambda d: d["model"]["vocab"].update({"zzz": 5}),
        "tokenizer.json vocab gives id 5 to both '&' and 'zzz'",
    ),
    "float-id": (
        lambda d: d["model"]["vocab"].update({"flt": 3.5}),
        "tokenizer.json vocab token 'flt' has id 3.5, expected a whole number",
    ),
    "string-id": (
        lambda d: d["model"]["vocab"].update({"str": "7"}),
        "tokenizer.json vocab token 'str' has id '7', expected a whole number",
    ),
    "added-token-bool-id": (
        lambda d: d["added_tokens"].append(_added(True, "<b>")),
        "tokenizer.json added token '<b>' has id True, expected a whole number",
    ),
    "added-token-content-not-text": (
        lambda d: d["added_tokens"].append(_added(601, 5)),
        "tokenizer.json added token 601 has content 5, expected a string",
    ),
    "negative-id": (
        lambda d: d["model"]["vocab"].update({"neg": -1}),
        "tokenizer.json has a negative token id -1 (vocab token 'neg')",
    ),
    "gap-where-a-merge-needs-a-token": (
        lambda d: d["model"]["vocab"].pop("a"),
        "tokenizer.json merge #0 'Ġ a' names 'a', which is not a token of its vocabulary, where "
        "no token has id 64",
    ),
    "added-token-takes-a-merged-tokens-id": (
        lambda d: d["added_tokens"].append(_added(64, "<dup>")),
        "tokenizer.json merge #0 'Ġ a' names 'a', whose id 64 the added token '<dup>' takes",
    ),
    "no-merges": (
        lambda d: d["model"].update({"merges": []}),
        "tokenizer.json BPE model has no merges",
    ),
    "merge-of-unknown-tokens": (
        lambda d: d["model"]["merges"].append(["€", "€"]),
        "tokenizer.json merge #344 '€ €' names '€', which is not a token",
    ),
    "merge-with-a-space-inside": (
        lambda d: d["model"]["merges"].append(["a b", "c"]),
        "tokenizer.json merge #344 ['a b', 'c'] is not a pair of non-empty tokens without spaces",
    ),
    "merge-of-numbers": (
        lambda d: d["model"]["merges"].append([1, 2]),
        "tokenizer.json merge #344 [1, 2] is not a pair of non-empty tokens without spaces",
    ),
}


@pytest.mark.parametrize("case", list(REFUSED_TOKENIZERS))
def test_tokenizer_llama_cpp_cannot_use_is_refused(
    tokenizer_dirs: dict[tuple[str, str], Path], tmp_path: Path, case: str
) -> None:
    edit, expected = REFUSED_TOKENIZERS[case]
    folder = _copy(tokenizer_dirs["gpt2", "pairs"], tmp_path / "tok")
    data = json.loads((folder / "tokenizer.json").read_text())
    edit(data)
    (folder / "tokenizer.json").write_text(json.dumps(data))
    with pytest.raises(TokenizerError) as info:
        load_vocab(folder, n_vocab=N_VOCAB)
    message = str(info.value)
    assert message.startswith(f"{folder / 'tokenizer.json'}: ") and "\n" not in message
    assert expected in message, message
    assert "; " in message  # and what to do


# Edits that look alike but that tokenizers and llama.cpp both handle: still converted, and the
# GGUF passes the check every ask makes.
ACCEPTED_TOKENIZERS: dict[str, Callable[[dict[str, Any]], None]] = {
    "added-token-repeats-its-vocab-token": lambda d: d["added_tokens"].append(_added(0, "!")),
    "gap-no-merge-needs": lambda d: d["model"]["vocab"].pop(_unmerged(d)),
    "gap-filled-by-an-added-token": lambda d: d["added_tokens"].append(
        _added(d["model"]["vocab"].pop(_unmerged(d)), "<fill>")
    ),
    "merges-as-strings": lambda d: d["model"].update(
        {"merges": [" ".join(m) for m in d["model"]["merges"]]}
    ),
}


@pytest.mark.parametrize("case", list(ACCEPTED_TOKENIZERS))
def test_tokenizer_edits_llama_cpp_handles_still_convert(
    tokenizer_dirs: dict[tuple[str, str], Path], tmp_path: Path, case: str
) -> None:
    import mmap

    from edge_stack.formats.gguf._reader import read_header
    from edge_stack.formats.gguf._vocab import check_vocab

    folder = _copy(tokenizer_dirs["gpt2", "pairs"], tmp_path / "tok")
    data = json.loads((folder / "tokenizer.json").read_text())
    ACCEPTED_TOKENIZERS[case](data)
    (folder / "tokenizer.json").write_text(json.dumps(data))
    vocab = load_vocab(folder, n_vocab=N_VOCAB)
    path = write_vocab_gguf(vocab, tmp_path / "vocab.gguf")
    with path.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        assert check_vocab(read_header(mm, path.stat().st_size), "llama") == N_VOCAB
