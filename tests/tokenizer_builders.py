"""Tiny byte-level BPE tokenizers trained offline, one per pre-tokenizer structure.

Each builder trains a real ``tokenizers`` BPE model on the small in-code corpus below and saves a
Hugging Face style folder (``tokenizer.json``, ``tokenizer_config.json``,
``special_tokens_map.json``) that ``transformers.AutoTokenizer`` loads. The structures mirror the
models edgestack supports (their pre-tokenizer settings, split regex and special tokens), not their
vocabularies: nothing is downloaded.

Kinds:

- ``gpt2``: ``ByteLevel(use_regex=True)``, ``<|endoftext|>`` as bos/eos/unk, no bos added.
- ``pythia``: like ``gpt2`` plus GPT-NeoX-20B's NFC normalizer and its non-special added tokens for
  runs of spaces; ``<|endoftext|>`` at id 0.
- ``smollm``: ``Digits(individual_digits=True)`` then ``ByteLevel(use_regex=True)``.
- ``llama3``: ``Split(llama 3 regex)`` then ``ByteLevel(use_regex=False)``, ``ignore_merges``,
  ``<|begin_of_text|>`` added by a ``TemplateProcessing`` post-processor.
- ``qwen2``: NFC, ``Split(qwen2 regex)`` then ``ByteLevel(use_regex=False)``, ``<|im_start|>``,
  ``<|im_end|>`` and a ChatML chat template.
"""

from __future__ import annotations

import ctypes
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

KINDS = ("gpt2", "pythia", "smollm", "llama3", "qwen2")

# The split patterns exactly as Llama 3's and Qwen2's tokenizer.json spell them.
LLAMA3_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN2_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

_CORPUS_PARTS = [
    # plain English, contractions, mixed case
    "The quick brown fox jumps over the lazy dog. I'm sure it's fine, isn't it? "
    "We've seen what they'll do; you'd think they're DONE. DON'T SHOUT! I'M LISTENING.",
    "Tom has 12 apples and buys 7 more. How many apples does he have? He has 19 apples. "
    "Sara reads 25 pages a day for 14 days: 350 pages in total. 3.14159 is close to pi.",
    "A train leaves at 09:45 and arrives at 13:20, a trip of 3 hours and 35 minutes. "
    "In 2024 the price rose from $1,299.99 to $1,349.00 (about 3.8%).",
    # numbers of every length
    " ".join(str(n) for n in (0, 1, 7, 42, 100, 256, 1024, 65535, 1234567, 9876543210)),
    "Phone: +1 (555) 010-9999; ID 000123; version 1.2.3-rc4; 1e-5 and 6.02e23.",
    # whitespace of every kind
    "Line one\nLine two\n\nParagraph after a blank line.\r\nWindows line.\n\n\n",
    "    four spaces\tone tab\t\ttwo tabs   three spaces  two spaces \n  \n\t\n",
    # code
    "def add(a: int, b: int) -> int:\n    return a + b\n\n\nclass Box:\n    pass\n",
    "for (int i = 0; i < n; ++i) { sum += x[i] * 2; }  // loop\nif (a != b && c >= d) {}\n",
    '{"key": "value", "list": [1, 2, 3], "nested": {"ok": true}}\n<div class="x">hi</div>',
    # unicode: accents, other scripts, CJK, emoji, symbols
    "Café, naïve, résumé, façade, jalapeño, Zürich, Ærøskøbing, São Paulo, Łódź, İstanbul.",
    "Привет, как дела? Ελληνικά γράμματα. שלום עולם. مرحبا بالعالم. नमस्ते दुनिया.",
    "日本語のテキストです。中文文本也在这里。한국어 문장도 있습니다。",
    "Emoji: 😀 😂 👍🏽 🚀 ❤️ 🇫🇷 👨‍👩‍👧 and symbols: © ® ™ € £ ¥ § ¶ † ‡ • … ≤ ≥ ≠ ∞ √ ∑ π.",
    "Full-width ＡＢＣ１２３ and superscripts x² y³ and fractions ½ ¼ and roman Ⅻ.",
]
# Repeated so the common pieces get merged; the order and content are fixed, so training is
# deterministic.
CORPUS: list[str] = [part for _ in range(3) for part in _CORPUS_PARTS]


def build_tokenizer(
    kind: str,
    out_dir: Path,
    *,
    merges: Literal["pairs", "strings"] = "pairs",
    vocab_size: int = 600,
) -> Path:
    """Train a tiny tokenizer of structure ``kind`` and save it as a HF folder in ``out_dir``.

    ``merges`` picks how ``tokenizer.json`` spells the merges: ``[["a", "b"], ...]`` (what
    current ``tokenizers`` writes) or the older ``["a b", ...]``. Returns ``out_dir``.
    """
    try:
        builder = _BUILDERS[kind]
    except KeyError:
        raise ValueError(f"unknown tokenizer kind {kind!r}; known: {', '.join(KINDS)}") from None
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer, config = builder(vocab_size)
    data = json.loads(tokenizer.to_str())
    data["model"]["merges"] = _merges_in_form(data["model"]["merges"], merges)
    (out_dir / "tokenizer.json").write_text(json.dumps(data, ensure_ascii=False, indent=1))
    specials = {
        key: config[key]
        for key in ("bos_token", "eos_token", "unk_token", "pad_token")
        if config.get(key) is not None
    }
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": 2048,
        "clean_up_tokenization_spaces": False,
        **config,
    }
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=1))
    (out_dir / "special_tokens_map.json").write_text(json.dumps(specials, indent=1))
    return out_dir


def n_tokens(folder: Path) -> int:
    """How many ids the tokenizer in ``folder`` uses (highest id + 1): a model's minimum vocab_size."""
    data = json.loads((folder / "tokenizer.json").read_text())
    ids = [*data["model"]["vocab"].values(), *(t["id"] for t in data["added_tokens"])]
    return max(ids) + 1


def _merges_in_form(merges: list[Any], form: str) -> list[Any]:
    pairs = [m.split(" ", 1) if isinstance(m, str) else list(m) for m in merges]
    return [f"{a} {b}" for a, b in pairs] if form == "strings" else pairs


def _train(
    pre_tokenizer: Any,
    vocab_size: int,
    *,
    normalizer: Any = None,
    ignore_merges: bool = False,
    leading_specials: tuple[str, ...] = (),
) -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE(ignore_merges=ignore_merges))
    if normalizer is not None:
        tokenizer.normalizer = normalizer
    tokenizer.pre_tokenizer = pre_tokenizer
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        show_progress=False,
        special_tokens=list(leading_specials),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(CORPUS, trainer=trainer)
    return tokenizer


def _byte_level(*, use_regex: bool) -> Any:
    from tokenizers import pre_tokenizers

    return pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=use_regex)


def _gpt2(vocab_size: int) -> tuple[Any, dict[str, Any]]:
    from tokenizers import AddedToken, processors

    tokenizer = _train(_byte_level(use_regex=True), vocab_size)
    # GPT-2 keeps <|endoftext|> as its last id, after the merged tokens.
    tokenizer.add_special_tokens([AddedToken("<|endoftext|>", special=True, normalized=False)])
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    eot = "<|endoftext|>"
    return tokenizer, {"bos_token": eot, "eos_token": eot, "unk_token": eot, "add_bos_token": False}


def _pythia(vocab_size: int) -> tuple[Any, dict[str, Any]]:
    from tokenizers import AddedToken, normalizers, processors

    tokenizer = _train(
        _byte_level(use_regex=True),
        vocab_size,
        normalizer=normalizers.NFC(),
        leading_specials=("<|endoftext|>", "<|padding|>"),
    )
    # GPT-NeoX-20B adds runs of spaces as non-special tokens (user-defined in GGUF terms).
    tokenizer.add_tokens([AddedToken(" " * n, normalized=True) for n in (24, 16, 8, 4, 2)])
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    eot = "<|endoftext|>"
    return tokenizer, {
        "bos_token": eot,
        "eos_token": eot,
        "unk_token": eot,
        "pad_token": "<|padding|>",
        "add_bos_token": False,
        "add_eos_token": False,
    }


def _smollm(vocab_size: int) -> tuple[Any, dict[str, Any]]:
    from tokenizers import AddedToken, pre_tokenizers, processors

    pre = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), _byte_level(use_regex=True)]
    )
    tokenizer = _train(pre, vocab_size, leading_specials=("<|endoftext|>", "<|im_start|>"))
    tokenizer.add_special_tokens([AddedToken("<|im_end|>", special=True, normalized=False)])
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    return tokenizer, {
        "bos_token": "<|im_start|>",
        "eos_token": "<|im_end|>",
        "unk_token": "<|endoftext|>",
        "pad_token": "<|im_end|>",
        "add_bos_token": False,
        "chat_template": CHATML_TEMPLATE,
    }


def _llama3(vocab_size: int) -> tuple[Any, dict[str, Any]]:
    from tokenizers import AddedToken, Regex, pre_tokenizers, processors

    pre = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(LLAMA3_PATTERN), behavior="isolated", invert=False),
            _byte_level(use_regex=False),
        ]
    )
    tokenizer = _train(pre, vocab_size, ignore_merges=True)
    names = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>"]
    names += ["<|eot_id|>", "<|reserved_special_token_0|>"]
    tokenizer.add_special_tokens([AddedToken(n, special=True, normalized=False) for n in names])
    bos = "<|begin_of_text|>"
    bos_id = tokenizer.token_to_id(bos)
    tokenizer.post_processor = processors.Sequence(
        [
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(
                single=f"{bos}:0 $A:0",
                pair=f"{bos}:0 $A:0 {bos}:1 $B:1",
                special_tokens=[(bos, bos_id)],
            ),
        ]
    )
    template = (
        "{{ bos_token }}{% for message in messages %}"
        "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'"
        " + message['content'] + '<|eot_id|>' }}{% endfor %}"
        "{% if add_generation_prompt %}"
        "{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
    )
    return tokenizer, {"bos_token": bos, "eos_token": "<|end_of_text|>", "chat_template": template}


def _qwen2(vocab_size: int) -> tuple[Any, dict[str, Any]]:
    from tokenizers import AddedToken, Regex, normalizers, pre_tokenizers, processors

    pre = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_PATTERN), behavior="isolated", invert=False),
            _byte_level(use_regex=False),
        ]
    )
    tokenizer = _train(pre, vocab_size, normalizer=normalizers.NFC())
    names = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tokenizer.add_special_tokens([AddedToken(n, special=True, normalized=False) for n in names])
    # a non-special added token, as Qwen2's <think>-style markers are in later releases
    tokenizer.add_tokens([AddedToken("<tool_call>", special=False, normalized=False)])
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    return tokenizer, {
        "bos_token": None,
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "add_bos_token": False,
        "chat_template": CHATML_TEMPLATE,
    }


_BUILDERS: dict[str, Callable[[int], tuple[Any, dict[str, Any]]]] = {
    "gpt2": _gpt2,
    "pythia": _pythia,
    "smollm": _smollm,
    "llama3": _llama3,
    "qwen2": _qwen2,
}


# --- llama.cpp over a vocabulary alone (the tokenizer tests' reference side) ---


def write_vocab_gguf(vocab: Any, path: Path) -> Path:
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


class LlamaVocab:
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
