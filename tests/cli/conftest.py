"""Fixtures for CLI tests: an isolated data folder and the tiny real stack."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from edge_stack._env import settings

from stack_builders import three_stage_stack


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    home = tmp_path / "edgestack-home"
    monkeypatch.setenv("EDGESTACK_HOME", str(home))
    for var in ("EDGESTACK_STACK", "EDGESTACK_NO_LOG", "EDGESTACK_DEBUG", "EDGESTACK_THREADS"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("EDGESTACK_THREADS", "1")
    settings.cache_clear()
    yield home
    settings.cache_clear()


@pytest.fixture(scope="session")
def tiny_stack(
    tmp_path_factory: pytest.TempPathFactory,
    tiny_model: Callable[[str], Path],
    tiny_gguf: Callable[..., Path],
) -> Path:
    return three_stage_stack(tmp_path_factory, tiny_model("gptneox"), tiny_gguf("gptneox", "q8_0"))
