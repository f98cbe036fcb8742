"""Model and adapter folders named by a local path or by a Hugging Face Hub id.

``resolve_model_dir("./pythia-160m")`` returns that folder; ``resolve_model_dir("EleutherAI/pythia-160m")``
(optionally ``@revision``) fetches only the files the converter reads through huggingface_hub, into
huggingface_hub's own cache (``HF_HOME`` / ``HF_HUB_CACHE``), and returns the snapshot folder. With
``HF_HUB_OFFLINE=1``, or when the Hub cannot be reached, the snapshot comes from that cache;
huggingface_hub itself reads those variables, so this module never looks at the environment.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from edge_stack.errors import AdapterError, CheckpointError, HubError, ModelFileNotFound

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["ALLOW_PATTERNS", "HubSpec", "parse_hub_id", "resolve_model_dir"]

logger = logging.getLogger(__name__)

Kind = Literal["model", "adapter"]

#: the files each kind of folder needs; nothing else is downloaded
ALLOW_PATTERNS: dict[Kind, tuple[str, ...]] = {
    "model": (
        "config.json",
        "*.safetensors",
        "model.safetensors.index.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "generation_config.json",
        # transformers 5 keeps chat templates beside the tokenizer config
        "chat_template.jinja",
        "additional_chat_templates/*.jinja",
    ),
    "adapter": ("adapter_config.json", "adapter_model.safetensors"),
}

# The file that makes a folder a checkpoint of that kind: a snapshot without it is useless.
_REQUIRED: dict[Kind, str] = {"model": "config.json", "adapter": "adapter_config.json"}

# Hub naming rules (huggingface_hub's validate_repo_id): letters, digits, '-', '_', '.'; no
# '--' or '..'; a part neither starts nor ends with '-' or '.'; at most 96 characters in all.
_PART = r"[A-Za-z0-9_](?:[A-Za-z0-9._-]*[A-Za-z0-9_])?"
_REPO_ID = re.compile(rf"{_PART}/{_PART}")
_MAX_REPO_ID = 96

# A name ending like one of these is a file the user meant to point at, not a repository.
_FILE_SUFFIXES = frozenset(
    {".json", ".safetensors", ".gguf", ".bin", ".pt", ".pth", ".toml", ".txt", ".model", ".py"}
)


@dataclass(frozen=True)
class HubSpec:
    """A parsed Hub reference: ``owner/name`` and an optional revision (branch, tag or commit)."""

    repo_id: str
    revision: str | None = None

    def __str__(self) -> str:
        return f"{self.repo_id}@{self.revision}" if self.revision else self.repo_id


def _what(kind: Kind) -> str:
    return "adapter folder" if kind == "adapter" else "checkpoint folder"


def _looks_like_path(text: str) -> bool:
    """True when ``text`` can only mean a local path (so it is never sent to the Hub)."""
    if text.startswith(("./", "../", "/", "~")) or text in {".", ".."}:
        return True
    if "\\" in text or (os.altsep and os.altsep in text):
        return True
    repo = text.split("@", 1)[0]
    if repo.count("/") != 1:
        return True
    return Path(repo).suffix.lower() in _FILE_SUFFIXES


def parse_hub_id(text: str) -> HubSpec:
    """Split ``owner/name[@revision]``; :class:`HubError` when it is not a valid Hub id."""
    repo_id, sep, revision = text.partition("@")
    if sep and (not revision or any(c.isspace() for c in revision)):
        raise HubError(
            f"'{text}' has an empty or malformed revision after '@'; "
            "write owner/name@revision (a branch, tag or commit hash)"
        )
    if (
        len(repo_id) > _MAX_REPO_ID
        or not _REPO_ID.fullmatch(repo_id)
        or "--" in repo_id
        or ".." in repo_id
    ):
        raise HubError(
            f"'{text}' is neither an existing folder nor a valid Hub id: a Hub id is owner/name"
            "[@revision] made of letters, digits, '-', '_' and '.' (no '--' or '..', at most "
            f"{_MAX_REPO_ID} characters); check the spelling or pass a local folder"
        )
    return HubSpec(repo_id, revision or None)


def resolve_model_dir(spec: str | Path, *, kind: Kind = "model") -> Path:
    """The local folder for ``spec``: an existing folder as it is, or a Hub snapshot.

    ``spec`` is a folder (``./pythia-160m``, ``~/models/x``) or a Hub id (``owner/name`` or
    ``owner/name@revision``). For a Hub id, only the files ``kind`` needs are fetched (see
    :data:`ALLOW_PATTERNS`) into huggingface_hub's cache, showing its progress bar on a terminal;
    offline (``HF_HUB_OFFLINE=1``) or without network, the cached snapshot is used.

    Raises:
        ModelFileNotFound: ``spec`` is a path that does not exist.
        HubError: the id is invalid, unknown to the Hub, gated, or not cached while offline.
        CheckpointError / AdapterError: ``spec`` is a file where a folder is expected.
    """
    text = str(spec)
    local = Path(text).expanduser()
    if local.is_dir():
        return local.resolve()
    if local.exists():
        error = AdapterError if kind == "adapter" else CheckpointError
        raise error(
            f"{local} is a file, but a {_what(kind)} is expected (the folder that holds "
            f"{_REQUIRED[kind]}); pass its parent folder"
        )
    if isinstance(spec, Path) or _looks_like_path(text):
        raise ModelFileNotFound(
            f"{_what(kind)} {local.absolute()} does not exist; check the path "
            "(or give a Hub id as owner/name[@revision])"
        )
    hub = parse_hub_id(text)
    return _snapshot(hub, kind)


def _silent_progress_class() -> Any:
    """huggingface_hub's progress bar class, switched off (stderr is not a terminal)."""
    from huggingface_hub.utils import tqdm as hf_tqdm

    class _Silent(hf_tqdm):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs["disable"] = True
            super().__init__(*args, **kwargs)

    return _Silent


def _snapshot(hub: HubSpec, kind: Kind) -> Path:
    import huggingface_hub
    from huggingface_hub import constants

    kwargs: dict[str, Any] = {
        "repo_id": hub.repo_id,
        "revision": hub.revision,
        "allow_patterns": list(ALLOW_PATTERNS[kind]),
    }
    if not sys.stderr.isatty():
        kwargs["tqdm_class"] = _silent_progress_class()
    cache = Path(constants.HF_HUB_CACHE)
    try:
        folder = Path(huggingface_hub.snapshot_download(**kwargs))
    except Exception as exc:
        raise _hub_error(exc, hub, kind, cache) from exc
    _check_snapshot(folder, hub, kind)
    logger.info("using %s %s from snapshot %s", kind, hub, folder)
    return folder


def _hub_error(exc: Exception, hub: HubSpec, kind: Kind, cache: Path) -> Exception:
    """One clear line for whatever huggingface_hub raised."""
    from huggingface_hub import constants, errors

    revision = hub.revision or "main"
    ref = f"'{hub.repo_id}' (revision {revision})"
    # IncompleteSnapshotError only exists in newer huggingface_hub releases.
    incomplete: type[BaseException] | tuple[()] = getattr(errors, "IncompleteSnapshotError", ())
    if isinstance(exc, incomplete):
        return HubError(
            f"the cached snapshot of {ref} in {cache} is incomplete (an interrupted download?) "
            "and the Hub cannot be reached to finish it; connect once and run again, or pass a "
            "local folder"
        )
    if isinstance(exc, errors.LocalEntryNotFoundError):
        why = (
            "HF_HUB_OFFLINE=1 is set"
            if constants.is_offline_mode()
            else "the Hub could not be reached"
        )
        return HubError(
            f"no local folder '{hub}', and Hub {kind} {ref} is not in the Hugging Face cache "
            f"at {cache} while {why}; "
            f"connect once to download it, or run `hf download {hub.repo_id}` on a "
            "machine with network and copy its cache folder here, or pass a local folder"
        )
    if isinstance(exc, errors.GatedRepoError):
        return HubError(
            f"Hub repository '{hub.repo_id}' is gated: accept its terms on the Hub and log in "
            "(`hf auth login` or HF_TOKEN), or pass a local folder"
        )
    if isinstance(exc, errors.RepositoryNotFoundError):
        return HubError(
            f"no local folder '{hub}', and Hub repository '{hub.repo_id}' does not exist or is "
            "private; check the id or path, log in "
            "for a private one (`hf auth login` or HF_TOKEN), or pass a local folder"
        )
    if isinstance(exc, errors.RevisionNotFoundError):
        return HubError(
            f"Hub repository '{hub.repo_id}' has no revision '{revision}'; "
            "use an existing branch, tag or commit hash"
        )
    if isinstance(exc, errors.HfHubHTTPError):
        status = getattr(getattr(exc, "response", None), "status_code", None)
        return HubError(
            f"the Hub refused {ref} (HTTP {status or 'error'}: {_first_line(exc)}); "
            "try again later, or pass a local folder"
        )
    if isinstance(exc, errors.HFValidationError):
        return HubError(f"'{hub}' is not a valid Hub id: {_first_line(exc)}")
    if _is_transport_error(exc):
        # The connection broke after the download started (huggingface_hub retries, then
        # gives up): what it fetched stays in the cache, and the next run resumes from there.
        return HubError(
            f"the download of {ref} into {cache} broke off ({type(exc).__name__}: "
            f"{_first_line(exc)}); check the connection and run again to resume it, or pass a "
            "local folder"
        )
    if isinstance(exc, OSError):
        # Connection trouble huggingface_hub did not turn into a cache lookup, disk full, ...
        return HubError(
            f"could not fetch {ref} into {cache}: {type(exc).__name__}: {_first_line(exc)}"
        )
    return exc


def _is_transport_error(exc: BaseException) -> bool:
    """An error of the HTTP client's transport (httpx and its forks: a connection reset or cut
    mid-response), which is not an OSError."""
    return any(c.__name__ == "TransportError" for c in type(exc).__mro__)


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def _check_snapshot(folder: Path, hub: HubSpec, kind: Kind) -> None:
    """A snapshot must hold the files its kind is read from, or the error would come later."""
    required = _REQUIRED[kind]
    if not (folder / required).is_file():
        raise HubError(
            f"Hub repository '{hub}' has no {required} (snapshot {folder}); "
            + (
                "is it a PEFT LoRA adapter repository?"
                if kind == "adapter"
                else "is it a transformers model repository?"
            )
            + " If the cache holds only part of it, connect once to complete it"
        )
    weights: Sequence[Path]
    if kind == "adapter":
        weights = [folder / "adapter_model.safetensors"]
        missing = not weights[0].is_file()
    else:
        weights = list(folder.glob("*.safetensors"))
        missing = not weights
    if missing:
        raise HubError(
            f"Hub repository '{hub}' has no safetensors weights (snapshot {folder}); edgestack "
            "reads only .safetensors: load it with transformers/peft and save_pretrained() it "
            "(safetensors is the default), then pass that folder"
        )
