"""sha256 pins and their digest cache."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from edge_stack._pins import check_pin, file_sha256
from edge_stack.errors import ChecksumMismatch


def test_pin_ok_mismatch_and_change(tmp_path: Path) -> None:
    f = tmp_path / "m.gguf"
    f.write_bytes(b"abc" * 1000)
    digest = hashlib.sha256(f.read_bytes()).hexdigest()
    check_pin(f, None, where="x")
    check_pin(f, digest, where="x")
    check_pin(f, digest.upper(), where="x")
    assert file_sha256(f) == digest  # cached now
    with pytest.raises(ChecksumMismatch, match=r"stack\.toml, stage s: .*m\.gguf has sha256"):
        check_pin(f, "0" * 64, where="stack.toml, stage s")
    f.write_bytes(b"abd" * 1000)  # same size, new content: the cache must not answer
    assert file_sha256(f) == hashlib.sha256(b"abd" * 1000).hexdigest()
    with pytest.raises(ChecksumMismatch):
        check_pin(f, digest, where="x")
