"""edge_stack.engines.llama._model on real llama.cpp, with tiny GGUF files converted inside the tests."""

from __future__ import annotations

import shutil
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from edge_stack.engines.llama import GenToken, LlamaContext, LlamaModel, set_llama_logging
from edge_stack.engines.llama._sampling import StopText
from edge_stack.errors import (
    ContextOverflowError,
    EngineError,
    GGUFFileError,
    GrammarError,
    ModelFileNotFound,
)

pytestmark = [pytest.mark.llama, pytest.mark.torch]

PROMPT = "Tom has 12 apples and buys 7 more. How many apples"
PREFIX = "Question: a fixed preamble that every call of this stage starts with.\n" * 3
#: a UTF-8 lead byte (needs two continuation bytes); its byte-level BPE token text is "â"
LEAD_BYTE = 0xE2


@pytest.fixture(scope="module")
def neox(tiny_gguf: Callable[..., Path]) -> Iterator[LlamaModel]:
    with LlamaModel.load(tiny_gguf("gptneox")) as model:
        yield model


@pytest.fixture(scope="module")
def llama(tiny_gguf: Callable[..., Path]) -> Iterator[LlamaModel]:
    with LlamaModel.load(tiny_gguf("llama")) as model:
        yield model


@pytest.fixture
def ctx(neox: LlamaModel) -> Iterator[LlamaContext]:
    with LlamaContext(neox, n_ctx=256, n_threads=1) as context:
        yield context


def _ids(model: LlamaModel, text: str) -> list[int]:
    return model.tokenize(text, add_bos=model.add_bos, special=False)


def _text(items: list[GenToken]) -> str:
    return "".join(t.text for t in items)


@pytest.fixture(scope="module")
def sticky_gguf(
    tiny_model: Callable[[str], Path], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """A model whose every greedy token is the lone byte 0xE2 (half a UTF-8 character).

    All input embeddings are equal, so every position's final hidden state is the same vector h
    whatever the text; the output row of the 0xE2 token is then set to a large multiple of h.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from edge_stack.convert import convert_checkpoint

    root = tmp_path_factory.mktemp("sticky")
    hf = shutil.copytree(tiny_model("gptneox"), root / "hf")
    tok = AutoTokenizer.from_pretrained(hf)
    target = tok.convert_tokens_to_ids("â")  # byte 0xE2 in the byte-level alphabet
    model = AutoModelForCausalLM.from_pretrained(hf, dtype=torch.float32)
    with torch.no_grad():
        emb = model.get_input_embeddings().weight
        emb.copy_(emb[:1].expand_as(emb).clone())
        h = model.base_model(torch.tensor([[1, 2, 3]])).last_hidden_state[0, -1]
        model.get_output_embeddings().weight[target] = 50.0 * h / h.norm()
        logits = model(torch.tensor([[5, 9, 2, 7]])).logits[0]
        assert (logits.argmax(-1) == target).all()
    model.save_pretrained(hf)
    return convert_checkpoint(hf, root / "sticky.f32.gguf", outtype="f32")


# -- model ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "plain words and digits 12345",
        "  leading spaces, tabs\tand\nnewlines\n\n",
        "Zürich, naïve café, 東京, emoji 🚀 and symbols € ≤ ∞",
        "contractions: isn't, we'll, they're",
    ],
)
@pytest.mark.parametrize("which", ["neox", "llama"])
def test_tokenize_detokenize_round_trip(
    which: str, text: str, request: pytest.FixtureRequest
) -> None:
    model: LlamaModel = request.getfixturevalue(which)
    ids = model.tokenize(text, add_bos=False, special=False)
    assert ids and all(0 <= i < model.n_vocab for i in ids)
    assert model.detokenize(ids) == text
    assert b"".join(model.token_to_piece(i) for i in ids).decode("utf-8") == text


def test_detokenize_half_a_character_is_safe(neox: LlamaModel) -> None:
    ids = neox.tokenize("€", add_bos=False, special=False)
    pieces = b"".join(neox.token_to_piece(i) for i in ids)
    assert pieces == "€".encode()
    lead = neox.tokenize("â", add_bos=False, special=False)  # not the byte 0xE2
    assert "\ufffd" not in neox.detokenize(lead)
    # The first byte alone: replaced, never an exception.
    byte_tok = next(t for t in range(neox.n_vocab) if neox.token_to_piece(t) == bytes([LEAD_BYTE]))
    assert neox.detokenize([byte_tok]) == "\ufffd"


def test_special_tokens_metadata_and_eog(neox: LlamaModel, llama: LlamaModel) -> None:
    specials = neox.special_tokens()
    assert specials and neox.eos in specials.values()
    eos_text = next(t for t, i in specials.items() if i == neox.eos)
    assert neox.is_eog(neox.eos)
    assert neox.tokenize(f"a{eos_text}b", add_bos=False, special=True).count(neox.eos) == 1
    assert neox.eos not in neox.tokenize(f"a{eos_text}b", add_bos=False, special=False)
    assert neox.metadata()["general.architecture"] == "gptneox"
    assert llama.metadata()["general.architecture"] == "llama"
    assert neox.n_ctx_train == 256 and neox.n_vocab > 256


def test_missing_and_bad_files(tmp_path: Path) -> None:
    with pytest.raises(ModelFileNotFound, match="does not exist"):
        LlamaModel.load(tmp_path / "nope.gguf")
    bad = tmp_path / "random.gguf"
    bad.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(GGUFFileError):
        LlamaModel.load(bad)


def test_llama_log_is_silent_unless_verbose(
    tiny_gguf: Callable[..., Path],
    capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    with (
        LlamaModel.load(tiny_gguf("gptneox")) as model,
        LlamaContext(model, n_ctx=64, n_threads=1) as ctx,
    ):
        list(ctx.generate(_ids(model, PROMPT), max_tokens=3))
    assert capfd.readouterr().err == ""
    set_llama_logging(True)
    try:
        with (
            caplog.at_level("INFO", logger="edge_stack.llama_cpp"),
            LlamaModel.load(tiny_gguf("gptneox")),
        ):
            pass
    finally:
        set_llama_logging(False)
    assert any(r.name == "edge_stack.llama_cpp" for r in caplog.records)
    assert capfd.readouterr().err == ""


def test_close_is_idempotent_and_model_close_frees_contexts(tiny_gguf: Callable[..., Path]) -> None:
    model = LlamaModel.load(tiny_gguf("gptneox"))
    ctx = LlamaContext(model, n_ctx=64, n_threads=1)
    other = LlamaContext(model, n_ctx=64, n_threads=1)
    other.close()
    other.close()
    model.close()  # closes ctx first
    model.close()
    ctx.close()
    with pytest.raises(EngineError, match="closed"):
        ctx.eval_logits([1, 2])
    with pytest.raises(EngineError, match="closed"):
        model.tokenize("x", add_bos=False, special=False)


# -- logits --------------------------------------------------------------------------------------


def test_eval_logits_every_position_and_matches_generate_path(
    neox: LlamaModel, ctx: LlamaContext
) -> None:
    ids = _ids(neox, PROMPT)
    logits = ctx.eval_logits(ids)
    assert logits.shape == (len(ids), neox.n_vocab) and logits.dtype == np.float32
    # Row i depends only on ids[: i + 1]: a prefix evaluated alone gives the same rows.
    np.testing.assert_allclose(ctx.eval_logits(ids[:5]), logits[:5], atol=1e-3)
    # The generate path (prefix cache, then the last token alone) sees the same last row.
    ctx.reset()
    first = list(ctx.generate(ids, max_tokens=1))
    np.testing.assert_allclose(ctx.last_logits(), logits[-1], atol=1e-3)
    assert first[0].id == int(logits[-1].argmax())


def test_eval_logits_do_not_depend_on_batching(neox: LlamaModel) -> None:
    ids = _ids(neox, PREFIX + PROMPT)
    with LlamaContext(neox, n_ctx=256, n_threads=1, n_batch=512) as one:
        whole = one.eval_logits(ids)
    with LlamaContext(neox, n_ctx=256, n_threads=1, n_batch=64) as chunked:
        np.testing.assert_array_equal(chunked.eval_logits(ids), whole)  # same micro-batches
    with LlamaContext(neox, n_ctx=256, n_threads=1, flash_attn=False) as plain:
        np.testing.assert_allclose(plain.eval_logits(ids), whole, atol=2e-2)


@pytest.mark.parametrize("outtype", ["f32", "q8_0"])
@pytest.mark.parametrize("flash_attn", [True, False])
def test_results_do_not_depend_on_what_came_before(
    tiny_gguf: Callable[..., Path], outtype: str, flash_attn: bool
) -> None:
    """A call computes bit for bit what a fresh context computes, whatever the cache held."""
    history = [PREFIX + "Sam has 23 stamps", PROMPT * 3, PREFIX[:50], PREFIX * 2]
    with LlamaModel.load(tiny_gguf("gptneox", outtype)) as model:
        target = _ids(model, PREFIX + PROMPT)
        with LlamaContext(model, n_ctx=512, n_threads=1, flash_attn=flash_attn) as fresh:
            expected = [t.id for t in fresh.generate(target, max_tokens=20)]
            fresh.reset()
            list(fresh.generate(target, max_tokens=1))
            expected_logits = fresh.last_logits()
        with LlamaContext(model, n_ctx=512, n_threads=1, flash_attn=flash_attn) as ctx:
            for text in history:
                list(ctx.generate(_ids(model, text), max_tokens=20))
                assert [t.id for t in ctx.generate(target, max_tokens=20)] == expected
                list(ctx.generate(_ids(model, text), max_tokens=5))
                list(ctx.generate(target, max_tokens=1))
                np.testing.assert_array_equal(ctx.last_logits(), expected_logits)


# -- generation ----------------------------------------------------------------------------------


def test_greedy_is_deterministic_and_follows_argmax(neox: LlamaModel) -> None:
    ids = _ids(neox, PROMPT)
    with (
        LlamaContext(neox, n_ctx=128, n_threads=1) as a,
        LlamaContext(neox, n_ctx=128, n_threads=2) as b,
    ):
        out_a = list(a.generate(ids, max_tokens=12))
        out_b = list(b.generate(ids, max_tokens=12))
        assert [t.id for t in out_a] == [t.id for t in out_b]
        assert a.last_stats.completion_tokens == 12 and a.last_stats.finish_reason == "length"
        # Greedy = argmax of the logits after prompt + what was generated so far.
        generated = [t.id for t in out_a if t.id >= 0]
        rows = b.eval_logits(ids + generated[:-1])
        assert rows[len(ids) - 1 :].argmax(-1).tolist() == generated


def test_seeded_sampling_is_reproducible(ctx: LlamaContext, neox: LlamaModel) -> None:
    ids = _ids(neox, PROMPT)
    kwargs = {"max_tokens": 16, "temperature": 0.9, "top_k": 20, "top_p": 0.9, "min_p": 0.01}
    first = [t.id for t in ctx.generate(ids, seed=7, **kwargs)]  # type: ignore[arg-type]
    again = [t.id for t in ctx.generate(ids, seed=7, **kwargs)]  # type: ignore[arg-type]
    assert first == again and len(first) == 16
    penalized = list(ctx.generate(ids, max_tokens=16, repeat_penalty=1.5))
    assert len(penalized) <= 17


def test_max_tokens_holds_when_every_token_is_half_a_character(sticky_gguf: Path) -> None:
    with LlamaModel.load(sticky_gguf) as model, LlamaContext(model, n_ctx=64, n_threads=1) as ctx:
        byte_tok = next(
            t for t in range(model.n_vocab) if model.token_to_piece(t) == bytes([LEAD_BYTE])
        )
        ids = _ids(model, PROMPT)
        out = list(ctx.generate(ids, max_tokens=9))
        assert [t.id for t in out] == [byte_tok] * 9
        assert ctx.last_stats.finish_reason == "length"
        # Each lead byte that is not continued is invalid (U+FFFD); the last one is incomplete
        # and is dropped, never emitted as half a character.
        assert _text(out) == "\ufffd" * 8
        # And the context never fills: a prompt that just fits runs to max_tokens cleanly.
        list(ctx.generate(ids, max_tokens=64 - len(ids)))
        assert ctx.last_stats.completion_tokens == 64 - len(ids)


@pytest.mark.parametrize(
    ("pieces", "stop", "expected"),
    [
        ([b"\xe2", b"\x82", b"\xac!"], (), ["", "", "€!"]),  # one character over three tokens
        ([b"ab", b"c<", b"/s", b">de"], ("</s>",), ["ab", "c", "", ""]),  # stop over three tokens
        ([b"ab", b"c<", b"x"], ("</s>",), ["ab", "c", "<x"]),  # held back, then released
        ([b"\xe2\x82", b"\xac END"], (" END",), ["", "€"]),  # stop right after a split character
        ([b"x\xff", b"y"], (), ["x\ufffd", "y"]),  # invalid UTF-8 is replaced, not raised
    ],
)
def test_stop_text_assembly(
    pieces: list[bytes], stop: tuple[str, ...], expected: list[str]
) -> None:
    text = StopText(stop)
    assert [text.feed(p) for p in pieces] == expected


def test_stop_string_split_across_tokens(neox: LlamaModel, ctx: LlamaContext) -> None:
    ids = _ids(neox, PROMPT)
    full = list(ctx.generate(ids, max_tokens=40))
    whole = _text(full)
    # A stop string made of the end of one token's text and the start of the next one's.
    k = next(
        i
        for i in range(3, len(full) - 1)
        if full[i].text.strip() and full[i + 1].text.strip() and full[i].id >= 0
    )
    stop = full[k].text[-1] + full[k + 1].text[0]
    out = list(ctx.generate(ids, max_tokens=40, stop=[stop, "never-appears"]))
    assert _text(out) == whole[: whole.index(stop)]
    assert ctx.last_stats.finish_reason == "stop"
    assert all(stop not in t.text for t in out)


def test_context_overflow_is_refused_before_decoding(neox: LlamaModel) -> None:
    ids = _ids(neox, PROMPT)
    with LlamaContext(neox, n_ctx=len(ids) + 4, n_threads=1) as ctx:
        with pytest.raises(ContextOverflowError) as err:
            ctx.generate(ids, max_tokens=5)
        message = str(err.value)
        assert f"{len(ids)} tokens" in message and f"{len(ids) + 4} tokens" in message
        assert ctx.cached_tokens == []  # nothing was evaluated
        out = list(ctx.generate(ids, max_tokens=4))  # exactly fits
        assert ctx.last_stats.completion_tokens == 4 and len(out) == 4
        with pytest.raises(ContextOverflowError):
            ctx.eval_logits(ids * 2)


def test_prefix_cache_reuse(neox: LlamaModel, ctx: LlamaContext) -> None:
    prefix = _ids(neox, PREFIX)
    q1 = prefix + neox.tokenize("What is 15 plus 28?", add_bos=False, special=False)
    q2 = prefix + neox.tokenize("Sam has 23 stamps", add_bos=False, special=False)
    list(ctx.generate(q1, max_tokens=6))
    assert ctx.last_stats.cached_tokens == 0 and ctx.last_stats.prompt_tokens == len(q1)
    second = [t.id for t in ctx.generate(q2, max_tokens=6)]
    # Whole aligned micro-batches of the common prefix are reused (here 128 of 156 tokens).
    assert ctx.n_ubatch == 32
    assert ctx.last_stats.cached_tokens == len(prefix) // 32 * 32 > 0
    with LlamaContext(neox, n_ctx=256, n_threads=1) as fresh:
        assert [t.id for t in fresh.generate(q2, max_tokens=6)] == second
    # The same prompt again: the same micro-batches are kept, the last one is evaluated again.
    assert [t.id for t in ctx.generate(q2, max_tokens=6)] == second
    assert ctx.last_stats.cached_tokens == (len(q2) - 1) // 32 * 32
    assert (
        ctx.last_stats.prompt_seconds >= 0 and ctx.last_stats.seconds >= ctx.last_stats.gen_seconds
    )


def test_cancel_stops_between_tokens(neox: LlamaModel, ctx: LlamaContext) -> None:
    ids = _ids(neox, PROMPT)
    cancel = threading.Event()
    seen = 0
    for item in ctx.generate(ids, max_tokens=100, cancel=cancel):
        seen += item.id >= 0
        if seen == 3:
            cancel.set()
    assert seen == 3 and ctx.last_stats.finish_reason == "cancelled"
    assert list(ctx.generate(ids, max_tokens=100, cancel=cancel)) == []  # already set


def test_grammar_constrains_output(
    neox: LlamaModel, ctx: LlamaContext, capfd: pytest.CaptureFixture[str]
) -> None:
    ids = _ids(neox, PROMPT)
    out = _text(list(ctx.generate(ids, max_tokens=10, grammar='root ::= "yes" | "no"')))
    assert out in {"yes", "no"}
    with pytest.raises(GrammarError, match=r"grammar line 1, column 11: expected"):
        ctx.generate(ids, max_tokens=3, grammar="root ::= (")  # refused before any evaluation
    with pytest.raises(GrammarError, match="'root'"):
        neox.check_grammar('start ::= "a"')  # no root rule
    neox.check_grammar('root ::= [0-9]+ "." [0-9]*')
    assert capfd.readouterr().err == ""  # llama.cpp's parser message went into the error


def test_bad_tokens_and_superseded_generation(neox: LlamaModel, ctx: LlamaContext) -> None:
    with pytest.raises(EngineError, match="outside the vocabulary"):
        ctx.generate([neox.n_vocab + 5], max_tokens=1)
    with pytest.raises(EngineError, match="empty prompt"):
        ctx.generate([], max_tokens=1)
    ids = _ids(neox, PROMPT)
    old = ctx.generate(ids, max_tokens=20)
    next(old)
    list(ctx.generate(ids, max_tokens=2))  # a newer call takes the context over
    with pytest.raises(EngineError, match="superseded"):
        list(old)


# -- LoRA ----------------------------------------------------------------------------------------


def test_lora_attaches_to_its_own_context(tiny_gguf: Callable[..., Path], tmp_path: Path) -> None:
    from stack_builders import random_lora

    base = tiny_gguf("gptneox")
    adapter = random_lora(base, tmp_path / "a.lora.gguf", seed=3)
    with LlamaModel.load(base) as model:
        ids = _ids(model, PROMPT)
        with (
            LlamaContext(model, n_ctx=64, n_threads=1) as plain,
            LlamaContext(model, n_ctx=64, n_threads=1, lora=adapter) as adapted,
            LlamaContext(model, n_ctx=64, n_threads=1, lora=adapter, lora_scale=0.0) as zero,
        ):
            base_logits = plain.eval_logits(ids)
            lora_logits = adapted.eval_logits(ids)
            assert np.abs(lora_logits - base_logits).max() > 0.1
            np.testing.assert_allclose(zero.eval_logits(ids), base_logits, atol=1e-3)
            # The adapter of one context does not leak into another on the same model.
            np.testing.assert_allclose(plain.eval_logits(ids), base_logits, atol=1e-4)
        with pytest.raises(ModelFileNotFound):
            LlamaContext(model, n_ctx=64, lora=tmp_path / "missing.lora.gguf")


# -- KV cache type ---------------------------------------------------------------------------------


def test_quantized_kv_cache_halves_the_cache_and_stays_exact_across_calls(
    tiny_gguf: Callable[..., Path],
) -> None:
    """q8_0 KV: half the state of f16, logits close to f16's, and still independent of history."""
    from edge_stack.engines.llama._lib import lib

    with LlamaModel.load(tiny_gguf("gptneox-wide-heads")) as model:
        assert model.head_dims() == (32, 32)
        target = _ids(model, PREFIX + PROMPT)
        logits, sizes = {}, {}
        for kind in ("f16", "q8_0"):
            with LlamaContext(model, n_ctx=256, n_threads=1, kv_cache_type=kind) as ctx:
                list(ctx.generate(target, max_tokens=1))
                logits[kind] = ctx.last_logits()
                sizes[kind] = lib().llama_state_get_size(ctx._live())
                expected = [t.id for t in ctx.generate(target, max_tokens=12)]
                list(ctx.generate(_ids(model, PROMPT * 2), max_tokens=12))
                assert [t.id for t in ctx.generate(target, max_tokens=12)] == expected
        assert sizes["q8_0"] < 0.6 * sizes["f16"]
        np.testing.assert_allclose(logits["q8_0"], logits["f16"], atol=0.05)


def test_kv_cache_type_errors_are_clear(neox: LlamaModel) -> None:
    with pytest.raises(EngineError, match=r"blocks of 32.*heads of 16 key values.*f16"):
        LlamaContext(neox, n_ctx=64, kv_cache_type="q8_0")
    with pytest.raises(EngineError, match="unknown KV cache type 'q9'"):
        LlamaContext(neox, n_ctx=64, kv_cache_type="q9")
    with LlamaContext(neox, n_ctx=64, kv_cache_type="f32") as ctx:  # unquantized: any head size
        assert len(list(ctx.generate(_ids(neox, PROMPT), max_tokens=3))) == 3
