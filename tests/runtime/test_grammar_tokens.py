"""Tokens llama.cpp's grammar engine cannot read are never sampled under a grammar.

Such a token (bytes that are not complete UTF-8 on their own, or a NUL) is read by llama.cpp as
an empty string, passes any grammar, and aborts the process when accepted ("Unexpected empty
grammar stack"); seen with b"\\xc0@" on a Pythia-sized random vocabulary.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

pytestmark = pytest.mark.llama


@pytest.mark.parametrize("variant", ["gptneox"])  # byte-level BPE: pieces are raw bytes
def test_banned_tokens_are_exactly_those_without_whole_utf8(
    tiny_gguf: Callable[..., Path], variant: str
) -> None:
    from edge_stack.engines.llama import LlamaModel
    from edge_stack.engines.llama._lib import lib
    from edge_stack.engines.llama._sampling import _not_utf8

    with LlamaModel.load(tiny_gguf(variant, "f32")) as model:
        expected = []
        for tok in range(model.n_vocab):
            piece = model.token_to_piece(tok)
            try:
                piece.decode("utf-8")
            except UnicodeDecodeError:
                expected.append(tok)
                continue
            if b"\x00" in piece:
                expected.append(tok)
        assert list(_not_utf8(lib(), model.vocab, model.n_vocab)) == expected
        assert expected, "the test vocabulary should hold some byte tokens"


def test_generation_under_a_grammar_never_emits_them(tiny_gguf: Callable[..., Path]) -> None:
    from edge_stack.engines.llama import LlamaContext, LlamaModel

    with LlamaModel.load(tiny_gguf("gptneox", "f32")) as model:
        ctx = LlamaContext(model, n_ctx=256, n_threads=1)
        tokens = model.tokenize("Question: what?", add_bos=False, special=False)
        out = list(ctx.generate(tokens, max_tokens=40, grammar="root ::= [a-z ]+ [.]"))
        ctx.close()
    text = "".join(t.text for t in out)
    assert text and all(ch in "abcdefghijklmnopqrstuvwxyz ." for ch in text)
