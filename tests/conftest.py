"""Fixtures shared by every test folder: tiny checkpoints and their GGUF conversions, built once."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def _kernel_verdicts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """This machine's kernel-probe verdict, probed once for the session (edge_stack.engines.llama._kernels)."""
    import os

    from edge_stack.engines.llama import _kernels
    from edge_stack.util._env import settings

    home = tmp_path_factory.mktemp("kernel-probe-home")
    saved = {k: os.environ.get(k) for k in ("EDGESTACK_HOME", "EDGESTACK_PROBE_FAULT")}
    os.environ["EDGESTACK_HOME"] = str(home)
    os.environ.pop("EDGESTACK_PROBE_FAULT", None)
    settings.cache_clear()
    try:
        _kernels.verdict()
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        settings.cache_clear()
    return home / "kernels"


@pytest.fixture(autouse=True)
def _isolated_env(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path_factory: pytest.TempPathFactory,
    _kernel_verdicts: Path,
) -> Iterator[None]:
    """No test reads the user's data folder or reaches the network; llama.cpp runs one thread.

    Each data folder starts with the session's kernel verdict, so child processes (CLI runs,
    doctor) do not probe again; tests of the probe itself remove it.
    """
    import shutil

    from edge_stack.util._env import settings

    home = tmp_path_factory.mktemp("edgestack-home")
    shutil.copytree(_kernel_verdicts, home / "kernels")
    monkeypatch.setenv("EDGESTACK_HOME", str(home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    for name in (
        "EDGESTACK_STACK",
        "EDGESTACK_DEBUG",
        "EDGESTACK_NO_LOG",
        "EDGESTACK_VERBOSE",
        "EDGESTACK_NO_PROMPT_CACHE",
        "EDGESTACK_KERNELS",
        "EDGESTACK_PROBE_FAULT",
        "EDGESTACK_API_KEY",
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
