"""Which stack a command uses."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_stack._env import settings
from edge_stack._paths import find_stack
from edge_stack.errors import ModelFileNotFound


def test_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    a = tmp_path / "a"
    b = tmp_path / "b"
    for d in (a, b):
        d.mkdir()
        (d / "stack.toml").write_text("version = 1\n")
    monkeypatch.setenv("EDGESTACK_STACK", str(b))
    settings.cache_clear()
    assert find_stack(a) == a / "stack.toml"  # --stack wins
    assert find_stack(a / "stack.toml") == a / "stack.toml"
    assert find_stack() == b / "stack.toml"  # then the environment


def test_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ModelFileNotFound, match="from --stack"):
        find_stack(tmp_path / "nope")
    monkeypatch.setenv("EDGESTACK_STACK", str(tmp_path / "gone.toml"))
    settings.cache_clear()
    with pytest.raises(ModelFileNotFound, match="EDGESTACK_STACK"):
        find_stack()


def test_bundled_default_or_clear_error() -> None:
    from edge_stack._paths import bundled_stack

    bundled = bundled_stack()
    if bundled is None:
        with pytest.raises(ModelFileNotFound, match="--stack"):
            find_stack()
    else:
        assert find_stack() == bundled and bundled.name == "stack.toml"
