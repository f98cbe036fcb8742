"""A real GGUF model whose logits are known exactly, the same at every position, and a reference
implementation of llama.cpp's sampler chain to compare its draws with.

The tiny GPT-NeoX checkpoint of model_builders with its final layer norm's weight set to 0 and its
bias to the unit vector e0: the last hidden state is e0 whatever the text, so the logits are
column 0 of the output matrix, which is set to LOGITS (every other token: REST). The end-of-text
token is one of the REST tokens, so generation never ends before ``max_tokens``: tests of
cancellation, Ctrl-C and closing under load use it to be deterministic.
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest

#: the designed logits of the five single-letter tokens; no sampling threshold below falls
#: within 0.05 of one of them (checked by ``check_margins``)
LOGITS: dict[str, float] = {"a": 5.0, "b": 4.0, "c": 3.0, "d": 1.5, "e": 0.5}
#: every other token's logit (e^-35 relative to "a": never drawn)
REST = -30.0

_CACHE: dict[str, tuple[Path, dict[str, int]]] = {}


def known_logits_gguf(
    factory: pytest.TempPathFactory, tiny_gptneox: Path
) -> tuple[Path, dict[str, int]]:
    """The f32 GGUF (converted by edgestack) and the token id of each letter; once per session."""
    key = str(factory.getbasetemp())
    if key not in _CACHE:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from edge_stack.convert import convert_checkpoint

        root = factory.mktemp("known-logits")
        hf = shutil.copytree(tiny_gptneox, root / "hf")
        tok = AutoTokenizer.from_pretrained(hf)
        ids = {letter: int(tok.convert_tokens_to_ids(letter)) for letter in LOGITS}
        assert len(set(ids.values())) == len(ids) and tok.eos_token_id not in ids.values()
        model = AutoModelForCausalLM.from_pretrained(hf, dtype=torch.float32)
        with torch.no_grad():
            norm = model.gpt_neox.final_layer_norm
            norm.weight.zero_()
            norm.bias.zero_()
            norm.bias[0] = 1.0
            out = model.get_output_embeddings().weight
            out.zero_()
            out[:, 0] = REST
            for letter, token in ids.items():
                out[token, 0] = LOGITS[letter]
        model.save_pretrained(hf)
        gguf_path = convert_checkpoint(hf, root / "known.f32.gguf", outtype="f32")
        _CACHE[key] = (gguf_path, ids)
    return _CACHE[key]


def expected_distribution(
    *, temperature: float, top_k: int, top_p: float, min_p: float
) -> dict[str, float]:
    """What llama.cpp's chain (top-k, top-p, min-p, temperature, draw) gives over the letters.

    Written from llama.cpp's documented semantics, independently of edgestack: top-k keeps the k
    highest logits; top-p keeps the smallest set of highest-probability tokens whose softmax
    probabilities add up to at least p; min-p keeps tokens whose probability is at least p
    times the highest; the temperature divides the logits of what is left; greedy (temperature
    0) takes the argmax.
    """
    kept = sorted(LOGITS, key=LOGITS.__getitem__, reverse=True)
    if temperature <= 0:
        return {kept[0]: 1.0}
    if top_k > 0:
        kept = kept[:top_k]
    if top_p < 1.0:
        probs = _softmax({t: LOGITS[t] for t in kept})
        total, cut = 0.0, len(kept)
        for i, t in enumerate(kept):
            total += probs[t]
            if total >= top_p:
                cut = i + 1
                break
        kept = kept[:cut]
    if min_p > 0.0:
        floor = LOGITS[kept[0]] + math.log(min_p)
        kept = [t for t in kept if LOGITS[t] >= floor]
    return _softmax({t: LOGITS[t] / temperature for t in kept})


def check_margins(*, top_p: float, min_p: float, top_k: int) -> None:
    """Fail the test (not llama.cpp) if a threshold sits so close to a logit that float32
    rounding could decide it."""
    if min_p > 0:
        floor = max(LOGITS.values()) + math.log(min_p)
        assert all(abs(v - floor) > 0.05 for v in LOGITS.values())
    if 0 < top_p < 1:
        kept = sorted(LOGITS, key=LOGITS.__getitem__, reverse=True)
        if top_k > 0:
            kept = kept[:top_k]
        probs = _softmax({t: LOGITS[t] for t in kept})
        running = 0.0
        for t in kept:
            running += probs[t]
            assert abs(running - top_p) > 0.01


def _softmax(logits: Mapping[str, float]) -> dict[str, float]:
    top = max(logits.values())
    exps = {t: math.exp(v - top) for t, v in logits.items()}
    total = sum(exps.values())
    return {t: e / total for t, e in exps.items()}


def penalized_greedy(
    prompt: Sequence[str], n: int, *, penalty: float, last_n: int = 64
) -> list[str]:
    """Greedy decoding under llama.cpp's repeat penalty, over the letters (every other token's
    logit is far below): a token seen in the last ``last_n`` tokens (prompt included) has its
    logit divided by ``penalty`` if positive, multiplied if not."""
    history = list(prompt)
    out: list[str] = []
    for _ in range(n):
        window = set(history[-last_n:])
        scores = {
            t: (v / penalty if v > 0 else v * penalty) if t in window else v
            for t, v in LOGITS.items()
        }
        best = max(scores, key=scores.__getitem__)
        out.append(best)
        history.append(best)
    return out


def within_bound(counts: Mapping[str, int], expected: Mapping[str, float], n: int) -> list[str]:
    """Letters whose frequency is off by more than 5 standard deviations of a binomial (or that
    were drawn with an expected probability of 0); empty when the draws fit."""
    bad = []
    for letter in LOGITS:
        p = expected.get(letter, 0.0)
        got = counts.get(letter, 0)
        if p == 0.0:
            if got:
                bad.append(f"{letter}: drawn {got} times, expected never")
            continue
        sigma = math.sqrt(p * (1 - p) / n) if p < 1 else 0.0
        if abs(got / n - p) > 5 * sigma + 1e-9:
            bad.append(
                f"{letter}: frequency {got / n:.4f}, expected {p:.4f} (5 sigma {5 * sigma:.4f})"
            )
    return bad
