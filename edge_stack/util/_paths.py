"""Paths from users, checked in one place; and which stack a command uses (``--stack``, then
EDGESTACK_STACK, then the bundled default), named by a path or by a name.

A stack is named the same way everywhere (every command's ``--stack``, ``show``, ``rm``,
``package``, ``serve``, ``Stack.load``): an existing stack.toml or a folder holding one; else
the name of a bundled stack (``word-problems``); else the name of a stack pulled into the store
(``owner/name`` or ``owner/name@revision``, see ``edge_stack.store``). The store's index is one
JSON file per pulled stack in ``<data folder>/stacks/``; this module reads it (to find the
stack.toml), ``edge_stack.store`` writes it.

:func:`checked_file` turns every way a path can fail to be a readable file (a NUL byte, a symlink
loop, a folder, a FIFO or device, missing, no permission) into a one-line error naming the path
and where it came from, before anything opens it: a FIFO would block a reader forever and a
device such as /dev/zero never ends.
"""

from __future__ import annotations

import errno
import json
import os
import stat
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import quote

from ..errors import BadArgument, ModelFileNotFound, StoreError
from ._env import settings
from ._hubref import snapshot_repo_folder

DEFAULT_STACK = "word-problems"


def bundled_stack() -> Path | None:
    """The stack.toml of the default stack shipped inside the package, if it is there."""
    try:
        root = resources.files("edge_stack.models")
    except ModuleNotFoundError:
        return None
    candidate = root / DEFAULT_STACK / "stack.toml"
    # Installed packages are plain folders (setuptools, no zip), so the path is a real file.
    if not candidate.is_file():
        return None
    return Path(str(candidate))


def find_stack(explicit: str | Path | None = None) -> Path:
    """The stack.toml to use (not validated yet): ``explicit`` (``--stack``), else
    EDGESTACK_STACK, else the bundled default; each a path or a name (:func:`resolve_stack`)."""
    for given, source in ((explicit, "--stack"), (settings().stack, "EDGESTACK_STACK")):
        if given is None:
            continue
        return resolve_stack(given, source)
    bundled = bundled_stack()
    if bundled is None:
        raise ModelFileNotFound(
            f"no stack given and the bundled default stack ({DEFAULT_STACK}) is not installed; "
            "pass --stack NAME_OR_PATH or set EDGESTACK_STACK (edgestack list shows the names)"
        )
    return bundled


# --- the store's index (written by edge_stack.store) --------------------------------------------

#: folder of the data folder that holds the store's index (one JSON file per pulled stack)
STORE_FOLDER = "stacks"
#: version of an index entry's layout
ENTRY_FORMAT = 1
#: the largest index entry read (a stack names a few dozen files)
MAX_ENTRY_BYTES = 1 << 20
#: keys every index entry has, and their JSON types
ENTRY_KEYS: dict[str, type | tuple[type, ...]] = {
    "format": int,
    "name": str,
    "source": str,
    "repo": str,
    "revision": (str, type(None)),
    "commit": str,
    "manifest": str,
    "pulled": (int, float),
    "files": list,
}


def store_dir() -> Path:
    """The folder of the store's index."""
    return settings().data_dir / STORE_FOLDER


def entry_path(name: str) -> Path:
    """The index file of the pulled stack ``name`` (``owner/name[@revision]``)."""
    return store_dir() / (quote(name, safe="@-_.") + ".json")


def read_entry(path: Path) -> dict[str, Any]:
    """An index entry, checked: StoreError naming the file and the fix when it is damaged."""
    name = path.stem
    fix = "remove it with `edgestack rm NAME` (or delete the file) and pull the stack again"
    from ._datafile import UnusableFile, read_regular

    try:
        # A regular file only (a FIFO would block), of at most MAX_ENTRY_BYTES.
        raw = bytes(read_regular(path, MAX_ENTRY_BYTES))
    except UnusableFile as exc:
        raise StoreError(f"store entry is damaged ({exc}); {fix}") from None
    except OSError as exc:
        raise StoreError(
            f"store entry {path} cannot be read ({exc.strerror or exc}); check its permissions"
        ) from None
    try:
        data = json.loads(raw.decode("utf-8"))
    except RecursionError:
        data = None
    except ValueError as exc:
        raise StoreError(
            f"store entry {path} is damaged (not JSON: {type(exc).__name__} at byte "
            f"{getattr(exc, 'pos', '?')}); {fix}"
        ) from None
    if not isinstance(data, dict):
        raise StoreError(f"store entry {path} is damaged (not a JSON object); {fix}")
    for key, kind in ENTRY_KEYS.items():
        value = data.get(key)
        if not isinstance(value, kind) or isinstance(value, bool):
            raise StoreError(
                f"store entry {path} is damaged (key '{key}' is missing or malformed); {fix}"
            )
    if data["format"] != ENTRY_FORMAT:
        raise StoreError(
            f"store entry {path} has format {data['format']}, this edgestack reads "
            f"{ENTRY_FORMAT}; pull the stack again with this version"
        )
    if entry_path(data["name"]) != path:
        raise StoreError(
            f"store entry {path} is damaged (it names the stack {data['name']!r}, not "
            f"{name!r}); {fix}"
        )
    return data


def stored_stack(name: str, source: str) -> Path | None:
    """The stack.toml of the pulled stack ``name``; None if the store has no such entry."""
    path = entry_path(name)
    if not path.is_file():
        return None
    entry = read_entry(path)
    manifest = Path(entry["manifest"])
    if not manifest.is_file():
        raise StoreError(
            f"stack {name} (from {source}): its store entry {path} points at {manifest}, which "
            f"is gone (the Hugging Face cache was moved or cleaned); run `edgestack pull {name}` "
            f"again, or `edgestack rm {name}`"
        )
    return manifest


def stored_names() -> list[str]:
    """The names of every pulled stack in the store (damaged entries included), sorted."""
    from urllib.parse import unquote

    folder = store_dir()
    if not folder.is_dir():
        return []
    return sorted(unquote(p.stem) for p in folder.glob("*.json") if p.is_file())


def _looks_like_path(text: str) -> bool:
    """True when ``text`` can only be meant as a path (never a stack's name)."""
    return (
        text.startswith(("./", "../", "/", "~"))
        or text in {".", ".."}
        or text.endswith(".toml")
        or text.count("/") > 1
        or "\\" in text
    )


def resolve_stack(given: str | os.PathLike[str], source: str) -> Path:
    """The stack.toml that ``given`` names: a path (a stack.toml, or a folder holding one),
    else a bundled stack's name, else a pulled stack's name; ``source`` says where ``given``
    came from (``--stack``, ``EDGESTACK_STACK``, ``Stack.load``) for the error message."""
    text = os.fspath(given)
    if not isinstance(text, str):
        text = os.fsdecode(text)
    p = checked_path(text, "stack", source)
    status = _stat(p, "stack", source)
    if status is not None and (
        not stat.S_ISDIR(status.st_mode) or _stat(p / "stack.toml", "stack", source)
    ):
        return stack_file(p, source)
    if _looks_like_path(text):
        return stack_file(p, source)  # a path, and nothing else: "does not exist" and the like
    bundled = bundled_stacks()
    if text in bundled:
        return bundled[text]
    if "/" in text:
        found = stored_stack(text, source)
        if found is not None:
            return found
    if status is not None:  # a folder without stack.toml, and no stack of that name
        return stack_file(p, source)
    names = ", ".join([*bundled_stacks(), *stored_names()]) or "none"
    hint = (
        f"run `edgestack pull {text}` to fetch it from the Hugging Face Hub"
        if text.count("/") == 1
        else "pass a stack.toml, a folder holding one, or a stack's name"
    )
    raise ModelFileNotFound(
        f"stack {text!r} (from {source}) is neither a stack.toml or folder nor the name of a "
        f"stack you have (names: {names}); {hint} (edgestack list shows the names)"
    )


NUL = "\0"
_KINDS = (
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def checked_path(path: str | os.PathLike[str], what: str, source: str) -> Path:
    """``path`` as a Path, refusing a NUL byte (no system call can take it)."""
    text = os.fspath(path)
    if not isinstance(text, str):
        text = os.fsdecode(text)
    if NUL in text:
        raise BadArgument(
            f"{what} path (from {source}) has a NUL byte at character {text.index(NUL)}; "
            "pass the path without it"
        )
    return Path(text).expanduser()


def _stat(path: Path, what: str, source: str) -> os.stat_result | None:
    """``path``'s status through symlinks; None when there is nothing there."""
    try:
        return path.stat()
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise BadArgument(
                f"{what} {path} (from {source}) is a symlink loop (too many levels of symbolic "
                "links); point the link at a real file"
            ) from None
        raise BadArgument(
            f"cannot read {what} {path} (from {source}): {exc.strerror or exc}; check the path "
            "and its permissions"
        ) from None


def checked_file(
    path: str | os.PathLike[str], what: str, source: str, *, hint: str = "name a regular file"
) -> Path:
    """``path`` if it names an existing regular file (after symlinks), else a one-line error.

    ``what`` names the file in the message ("batch file"), ``source`` where the path came from
    ("--batch"), ``hint`` what to do instead. Missing: ModelFileNotFound; anything else wrong
    (NUL byte, symlink loop, folder, FIFO, device, socket, no permission): BadArgument.
    """
    p = checked_path(path, what, source)
    status = _stat(p, what, source)
    if status is None:
        raise ModelFileNotFound(f"{what} {p} (from {source}) does not exist; {hint}")
    _require_regular(p, status, what, source, hint)
    return p


def _require_regular(path: Path, status: os.stat_result, what: str, source: str, hint: str) -> None:
    kind = "a folder" if stat.S_ISDIR(status.st_mode) else None
    for test, name in _KINDS:
        if test(status.st_mode):
            kind = name
    if kind is not None:
        raise BadArgument(f"{what} {path} (from {source}) is {kind}, not a regular file; {hint}")


def stack_file(path: str | os.PathLike[str], source: str) -> Path:
    """The stack.toml that ``path`` names (itself, or the one in that folder), resolved."""
    hint = "pass a stack.toml or a folder that holds one"
    p = checked_path(path, "stack", source)
    status = _stat(p, "stack", source)
    if status is not None and stat.S_ISDIR(status.st_mode):
        p = p / "stack.toml"
        status = _stat(p, "stack", source)
    if status is None:
        raise ModelFileNotFound(f"stack {p} (from {source}) does not exist; {hint}")
    _require_regular(p, status, "stack", source, hint)
    return resolved_manifest(p)


def resolved_manifest(path: Path) -> Path:
    """``path`` with symbolic links resolved, except that a stack.toml in a snapshot of
    huggingface_hub's cache keeps its snapshot folder (the file itself links into ``blobs/``,
    where the stack's other files are not)."""
    folder = path.parent.resolve()
    if snapshot_repo_folder(folder) is not None:
        return folder / path.name
    return path.resolve()


def stack_label(path: Path) -> tuple[str, str]:
    """(kind, name) of the stack at ``path``: ("bundled", name), ("pulled", owner/name), or
    ("local", the path): bundled and pulled stacks are not the user's files to edit."""
    folder = path.parent
    for name, bundled in bundled_stacks().items():
        if bundled.parent.resolve() == folder.resolve():
            return "bundled", name
    repo = snapshot_repo_folder(folder.resolve())
    if repo is not None:
        parts = repo.name.split("--")
        return "pulled", "/".join(parts[1:3]) if len(parts) >= 3 else repo.name
    return "local", str(path)


def edit_hint(path: Path, what: str) -> str:
    """How a user changes ``what`` (e.g. "n_ctx") of the stack at ``path``: in its stack.toml
    when it is their own, else in a copy (bundled and pulled stacks are not theirs to edit)."""
    kind, name = stack_label(path)
    if kind == "local":
        return f"change {what} in {path}"
    return (
        f"to change {what}, copy the {kind} stack with `edgestack package {name} -o my-stack`, "
        "edit my-stack/stack.toml and use --stack ./my-stack"
    )


def bundled_stacks() -> dict[str, Path]:
    """Folder name -> stack.toml of every stack shipped inside the package."""
    try:
        root = resources.files("edge_stack.models")
    except ModuleNotFoundError:
        return {}
    found = {}
    for entry in root.iterdir():
        candidate = entry / "stack.toml"
        if candidate.is_file():
            found[entry.name] = Path(str(candidate))
    return dict(sorted(found.items()))
