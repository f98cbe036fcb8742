"""Tokenizer and training batches for train.py (needs tokenizers; torch only for batches)."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stages import Example

EOS = "<|endoftext|>"


def train_tokenizer(texts: Sequence[str], vocab_size: int, *, split_digits: bool) -> Any:
    """A byte-level BPE with GPT-2's pre-tokenizer and one special token, ``<|endoftext|>``.

    With ``split_digits`` every merge whose result holds a digit is dropped after training, so
    numbers are read and written digit by digit, each digit always the same token (``" 23"`` is
    ``Ġ 2 3``): the model can learn carrying instead of a 100 x 100 table, and the pre-tokenizer
    keeps exactly the GPT-2/Pythia structure.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    if split_digits:
        tok = _drop_digit_merges(tok)
    return tok


def _drop_digit_merges(tok: Any) -> Any:
    """Remove merges whose result holds a digit, then renumber the vocabulary densely."""
    from tokenizers import Tokenizer

    spec = json.loads(tok.to_str())
    model = spec["model"]
    merges = [m if isinstance(m, list) else m.split(" ") for m in model["merges"]]

    def has_digit(merge: list[str]) -> bool:
        return any(ch.isdigit() for ch in merge[0] + merge[1])

    kept_merges = [m for m in merges if not has_digit(m)]
    dropped = {m[0] + m[1] for m in merges if has_digit(m)}
    ordered = sorted(model["vocab"].items(), key=lambda kv: kv[1])
    vocab = {token: i for i, (token, _) in enumerate(t for t in ordered if t[0] not in dropped)}
    model["vocab"], model["merges"] = vocab, kept_merges
    for added in spec.get("added_tokens", []):
        added["id"] = vocab[added["content"]]
    return Tokenizer.from_str(json.dumps(spec))


def save_tokenizer(tok: Any, folder: Path, max_positions: int) -> Any:
    """Save ``tokenizer.json`` and ``tokenizer_config.json`` the way Pythia ships them."""
    from transformers import PreTrainedTokenizerFast

    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=EOS,
        eos_token=EOS,
        unk_token=EOS,
        pad_token=EOS,
        model_max_length=max_positions,
        clean_up_tokenization_spaces=False,
    )
    fast.save_pretrained(folder)
    # No BOS: prompts start at position 0 in training, as llama.cpp must feed them.
    config_path = folder / "tokenizer_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config.update(add_bos_token=False, add_eos_token=False)
    config_path.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    return fast


@dataclass(frozen=True)
class Encoded:
    """Token ids of prompt + completion + EOS, and which positions carry loss."""

    ids: list[int]
    n_prompt: int


def encode(tok: Any, examples: Sequence[Example], eos_id: int) -> list[Encoded]:
    """Tokenize prompt and completion separately: prompts end at a pre-token boundary (``:``), so
    this equals tokenizing the whole text, as the runtime does."""
    prompts = tok.encode_batch([e.prompt for e in examples])
    completions = tok.encode_batch([e.completion for e in examples])
    return [
        Encoded(p.ids + c.ids + [eos_id], len(p.ids))
        for p, c in zip(prompts, completions, strict=True)
    ]


def length_grouped(lengths: Sequence[int], budget: int, rng: random.Random) -> list[list[int]]:
    """One epoch of batches: examples of similar length together, at most ``budget`` tokens
    (rows x longest row) each, in random order. Padding stays small, so every step costs about
    the same whatever the stage mix."""
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], rng.random()))
    groups: list[list[int]] = []
    current: list[int] = []
    for i in order:
        if current and lengths[i] * (len(current) + 1) > budget:
            groups.append(current)
            current = []
        current.append(i)
    if current:
        groups.append(current)
    rng.shuffle(groups)
    return groups


def batches(
    data: Sequence[Encoded], budget: int, steps: int, seed: int, *, prompt_loss: bool, pad_id: int
) -> Iterator[dict[str, Any]]:
    """``steps`` right-padded batches (epochs repeat as needed); labels are -100 on padding, and on
    the prompt unless ``prompt_loss``."""
    import torch

    rng = random.Random(seed)
    lengths = [len(e.ids) for e in data]
    pending: list[list[int]] = []
    for _ in range(steps):
        if not pending:
            pending = length_grouped(lengths, budget, rng)
        chunk = [data[i] for i in pending.pop()]
        width = max(len(e.ids) for e in chunk)
        ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
        labels = torch.full((len(chunk), width), -100, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for row, e in enumerate(chunk):
            n = len(e.ids)
            ids[row, :n] = torch.tensor(e.ids)
            mask[row, :n] = 1
            start = 0 if prompt_loss else e.n_prompt
            labels[row, start:n] = ids[row, start:n]
        yield {"input_ids": ids, "attention_mask": mask, "labels": labels}
