"""SentencePiece-style tokenizers (llama.cpp's ``llama`` vocabulary) against transformers.

Tokenizers are trained here with the ``sentencepiece`` library (spm_builders), saved as real
models ship them (tokenizer.model alone, or the tokenizer.json transformers makes of it), read
by the converter into a vocab-only GGUF and tokenized by the real llama.cpp, through
edgestack's runtime where it adds something (the space-prefix rule).
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edge_stack.convert.tokenizer import Vocab, load_vocab
from edge_stack.errors import TokenizerError

from spm_builders import FORMS, PHI3_ADDED, SPM_KINDS, build_spm_tokenizer
from tokenizer_builders import LlamaVocab, write_vocab_gguf

pytestmark = [pytest.mark.llama, pytest.mark.torch]

N_VOCAB = 1088

TEXTS = [
    "Hello world",
    " Hello world",  # a leading space: transformers 5's Metaspace adds no second '▁'
    "  two leading spaces",
    "trailing   ",
    "a  b   c    d     e          f",
    "\n",
    "\n\nx",
    "\t\t x",
    "line1\nline2\r\nline3\n\n  \n\tindented\n",
    "I'm sure DON'T you'll we've they'd",
    "1 12 123 1234 12345 123456 1234567 3.14159",
    "٣٤٥ ½ Ⅻ x² ①",
    "Café naïve résumé Zürich jalapeño Łódź",
    "日本語のテキストです。中文文本。한국어 문장.",
    "😀😂👍🏽🚀❤️🇫🇷👨‍👩‍👧 emoji",  # byte fallback: most of these are not pieces
    "Ӂ ꙮ 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 ᚠᛇᚻ",  # characters the training text never had: bytes only
    "Привет мир, Ελληνικά, مرحبا, नमस्ते",
    "x\u00a0y\u3000z\u2009w",
    "def f(x):\n    return x**2  # comment\n",
    '{"k": [1, 2, 3]}  <div class="x">hi</div>',
    "~!@#$%^&*()_+`-=[]{}|;':\",./<>? Ω≈ç√∫",
    "a" * 300,
    "ab " * 100,
]


@pytest.fixture(scope="session")
def spm_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], Path]:
    root = tmp_path_factory.mktemp("spm")
    return {
        (kind, form): build_spm_tokenizer(kind, root / f"{kind}-{form}", form=form)
        for kind in SPM_KINDS
        for form in FORMS
        if not (kind == "legacy" and form == "model")
    }


def _hf(path: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path))


class _Runtime:
    """llama.cpp's tokenizer as edgestack's runtime drives it (LlamaModel.tokenize's rules)."""

    def __init__(self, vocab: Vocab, path: Path) -> None:
        self.vocab = vocab
        self.llama = LlamaVocab(write_vocab_gguf(vocab, path))

    def tokenize(self, text: str, *, add_special: bool = True) -> list[int]:
        if self.vocab.space_prefix_rule == "first" and text.startswith(" "):
            text = text[1:]
        return self.llama.tokenize(text, add_special=add_special, parse_special=False)


@pytest.fixture
def runtime(tmp_path: Path) -> Iterator[Any]:
    made: list[_Runtime] = []

    def make(vocab: Vocab) -> _Runtime:
        made.append(_Runtime(vocab, tmp_path / f"v{len(made)}.gguf"))
        return made[-1]

    yield make
    for r in made:
        r.llama.close()


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("kind", SPM_KINDS)
def test_llama_cpp_tokenizes_like_transformers(
    kind: str, form: str, spm_dirs: dict[tuple[str, str], Path], runtime: Any
) -> None:
    if (kind, form) not in spm_dirs:
        pytest.skip("legacy tokenizer.json files exist only as tokenizer.json")
    folder = spm_dirs[kind, form]
    vocab = load_vocab(folder, n_vocab=N_VOCAB)
    assert vocab.model == "llama"
    hf = _hf(folder)
    llama = runtime(vocab)
    mismatches = []
    for text in TEXTS:
        want = hf(text, split_special_tokens=True)["input_ids"]
        got = llama.tokenize(text)
        if got != want:
            mismatches.append((text, got, want))
    assert not mismatches, f"{len(mismatches)} mismatches, first: {mismatches[0]}"


@pytest.mark.parametrize("kind", ["llama", "gemma"])
def test_tokenizer_model_alone_matches_sentencepiece_pieces(
    kind: str, spm_dirs: dict[tuple[str, str], Path]
) -> None:
    """Tokens, scores and types read from tokenizer.model are SentencePiece's own."""
    import sentencepiece as spm

    folder = spm_dirs[kind, "model"]
    sp = spm.SentencePieceProcessor(model_file=str(folder / "tokenizer.model"))
    vocab = load_vocab(folder, n_vocab=N_VOCAB)
    n = sp.vocab_size()
    assert list(vocab.tokens[:n]) == [sp.id_to_piece(i) for i in range(n)]
    assert vocab.scores[:n] == pytest.approx([sp.get_score(i) for i in range(n)])
    for i in range(n):
        want = (
            2
            if sp.is_unknown(i)
            else 3
            if sp.is_control(i)
            else 6
            if sp.is_byte(i)
            else 5
            if sp.is_unused(i)
            else None
        )
        if want is not None:
            assert vocab.token_types[i] == want, sp.id_to_piece(i)
    assert vocab.unk_id == sp.unk_id() and vocab.bos_id == sp.bos_id()
    assert vocab.eos_id == sp.eos_id()
    assert vocab.add_space_prefix is (kind != "gemma")
    if kind == "gemma":
        user = [vocab.tokens[i] for i, t in enumerate(vocab.token_types) if t == 4]
        assert user == ["<start_of_turn>", "<end_of_turn>"]


@pytest.mark.parametrize(
    ("kind", "form", "prefix", "rule"),
    [
        ("llama", "json", True, "first"),
        ("llama", "model", True, "first"),
        ("legacy", "json", True, None),
        ("gemma", "json", False, None),
        ("gemma", "model", False, None),
    ],
)
def test_space_prefix_settings(
    kind: str,
    form: str,
    prefix: bool,
    rule: str | None,
    spm_dirs: dict[tuple[str, str], Path],
    runtime: Any,
) -> None:
    vocab = load_vocab(spm_dirs[kind, form], n_vocab=N_VOCAB)
    assert (vocab.add_space_prefix, vocab.space_prefix_rule) == (prefix, rule)
    hf = _hf(spm_dirs[kind, form])
    assert vocab.add_bos is True and vocab.bos_id == hf.bos_token_id
    llama = runtime(vocab)
    assert llama.tokenize("Hi there") == hf("Hi there")["input_ids"]
    assert (
        llama.tokenize("Hi", add_special=False) == hf("Hi", add_special_tokens=False)["input_ids"]
    )


def test_the_space_rule_matters(spm_dirs: dict[tuple[str, str], Path], runtime: Any) -> None:
    """Without the runtime's rule llama.cpp puts a second '▁' in front of a leading space."""
    folder = spm_dirs["llama", "json"]
    hf = _hf(folder)
    llama = runtime(load_vocab(folder, n_vocab=N_VOCAB))
    text = " Hello world"
    assert llama.tokenize(text) == hf(text)["input_ids"]
    assert llama.llama.tokenize(text, parse_special=False) != hf(text)["input_ids"]


@pytest.mark.parametrize("form", FORMS)
def test_phi3_added_tokens_are_control_tokens(
    form: str, spm_dirs: dict[tuple[str, str], Path], runtime: Any
) -> None:
    folder = spm_dirs["phi3", form]
    vocab = load_vocab(folder, n_vocab=N_VOCAB)
    hf = _hf(folder)
    for text in PHI3_ADDED:
        i = vocab.tokens.index(text)
        assert vocab.token_types[i] == 3 and hf.convert_tokens_to_ids(text) == i
    llama = runtime(vocab)
    # Split out where transformers splits them. (The text after one differs: llama.cpp puts a
    # '▁' in front of every text fragment, transformers 5's Metaspace only before the first.)
    text = "<|user|>\nHi<|end|>\n<|assistant|>"
    got = llama.llama.tokenize(text, parse_special=True)
    want = hf(text)["input_ids"]
    specials = {vocab.tokens.index(t) for t in PHI3_ADDED}
    assert [t for t in got if t in specials] == [t for t in want if t in specials] != []


# --- the two differences llama.cpp itself has (README, "Converting models") -------------------

#: texts with a special token between two pieces of text (each kind's own specials)
AFTER_SPECIAL = {
    "llama": ["Hi<s>there", "a </s> b", "x<unk>\ny"],
    "phi3": ["<|user|>\nHi<|end|>\n<|assistant|>", "Hi<|end|>there", "a <|system|>  b"],
    "legacy": ["Hi<s>there", "a </s> b"],
    "gemma": ["<start_of_turn>user\nHi<end_of_turn>\n", "a <end_of_turn> b"],
}


def _space_after_specials(text: str, specials: list[str], *, unless_space: bool = False) -> str:
    """``text`` with a space inserted after each special token that text follows
    (``unless_space``: unless that text starts with a space already)."""
    pattern = (
        "(" + "|".join(map(re.escape, specials)) + ")" + ("(?=[^ ])" if unless_space else "(?=.)")
    )
    return re.sub(pattern, r"\1 ", text, flags=re.DOTALL)


@pytest.mark.parametrize(
    ("kind", "form", "differs"),
    [
        ("llama", "json", True),
        ("llama", "model", True),
        ("phi3", "json", True),
        ("phi3", "model", True),
        ("legacy", "json", False),  # Prepend("▁") normalizes every piece: as llama.cpp does
        ("gemma", "json", False),  # no space prefix at all
        ("gemma", "model", False),
    ],
)
def test_llama_cpp_puts_a_space_after_every_special_token(
    kind: str, form: str, differs: bool, spm_dirs: dict[tuple[str, str], Path], runtime: Any
) -> None:
    """Difference 1. With a space prefix, llama.cpp prefixes every text fragment that follows a
    special token with '▁' (llama-vocab.cpp: ``is_prev_special``); transformers 5's Metaspace
    (prepend_scheme "first") prefixes only the start of the text. llama.cpp's tokens are
    transformers' for the text with one more space after each special token. edgestack's runtime
    (a template split at its specials, each fragment tokenized alone, a fragment's leading space
    dropped first) differs only where no space follows the special token already."""
    folder = spm_dirs[kind, form]
    vocab = load_vocab(folder, n_vocab=N_VOCAB)
    hf = _hf(folder)
    llama = runtime(vocab)
    specials = [t for t in vocab.tokens if t.startswith("<") and t in hf.all_special_tokens]
    specials += [t for t in (*PHI3_ADDED, "<start_of_turn>", "<end_of_turn>") if t in vocab.tokens]
    for text in AFTER_SPECIAL[kind]:
        got = llama.llama.tokenize(text, parse_special=True)
        pieces = re.split("(" + "|".join(map(re.escape, specials)) + ")", text)
        bos = [vocab.bos_id] if vocab.add_bos and vocab.bos_id is not None else []
        by_fragment = bos + [
            i
            for piece in pieces
            if piece
            for i in (
                [vocab.tokens.index(piece)]
                if piece in specials
                else llama.tokenize(piece, add_special=False)
            )
        ]
        want = hf(text)["input_ids"]
        if differs:
            assert got != want, text
            assert got == hf(_space_after_specials(text, specials))["input_ids"], text
            spaced = _space_after_specials(text, specials, unless_space=True)
            assert by_fragment == hf(spaced)["input_ids"], text
            assert (by_fragment == want) is (spaced == text), text
        else:
            assert got == want == by_fragment, text


@pytest.mark.parametrize("form", FORMS)
def test_llama_cpp_spells_out_user_defined_pieces_in_plain_text(
    form: str, spm_dirs: dict[tuple[str, str], Path], runtime: Any
) -> None:
    """Difference 2. SentencePiece matches user-defined pieces (Gemma's turn markers) anywhere, so
    transformers keeps them one token even in plain text (``split_special_tokens=True``);
    llama.cpp matches them only when parsing specials, and spells them out in plain text (as
    edgestack does for a question: only a template's own text is parsed for specials)."""
    import sentencepiece as spm

    folder = spm_dirs["gemma", form]
    vocab = load_vocab(folder, n_vocab=N_VOCAB)
    hf = _hf(folder)
    llama = runtime(vocab)
    text = "Hi<end_of_turn>there"
    turn = vocab.tokens.index("<end_of_turn>")
    assert vocab.token_types[turn] == 4  # user-defined
    sp = spm.SentencePieceProcessor(model_file=str(spm_dirs["gemma", "model"] / "tokenizer.model"))
    want = hf(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]
    assert want == sp.encode(text) and turn in want
    plain = llama.tokenize(text, add_special=False)
    assert turn not in plain and llama.llama.detokenize(plain).decode() == text
    parsed = llama.llama.tokenize(text, add_special=False, parse_special=True)
    assert parsed == want


def test_llama_cpp_loads_the_sentencepiece_gguf(spm_dirs: dict[tuple[str, str], Path]) -> None:
    """The GGUF passes edgestack's own vocabulary check (every byte token present, types)."""
    from edge_stack.formats.gguf._check import check_gguf

    vocab = load_vocab(spm_dirs["gemma", "json"], n_vocab=N_VOCAB)
    assert vocab.tokens[-1] == f"[PAD{N_VOCAB - 1}]"
    assert vocab.chat_template is not None and "<start_of_turn>" in vocab.chat_template
    del check_gguf  # the full check runs on real models in test_archs


# --- what cannot convert exactly: one clear error ---------------------------------------------


def _tokenizers_bpe_with_byte_fallback(folder: Path) -> Path:
    """A byte-fallback BPE trained by ``tokenizers`` itself: its merges are not closed."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from tokenizer_builders import CORPUS

    tok = Tokenizer(models.BPE(byte_fallback=True, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Metaspace()
    trainer = trainers.BpeTrainer(
        vocab_size=700,
        special_tokens=["<unk>", "<s>", "</s>", *[f"<0x{b:02X}>" for b in range(256)]],
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer=trainer)
    folder.mkdir()
    tok.save(str(folder / "tokenizer.json"))
    return folder


@pytest.mark.parametrize(
    ("case", "needle"),
    [
        ("unigram", "unigram model"),
        ("nfkc", "normalizes text with rule 'nmt_nfkc'"),
        ("no-byte-fallback", "no byte token <0x00>"),
        ("not-closed", "no merge"),
        ("strip-normalizer", "normalizer step 'Strip'"),
    ],
)
def test_unconvertible_tokenizers_are_one_clear_error(
    case: str, needle: str, spm_dirs: dict[tuple[str, str], Path], tmp_path: Path
) -> None:
    import sentencepiece as spm

    from tokenizer_builders import CORPUS

    folder = tmp_path / "tok"
    if case in ("unigram", "nfkc", "no-byte-fallback"):
        import io

        out = io.BytesIO()
        options: dict[str, Any] = {
            "model_type": "unigram" if case == "unigram" else "bpe",
            "byte_fallback": case != "no-byte-fallback",
            "normalization_rule_name": "nmt_nfkc" if case == "nfkc" else "identity",
            "remove_extra_whitespaces": False,
        }
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(CORPUS * 3),
            model_writer=out,
            vocab_size=1000,
            character_coverage=1.0,
            hard_vocab_limit=False,
            minloglevel=2,
            **options,
        )
        folder.mkdir()
        (folder / "tokenizer.model").write_bytes(out.getvalue())
    elif case == "not-closed":
        _tokenizers_bpe_with_byte_fallback(folder)
    else:
        shutil.copytree(spm_dirs["legacy", "json"], folder)
        path = folder / "tokenizer.json"
        data = json.loads(path.read_text())
        data["normalizer"]["normalizers"].append({"type": "Strip", "left": True, "right": True})
        path.write_text(json.dumps(data))
    with pytest.raises(TokenizerError) as info:
        load_vocab(folder, n_vocab=N_VOCAB)
    message = str(info.value)
    assert needle in message and "\n" not in message, message
