"""The pipeline on real llama.cpp: a three-stage stack (two LoRA stages) over one tiny GGUF."""

from __future__ import annotations

import codecs
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from edge_stack import Stack, Token
from edge_stack.engines.llama import LlamaContext, LlamaModel
from edge_stack.engines.llama._engine import Engine
from edge_stack.errors import (
    Cancelled,
    ChecksumMismatch,
    ContextOverflowError,
    EdgeStackError,
    EngineError,
)
from edge_stack.formats._template import parse_template, render
from edge_stack.manifest import load_manifest

from stack_builders import QUESTIONS, random_lora, write_stack

pytestmark = [pytest.mark.llama, pytest.mark.torch]


def _direct_llama_cpp(
    model: Path, lora: Path | None, prompt: str, max_tokens: int
) -> tuple[str, int]:
    """The stage run straight through llama-cpp-python's own Llama class (greedy)."""
    from llama_cpp import Llama

    kwargs = {"lora_path": str(lora)} if lora else {}
    # The same context settings as the engine's: flash attention, 32-token micro-batches.
    llm = Llama(
        str(model), n_ctx=256, n_threads=1, n_ubatch=32, flash_attn=True, verbose=False, **kwargs
    )
    try:
        tokens = llm.tokenize(prompt.encode(), add_bos=True, special=True)
        out: list[int] = []
        for tok in llm.generate(tokens, temp=0.0, top_k=1, repeat_penalty=1.0):
            if (
                llm._model.token_is_eog(tok)
                if hasattr(llm._model, "token_is_eog")
                else tok == llm.token_eos()
            ):
                break
            out.append(tok)
            if len(out) >= max_tokens:
                break
        # A character still incomplete when generation ends is dropped, not replaced.
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        return decoder.decode(llm.detokenize(out), final=False).strip(), len(out)
    finally:
        llm.close()


def test_stages_equal_direct_llama_cpp(stack: Stack) -> None:
    spec = stack.spec
    for question in QUESTIONS[:3]:
        answer = stack.ask(question)
        assert len(answer.stages) == 3
        for stage, trace in zip(spec.stages, answer.stages, strict=True):
            text, n = _direct_llama_cpp(stage.model, stage.lora, trace.prompt, stage.max_tokens)
            assert trace.output == text, (stage.name, trace.prompt)
            assert trace.completion_tokens == n
        assert answer.text == answer.stages[-1].output


def test_stages_equal_direct_llama_layer(stack: Stack) -> None:
    spec = stack.spec
    answer = stack.ask(QUESTIONS[0])
    with LlamaModel.load(spec.stages[0].model) as model:
        for stage, trace in zip(spec.stages, answer.stages, strict=True):
            with LlamaContext(model, n_ctx=256, n_threads=1, lora=stage.lora) as ctx:
                tokens = model.tokenize(trace.prompt, add_bos=model.add_bos, special=True)
                assert len(tokens) == trace.prompt_tokens
                text = "".join(t.text for t in ctx.generate(tokens, max_tokens=stage.max_tokens))
                assert text.strip() == trace.output


def test_loras_change_the_output(stack_path: Path, tmp_path: Path) -> None:
    """The adapters really are attached per context: same prompt, different stage, different text."""
    spec = load_manifest(stack_path)
    engine = Engine(spec, threads=1)
    try:
        rendered = render(parse_template("Question: {question}\nEquation:"), {"question": "hi"})
        outputs = set()
        for name in ("extract", "compute", "say"):
            runner = engine.runner(name)
            tokens = runner.tokenize(rendered)
            params = __import__("edge_stack.pipeline._stack", fromlist=["_params"])._params(
                spec.stage(name), 10, None, None
            )
            outputs.add("".join(c.text for c in runner.generate(tokens, params, threading.Event())))
        assert len(outputs) == 3
        # One model object for the three stages.
        assert len(engine.models) == 1
    finally:
        engine.close()


def test_braces_and_special_text_in_question_stay_literal(stack_path: Path) -> None:
    spec = load_manifest(stack_path)
    engine = Engine(spec, threads=1)
    try:
        question = "x {extract} {{y}} <|endoftext|> z"
        say = engine.runner("say")
        model = say.model
        rendered = render(spec.stage("say").template, {"question": question, "compute": "{q}"})
        assert rendered.text == f"<|endoftext|>Question: {question}\nValue: {{q}}\nAnswer:"
        tokens = say.tokenize(rendered)
        eot = model.special_tokens()["<|endoftext|>"]
        # The template's own marker is the special token; the question's copy is plain text.
        assert tokens[0] == eot and tokens.count(eot) == 1
        rest = model.tokenize(rendered.text[len("<|endoftext|>") :], add_bos=False, special=False)
        assert tokens[1:] == rest
    finally:
        engine.close()


def test_token_boundaries_across_joins(stack_path: Path) -> None:
    """Template text and inserted text are tokenized as one text, as the model saw in training."""
    spec = load_manifest(stack_path)
    engine = Engine(spec, threads=1)
    try:
        runner = engine.runner("extract")
        model = runner.model
        template = parse_template("Que{question}: x")
        tokens = runner.tokenize(render(template, {"question": "stion"}))
        whole = model.tokenize("Question: x", add_bos=model.add_bos, special=False)
        apart = model.tokenize("Que", add_bos=False, special=False) + model.tokenize(
            "stion: x", add_bos=False, special=False
        )
        assert tokens == whole and whole != apart
    finally:
        engine.close()


def test_answers_reach_the_end_of_every_stage(stack: Stack) -> None:
    """Each stage's prompt is its template with the question and the earlier stages' outputs,
    as they are (braces and all), up to the template's last character."""
    answer = stack.ask(QUESTIONS[2])
    extract, compute, say = answer.stages
    assert extract.prompt == f"Question: {QUESTIONS[2]}\nEquation:"
    assert compute.prompt == f"Equation: {extract.output}\nValue:"
    assert say.prompt == f"<|endoftext|>Question: {QUESTIONS[2]}\nValue: {compute.output}\nAnswer:"
    assert all(t.output and t.completion_tokens >= 1 for t in answer.stages)
    assert answer.text == say.output


def test_answers_do_not_depend_on_earlier_questions(stack: Stack, stack_path: Path) -> None:
    in_sequence = [stack.ask(q).to_dict()["stages"] for q in QUESTIONS]
    for question, seen in zip(QUESTIONS, in_sequence, strict=True):
        with Stack.load(stack_path, threads=1) as fresh:
            alone = fresh.ask(question).to_dict()["stages"]
        assert [(x["prompt"], x["output"]) for x in alone] == [
            (x["prompt"], x["output"]) for x in seen
        ]


def test_eight_threads_equal_one_by_one(stack: Stack) -> None:
    serial = [stack.ask(q).to_dict()["stages"] for q in QUESTIONS]
    with ThreadPoolExecutor(8) as pool:
        parallel = list(pool.map(lambda q: stack.ask(q).to_dict()["stages"], QUESTIONS))
    for s, p in zip(serial, parallel, strict=True):
        assert [(x["prompt"], x["output"], x["completion_tokens"]) for x in s] == [
            (x["prompt"], x["output"], x["completion_tokens"]) for x in p
        ]


def test_fixed_prompt_start_stays_cached(stack_path: Path, tmp_path: Path) -> None:
    instructions = "Read the question and write the arithmetic expression it describes. " * 6
    path = write_stack(
        tmp_path / "prefix",
        f"""
        version = 1
        [[stages]]
        name = "extract"
        model = "base.gguf"
        prompt = "{instructions}\\nQuestion: {{question}}\\nExpression:"
        max_tokens = 4
        """,
        {"base.gguf": stack_path.parent / "base.gguf"},
    )
    with Stack.load(path, threads=1) as loaded:
        first = loaded.ask("Tom has 3 apples")
        engine = loaded._backend
        assert isinstance(engine, Engine)
        stats = engine.runner("extract").context.last_stats
        assert stats.cached_tokens == 0
        again = loaded.ask("Sam has 4 pens")
        stats = engine.runner("extract").context.last_stats
        # The instructions (whole 32-token micro-batches of them) were not evaluated again.
        assert stats.cached_tokens >= 32 and stats.cached_tokens < again.stages[0].prompt_tokens
        # ... and reusing them changes nothing: the first question still gets the same answer.
        assert loaded.ask("Tom has 3 apples").stages[0].output == first.stages[0].output


def test_cancel_stops_within_a_few_tokens(stack: Stack, stack_path: Path) -> None:
    with Stack.load(stack_path, threads=1) as fresh:
        before = [t.output for t in fresh.ask(QUESTIONS[1]).stages]
    cancel = threading.Event()
    engine = stack._backend
    assert isinstance(engine, Engine)
    context = engine.runner("extract").context
    at_cancel = 0
    with pytest.raises(Cancelled):
        for event in stack.stream(QUESTIONS[0], cancel=cancel, max_tokens=200):
            if isinstance(event, Token):
                at_cancel = context.last_stats.completion_tokens
                cancel.set()
    assert context.last_stats.completion_tokens <= at_cancel + 1
    # Nothing leaked: the next ask gives the answer a fresh stack gives.
    assert [t.output for t in stack.ask(QUESTIONS[1]).stages] == before


def test_cancel_from_another_thread_is_prompt(stack_path: Path, tmp_path: Path) -> None:
    # A grammar that can never complete: generation runs to max_tokens unless cancelled.
    long = write_stack(
        tmp_path / "long",
        """
        version = 1
        [[stages]]
        name = "ramble"
        model = "base.gguf"
        prompt = "Story: {question}"
        grammar = 'root ::= [a-z ] root'
        n_ctx = 2048
        max_tokens = 2000
        """,
        {"base.gguf": stack_path.parent / "base.gguf"},
    )
    with Stack.load(long, threads=1) as loaded:
        engine = loaded._backend
        assert isinstance(engine, Engine)
        context = engine.runner("ramble").context
        assert loaded.ask("once", max_tokens=300).stages[0].completion_tokens == 300
        cancel = threading.Event()
        errors: list[BaseException] = []

        def ask() -> None:
            try:
                loaded.ask("once upon a time", cancel=cancel)
            except BaseException as exc:
                errors.append(exc)

        before = context.last_stats
        worker = threading.Thread(target=ask)
        worker.start()
        while context.last_stats is before or context.last_stats.completion_tokens < 3:
            assert worker.is_alive()
            time.sleep(0.001)
        cancel.set()
        at_cancel = context.last_stats.completion_tokens
        worker.join(timeout=120)
        assert not worker.is_alive()
        assert len(errors) == 1 and isinstance(errors[0], Cancelled), errors
        assert at_cancel <= context.last_stats.completion_tokens <= at_cancel + 1 < 2000


def test_context_overflow_is_clear(stack: Stack) -> None:
    with pytest.raises(ContextOverflowError, match=r"stage extract.*n_ctx is 256"):
        stack.ask("word " * 300)


def test_close_frees_everything(stack_path: Path) -> None:
    loaded = Stack.load(stack_path, threads=1)
    engine = loaded._backend
    assert isinstance(engine, Engine)
    contexts = [r.context for r in engine.runners.values()]
    models = list(engine.models.values())
    loaded.ask("q")
    loaded.close()
    loaded.close()
    assert all(c._ctx is None for c in contexts) and all(m._ptr is None for m in models)
    with pytest.raises(EngineError, match="closed"):
        loaded.ask("q")


# --- bad files ---------------------------------------------------------------------------------

ONE_STAGE = """
version = 1
[[stages]]
name = "only"
model = "model.gguf"
prompt = "Q: {question}"
"""


def _bad_stack(tmp_path: Path, data: bytes, extra: str = "") -> Path:
    root = tmp_path / "bad"
    root.mkdir()
    (root / "model.gguf").write_bytes(data)
    (root / "stack.toml").write_text(ONE_STAGE + extra)
    return root / "stack.toml"


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda base: base.read_bytes()[: len(base.read_bytes()) // 2], id="truncated"),
        pytest.param(lambda base: os.urandom(4096), id="random-bytes"),
        pytest.param(lambda base: b"GGUF" + os.urandom(200), id="gguf-magic-then-garbage"),
        pytest.param(lambda base: b"", id="empty"),
    ],
)
def test_bad_model_file_is_refused(tmp_path: Path, base_gguf: Path, make) -> None:  # type: ignore[no-untyped-def]
    path = _bad_stack(tmp_path, make(base_gguf))
    with pytest.raises(EdgeStackError) as info:
        Stack.load(path)
    message = str(info.value)
    assert "stage only" in message and "model.gguf" in message and "\n" not in message


def test_sha256_mismatch(tmp_path: Path, base_gguf: Path) -> None:
    base = base_gguf
    path = _bad_stack(tmp_path, base.read_bytes(), 'sha256 = "' + "0" * 64 + '"\n')
    with pytest.raises(ChecksumMismatch, match=r"stage only, key 'sha256'.*pins 0000"):
        Stack.load(path)


def test_sha256_match_and_change(tmp_path: Path, base_gguf: Path) -> None:
    import hashlib

    base = base_gguf
    digest = hashlib.sha256(base.read_bytes()).hexdigest()
    path = _bad_stack(tmp_path, base.read_bytes(), f'sha256 = "{digest.upper()}"\n')
    Stack.load(path).close()
    Stack.load(path).close()  # second time from the digest cache
    data = bytearray(base.read_bytes())
    data[-1] ^= 1
    (path.parent / "model.gguf").write_bytes(bytes(data))
    with pytest.raises(ChecksumMismatch):
        Stack.load(path)


def test_lora_sha256_mismatch(tmp_path: Path, base_gguf: Path) -> None:
    base = base_gguf
    lora = random_lora(base, tmp_path / "a.gguf", seed=3)
    path = write_stack(
        tmp_path / "s",
        ONE_STAGE + 'lora = "a.gguf"\nlora_sha256 = "' + "1" * 64 + '"\n',
        {"model.gguf": base, "a.gguf": lora},
    )
    with pytest.raises(ChecksumMismatch, match="lora_sha256"):
        Stack.load(path)


def test_adapter_for_another_base(tmp_path: Path, base_gguf: Path) -> None:
    base = base_gguf
    # An adapter whose A has the wrong input width for this base.
    import gguf
    import numpy as np

    writer = gguf.GGUFWriter(tmp_path / "wrong.gguf", arch="gptneox")
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, 4.0)
    writer.add_tensor("blk.0.attn_qkv.weight.lora_a", np.zeros((4, 32), np.float32))
    writer.add_tensor("blk.0.attn_qkv.weight.lora_b", np.zeros((192, 4), np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    path = write_stack(
        tmp_path / "s",
        ONE_STAGE + 'lora = "wrong.gguf"\n',
        {"model.gguf": base, "wrong.gguf": tmp_path / "wrong.gguf"},
    )
    with pytest.raises(EdgeStackError) as info:
        Stack.load(path)
    assert "stage only" in str(info.value) and "wrong.gguf" in str(info.value)


def test_model_given_as_adapter(tmp_path: Path, base_gguf: Path) -> None:
    base = base_gguf
    path = write_stack(tmp_path / "s", ONE_STAGE + 'lora = "model.gguf"\n', {"model.gguf": base})
    with pytest.raises(EdgeStackError, match="stage only"):
        Stack.load(path)


def test_grammar_and_stop_on_real_llama(stack_path: Path, tmp_path: Path) -> None:
    path = write_stack(
        tmp_path / "g",
        """
        version = 1
        [defaults]
        model = "base.gguf"
        max_tokens = 6
        [[stages]]
        name = "digits"
        prompt = "Number: {question}"
        grammar = 'root ::= [0-9] [0-9] [0-9] [0-9] [0-9] [0-9]'
        [[stages]]
        name = "cut"
        prompt = "Digits: {digits}"
        grammar = "ab.gbnf"
        stop = ["b"]
        """,
        {"base.gguf": stack_path.parent / "base.gguf"},
    )
    (path.parent / "ab.gbnf").write_text('root ::= "aaab" [a-z]*\n')
    with Stack.load(path, threads=1) as loaded:
        answer = loaded.ask("seven {x}")
    digits, cut = answer.stages
    assert len(digits.output) == 6 and digits.output.isdigit()
    assert cut.output == "aaa"  # the stop string and what follows are not part of the output


def _kv_bytes(context: LlamaContext) -> int:
    """The bytes of a context's KV cache, from llama.cpp's own accounting."""
    from edge_stack.engines.llama._lib import lib

    return int(lib().llama_state_get_size(context._live()))


def test_kv_cache_type_reaches_every_context(
    tmp_path: Path, base_gguf: Path, tiny_gguf: Callable[..., Path]
) -> None:
    from edge_stack.tools._bench import run_bench

    wide = tmp_path / "wide"
    wide.mkdir()
    (wide / "model.gguf").write_bytes(tiny_gguf("gptneox-wide-heads", "q8_0").read_bytes())
    # n_ctx 512: caches large enough that bench's 0.1 MB rounding tells q8_0 from f16
    (wide / "stack.toml").write_text(
        ONE_STAGE + 'kv_cache_type = "q8_0"\nmax_tokens = 4\nn_ctx = 512\n'
    )
    two = (
        'version = 1\n[defaults]\nmodel = "model.gguf"\nmax_tokens = 4\nkv_cache_type = "KV"\n'
        '[[stages]]\nname = "one"\nprompt = "Q: {question}"\n'
        '[[stages]]\nname = "two"\nprompt = "A: {one}"\n'
    )
    sizes: dict[str, list[int]] = {}
    for kind in ("f16", "q8_0"):
        (wide / "two.toml").write_text(two.replace("KV", kind))
        with Stack.load(wide / "two.toml", threads=1) as stack:
            stack.ask("Tom has 12 apples")
            stack.ask_batch(["Tom has 12 apples", "Sam has 4"], batch_size=2)
            engine = stack._backend
            assert isinstance(engine, Engine)
            contexts = [r.context for r in engine.runners.values()]
            contexts += [r.batch_context for r in engine.runners.values() if r.batch_context]
            assert len(contexts) == 4  # two stages, each with its own and its batch context
            assert all(c.kv_cache_type == kind for c in contexts)
            sizes[kind] = [_kv_bytes(c) for c in contexts]
    # Every context, batched ones included, holds its cache in q8_0: about half of f16's bytes.
    assert all(q < 0.6 * f for q, f in zip(sizes["q8_0"], sizes["f16"], strict=True)), sizes
    q8 = run_bench(wide / "stack.toml", runs=1, threads=1)
    (wide / "stack.toml").write_text(ONE_STAGE + "max_tokens = 4\nn_ctx = 512\n")
    f16 = run_bench(wide / "stack.toml", runs=1, threads=1)
    assert q8["memory"]["kv_cache_mb"] < 0.6 * f16["memory"]["kv_cache_mb"]
    # A model whose heads a quantized cache cannot hold: one line naming the stage and the fix.
    path = _bad_stack(tmp_path, base_gguf.read_bytes(), 'kv_cache_type = "q4_0"\n')
    with pytest.raises(EngineError, match=r"stage only: KV cache type q4_0 .* use kv_cache_type"):
        Stack.load(path)
