"""Fixtures shared by every test folder: tiny checkpoints and their GGUF conversions, built once."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def _isolated_env(
    monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[None]:
    """No test reads the user's data folder or reaches the network; llama.cpp runs one thread."""
    from edge_stack._env import settings

    monkeypatch.setenv("EDGESTACK_HOME", str(tmp_path_factory.mktemp("edgestack-home")))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    for name in (
        "EDGESTACK_STACK",
        "EDGESTACK_DEBUG",
        "EDGESTACK_NO_LOG",
        "EDGESTACK_VERBOSE",
        "EDGESTACK_NO_PROMPT_CACHE",
    ):
        monkeypatch.delenv(name, raising=False)
    # One thread: the suite runs on small shared CI machines, and results do not depend on it.
    monkeypatch.setenv("EDGESTACK_THREADS", "1")
    settings.cache_clear()
    yield
    settings.cache_clear()


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """``tiny_model(variant)``: a random checkpoint folder (see model_builders.VARIANTS), built once."""
    from model_builders import build_model

    cache: dict[str, Path] = {}

    def get(variant: str) -> Path:
        if variant not in cache:
            cache[variant] = build_model(variant, tmp_path_factory.mktemp(f"hf-{variant}"))
        return cache[variant]

    return get


@pytest.fixture(scope="session")
def tiny_gguf(
    tiny_model: Callable[[str], Path], tmp_path_factory: pytest.TempPathFactory
) -> Callable[..., Path]:
    """``tiny_gguf(variant, outtype="f32")``: that checkpoint converted by edgestack, built once."""
    from edge_stack.convert import convert_checkpoint

    cache: dict[tuple[str, str], Path] = {}

    def get(variant: str, outtype: str = "f32") -> Path:
        key = (variant, outtype)
        if key not in cache:
            out = tmp_path_factory.mktemp(f"gguf-{variant}") / f"{variant}.{outtype}.gguf"
            cache[key] = convert_checkpoint(tiny_model(variant), out, outtype=outtype)
        return cache[key]

    return get
