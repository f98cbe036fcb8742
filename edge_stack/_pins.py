"""sha256 pins: a stage's file must hash to the value stack.toml gives, before llama.cpp sees it.

Hashing a large model on every start would cost most of the cold-start budget, so verified
digests are remembered in ``settings().data_dir / "sha256-cache.json"`` keyed by the file's
path, size, inode, mtime and ctime. Any write to the file changes its ctime (which user code
cannot set back), so a stale entry is never trusted.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from pathlib import Path

from ._env import settings
from .errors import ChecksumMismatch

logger = logging.getLogger(__name__)

CACHE_NAME = "sha256-cache.json"
_lock = threading.Lock()


def _stamp(path: Path) -> list[int]:
    st = path.stat()
    return [st.st_size, st.st_ino, st.st_mtime_ns, st.st_ctime_ns]


def _cache_path() -> Path:
    return settings().data_dir / CACHE_NAME


def _load_cache() -> dict[str, list[object]]:
    try:
        data = json.loads(_cache_path().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _save_cache(cache: dict[str, list[object]]) -> None:
    path = _cache_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(cache), encoding="utf-8")
        os.replace(tmp, path)
    except OSError as exc:  # a cache we cannot write only costs time
        logger.debug("could not write %s: %s", path, exc)


def file_sha256(path: Path) -> str:
    """The sha256 of ``path`` (hex), from the cache when the file has not changed."""
    key = str(path.resolve())
    with _lock:
        stamp = _stamp(path)
        cache = _load_cache()
        entry = cache.get(key)
        if isinstance(entry, list) and len(entry) == 2 and entry[0] == stamp:
            return str(entry[1])
        with path.open("rb") as fh:
            digest = hashlib.file_digest(fh, "sha256").hexdigest()
        if _stamp(path) == stamp:  # unchanged while we read it
            cache[key] = [stamp, digest]
            _save_cache(cache)
        return digest


def check_pin(path: Path, expected: str | None, *, where: str) -> None:
    """Raise :class:`ChecksumMismatch` unless ``path`` hashes to ``expected`` (None: no pin)."""
    if expected is None:
        return
    actual = file_sha256(path)
    if actual != expected.lower():
        raise ChecksumMismatch(
            f"{where}: {path} has sha256 {actual} but stack.toml pins {expected}; the file was "
            "changed or replaced: restore it, or update the pin if the change is intended"
        )
