"""sha256 pins and their digest cache."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import pytest

from edge_stack.errors import ChecksumMismatch
from edge_stack.util._env import settings
from edge_stack.util._pins import CACHE_NAME, MAX_CACHE_BYTES, check_pin, file_sha256


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


# --- a damaged digest cache ---------------------------------------------------------------------

DAMAGED_CACHES = {
    "deeply nested": b'{"a": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    "nested list": b"[" * 100_000 + b"]" * 100_000,
    "not JSON": b"\x00\xff garbage {",
    "truncated": b'{"/m.gguf": [[1, 2, 3, 4], "ab',
    "a list": b"[1, 2, 3]",
    "malformed entries": b'{"/x": 5, "/y": [[1, 2], "zz"], "/z": [[1, 2, 3, "4"], "'
    + b"a" * 64
    + b'"]}',
    "too large": b'{"pad": "' + b"x" * (MAX_CACHE_BYTES + 10) + b'"}',
}


@pytest.mark.parametrize("content", DAMAGED_CACHES.values(), ids=list(DAMAGED_CACHES))
def test_damaged_cache_is_rewritten(
    tmp_path: Path, content: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    cache = settings().data_dir / CACHE_NAME
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_bytes(content)
    f = tmp_path / "m.gguf"
    f.write_bytes(b"abc" * 1000)
    digest = hashlib.sha256(f.read_bytes()).hexdigest()
    with caplog.at_level(logging.INFO, logger="edge_stack.util._pins"):
        check_pin(f, digest, where="x")
    assert f"sha256 cache {cache} is damaged (" in caplog.text
    data = json.loads(cache.read_text())
    assert list(data) == [str(f.resolve())] and data[str(f.resolve())][1] == digest


def test_good_entries_survive_a_damaged_neighbour(tmp_path: Path) -> None:
    f = tmp_path / "m.gguf"
    f.write_bytes(b"abc" * 1000)
    file_sha256(f)
    cache = settings().data_dir / CACHE_NAME
    data = json.loads(cache.read_text())
    key = str(f.resolve())
    data[key][1] = "0" * 64  # shows below that this entry, not a re-hash, answers
    data["/other"] = "not an entry"
    cache.write_text(json.dumps(data))
    assert file_sha256(f) == "0" * 64
    assert json.loads(cache.read_text()) == {key: data[key]}
