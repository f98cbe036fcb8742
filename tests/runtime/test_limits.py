"""Thread counts: the one check every way in shares (API, LlamaContext, EDGESTACK_THREADS)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import pytest

from edge_stack.errors import BadArgument
from edge_stack.util import _limits
from edge_stack.util._env import settings
from edge_stack.util._limits import MAX_THREADS, check_threads, cpu_threads, parse_threads


@pytest.fixture(autouse=True)
def _fresh_warnings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_limits, "_warned", set())


def test_llama_cpp_limit_is_the_one_in_its_header() -> None:
    # GGML_MAX_N_THREADS in llama-cpp-python 0.3.36's ggml.h; more crashes inside libgomp.
    assert MAX_THREADS == 512
    assert 1 <= cpu_threads() <= MAX_THREADS


@pytest.mark.parametrize("value", [1, 2, MAX_THREADS])
def test_good_thread_counts(value: int) -> None:
    assert check_threads(value, "--threads") == value


@pytest.mark.parametrize(
    "value", [0, -1, MAX_THREADS + 1, 4096, 100_000, 10**6, True, 2.0, "4", None]
)
def test_bad_thread_counts_are_one_line(value: object) -> None:
    with pytest.raises(BadArgument) as info:
        check_threads(value, "Stack.load(threads=)")
    message = str(info.value)
    assert "\n" not in message and "Stack.load(threads=)" in message
    assert f"1 to {MAX_THREADS}" in message and repr(value) in message


def test_more_threads_than_cores_warns_once(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(_limits, "cpu_threads", lambda: 2)
    with caplog.at_level(logging.WARNING, logger="edge_stack.util._limits"):
        assert check_threads(2, "--threads") == 2
        assert caplog.records == []
        assert check_threads(3, "--threads") == 3
        assert check_threads(3, "--threads") == 3
    assert len(caplog.records) == 1
    assert "--threads is 3" in caplog.records[0].getMessage()
    assert "2 cores" in caplog.records[0].getMessage()


@pytest.mark.parametrize(
    ("text", "expected"),
    [("4", 4), (" 2 ", 2), ("512", 512)],
)
def test_env_threads(monkeypatch: pytest.MonkeyPatch, text: str, expected: int) -> None:
    monkeypatch.setenv("EDGESTACK_THREADS", text)
    settings.cache_clear()
    assert settings().threads == expected


@pytest.mark.parametrize("text", ["", "   "])
def test_env_threads_unset(monkeypatch: pytest.MonkeyPatch, text: str) -> None:
    monkeypatch.setenv("EDGESTACK_THREADS", text)
    settings.cache_clear()
    assert settings().threads is None


@pytest.mark.parametrize(
    "text", ["0", "-3", "abc", "4.0", "²", "513", "100000", "9" * 5000, "1e3", "0x10"]
)
def test_bad_env_threads_fail_on_use_not_on_reading(
    monkeypatch: pytest.MonkeyPatch, text: str
) -> None:
    monkeypatch.setenv("EDGESTACK_THREADS", text)
    settings.cache_clear()
    env = settings()  # reading the environment never fails: the CLI reads it before its boundary
    with pytest.raises(BadArgument, match="EDGESTACK_THREADS must be a whole number") as info:
        env.threads  # noqa: B018
    assert "\n" not in str(info.value) and len(str(info.value)) < 300


def test_parse_threads_is_check_threads_on_text() -> None:
    assert parse_threads("8", "X") == 8
    with pytest.raises(BadArgument, match="X must"):
        parse_threads("0", "X")


@pytest.mark.llama
@pytest.mark.torch
def test_llama_context_checks_threads_before_llama_cpp(
    tiny_gguf: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    from edge_stack.engines.llama import LlamaContext, LlamaModel
    from edge_stack.engines.llama._batch import BatchContext

    with LlamaModel.load(tiny_gguf("gptneox")) as model:
        for bad in (0, -1, MAX_THREADS + 1, 100_000):
            with pytest.raises(BadArgument, match=f"n_threads must be .* got {bad}"):
                LlamaContext(model, n_ctx=64, n_threads=bad)
            with pytest.raises(BadArgument, match="n_threads must be"):
                BatchContext(model, n_ctx=64, n_seq=2, n_threads=bad)
        # The default (EDGESTACK_THREADS, else the cores) is checked as well.
        monkeypatch.setenv("EDGESTACK_THREADS", "100000")
        settings.cache_clear()
        with pytest.raises(BadArgument, match="EDGESTACK_THREADS must be"):
            LlamaContext(model, n_ctx=64)
        monkeypatch.delenv("EDGESTACK_THREADS")
        settings.cache_clear()
        with LlamaContext(model, n_ctx=64) as ctx:
            assert ctx.n_ctx == 64
