"""What the last ``edgestack build`` into a folder made, so the next one redoes only what changed.

The state lives in ``<out>/.edgestack-build.json``. Each output file is recorded with the key
of everything it was made from (the sha256 of every input file the converter reads, the
settings, the edgestack version) and its own sha256. Input hashes are cached by file size,
inode, mtime and ctime, so an unchanged multi-megabyte checkpoint is not hashed again; a file
that was touched but not changed is hashed again and still matches.
"""

from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge_stack._version import __version__
from edge_stack.convert.hub import ALLOW_PATTERNS
from edge_stack.util._atomic import atomic_output

logger = logging.getLogger(__name__)

STATE_NAME = ".edgestack-build.json"
_VERSION = 1


def _stamp(path: Path) -> list[int]:
    st = path.stat()
    return [st.st_size, st.st_ino, st.st_mtime_ns, st.st_ctime_ns]


def sha256_file(path: Path) -> str:
    """The sha256 of ``path`` (hex)."""
    with path.open("rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


@dataclass
class BuildState:
    """The state file's content: input hash cache and the outputs of the last build."""

    path: Path
    files: dict[str, list[Any]] = field(default_factory=dict)  # abs path -> [stamp, sha]
    outputs: dict[str, dict[str, Any]] = field(default_factory=dict)  # file name -> record
    #: the recipe of the last build, relative to the output folder (stable when both move)
    recipe: str | None = None

    @classmethod
    def load(cls, out_dir: Path) -> BuildState:
        """The state of ``out_dir`` (empty when there is none or it is unreadable)."""
        path = out_dir / STATE_NAME
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return cls(path)
        except (OSError, ValueError) as exc:
            logger.warning("ignoring unreadable build state %s: %s", path, exc)
            return cls(path)
        if not isinstance(data, dict) or data.get("version") != _VERSION:
            return cls(path)
        files = data.get("files") if isinstance(data.get("files"), dict) else {}
        outputs = data.get("outputs") if isinstance(data.get("outputs"), dict) else {}
        recipe = data.get("recipe") if isinstance(data.get("recipe"), str) else None
        return cls(path, dict(files or {}), dict(outputs or {}), recipe)

    def save(self) -> None:
        """Write the state atomically."""
        payload = {
            "version": _VERSION,
            "recipe": self.recipe,
            "files": self.files,
            "outputs": self.outputs,
        }
        with atomic_output(self.path, force=True) as tmp:
            tmp.write_text(json.dumps(payload, indent=1, sort_keys=True) + "\n", encoding="utf-8")

    def input_sha(self, path: Path) -> str:
        """The sha256 of an input file, from the cache when its stamp is unchanged."""
        key = str(path.resolve())
        stamp = _stamp(path)
        entry = self.files.get(key)
        if isinstance(entry, list) and len(entry) == 2 and entry[0] == stamp:
            return str(entry[1])
        digest = sha256_file(path)
        self.files[key] = [stamp, digest]
        return digest

    def folder_fingerprint(self, folder: Path, kind: str) -> dict[str, str]:
        """``{relative name: sha256}`` of the files the converter reads from ``folder``."""
        patterns = ALLOW_PATTERNS["adapter" if kind == "adapter" else "model"]
        found: dict[str, str] = {}
        for path in sorted(folder.rglob("*")):
            rel = path.relative_to(folder).as_posix()
            if path.is_file() and any(fnmatch.fnmatchcase(rel, p) for p in patterns):
                found[rel] = self.input_sha(path)
        return found

    def output_sha(self, out_dir: Path, name: str) -> str | None:
        """The sha256 of output ``name`` if it is still exactly what the state recorded."""
        record = self.outputs.get(name)
        path = out_dir / name
        if not record or not path.is_file():
            return None
        if record.get("stamp") == _stamp(path):
            return str(record.get("sha256"))
        digest = sha256_file(path)
        return digest if digest == record.get("sha256") else None

    def record(self, out_dir: Path, name: str, key: str, **extra: Any) -> str:
        """Remember output ``name`` (just written) under ``key``; returns its sha256."""
        path = out_dir / name
        digest = sha256_file(path)
        self.outputs[name] = {"key": key, "sha256": digest, "stamp": _stamp(path), **extra}
        return digest


def step_key(**parts: Any) -> str:
    """A stable digest of a step's inputs and settings (and the edgestack version)."""
    blob = json.dumps({"edgestack": __version__, **parts}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def unchanged(state: BuildState, out_dir: Path, name: str, key: str) -> bool:
    """True when output ``name`` exists as recorded and was made from ``key``."""
    record: Mapping[str, Any] = state.outputs.get(name) or {}
    return record.get("key") == key and state.output_sha(out_dir, name) is not None


def remove_quietly(path: Path) -> None:
    """Delete ``path`` if it is there."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
