"""sha256 pins: a stage's file must hash to the value stack.toml gives, before llama.cpp sees it.

Hashing a large model on every start would cost most of the cold-start budget, so verified
digests are remembered in ``settings().data_dir / "sha256-cache.json"`` keyed by the file's
path, size, inode, mtime and ctime. Any write to the file changes its ctime (which user code
cannot set back), so a stale entry is never trusted. The cache only saves time: a damaged one
(not JSON, nested too deeply, over :data:`MAX_CACHE_BYTES`, malformed entries, not a regular
file) is logged, kept to its well-formed entries (maybe none) and rewritten.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import threading
from pathlib import Path

from ..errors import ChecksumMismatch, OutputExistsError
from ._atomic import atomic_output
from ._datafile import UnusableFile, private_folder, read_regular
from ._env import settings

logger = logging.getLogger(__name__)

CACHE_NAME = "sha256-cache.json"
#: largest digest cache read (an entry is about 150 bytes: some 7 000 files); a bigger file is
#: treated as damaged and started again
MAX_CACHE_BYTES = 1024 * 1024
_lock = threading.Lock()
_HEX = frozenset("0123456789abcdef")


def _stamp(path: Path) -> list[int]:
    st = path.stat()
    return [st.st_size, st.st_ino, st.st_mtime_ns, st.st_ctime_ns]


def _cache_path() -> Path:
    return settings().data_dir / CACHE_NAME


def _valid_entry(entry: object) -> bool:
    """``[stamp, digest]`` as :func:`file_sha256` writes it: four ints and 64 hex digits."""
    if not (isinstance(entry, list) and len(entry) == 2):
        return False
    stamp, digest = entry
    return (
        isinstance(stamp, list)
        and len(stamp) == 4
        and all(type(v) is int for v in stamp)
        and isinstance(digest, str)
        and len(digest) == 64
        and set(digest) <= _HEX
    )


def _parse_cache(raw: bytes) -> tuple[dict[str, list[object]], str | None]:
    """The usable entries of a cache file, and why the file is damaged (None if it is not)."""
    if len(raw) > MAX_CACHE_BYTES:
        return {}, f"larger than {MAX_CACHE_BYTES} bytes"
    try:
        data = json.loads(raw.decode("utf-8"))
    except RecursionError:  # json recurses once per nested array or object
        return {}, "nested too deeply"
    except ValueError as exc:  # also UnicodeDecodeError
        return {}, f"not JSON ({type(exc).__name__} at byte {getattr(exc, 'pos', '?')})"
    if not isinstance(data, dict):
        return {}, f"a JSON {type(data).__name__}, not an object"
    good = {k: v for k, v in data.items() if _valid_entry(v)}
    if len(good) != len(data):
        return good, f"{len(data) - len(good)} malformed entries"
    return good, None


def _load_cache() -> dict[str, list[object]]:
    """The cache's entries; a damaged file is rewritten with what is usable in it (maybe none)."""
    path = _cache_path()
    try:
        # A regular file only: a FIFO in its place would block every ask.
        raw = bytes(read_regular(path, MAX_CACHE_BYTES))
    except FileNotFoundError:
        return {}
    except UnusableFile as exc:
        logger.info("sha256 cache %s is damaged (%s); kept 0 entries", path, exc.reason)
        with contextlib.suppress(OSError):
            if not path.is_dir():
                path.unlink()
        return {}
    except OSError as exc:
        logger.debug("could not read %s: %s", path, exc)
        return {}
    cache, damage = _parse_cache(raw)
    if damage is not None:
        # Only costs a re-hash of the dropped files; rewritten now so this is said only once.
        logger.info("sha256 cache %s is damaged (%s); kept %d entries", path, damage, len(cache))
        _save_cache(cache)
    return cache


def _save_cache(cache: dict[str, list[object]]) -> None:
    path = _cache_path()
    try:
        private_folder(path.parent)
        with atomic_output(path, force=True) as tmp:
            tmp.write_text(json.dumps(cache), encoding="utf-8")
    except (OSError, OutputExistsError) as exc:  # a cache we cannot write only costs time
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
