"""Fixtures for CLI tests: an isolated data folder and the tiny real stack."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from stack_builders import three_stage_stack


@pytest.fixture(scope="session")
def tiny_stack(
    tmp_path_factory: pytest.TempPathFactory,
    tiny_model: Callable[[str], Path],
    tiny_gguf: Callable[..., Path],
) -> Path:
    return three_stage_stack(tmp_path_factory, tiny_model("gptneox"), tiny_gguf("gptneox", "q8_0"))
