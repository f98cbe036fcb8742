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


#: ``split_digits`` modes: how numbers are cut into tokens after BPE training
DIGIT_MODES = ("no", "apart", "alone")

#: every number a stage can write (operands 0..99, results up to 99 + 99 = 198) is one token in
#: mode "no": the tokenizer sees this line often enough to merge each of them
WHOLE_NUMBERS = range(200)
_NUMBER_LINE = " ".join(str(n) for n in WHOLE_NUMBERS)


def _check_whole_numbers(tok: Any) -> None:
    """Raise if some number of ``WHOLE_NUMBERS`` (space-led, as in every text) is split."""
    split = [n for n in WHOLE_NUMBERS if len(tok.encode(f" {n}").ids) != 1]
    if split:
        raise ValueError(f"numbers split into several tokens (raise vocab_size): {split[:10]}")


def train_tokenizer(texts: Sequence[str], vocab_size: int, *, split_digits: str) -> Any:
    """A byte-level BPE with GPT-2's pre-tokenizer and one special token, ``<|endoftext|>``.

    ``split_digits`` drops merges after training, keeping the GPT-2/Pythia pre-tokenizer exactly
    (so the converter recognises it): ``"no"`` keeps every merge and makes sure every number of
    ``WHOLE_NUMBERS`` is one token (``" 23"`` is ``Ġ23``: copying a number is copying one token,
    and arithmetic is a table the model learns; measured best),
    ``"apart"`` drops merges that put two digits in one token (``" 23"`` is ``Ġ2 3``), ``"alone"``
    drops every merge with a digit (``" 23"`` is ``Ġ 2 3``; measured much worse: every number
    then follows the same ``Ġ`` token, and copying numbers by attention fails).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    if split_digits not in DIGIT_MODES:
        raise ValueError(f"split_digits must be one of {DIGIT_MODES}, got {split_digits!r}")
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
    if split_digits == "no":
        texts = [*texts, *[_NUMBER_LINE] * 1000]
    tok.train_from_iterator(texts, trainer=trainer)
    if split_digits == "no":
        _check_whole_numbers(tok)
    else:
        tok = _drop_digit_merges(tok, max_digits=1 if split_digits == "apart" else 0)
    return tok


def _drop_digit_merges(tok: Any, *, max_digits: int) -> Any:
    """Remove merges whose result holds more than ``max_digits`` digits (a merge result is always
    longer than one character), then renumber the vocabulary densely."""
    from tokenizers import Tokenizer

    spec = json.loads(tok.to_str())
    model = spec["model"]
    merges = [m if isinstance(m, list) else m.split(" ") for m in model["merges"]]

    def too_many(merge: list[str]) -> bool:
        return sum(ch.isdigit() for ch in merge[0] + merge[1]) > max_digits

    kept_merges = [m for m in merges if not too_many(m)]
    dropped = {m[0] + m[1] for m in merges if too_many(m)}
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
