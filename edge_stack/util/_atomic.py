"""Writing outputs so that nothing is ever half-written, overwritten by surprise, or left behind.

Every temporary file or folder edgestack creates is named by :func:`temp_name`:
``.NAME.edgestack-tmp-HOST-PID-RANDOM``, next to the output it becomes. A process killed with
SIGKILL cannot remove its own; the next run that writes into the same folder removes them (when
their owner is gone), and :func:`find_leftovers` / :func:`remove_leftovers` let
``edgestack doctor --fix`` do the same on request.

Outputs are only ever regular files: a device node, FIFO or socket at the output path (or a
symbolic link to one) is refused, with or without ``force``. A symbolic link to a regular file is
replaced by the output with ``force`` (the link itself, as ``mv`` does; its target is left alone).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import secrets
import shutil
import socket
import stat
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from ..errors import ModelFileNotFound, OutputExistsError
from ._units import format_bytes

__all__ = [
    "STALE_AFTER_S",
    "TEMP_MARK",
    "Leftover",
    "atomic_output",
    "check_output",
    "find_leftovers",
    "remove_leftovers",
    "temp_dir",
    "temp_file",
    "temp_name",
]

logger = logging.getLogger(__name__)

#: the mark in every temporary name edgestack creates
TEMP_MARK = "edgestack-tmp"
#: a temporary file whose owner cannot be checked (another host, an older edgestack) counts as
#: left behind only once it has not been written for this long (seconds): 24 hours
STALE_AFTER_S = 24 * 3600
# The output's name is kept in the temporary name for people reading `ls -a`, cut so that the
# whole name stays under the 255-byte limit of common file systems.
_NAME_CHARS = 120
_HOST_CHARS = 32
_CREATE_TRIES = 16
# /proc/stat gives the boot time in whole seconds, so a process start time is that coarse.
_CLOCK_SLACK_S = 2.0
_PID_MAX = 1 << 22  # Linux's largest pid_max

_TEMP_RE = re.compile(
    rf"^\.(?P<name>.+)\.{TEMP_MARK}-(?P<host>[A-Za-z0-9-]+)-(?P<pid>[0-9]+)-[0-9a-f]{{8}}$"
)
# What edgestack before the one naming scheme left: mkstemp names next to outputs (with the f32
# intermediate of `convert`), the sha256 cache's PID-named file, and build scratch folders.
_LEGACY_RES = (
    re.compile(r"^\..+\.[a-z0-9_]{8}(\.f32)?\.tmp$"),
    re.compile(r"^\.sha256-cache\.json\.[0-9]+\.tmp$"),
    re.compile(r"^\.edgestack-build-[a-z0-9_]{8}$"),
)

_FILE_KINDS = (
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISSOCK, "a socket"),
)


def _host_tag() -> str:
    tag = re.sub(r"[^A-Za-z0-9-]+", "-", socket.gethostname()).strip("-")[:_HOST_CHARS]
    return tag or "host"


_HOST = _host_tag()


def temp_name(name: str) -> str:
    """The hidden name of a new temporary file or folder for output ``name`` (in this process)."""
    return f".{name[:_NAME_CHARS]}.{TEMP_MARK}-{_HOST}-{os.getpid()}-{secrets.token_hex(4)}"


# --- outputs -----------------------------------------------------------------------------------


def _not_regular(path: Path) -> str | None:
    """What ``path`` is when it exists and is not a regular file (symbolic links followed)."""
    try:
        mode = path.stat().st_mode
    except OSError:
        return None
    for test, kind in _FILE_KINDS:
        if test(mode):
            return kind
    return None


def _check_target(path: Path, *, force: bool) -> None:
    if path.is_dir():
        raise OutputExistsError(
            f"output {path} is a folder; give a file path such as {path / 'model.gguf'}"
        )
    kind = _not_regular(path)
    if kind is not None:
        via = (
            f" (through the symbolic link {path} -> {os.readlink(path)})"
            if path.is_symlink()
            else ""
        )
        raise OutputExistsError(
            f"output {path} is {kind}{via}, not a regular file; edgestack writes only regular "
            "files and never replaces anything else, even with --force: give a file path"
        )
    if os.path.lexists(path) and not force:
        if path.is_symlink():
            raise OutputExistsError(
                f"output {path} is a symbolic link (to {os.readlink(path)}); pass --force to "
                "replace the link (its target is left as it is)"
            )
        raise OutputExistsError(f"output {path} already exists; pass --force to replace it")


def check_output(path: Path, *, force: bool) -> None:
    """Refuse early (before any work) an output path we would not write.

    Refused: a folder; a device node, FIFO or socket (or a link to one), even with ``force``;
    anything existing (a dangling symbolic link included) without ``force``; a missing folder.
    """
    _check_target(path, force=force)
    if not path.parent.is_dir():
        raise ModelFileNotFound(
            f"output folder {path.parent} does not exist; create it first (mkdir -p {path.parent})"
        )


def _umask() -> int:
    # /proc tells without changing it; os.umask() must set it to read it (racy with threads).
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _create(folder: Path, name: str, *, directory: bool) -> Path:
    _clean_folder(folder)
    for _ in range(_CREATE_TRIES):
        path = folder / temp_name(name)
        try:
            if directory:
                path.mkdir(mode=0o700)
            else:
                flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
                os.close(os.open(path, flags, 0o600))
        except FileExistsError:
            continue
        return path
    raise FileExistsError(
        f"could not create a temporary name for {name} in {folder} after {_CREATE_TRIES} tries; "
        f"check the folder for files named .{name}.{TEMP_MARK}-*"
    )


@contextlib.contextmanager
def temp_file(folder: str | os.PathLike[str], name: str) -> Iterator[Path]:
    """Yield a new empty temporary file in ``folder`` for output ``name``; remove it at the end."""
    tmp = _create(Path(folder), name, directory=False)
    try:
        yield tmp
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def temp_dir(folder: str | os.PathLike[str], name: str) -> Iterator[Path]:
    """Yield a new temporary folder in ``folder``; remove it and its contents at the end."""
    tmp = _create(Path(folder), name, directory=True)
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike[str], *, force: bool) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it to ``path`` only if the block succeeds.

    An exception (or Ctrl-C) inside the block removes the temporary file, so the output path
    either holds a complete file or is left as it was. See :func:`check_output` for what is
    refused (before the block and again before the rename).
    """
    target = Path(path)
    check_output(target, force=force)
    with temp_file(target.parent, target.name) as tmp:
        yield tmp
        # Checked again: something may have appeared at the target while we worked.
        try:
            _check_target(target, force=force)
        except OutputExistsError as exc:
            raise OutputExistsError(f"while writing: {exc}") from None
        # The temporary file is 0600; give the output the mode any new file would have.
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, target)


# --- leftovers ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Leftover:
    """A temporary file or folder edgestack created in some folder."""

    path: Path
    #: bytes (a folder: the files in it)
    size: int
    #: seconds since it was last written
    age_s: float
    #: "process 1234 on host", or "an older edgestack" for names without an owner
    owner: str
    #: True when no running process can own it any more (it is safe to remove)
    stale: bool
    #: why it is (or is not) stale, for people
    reason: str

    def __str__(self) -> str:
        return str(self.path)


def _process_start(pid: int) -> float | None:
    """When process ``pid`` started (epoch seconds), or None where /proc cannot tell."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        boot = next(
            float(line.split()[1])
            for line in Path("/proc/stat").read_text().splitlines()
            if line.startswith("btime ")
        )
        # fields[0] is field 3 of proc(5); starttime is field 22, in clock ticks since boot
        return boot + int(fields[19]) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError, StopIteration):
        return None


def _owner_verdict(host: str, pid: int, mtime: float, age: float) -> tuple[bool, str]:
    if host != _HOST:
        stale = age > STALE_AFTER_S
        hours = STALE_AFTER_S // 3600
        return stale, (
            f"written on another host and untouched for over {hours} h"
            if stale
            else f"written on another host less than {hours} h ago (its process cannot be checked)"
        )
    if pid == os.getpid():
        return False, "this process is using it"
    if not 0 < pid < _PID_MAX:
        return True, f"process {pid} cannot exist"
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True, f"process {pid} is gone"
    except PermissionError:
        pass  # another user's live process
    started = _process_start(pid)
    if started is not None and started > mtime + _CLOCK_SLACK_S:
        return True, f"process {pid} is gone (its PID now belongs to a newer process)"
    return False, f"process {pid} is running"


def _measure(path: Path, st: os.stat_result) -> tuple[int, float]:
    """Size and newest write time of a file, or of a folder and everything in it."""
    if not stat.S_ISDIR(st.st_mode):
        return st.st_size, st.st_mtime
    size, newest = 0, st.st_mtime
    for root, dirs, files in os.walk(path):
        for entry in dirs + files:
            with contextlib.suppress(OSError):
                est = os.lstat(os.path.join(root, entry))
                size += est.st_size if not stat.S_ISDIR(est.st_mode) else 0
                newest = max(newest, est.st_mtime)
    return size, newest


def find_leftovers(
    folder: str | os.PathLike[str], *, legacy: bool = False, include_live: bool = False
) -> list[Leftover]:
    """The stale temporary files and folders edgestack left in ``folder`` (not in subfolders).

    Stale means: its owner process on this host is gone (a PID reused by a newer process counts
    as gone), or it was written on another host and untouched for :data:`STALE_AFTER_S`. A file
    of a live process is never stale. ``legacy`` adds the names older edgestack versions used
    (they carry no owner, so only the age counts); ``include_live`` lists files in use too.
    Symbolic links are never listed: edgestack creates none.
    """
    base = Path(folder)
    now = time.time()
    found: list[Leftover] = []
    try:
        names = sorted(os.listdir(base))
    except (FileNotFoundError, NotADirectoryError):
        return []
    for name in names:
        match = _TEMP_RE.match(name)
        is_legacy = match is None and legacy and any(r.match(name) for r in _LEGACY_RES)
        if match is None and not is_legacy:
            continue
        path = base / name
        try:
            st = path.lstat()
        except FileNotFoundError:
            continue  # its owner finished meanwhile
        if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
            continue
        size, mtime = _measure(path, st)
        age = max(0.0, now - mtime)
        if match is not None:
            host, pid = match["host"], int(match["pid"])
            owner = f"process {pid} on {host}"
            stale, reason = _owner_verdict(host, pid, mtime, age)
        else:
            owner = "an older edgestack"
            stale = age > STALE_AFTER_S
            reason = f"{'over' if stale else 'less than'} {STALE_AFTER_S // 3600} h old"
        if stale or include_live:
            found.append(Leftover(path, size, age, owner, stale, reason))
    return found


def remove_leftovers(
    leftovers: str | os.PathLike[str] | Iterable[Leftover], *, legacy: bool = False
) -> list[Leftover]:
    """Remove the stale leftovers of a folder, or the stale ones of a :func:`find_leftovers`
    list; return those removed. ``legacy`` (for a folder) is as in :func:`find_leftovers`.

    Each removal is logged (INFO); one that fails is logged (WARNING) and skipped.
    """
    if isinstance(leftovers, (str, os.PathLike)):
        leftovers = find_leftovers(leftovers, legacy=legacy)
    removed: list[Leftover] = []
    for item in leftovers:
        if not item.stale:
            continue
        try:
            if item.path.is_dir() and not item.path.is_symlink():
                shutil.rmtree(item.path)
            else:
                item.path.unlink(missing_ok=True)
        except OSError as exc:
            logger.warning("could not remove the leftover temporary %s: %s", item.path, exc)
            continue
        logger.info(
            "removed %s (%s) left by %s: %s",
            item.path,
            format_bytes(item.size),
            item.owner,
            item.reason,
        )
        removed.append(item)
    return removed


def _clean_folder(folder: Path) -> None:
    """Remove what killed runs left in ``folder``; never fails the write that asked for it."""
    try:
        remove_leftovers(find_leftovers(folder))
    except OSError as exc:
        logger.debug("could not look for leftover temporary files in %s: %s", folder, exc)
