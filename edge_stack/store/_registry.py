"""The store's index: which stacks this machine has, by name, and where their files are.

Two kinds of stacks have names: the **bundled** ones, shipped inside the package
(``edge_stack.models``: ``word-problems``), and the **pulled** ones, fetched from the Hugging
Face Hub by ``edgestack pull owner/name[@revision]`` into huggingface_hub's cache. Each pulled
stack has one small JSON file in ``<data folder>/stacks/`` (written atomically, so a killed pull
leaves the old entry or none): its name, repository, revision and commit, the stack.toml in the
cache, when it was pulled, and every file the pull fetched with its size and sha256. A damaged
entry is reported by name (``edgestack list`` shows it, ``rm`` removes it) and never hides the
others.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import EdgeStackError, ModelFileNotFound, StoreError
from ..manifest import StackSpec, load_manifest
from ..util._atomic import atomic_output
from ..util._datafile import private_folder
from ..util._paths import (
    ENTRY_FORMAT,
    bundled_stacks,
    entry_path,
    read_entry,
    store_dir,
    stored_names,
)

__all__ = [
    "StackEntry",
    "StoredFile",
    "bundled_files",
    "list_stacks",
    "remove_stack",
    "stack_files",
    "write_entry",
]

logger = logging.getLogger(__name__)

#: files beside stack.toml that belong to a stack without the manifest naming them
COMPANION_FILES = ("eval.jsonl", "README.md")


@dataclass(frozen=True)
class StoredFile:
    """One file of a pulled stack: its name in the stack (a path in the repository, or a
    ``hf://`` reference), where it is in the cache, its size and sha256."""

    name: str
    path: str
    size: int
    sha256: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "path": self.path, "size": self.size, "sha256": self.sha256}


@dataclass(frozen=True)
class StackEntry:
    """A row of ``edgestack list``."""

    name: str
    #: "bundled", or the Hub repository and commit a pulled stack came from
    source: str
    #: its stack.toml (None when the entry is damaged)
    manifest: Path | None
    size_bytes: int
    stages: int
    #: when it was pulled (seconds since 1970); None for a bundled stack
    pulled: float | None = None
    #: what is wrong with it (a damaged entry, missing files), or None
    problem: str | None = None

    @property
    def kind(self) -> str:
        return "bundled" if self.source == "bundled" else "pulled"

    def to_dict(self) -> dict[str, Any]:
        """The object ``edgestack list --json`` prints for this stack."""
        return {
            "name": self.name,
            "kind": self.kind,
            "source": self.source,
            "manifest": None if self.manifest is None else str(self.manifest),
            "size_bytes": self.size_bytes,
            "stages": self.stages,
            "pulled": None
            if self.pulled is None
            else time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(self.pulled)),
            "problem": self.problem,
        }


def stack_files(spec: StackSpec) -> list[Path]:
    """Every distinct file a stack loads: models, adapters (in stage order)."""
    seen: dict[Path, None] = {}
    for stage in spec.stages:
        for path in (stage.model, stage.lora):
            if path is not None:
                seen.setdefault(path, None)
    return list(seen)


def bundled_files(spec: StackSpec) -> list[Path]:
    """The files of a stack on disk: its stack.toml, the files it loads and its companions."""
    files = [spec.path, *stack_files(spec)]
    files += [spec.root / name for name in COMPANION_FILES if (spec.root / name).is_file()]
    return files


def _size(paths: list[Path]) -> int:
    total = 0
    for path in paths:
        try:
            total += path.stat().st_size
        except OSError:
            continue
    return total


def _bundled_entry(name: str, manifest: Path) -> StackEntry:
    try:
        spec = load_manifest(manifest, check_files=False)
    except EdgeStackError as exc:
        return StackEntry(name, "bundled", manifest, 0, 0, problem=str(exc))
    missing = [p for p in stack_files(spec) if not p.is_file()]
    problem = f"missing {', '.join(p.name for p in missing)}" if missing else None
    return StackEntry(
        name, "bundled", manifest, _size(bundled_files(spec)), len(spec.stages), problem=problem
    )


def _pulled_entry(path: Path, name: str) -> StackEntry:
    try:
        data = read_entry(path)
    except StoreError as exc:
        return StackEntry(name, "damaged", None, 0, 0, problem=str(exc))
    manifest = Path(data["manifest"])
    source = f"{data['repo']}@{data['commit'][:12]}"
    size = sum(int(f.get("size", 0)) for f in data["files"] if isinstance(f, dict))
    stages, problem = 0, None
    try:
        spec = load_manifest(manifest)
        stages = len(spec.stages)
    except EdgeStackError as exc:
        problem = f"{exc} (pull it again: edgestack pull {name})"
    return StackEntry(name, source, manifest, size, stages, float(data["pulled"]), problem)


def list_stacks() -> list[StackEntry]:
    """Every stack this machine has by name: the bundled ones, then the pulled ones by name."""
    rows = [_bundled_entry(name, path) for name, path in bundled_stacks().items()]
    rows += [_pulled_entry(entry_path(name), name) for name in stored_names()]
    return rows


def write_entry(
    *,
    name: str,
    repo: str,
    revision: str | None,
    commit: str,
    manifest: Path,
    files: list[StoredFile],
) -> Path:
    """Record the pulled stack ``name`` in the index (replacing an older entry of that name)."""
    path = entry_path(name)
    data = {
        "format": ENTRY_FORMAT,
        "name": name,
        "source": f"hf://{repo}@{commit}",
        "repo": repo,
        "revision": revision,
        "commit": commit,
        "manifest": str(manifest),
        "pulled": time.time(),
        "files": [f.to_dict() for f in files],
    }
    private_folder(path.parent)
    with atomic_output(path, force=True) as tmp:
        tmp.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    read_entry(path)  # what was written reads back
    return path


def _files_of_others(name: str) -> set[str]:
    """Every cached file another (readable) entry uses: those stay when ``name`` goes."""
    used: set[str] = set()
    for other in stored_names():
        if other == name:
            continue
        try:
            data = read_entry(entry_path(other))
        except StoreError:
            continue
        used |= {str(f.get("path")) for f in data["files"] if isinstance(f, dict)}
    return used


def _delete_cached(link: Path) -> int:
    """Remove one file of huggingface_hub's cache: the snapshot's link, and the blob it points
    at when no other snapshot of that repository links to it. Returns the bytes freed."""
    freed = 0
    try:
        blob = link.resolve() if link.is_symlink() else None
        size = link.stat().st_size if link.exists() else 0
        link.unlink(missing_ok=True)
    except OSError as exc:
        logger.warning("could not remove %s: %s", link, exc)
        return 0
    if blob is None:
        return size
    repo = blob.parent.parent
    if blob.parent.name != "blobs" or not (repo / "snapshots").is_dir():
        return 0
    for other in (repo / "snapshots").rglob("*"):
        if other.is_symlink() and other.resolve() == blob:
            return 0
    try:
        freed = blob.stat().st_size
        blob.unlink()
    except OSError:
        return 0
    # Empty snapshot folders left behind go too (huggingface_hub fetches again when needed).
    folder = link.parent
    while folder != repo and folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()
        folder = folder.parent
    return freed


def _in_cache(path: Path) -> bool:
    """Only files in a snapshot of huggingface_hub's cache are ever deleted (an entry edited by
    hand cannot make ``rm`` delete anything else)."""
    from ..util._hubref import hf_cache_dir

    try:
        rel = path.parent.resolve().relative_to(hf_cache_dir().resolve())
    except (ValueError, OSError):
        return False
    parts = rel.parts
    return len(parts) >= 3 and parts[0].startswith("models--") and parts[1] == "snapshots"


def remove_stack(name: str, *, keep_files: bool = False) -> tuple[Path, int]:
    """Forget the pulled stack ``name`` and delete its files from huggingface_hub's cache
    (unless ``keep_files``, or another pulled stack uses them). Returns (entry, bytes freed)."""
    if name in bundled_stacks():
        raise StoreError(
            f"{name} is a bundled stack: it ships inside edgestack and cannot be removed "
            "(edgestack list shows which stacks are pulled)"
        )
    path = entry_path(name)
    if not path.is_file():
        names = ", ".join(stored_names()) or "none"
        raise ModelFileNotFound(
            f"no pulled stack named {name!r} in the store ({store_dir()}; pulled stacks: "
            f"{names}); edgestack list shows every stack"
        )
    try:
        data: dict[str, Any] | None = read_entry(path)
    except StoreError as exc:
        logger.warning("removing a damaged entry: %s", exc)
        data = None
    freed = 0
    if data is not None and not keep_files:
        used = _files_of_others(name)
        for item in data["files"]:
            file = str(item.get("path")) if isinstance(item, dict) else ""
            if file and file not in used and _in_cache(Path(file)) and os.path.lexists(file):
                freed += _delete_cached(Path(file))
    path.unlink()
    return path, freed
