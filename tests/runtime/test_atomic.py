"""Atomic outputs: all or nothing, no overwrite without force, ordinary file modes."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from edge_stack._atomic import atomic_output
from edge_stack.errors import ModelFileNotFound, OutputExistsError


def test_success_renames_with_normal_mode(tmp_path: Path) -> None:
    out = tmp_path / "a.bin"
    with atomic_output(out, force=False) as tmp:
        tmp.write_bytes(b"data")
        assert not out.exists()
    assert out.read_bytes() == b"data"
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(out.stat().st_mode) == 0o666 & ~umask
    assert list(tmp_path.iterdir()) == [out]


def test_failure_leaves_nothing(tmp_path: Path) -> None:
    out = tmp_path / "a.bin"
    with pytest.raises(RuntimeError), atomic_output(out, force=False) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_existing_needs_force(tmp_path: Path) -> None:
    out = tmp_path / "a.bin"
    out.write_bytes(b"old")
    with pytest.raises(OutputExistsError, match="--force"), atomic_output(out, force=False):
        pass
    assert out.read_bytes() == b"old"
    with atomic_output(out, force=True) as tmp:
        tmp.write_bytes(b"new")
    assert out.read_bytes() == b"new"


def test_missing_folder_and_folder_target(tmp_path: Path) -> None:
    with (
        pytest.raises(ModelFileNotFound, match="mkdir"),
        atomic_output(tmp_path / "no" / "a.bin", force=False),
    ):
        pass
    with pytest.raises(OutputExistsError, match="folder"), atomic_output(tmp_path, force=True):
        pass
