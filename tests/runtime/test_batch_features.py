"""Batched decoding with stop strings, a grammar and cancellation: what one by one does, on real
llama.cpp (the context directly, and a stack through Stack.ask_batch)."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from edge_stack import Stack
from edge_stack.engines.llama import LlamaContext, LlamaModel
from edge_stack.engines.llama._batch import BatchContext
from edge_stack.errors import Cancelled

from logit_builders import known_logits_gguf
from stack_builders import QUESTIONS, write_stack

pytestmark = [pytest.mark.llama, pytest.mark.torch]

PREFIX = "Question: a fixed preamble that every call of this stage starts with.\n"
DIGITS = 'root ::= [0-9] [0-9]? "." [0-9]+ " " [a-z]+'


def _prompts(model: LlamaModel) -> list[list[int]]:
    return [model.tokenize(PREFIX + q, add_bos=model.add_bos, special=False) for q in QUESTIONS]


def _single(
    model: LlamaModel, prompts: list[list[int]], **kw: object
) -> list[tuple[str, list[int], str]]:
    out = []
    with LlamaContext(model, n_ctx=256, n_threads=1) as ctx:
        for p in prompts:
            items = list(ctx.generate(p, **kw))  # type: ignore[arg-type]
            out.append(
                (
                    "".join(t.text for t in items),
                    [t.id for t in items if t.id >= 0],
                    ctx.last_stats.finish_reason,
                )
            )
    return out


def _batched(
    model: LlamaModel, prompts: list[list[int]], **kw: object
) -> list[tuple[str, list[int], str]]:
    with BatchContext(model, n_ctx=256, n_seq=4, n_threads=1) as ctx:
        outs = []
        for start in range(0, len(prompts), 4):
            outs += ctx.generate_batch(prompts[start : start + 4], **kw)  # type: ignore[arg-type]
    return [(o.text, o.tokens, o.stats.finish_reason) for o in outs]


def test_stop_strings_cut_each_sequence_as_alone(base_gguf: Path) -> None:
    with LlamaModel.load(base_gguf) as model:
        prompts = _prompts(model)
        free = _single(model, prompts, max_tokens=24)
        # Stop strings that occur in some outputs and not in others: two characters from the
        # middle of the first and the fourth output.
        stops = []
        for text, _, _ in (free[0], free[3]):
            mid = len(text) // 2
            stops.append(text[mid : mid + 2])
        assert all(stops)
        want = _single(model, prompts, max_tokens=24, stop=stops)
        got = _batched(model, prompts, max_tokens=24, stop=stops)
    assert got == want
    reasons = [r for _, _, r in want]
    assert "stop" in reasons and set(reasons) - {"stop"}, reasons  # both kinds of ending ran
    for (text, _, reason), (full, _, _) in zip(want, free, strict=True):
        if reason == "stop":
            cut = min(full.find(s) for s in stops if s in full)
            assert text == full[:cut]


def test_grammar_constrains_each_sequence_as_alone(base_gguf: Path) -> None:
    with LlamaModel.load(base_gguf) as model:
        prompts = _prompts(model)
        want = _single(model, prompts, max_tokens=12, grammar=DIGITS)
        got = _batched(model, prompts, max_tokens=12, grammar=DIGITS)
    assert got == want
    for text, _, reason in got:
        # A finished text matches the whole grammar; one cut by max_tokens, a prefix of it.
        if reason == "eog":
            assert re.fullmatch(r"[0-9][0-9]?\.[0-9]+ [a-z]+", text), text
        else:
            assert re.fullmatch(r"[0-9][0-9]?(\.([0-9]+( [a-z]*)?)?)?", text), text


@pytest.fixture(scope="module")
def known(tmp_path_factory: pytest.TempPathFactory, tiny_model: Callable[[str], Path]) -> Path:
    return known_logits_gguf(tmp_path_factory, tiny_model("gptneox"))[0]


@pytest.mark.parametrize("pack", [False, True], ids=["aligned", "packed"])
def test_cancel_stops_every_sequence(known: Path, pack: bool) -> None:
    """On a model that never ends a text, only the cancel (from another thread) stops the batch."""
    with (
        LlamaModel.load(known) as model,
        BatchContext(model, n_ctx=2048, n_seq=4, n_threads=1, pack_prompts=pack) as ctx,
    ):
        prompts = [[5, 6, 7 + i] for i in range(4)]
        cancel = threading.Event()
        steps = 0
        real_step = ctx._decode_step

        def step(seqs: list[int], toks: list[int]) -> None:
            nonlocal steps
            steps += 1
            if steps == 10:
                threading.Thread(target=cancel.set).start()
            real_step(seqs, toks)

        ctx._decode_step = step  # type: ignore[method-assign]
        outs = ctx.generate_batch(prompts, max_tokens=2000, cancel=cancel)
        assert [o.stats.finish_reason for o in outs] == ["cancelled"] * 4
        assert all(10 <= o.stats.completion_tokens < 2000 for o in outs)
        assert len({o.stats.completion_tokens for o in outs}) == 1  # stopped at the same step
        # Set before the call: no prompt is evaluated, nothing generated.
        outs = ctx.generate_batch(prompts, max_tokens=10, cancel=cancel)
        assert [(o.stats.finish_reason, o.tokens) for o in outs] == [("cancelled", [])] * 4
        # And the context still works afterwards.
        outs = ctx.generate_batch(prompts, max_tokens=3)
        assert [o.stats.finish_reason for o in outs] == ["length"] * 4


STOP_AND_GRAMMAR = """
version = 1
[defaults]
model = "base.gguf"
n_ctx = 256
max_tokens = 16
[[stages]]
name = "number"
prompt = "Question: {question}\\nNumber:"
grammar = 'root ::= [0-9] [0-9]? "." [0-9]+ " " [a-z]+'
[[stages]]
name = "words"
prompt = "Number: {number}\\nWords:"
stop = [STOP_A, STOP_B]
"""


def _with_stops(a: str, b: str) -> str:
    return STOP_AND_GRAMMAR.replace("STOP_A", json.dumps(a)).replace("STOP_B", json.dumps(b))


def test_ask_batch_with_stop_and_grammar_equals_ask(base_gguf: Path, tmp_path: Path) -> None:
    probe = write_stack(
        tmp_path / "probe",
        _with_stops("never-a", "never-b"),
        {"base.gguf": base_gguf},
    )
    with Stack.load(probe, threads=1) as stack:
        free = [stack.ask(q).stages[1].output for q in QUESTIONS]
    stop_a, stop_b = free[0][len(free[0]) // 2 :][:2], free[5][len(free[5]) // 2 :][:2]
    path = write_stack(
        tmp_path / "s",
        _with_stops(stop_a, stop_b),
        {"base.gguf": base_gguf},
    )
    with Stack.load(path, threads=1) as stack:
        alone = [stack.ask(q).to_dict() for q in QUESTIONS]
        batch = [a.to_dict() for a in stack.ask_batch(QUESTIONS, batch_size=3)]
        cancel = threading.Event()
        cancel.set()
        with pytest.raises(Cancelled, match="before stage number"):
            stack.ask_batch(QUESTIONS, cancel=cancel)

    def strip(answers: list[dict[str, object]]) -> list[object]:
        return [[(s["output"], s["completion_tokens"]) for s in a["stages"]] for a in answers]  # type: ignore[attr-defined]

    assert strip(batch) == strip(alone)
    words = [a["stages"][1]["output"] for a in alone]  # type: ignore[index]
    assert any(len(w) < len(f) for w, f in zip(words, free, strict=True))  # a stop string cut
    for a in alone:
        number = a["stages"][0]["output"]  # type: ignore[index]
        assert re.fullmatch(r"[0-9][0-9]?(\.([0-9]+( [a-z]*)?)?)?", number), number
