"""``edgestack pull owner/name[@revision]``: a stack from the Hugging Face Hub into the store.

A stack repository holds a ``stack.toml`` and the files it names. The pull fetches stack.toml
first, checks that every model and adapter is pinned (``sha256`` / ``lora_sha256``; refused
otherwise unless ``trust_unpinned``), then fetches exactly the files the manifest names (its own
files at the same commit as stack.toml, and ``hf://owner/name/file@revision`` files from their
repositories), plus ``eval.jsonl`` and ``README.md`` when the repository has them; each file is
verified against its pin before the stack is registered. Everything goes through
huggingface_hub into its own cache (``HF_HOME`` / ``HF_HUB_CACHE``), so files shared with other
stacks or tools are stored once. Offline (``HF_HUB_OFFLINE=1``, or the Hub cannot be reached),
huggingface_hub answers from that cache; a stack in neither is a one-line error.
"""

from __future__ import annotations

import logging
import posixpath
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ChecksumMismatch, HubError, ManifestError, StoreError
from ..manifest import load_manifest
from ..util._hubref import HubFile, HubRepo, hf_cache_dir, is_hub_file, parse_hub_file
from ..util._hubref import parse_hub_repo as _parse_repo
from ..util._paths import bundled_stacks
from ..util._pins import file_sha256
from ..util._toml import read_toml
from ..util._units import format_bytes
from ._registry import COMPANION_FILES, StoredFile, write_entry

__all__ = ["PullResult", "pull_stack"]

logger = logging.getLogger(__name__)

MANIFEST = "stack.toml"
#: the most files a pulled stack may name (models, adapters, grammar files)
MAX_STACK_FILES = 256

#: called with one line of progress for people (``edgestack pull`` writes it to stderr)
Report = Callable[[str], None]


@dataclass(frozen=True)
class PullResult:
    """What a pull registered."""

    name: str
    repo: str
    commit: str
    manifest: Path
    files: tuple[StoredFile, ...]
    unpinned: tuple[str, ...]

    @property
    def size_bytes(self) -> int:
        return sum(f.size for f in self.files)


@dataclass(frozen=True)
class _Needed:
    """A file the manifest names: how it is written there, where it lives, its pin."""

    value: str
    where: str
    ref: HubFile
    pin: str | None
    #: models and adapters are pinned; grammar files are text, checked when the stack loads
    pinnable: bool = True


def _silent_progress() -> Any:
    """huggingface_hub's progress bar class, switched off (stderr is not a terminal)."""
    from huggingface_hub.utils import tqdm as hf_tqdm

    class _Silent(hf_tqdm):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs["disable"] = True
            super().__init__(*args, **kwargs)

    return _Silent


class _NotOnHub(Exception):
    """The Hub answered that the repository has no such file."""


def _hub_reachable(repo: HubRepo) -> bool:
    """False when offline mode is on or the Hub does not answer (one request, no retries):
    the pull then reads huggingface_hub's cache only, instead of letting huggingface_hub retry
    every file it does not have (tens of seconds each) before giving up."""
    import huggingface_hub
    from huggingface_hub import constants, errors

    if constants.is_offline_mode():
        return False
    url = huggingface_hub.hf_hub_url(repo.repo_id, MANIFEST, revision=repo.revision)
    try:
        huggingface_hub.get_hf_file_metadata(url)
    except errors.HfHubHTTPError:
        return True  # the Hub answered (no such repository, file, ...): said by the pull
    except Exception as exc:
        logger.info("the Hub cannot be reached (%s: %s); using the cache", type(exc).__name__, exc)
        return False
    return True


def _download(ref: HubFile, *, uncached_ok: bool = False, local_only: bool = False) -> Path | None:
    """``ref`` through huggingface_hub (only its cache when ``local_only``). None when it is
    not cached while offline and ``uncached_ok``; :class:`_NotOnHub` when the Hub has no such
    file; other errors become one line (:func:`_hub_error`)."""
    import huggingface_hub
    from huggingface_hub import errors

    kwargs: dict[str, Any] = {"local_files_only": local_only}
    if not sys.stderr.isatty():
        kwargs["tqdm_class"] = _silent_progress()
    try:
        return Path(
            huggingface_hub.hf_hub_download(
                ref.repo_id, ref.filename, revision=ref.revision, **kwargs
            )
        )
    except errors.RemoteEntryNotFoundError:
        raise _NotOnHub(str(ref)) from None
    except errors.LocalEntryNotFoundError as exc:
        if uncached_ok:
            return None
        raise _hub_error(exc, ref) from None
    except Exception as exc:
        raise _hub_error(exc, ref) from None


def _hub_error(exc: Exception, ref: HubFile) -> Exception:
    """One clear line for whatever huggingface_hub raised while fetching ``ref``."""
    from huggingface_hub import constants, errors

    repo = f"{ref.repo_id}@{ref.revision or 'main'}"
    cache = hf_cache_dir()
    if isinstance(exc, errors.LocalEntryNotFoundError):
        why = (
            "HF_HUB_OFFLINE=1 is set"
            if constants.is_offline_mode()
            else "the Hub cannot be reached"
        )
        return HubError(
            f"{ref.filename} of {repo} is not in the Hugging Face cache ({cache}) and {why}; "
            "connect to the network and pull again (or unset HF_HUB_OFFLINE)"
        )
    if isinstance(exc, errors.GatedRepoError):
        return HubError(
            f"Hub repository {ref.repo_id} is gated: accept its terms on the Hub and log in "
            "(`hf auth login` or HF_TOKEN), then pull again"
        )
    if isinstance(exc, errors.RepositoryNotFoundError):
        return HubError(
            f"Hub repository {ref.repo_id} does not exist or is private; check the name, or log "
            "in for a private one (`hf auth login` or HF_TOKEN)"
        )
    if isinstance(exc, errors.RevisionNotFoundError):
        return HubError(
            f"Hub repository {ref.repo_id} has no revision {ref.revision or 'main'!r}; give an "
            "existing branch, tag or commit after '@'"
        )
    if isinstance(exc, errors.EntryNotFoundError):
        return HubError(f"Hub repository {repo} has no file {ref.filename}")
    if isinstance(exc, errors.HfHubHTTPError):
        status = getattr(getattr(exc, "response", None), "status_code", None)
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        return HubError(
            f"the Hub refused {ref} (HTTP {status or 'error'}: {first}); try again later"
        )
    if isinstance(exc, OSError | ValueError):
        return HubError(f"could not fetch {ref} into {cache}: {type(exc).__name__}: {exc}")
    return exc


def _merged_stages(data: Mapping[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(label, [defaults] + the stage's own keys) of each stage, as the manifest reads them."""
    defaults = data.get("defaults", {})
    stages = data.get("stages", [])
    if not isinstance(defaults, dict) or not isinstance(stages, list):
        return []
    out = []
    for i, raw in enumerate(stages):
        if isinstance(raw, dict):
            name = raw.get("name")
            label = f"'{name}'" if isinstance(name, str) else f"#{i + 1}"
            out.append((label, {**defaults, **raw}))
    return out


def _needed_files(data: Mapping[str, Any], repo: str, commit: str, manifest: Path) -> list[_Needed]:
    """Every file the manifest names, once each, in stage order."""
    found: dict[tuple[str, str, str | None], _Needed] = {}
    for label, values in _merged_stages(data):
        for key, pin_key in (("model", "sha256"), ("lora", "lora_sha256"), ("grammar", None)):
            value = values.get(key)
            if not isinstance(value, str) or (key == "grammar" and "::=" in value):
                continue
            where = f"{manifest}: stage {label}, key '{key}'"
            pin = values.get(pin_key) if pin_key else None
            if is_hub_file(value):
                try:
                    ref = parse_hub_file(value)
                except HubError as exc:
                    raise ManifestError(f"{where}: {exc}") from None
            else:
                path = posixpath.normpath(value.replace("\\", "/"))
                if path.startswith(("/", "../")) or path == ".." or "~" in path.split("/")[0]:
                    raise ManifestError(
                        f"{where}: {value!r} is outside the stack's repository; a pulled stack "
                        "names its own files by relative paths, and other repositories' files "
                        "as hf://owner/name/file"
                    )
                ref = HubFile(repo, path, commit)
            pin = pin.lower() if isinstance(pin, str) else None
            item = _Needed(value, where, ref, pin, pinnable=pin_key is not None)
            found.setdefault((ref.repo_id, ref.filename, ref.revision), item)
    if len(found) > MAX_STACK_FILES:
        raise ManifestError(
            f"{manifest}: names {len(found)} files, more than {MAX_STACK_FILES} (the limit for a "
            "pulled stack)"
        )
    return list(found.values())


def _drop(path: Path) -> None:
    """Remove a file that failed verification from the cache (its link and its blob), so
    nothing unverified stays where a later offline pull would find it."""
    try:
        blob = path.resolve()
        path.unlink(missing_ok=True)
        if blob != path and blob.parent.name == "blobs":
            blob.unlink(missing_ok=True)
    except OSError as exc:
        logger.warning("could not remove %s: %s", path, exc)


def _cached_as_missing(ref: HubFile) -> bool:
    """True when the Hub said ``ref`` does not exist (huggingface_hub remembers that in its
    cache, so the answer holds offline too); False when it is merely not cached."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(ref.repo_id, ref.filename, revision=ref.revision or "main")
    return found is not None and not isinstance(found, str)


def _download_manifest(repo: HubRepo, local_only: bool) -> Path:
    """The repository's stack.toml; errors say what a stack repository is, or that the stack
    is neither in the store nor in the cache while offline."""
    from huggingface_hub import constants

    ref = HubFile(repo.repo_id, MANIFEST, repo.revision)
    try:
        found = _download(ref, uncached_ok=True, local_only=local_only)
    except _NotOnHub:
        found, missing = None, True
    else:
        missing = found is None and _cached_as_missing(ref)
    if found is not None:
        return found
    if not missing:
        why = (
            "HF_HUB_OFFLINE=1 is set"
            if constants.is_offline_mode()
            else "the Hub cannot be reached"
        )
        raise HubError(
            f"stack {repo} is neither in the store nor in the Hugging Face cache "
            f"({hf_cache_dir()}), and {why}; connect to the network and pull again "
            "(edgestack list shows the stacks you have)"
        )
    raise StoreError(
        f"Hub repository {repo.repo_id} (revision {repo.revision or 'main'}) has no "
        f"{MANIFEST}, so it is not an edgestack stack: a stack repository holds "
        f"{MANIFEST} and the files it names (edgestack package makes one); to convert a "
        "model repository, use edgestack convert"
    )


def pull_stack(
    text: str, *, trust_unpinned: bool = False, report: Report | None = None
) -> PullResult:
    """Fetch the stack ``owner/name[@revision]`` and register it in the store under that name."""
    say = report or (lambda line: logger.info("%s", line))
    repo: HubRepo = _parse_repo(text, "edgestack pull")
    name = str(repo)
    if name in bundled_stacks():  # cannot happen ('/' in every Hub id); kept for clarity
        raise StoreError(f"{name} is the name of a bundled stack")
    local_only = not _hub_reachable(repo)
    manifest = _download_manifest(repo, local_only)
    commit = manifest.parent.name
    say(f"pulling {name} (commit {commit[:12]})")
    try:
        data = read_toml(manifest, "manifest")
    except ManifestError as exc:
        raise StoreError(f"{name}: its {MANIFEST} is not a valid manifest: {exc}") from None
    needed = _needed_files(data, repo.repo_id, commit, manifest)
    unpinned = [n for n in needed if n.pin is None and n.pinnable]
    if unpinned and not trust_unpinned:
        first = unpinned[0]
        more = f" and {len(unpinned) - 1} more" if len(unpinned) > 1 else ""
        raise StoreError(
            f"{name}: {first.where}: {first.value} has no sha256 pin{more}, so what is "
            "downloaded could not be verified; ask the stack's owner to pin every model and "
            "adapter (edgestack package writes the pins), or pass --trust-unpinned"
        )
    files: list[StoredFile] = [StoredFile(MANIFEST, str(manifest), manifest.stat().st_size)]
    for item in needed:
        try:
            local = _download(item.ref, local_only=local_only)
        except _NotOnHub:
            raise HubError(
                f"{item.where}: Hub repository {item.ref.repo_id} has no file "
                f"{item.ref.filename} at {item.ref.revision or 'main'}; the stack is "
                "incomplete: tell its owner, or pull another revision"
            ) from None
        assert local is not None
        size = local.stat().st_size
        if item.pin is not None:
            digest = file_sha256(local)
            if digest != item.pin:
                _drop(local)
                raise ChecksumMismatch(
                    f"{item.where}: {item.ref} has sha256 {digest} but {MANIFEST} pins "
                    f"{item.pin}; the stack was not pulled (the file was removed from the "
                    "cache): tell the stack's owner, or pull another revision"
                )
        verdict = "sha256 ok" if item.pin else "not pinned"
        say(f"  {item.value}  {format_bytes(size)}  {verdict}")
        files.append(StoredFile(item.value, str(local), size, item.pin))
    for extra in COMPANION_FILES:
        try:
            local = _download(
                HubFile(repo.repo_id, extra, commit), uncached_ok=True, local_only=local_only
            )
        except _NotOnHub:
            local = None
        if local is not None:
            files.append(StoredFile(extra, str(local), local.stat().st_size))
            say(f"  {extra}  {format_bytes(local.stat().st_size)}")
    spec = load_manifest(manifest)  # the whole manifest, now that every file is here
    write_entry(
        name=name,
        repo=repo.repo_id,
        revision=repo.revision,
        commit=commit,
        manifest=manifest,
        files=files,
    )
    result = PullResult(
        name, repo.repo_id, commit, manifest, tuple(files), tuple(n.value for n in unpinned)
    )
    say(
        f"pulled {name}: stack {spec.name!r}, {len(spec.stages)} stages, "
        f"{format_bytes(result.size_bytes)}"
    )
    return result
