"""The on-disk prompt cache: a stage's fixed prompt start restored by a fresh process, exactly."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from edge_stack import Stack
from edge_stack._engine import Engine
from edge_stack._env import settings
from edge_stack._llama import LlamaContext, LlamaModel
from edge_stack._prompt_cache import PromptCache

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

    again, cached = _first_ask(prefix_stack)
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


def test_context_save_and_load_prefix_is_exact(base_gguf: Path, tmp_path: Path) -> None:
    with LlamaModel.load(base_gguf) as model:
        ids = model.tokenize(
            INSTRUCTIONS + "Question: Tom has 3 apples", add_bos=False, special=False
        )
        n = 64
        with LlamaContext(model, n_ctx=512, n_threads=1) as fresh:
            list(fresh.generate(ids, max_tokens=0))
            logits = fresh.last_logits()
            expected = [t.id for t in fresh.generate(ids, max_tokens=8)]
            assert not fresh.save_prefix(tmp_path / "odd.kv", n + 1)  # not whole micro-batches
            assert fresh.save_prefix(tmp_path / "p.kv", n)
            assert fresh.cached_tokens == ids[:n]
        with LlamaContext(model, n_ctx=512, n_threads=1) as ctx:
            assert not ctx.load_prefix(tmp_path / "p.kv", ids[1 : n + 1])  # other tokens
            assert ctx.cached_tokens == []
            assert ctx.load_prefix(tmp_path / "p.kv", ids[:n])
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
