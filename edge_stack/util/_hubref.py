"""Hugging Face Hub references, and the files of huggingface_hub's cache they point at.

Two spellings name things on the Hub:

- a repository: ``owner/name`` or ``owner/name@revision`` (a branch, tag or commit), as
  ``edgestack pull`` takes it;
- a file in a repository: ``hf://owner/name/path/in/repo.gguf`` or ``...gguf@revision``, as a
  stack.toml may name a stage's ``model`` or ``lora`` (a public base reused without copying it).

This module only parses them and looks files up in huggingface_hub's cache (``HF_HOME`` /
``HF_HUB_CACHE``, read by huggingface_hub itself); it never touches the network. Downloading is
``edge_stack.store``'s business.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import HubError

__all__ = [
    "HF_SCHEME",
    "HubFile",
    "HubRepo",
    "cached_hub_file",
    "hf_cache_dir",
    "is_hub_file",
    "parse_hub_file",
    "parse_hub_repo",
    "snapshot_repo_folder",
]

HF_SCHEME = "hf://"
# huggingface_hub's naming rules (validate_repo_id): letters, digits, '-', '_', '.'; no '--' or
# '..'; a part neither starts nor ends with '-' or '.'; at most 96 characters in all.
_PART = r"[A-Za-z0-9_](?:[A-Za-z0-9._-]*[A-Za-z0-9_])?"
_REPO_ID = re.compile(rf"{_PART}/{_PART}")
MAX_REPO_ID = 96
#: a revision: a branch, tag or commit (no spaces, no '..', at most 128 characters)
_REVISION = re.compile(r"[A-Za-z0-9._/-]{1,128}")
_COMMIT = re.compile(r"[0-9a-f]{40}")


@dataclass(frozen=True)
class HubRepo:
    """``owner/name`` and the revision asked for (None: the default branch)."""

    repo_id: str
    revision: str | None = None

    def __str__(self) -> str:
        return f"{self.repo_id}@{self.revision}" if self.revision else self.repo_id


@dataclass(frozen=True)
class HubFile:
    """One file of a Hub repository at a revision (None: the default branch)."""

    repo_id: str
    filename: str
    revision: str | None = None

    def __str__(self) -> str:
        rev = f"@{self.revision}" if self.revision else ""
        return f"{HF_SCHEME}{self.repo_id}/{self.filename}{rev}"


def _check_repo_id(repo_id: str, text: str, what: str) -> None:
    if (
        len(repo_id) > MAX_REPO_ID
        or not _REPO_ID.fullmatch(repo_id)
        or "--" in repo_id
        or ".." in repo_id
    ):
        raise HubError(
            f"{what} '{text}' does not name a Hub repository: expected owner/name made of "
            "letters, digits, '-', '_' and '.' (no '--' or '..', at most "
            f"{MAX_REPO_ID} characters); check the spelling"
        )


def _check_revision(revision: str, text: str, what: str) -> None:
    if not _REVISION.fullmatch(revision) or ".." in revision:
        raise HubError(
            f"{what} '{text}' has a malformed revision '{revision}' after '@'; expected a branch, "
            "tag or commit hash"
        )


def parse_hub_repo(text: str, what: str = "Hub id") -> HubRepo:
    """``owner/name[@revision]`` as a :class:`HubRepo`; HubError naming ``what`` otherwise."""
    repo_id, sep, revision = text.strip().partition("@")
    _check_repo_id(repo_id, text, what)
    if sep:
        _check_revision(revision, text, what)
    return HubRepo(repo_id, revision or None)


def is_hub_file(value: str) -> bool:
    """True when a manifest value names a Hub file (``hf://...``)."""
    return value.startswith(HF_SCHEME)


def parse_hub_file(value: str) -> HubFile:
    """``hf://owner/name/path/file.gguf[@revision]`` as a :class:`HubFile`."""
    body = value[len(HF_SCHEME) :] if is_hub_file(value) else value
    path, sep, revision = body.rpartition("@")
    if not sep or "/" in revision:
        path, revision = body, ""
    parts = path.split("/")
    fix = f"write it as {HF_SCHEME}owner/name/path/in/repo.gguf or ...gguf@revision"
    if len(parts) < 3 or not all(parts):
        raise HubError(
            f"'{value}' does not name a file in a Hub repository (owner, name and a file "
            f"path are needed); {fix}"
        )
    repo_id, filename = "/".join(parts[:2]), "/".join(parts[2:])
    _check_repo_id(repo_id, value, "Hub file")
    if any(p in {".", ".."} for p in parts[2:]) or "\\" in filename:
        raise HubError(f"'{value}' has '.', '..' or '\\' in its file path; {fix}")
    if sep and revision:
        _check_revision(revision, value, "Hub file")
    return HubFile(repo_id, filename, revision or None)


def hf_cache_dir() -> Path:
    """huggingface_hub's cache folder (its HF_HUB_CACHE / HF_HOME rules)."""
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def cached_hub_file(ref: HubFile) -> Path | None:
    """The cached copy of ``ref`` (a path in huggingface_hub's cache), or None if not cached.

    Looks only at the cache: a branch or tag resolves through the commit the cache last saw it
    at (``refs/<branch>``), as huggingface_hub does offline.
    """
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(ref.repo_id, ref.filename, revision=ref.revision or "main")
    if isinstance(found, str) and Path(found).is_file():
        return Path(found)
    return None


def snapshot_repo_folder(folder: Path) -> Path | None:
    """The repository folder of huggingface_hub's cache that ``folder`` is a snapshot of.

    A snapshot (``models--owner--name/snapshots/<commit>``) holds symbolic links into the same
    repository's ``blobs/``; files there belong to the stack as much as the links do. None when
    ``folder`` is not laid out as such a snapshot.
    """
    parent = folder.parent
    repo = parent.parent
    if (
        parent.name == "snapshots"
        and _COMMIT.fullmatch(folder.name) is not None
        and repo.name.startswith(("models--", "datasets--", "spaces--"))
        and (repo / "blobs").is_dir()
    ):
        return repo
    return None
