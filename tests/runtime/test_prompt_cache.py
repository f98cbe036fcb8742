"""The on-disk prompt cache: a stage's fixed prompt start restored by a fresh process, exactly,
and a damaged cache file never costing more than the time to evaluate the prompt again."""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from edge_stack import Stack
from edge_stack.engines.llama import LlamaContext, LlamaModel
from edge_stack.engines.llama._engine import Engine
from edge_stack.engines.llama._prompt_cache import HEADER, PromptCache, _pack
from edge_stack.util._env import settings

from stack_builders import write_stack

pytestmark = [pytest.mark.llama, pytest.mark.torch]

INSTRUCTIONS = "Read the question and write the arithmetic expression it describes. " * 6
QUESTIONS = ["Tom has 3 apples", "Sam has 4 pens and buys 2 more", "What is 7 times 8?"]


@pytest.fixture
def prefix_stack(stack_path: Path, tmp_path: Path) -> Path:
    """Two stages with a long fixed start (one with a LoRA adapter), one without any."""
    root = stack_path.parent
    return write_stack(
        tmp_path / "prefix",
        f"""
        version = 1
        [defaults]
        model = "base.gguf"
        max_tokens = 4
        [[stages]]
        name = "extract"
        lora = "extract.lora.gguf"
        prompt = "{INSTRUCTIONS}\\nQuestion: {{question}}\\nExpression:"
        [[stages]]
        name = "compute"
        prompt = "{INSTRUCTIONS}\\nExpression: {{extract}}\\nResult:"
        [[stages]]
        name = "answer"
        prompt = "{{question}} = {{compute}}"
        """,
        {
            "base.gguf": root / "base.gguf",
            "extract.lora.gguf": root / "extract.lora.gguf",
        },
    )


def _cache_files() -> list[Path]:
    return sorted((settings().data_dir / "prompt-cache").glob("*.kv"))


def _first_ask(path: Path) -> tuple[list[str], dict[str, int]]:
    """A fresh stack's answers to QUESTIONS, and how many tokens each stage's first call reused."""
    with Stack.load(path, threads=1) as stack:
        engine = stack._backend
        assert isinstance(engine, Engine)
        answers = [stack.ask(QUESTIONS[0]).text]
        cached = {n: r.context.last_stats.cached_tokens for n, r in engine.runners.items()}
        answers += [stack.ask(q).text for q in QUESTIONS[1:]]
    return answers, cached


def test_second_process_restores_the_fixed_start_and_answers_the_same(
    prefix_stack: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    answers, cached = _first_ask(prefix_stack)
    assert cached == {"extract": 0, "compute": 0, "answer": 0}
    files = _cache_files()
    assert len(files) == 2  # the two stages with a fixed start of at least one micro-batch

    # A second process, sharing only the data folder: it restores the fixed starts from disk.
    code = (
        "import json, sys\n"
        "from pathlib import Path\n"
        "sys.path.insert(0, sys.argv[2])\n"
        "from test_prompt_cache import _first_ask\n"
        "print(json.dumps(_first_ask(Path(sys.argv[1]))))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(prefix_stack), str(Path(__file__).parent)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    again, cached = json.loads(proc.stdout)
    assert again == answers
    assert cached["extract"] >= 64 and cached["compute"] >= 64 and cached["answer"] == 0
    assert _cache_files() == files

    # Off: nothing restored, nothing written, the same answers.
    monkeypatch.setenv("EDGESTACK_NO_PROMPT_CACHE", "1")
    monkeypatch.setenv("EDGESTACK_HOME", str(settings().data_dir / "other"))
    settings.cache_clear()
    off, cached = _first_ask(prefix_stack)
    assert off == answers and set(cached.values()) == {0} and _cache_files() == []


def test_changed_adapter_or_damaged_file_is_not_used(prefix_stack: Path) -> None:
    answers, _ = _first_ask(prefix_stack)
    before = set(_cache_files())
    # A changed adapter (new modification time) has other KV values: a new file, not the old.
    adapter = prefix_stack.parent / "extract.lora.gguf"
    data = adapter.read_bytes()
    adapter.unlink()
    adapter.write_bytes(data)
    os.utime(adapter, ns=(1, 1))
    again, cached = _first_ask(prefix_stack)
    assert again == answers and cached["extract"] == 0 and cached["compute"] > 0
    assert len(set(_cache_files()) - before) == 1

    # A damaged file is ignored (and replaced), never trusted.
    for f in _cache_files():
        f.write_bytes(f.read_bytes()[:1000])
    damaged, cached = _first_ask(prefix_stack)
    assert damaged == answers and set(cached.values()) == {0}
    fixed, cached = _first_ask(prefix_stack)
    assert fixed == answers and cached["extract"] > 0


def test_context_save_and_load_prefix_is_exact(f32_gguf: Path) -> None:
    with LlamaModel.load(f32_gguf) as model:
        ids = model.tokenize(
            INSTRUCTIONS + "Question: Tom has 3 apples", add_bos=False, special=False
        )
        n = 64
        with LlamaContext(model, n_ctx=512, n_threads=1) as fresh:
            list(fresh.generate(ids, max_tokens=0))
            logits = fresh.last_logits()
            expected = [t.id for t in fresh.generate(ids, max_tokens=8)]
            assert fresh.save_prefix(n + 1) is None  # not whole micro-batches
            state = fresh.save_prefix(n)
            assert state is not None and fresh.cached_tokens == ids[:n]
            shorter = fresh.save_prefix(n // 2)
            assert shorter is not None
        with LlamaContext(model, n_ctx=512, n_threads=1) as ctx:
            assert not ctx.load_prefix(state, ids[: n + 32])  # another token count
            assert not ctx.load_prefix(state[:-1], ids[:n])  # not the whole state
            assert not ctx.load_prefix(shorter + b"\0" * 8, ids[: n // 2])  # bytes left over
            assert ctx.cached_tokens == []
            assert ctx.load_prefix(bytes(state), ids[:n])
            list(ctx.generate(ids, max_tokens=0))
            assert ctx.last_stats.cached_tokens == n
            np.testing.assert_array_equal(ctx.last_logits(), logits)
            assert [t.id for t in ctx.generate(ids, max_tokens=8)] == expected


def test_prune_keeps_the_most_recent(tmp_path: Path) -> None:
    cache = PromptCache(tmp_path, max_bytes=2500)
    for i, name in enumerate(["old", "mid", "new"]):
        p = tmp_path / f"{name}.kv"
        p.write_bytes(b"x" * 1000)
        os.utime(p, (1000 + i, 1000 + i))
    cache._prune()
    assert sorted(p.stem for p in tmp_path.glob("*.kv")) == ["mid", "new"]


# --- damaged cache files ----------------------------------------------------------------------

QUESTION = "Sam has 4 pens and buys 2 more"
ONE_STAGE = """
version = 1
[defaults]
model = "base.gguf"
max_tokens = 6
[[stages]]
name = "extract"
prompt = "{instructions}\\nQuestion: {{question}}\\nExpression:"
"""
# A fresh process asks QUESTION and says what its only stage's first call reused.
CHILD = """
import json, sys
from edge_stack import Stack
with Stack.load(sys.argv[1], threads=1) as stack:
    text = stack.ask(sys.argv[2]).text
    cached = stack._backend.runners["extract"].context.last_stats.cached_tokens
print(json.dumps({"answer": text, "cached": cached}))
"""


@dataclass(frozen=True)
class Made:
    """One stack's cache file made by a clean run, and what damaged versions are made from."""

    stack: Path
    answer: str  # with the prompt cache off
    n: int  # tokens the cache file holds
    name: str  # the cache file's name
    good: bytes  # the cache file a clean run writes
    other_key: bytes  # a good file of another fixed start (same model)
    refused: bytes  # a right header around a state llama.cpp refuses (an f32 KV cache's)
    shifted: bytes  # a right header around this state with every position moved up by one
    native: bytes  # llama.cpp's own state file (llama_state_seq_save_file) of another model


@pytest.fixture(scope="module")
def f32_gguf(tiny_gguf: Callable[..., Path]) -> Path:
    return tiny_gguf("gptneox", "f32")


def _cache_dir() -> Path:
    return settings().data_dir / "prompt-cache"


def _only_file() -> Path:
    files = list(_cache_dir().glob("*.kv"))
    assert len(files) == 1, files
    return files[0]


def _ask_here(stack: Path) -> str:
    with Stack.load(stack, threads=1) as loaded:
        return loaded.ask(QUESTION).text


def _shift_positions(payload: bytes) -> bytes:
    """llama.cpp's sequence state with each cell's position + 1: magic, seq id, n_stream and
    cell count (4 bytes each), then per cell (GPT-NeoX has no cell extension) pos, n_seq_id,
    seq id (4 bytes each)."""
    data = bytearray(payload)
    n_cells = int.from_bytes(data[12:16], "little")
    for i in range(n_cells):
        at = 16 + 12 * i
        pos = int.from_bytes(data[at : at + 4], "little", signed=True)
        data[at : at + 4] = (pos + 1).to_bytes(4, "little", signed=True)
    return bytes(data)


def _native_state(gguf: Path, n: int) -> bytes:
    """llama.cpp's own sequence state file of ``n`` tokens evaluated by ``gguf``."""
    from edge_stack.engines.llama._lib import lib

    with LlamaModel.load(gguf) as model, LlamaContext(model, n_ctx=256, n_threads=1) as ctx:
        ids = model.tokenize(INSTRUCTIONS, add_bos=False, special=False)[: n + 1]
        list(ctx.generate(ids, max_tokens=0))
        path = settings().data_dir / "native.bin"
        tokens = (ctypes.c_int32 * n)(*ids[:n])
        assert lib().llama_state_seq_save_file(ctx._ctx, os.fsencode(path), 0, tokens, n)
        return path.read_bytes()


@pytest.fixture(scope="module")
def made(
    f32_gguf: Path, tiny_gguf: Callable[..., Path], tmp_path_factory: pytest.TempPathFactory
) -> Made:
    root = tmp_path_factory.mktemp("damaged")
    files = {"base.gguf": f32_gguf}
    stack = write_stack(root / "one", ONE_STAGE.format(instructions=INSTRUCTIONS), files)
    other = INSTRUCTIONS.replace("arithmetic", "numeric")
    other_stack = write_stack(root / "other", ONE_STAGE.format(instructions=other), files)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EDGESTACK_NO_PROMPT_CACHE", "1")
        mp.setenv("EDGESTACK_HOME", str(root / "off"))
        settings.cache_clear()
        answer = _ask_here(stack)
        mp.delenv("EDGESTACK_NO_PROMPT_CACHE")
        mp.setenv("EDGESTACK_HOME", str(root / "home"))
        settings.cache_clear()
        assert _ask_here(stack) == answer
        file = _only_file()
        good = file.read_bytes()
        file.unlink()
        _ask_here(other_stack)
        other_key = _only_file().read_bytes()

        key, n = good[16:48], int.from_bytes(good[12:16], "little")
        payload = good[HEADER.size :]
        with (
            LlamaModel.load(f32_gguf) as model,
            LlamaContext(model, n_ctx=256, n_threads=1, kv_cache_type="f32") as ctx,
        ):
            ids = model.tokenize(INSTRUCTIONS, add_bos=False, special=False)
            list(ctx.generate(ids[: n + 1], max_tokens=0))
            f32_state = ctx.save_prefix(n)
            assert f32_state is not None and len(f32_state) != len(payload)
        shifted = _shift_positions(payload)
        native = _native_state(tiny_gguf("llama", "f32"), n)
    settings.cache_clear()
    return Made(
        stack=stack,
        answer=answer,
        n=n,
        name=file.name,
        good=good,
        other_key=other_key,
        refused=_pack(key, n, f32_state) + bytes(f32_state),
        shifted=_pack(key, n, shifted) + shifted,
        native=native,
    )


def _flip(at: int) -> Callable[[Made], bytes]:
    def damage(m: Made) -> bytes:
        data = bytearray(m.good)
        data[at] ^= 0x5A
        return bytes(data)

    return damage


DAMAGED: dict[str, Callable[[Made], bytes]] = {
    "empty file": lambda m: b"",
    "truncated in the header": lambda m: m.good[:40],
    "header only": lambda m: m.good[: HEADER.size],
    "truncated in the llama.cpp state header": lambda m: m.good[: HEADER.size + 10],
    "truncated in the middle": lambda m: m.good[: len(m.good) // 2],
    "last byte missing": lambda m: m.good[:-1],
    "a byte too many": lambda m: m.good + b"\0",
    "flipped magic": _flip(0),
    "flipped format version": _flip(8),
    "flipped token count": _flip(12),
    "flipped key": _flip(30),
    "flipped payload length": _flip(48),
    "flipped checksum": _flip(70),
    "flipped llama.cpp magic": _flip(HEADER.size + 1),
    "flipped cell position": _flip(HEADER.size + 16),
    "flipped KV value": _flip(-100),
    "wrong magic": lambda m: b"NOTCACHE" + m.good[8:],
    "another key's file": lambda m: m.other_key,
    "llama.cpp state of another model": lambda m: m.native,
    "state llama.cpp refuses, right checksum": lambda m: m.refused,
    "positions moved, right checksum": lambda m: m.shifted,
}


def _ask_child(stack: Path) -> dict[str, object]:
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(stack), QUESTION],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, f"exit {proc.returncode}: {proc.stderr[-2000:]}"
    result: dict[str, object] = json.loads(proc.stdout)
    return result


@pytest.mark.parametrize("damage", list(DAMAGED), ids=list(DAMAGED))
def test_damaged_cache_file_is_replaced_and_the_answer_is_right(made: Made, damage: str) -> None:
    bad = DAMAGED[damage](made)
    assert bad != made.good
    _cache_dir().mkdir(parents=True)
    path = _cache_dir() / made.name
    path.write_bytes(bad)
    # A child process: the old cache let llama.cpp read such files, and it aborted on some.
    result = _ask_child(made.stack)
    assert result == {"answer": made.answer, "cached": 0}
    assert path.read_bytes() == made.good  # deleted, and saved again after the evaluation
    assert list(_cache_dir().iterdir()) == [path]


def test_good_cache_file_is_used(made: Made) -> None:
    _cache_dir().mkdir(parents=True)
    (_cache_dir() / made.name).write_bytes(made.good)
    result = _ask_child(made.stack)
    assert result == {"answer": made.answer, "cached": made.n}


def test_decode_failure_after_a_restore_drops_the_file(
    made: Made, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A state llama.cpp loads but cannot continue from: llama_decode fails on the rest of the
    prompt. The position check of load_prefix catches this state first, so it is turned off to
    reach the guard behind it."""
    from edge_stack.engines.llama._lib import lib

    mod = lib()
    monkeypatch.setattr(mod, "llama_memory_seq_pos_min", lambda mem, seq: 0)
    monkeypatch.setattr(mod, "llama_memory_seq_pos_max", lambda mem, seq: made.n - 1)
    _cache_dir().mkdir(parents=True)
    path = _cache_dir() / made.name
    path.write_bytes(made.shifted)
    with Stack.load(made.stack, threads=1) as loaded:
        engine = loaded._backend
        assert isinstance(engine, Engine)
        assert loaded.ask(QUESTION).text == made.answer
        assert engine.runners["extract"].context.last_stats.cached_tokens == 0
    assert path.read_bytes() == made.good
