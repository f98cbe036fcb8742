"""Paths from users, checked in one place; and which stack a command uses (``--stack``, then
EDGESTACK_STACK, then the bundled default).

:func:`checked_file` turns every way a path can fail to be a readable file (a NUL byte, a symlink
loop, a folder, a FIFO or device, missing, no permission) into a one-line error naming the path
and where it came from, before anything opens it: a FIFO would block a reader forever and a
device such as /dev/zero never ends.
"""

from __future__ import annotations

import errno
import os
import stat
from importlib import resources
from pathlib import Path

from ..errors import BadArgument, ModelFileNotFound
from ._env import settings

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
    """The stack.toml to use (not validated yet).

    A folder means its stack.toml. The bundled default is used only when neither ``--stack``
    nor EDGESTACK_STACK is set.
    """
    for given, source in ((explicit, "--stack"), (settings().stack, "EDGESTACK_STACK")):
        if given is None:
            continue
        return stack_file(given, source)
    bundled = bundled_stack()
    if bundled is None:
        raise ModelFileNotFound(
            f"no stack given and the bundled default stack ({DEFAULT_STACK}) is not installed; "
            "pass --stack PATH/stack.toml or set EDGESTACK_STACK"
        )
    return bundled


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
    return p.resolve()


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
