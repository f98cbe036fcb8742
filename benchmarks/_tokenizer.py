"""A Pythia-sized benchmark tokenizer that splits English like a real one (about a word a token).

benchmarks/_pythia.py's tokenizer has random merges, so English text comes out at one token per
character: a 200-token instruction would be 200 characters and a stage's output would grow
several times when the next stage reads it, which makes prompts far longer than a real stack's.
Here the first merges are learned (HF ``tokenizers``' BPE trainer, offline) from the benchmark's
own texts plus some everyday English, and the rest of the 50277 tokens are random merges of
short pieces (at most 4 characters), so a random model's generated tokens stay short too. Same
file structure as _pythia.py's (GPT-2 byte-level BPE), same size.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from _pythia import N_TOKENS, save_gpt2_tokenizer

_ENGLISH = """
the of and to in is that it was for on are as with his they at be this have from or one had by
word but not what all were we when your can said there use an each which she do how their if
will up other about out many then them these so some her would make like him into time has look
two more write go see number no way could people my than first water been call who oil its now
find long down day did get come made may part apples pens stamps coins birds trees rolls beads
more left how many each bag box boxes team teams row rows tray trays friend friends sister book
plus minus times divided equals total sum difference product share shares gives buys sells eats
"""


def _corpus(texts: list[str]) -> list[str]:
    return texts * 20 + [_ENGLISH] * 20


def write_trained_tokenizer(folder: Path, texts: list[str], *, seed: int = 0) -> None:
    """tokenizer.json and tokenizer_config.json of ``N_TOKENS`` tokens into ``folder``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=4000,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(texts), trainer)
    trained = json.loads(tok.to_str())["model"]
    # Renumber: byte alphabet first (as GPT-2), then learned tokens in merge order.
    vocab: dict[str, int] = {}
    for piece, _ in sorted(trained["vocab"].items(), key=lambda kv: kv[1]):
        vocab.setdefault(piece, len(vocab))
    merges = [m if isinstance(m, list) else m.split(" ") for m in trained["merges"]]
    rng = random.Random(seed)
    short = [t for t in vocab if len(t) <= 2]
    while len(vocab) < N_TOKENS - 1:
        a, b = rng.choice(short), rng.choice(short)
        if a + b in vocab:
            continue
        vocab[a + b] = len(vocab)
        merges.append([a, b])
    save_gpt2_tokenizer(folder, vocab, merges)
