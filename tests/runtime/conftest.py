"""Fixtures for runtime tests: stack folders written in tmp dirs, an isolated data folder."""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

MakeStack = Callable[..., Path]


@pytest.fixture
def make_stack(tmp_path: Path) -> MakeStack:
    """Write ``stack.toml`` (dedented) into a fresh folder, plus empty placeholder files."""
    counter = iter(range(1000))

    def make(toml: str, files: tuple[str, ...] = ("base.gguf",)) -> Path:
        root = tmp_path / f"stack{next(counter)}"
        root.mkdir()
        for name in files:
            (root / name).write_bytes(b"")
        path = root / "stack.toml"
        path.write_text(textwrap.dedent(toml), encoding="utf-8")
        return path

    return make
