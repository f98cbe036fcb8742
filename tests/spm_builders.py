"""Tiny SentencePiece tokenizers trained offline, in the shapes real models ship them.

Each builder trains a real ``sentencepiece`` BPE model (byte fallback, identity normalization,
no whitespace squeezing: the settings of Llama 2, Mistral and Gemma) on tokenizer_builders'
corpus and saves a Hugging Face folder. ``form`` picks what the folder holds:

- ``model``: ``tokenizer.model`` and ``tokenizer_config.json`` only (transformers converts it);
- ``json``: the ``tokenizer.json`` transformers makes of it, as saved by ``save_pretrained``.

Kinds:

- ``llama``: Llama 2 / TinyLlama / Mistral: ``<unk> <s> </s>``, a space prefix, bos added,
  ``tokenizer_class`` LlamaTokenizer (transformers 5: Metaspace, prepend_scheme "first").
- ``legacy``: the same model with the legacy ``Prepend("▁") + Replace`` normalizer that older
  Llama ``tokenizer.json`` files carry, read as it is (``PreTrainedTokenizerFast``).
- ``gemma``: Gemma 3: no space prefix, ``<pad> <eos> <bos> <unk>`` and turn markers as
  user-defined pieces, bos added, a chat template.
- ``phi3``: Llama's model plus Phi-3's chat tokens added after the SentencePiece vocabulary.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

from tokenizer_builders import CORPUS

SPM_KINDS = ("llama", "legacy", "gemma", "phi3")
FORMS = ("json", "model")

GEMMA_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}<start_of_turn>{{ message['role'] }}\n"
    "{{ message['content'] }}<end_of_turn>\n{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)
PHI3_ADDED = ("<|endoftext|>", "<|assistant|>", "<|end|>", "<|user|>", "<|system|>")


def train_spm(*, dummy_prefix: bool, specials: str, vocab_size: int = 1000) -> bytes:
    """A SentencePiece BPE model (bytes of tokenizer.model)."""
    import sentencepiece as spm

    ids: dict[str, Any] = {"unk_id": 0, "bos_id": 1, "eos_id": 2, "pad_id": -1}
    user: list[str] = []
    if specials == "gemma":
        ids = {"pad_id": 0, "eos_id": 1, "bos_id": 2, "unk_id": 3}
        ids |= {"bos_piece": "<bos>", "eos_piece": "<eos>"}
        user = ["<start_of_turn>", "<end_of_turn>"]
    out = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS * 3),
        model_writer=out,
        vocab_size=vocab_size,
        model_type="bpe",
        byte_fallback=True,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        add_dummy_prefix=dummy_prefix,
        split_digits=True,
        allow_whitespace_only_pieces=True,
        character_coverage=1.0,
        user_defined_symbols=user,
        hard_vocab_limit=False,
        minloglevel=2,
        **ids,
    )
    return out.getvalue()


def build_spm_tokenizer(kind: str, out_dir: Path, *, form: str = "json") -> Path:
    """Save a ``kind`` SentencePiece tokenizer as a Hugging Face folder in ``form``."""
    if kind not in SPM_KINDS or form not in FORMS:
        raise ValueError(f"unknown kind/form {kind!r}/{form!r}")
    out_dir.mkdir(parents=True, exist_ok=True)
    gemma = kind == "gemma"
    (out_dir / "tokenizer.model").write_bytes(
        train_spm(dummy_prefix=not gemma, specials="gemma" if gemma else "llama")
    )
    config: dict[str, Any] = {
        "tokenizer_class": "GemmaTokenizer" if gemma else "LlamaTokenizer",
        "bos_token": "<bos>" if gemma else "<s>",
        "eos_token": "<eos>" if gemma else "</s>",
        "unk_token": "<unk>",
        "add_bos_token": True,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
    }
    if gemma:
        config["pad_token"] = "<pad>"
        config["chat_template"] = GEMMA_TEMPLATE
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=1))
    if kind == "phi3" or form == "json":
        _to_json(out_dir, kind)
    if form == "json":
        (out_dir / "tokenizer.model").unlink()
    elif kind == "phi3":
        # As Phi-3's repository has them (transformers 4 wrote them): the added tokens in
        # tokenizer_config.json's added_tokens_decoder next to tokenizer.model.
        (out_dir / "tokenizer.json").unlink()
        cfg = json.loads((out_dir / "tokenizer_config.json").read_text())
        first = len(_sp_pieces(out_dir / "tokenizer.model"))
        cfg["added_tokens_decoder"] = {
            str(first + i): {
                "content": t,
                "special": True,
                "lstrip": False,
                "rstrip": False,
                "normalized": False,
                "single_word": False,
            }
            for i, t in enumerate(PHI3_ADDED)
        }
        (out_dir / "tokenizer_config.json").write_text(json.dumps(cfg, indent=1))
    return out_dir


def _sp_pieces(path: Path) -> list[str]:
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(path))
    return [sp.id_to_piece(i) for i in range(sp.vocab_size())]


def _to_json(out_dir: Path, kind: str) -> None:
    from tokenizers import AddedToken
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(out_dir)
    if kind == "phi3":
        tok.add_tokens([AddedToken(t, special=True, normalized=False) for t in PHI3_ADDED])
    tok.save_pretrained(out_dir)
    if kind == "legacy":
        path = out_dir / "tokenizer.json"
        data = json.loads(path.read_text())
        data["normalizer"] = {
            "type": "Sequence",
            "normalizers": [
                {"type": "Prepend", "prepend": "▁"},
                {"type": "Replace", "pattern": {"String": " "}, "content": "▁"},
            ],
        }
        data["pre_tokenizer"] = None
        path.write_text(json.dumps(data, ensure_ascii=False))
        cfg_path = out_dir / "tokenizer_config.json"
        cfg = json.loads(cfg_path.read_text())
        cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
        cfg_path.write_text(json.dumps(cfg))


def n_spm_tokens(folder: Path) -> int:
    """The highest token id + 1 of the tokenizer in ``folder`` (transformers' view)."""
    from transformers import AutoTokenizer

    return len(AutoTokenizer.from_pretrained(folder))
