"""The data folder's own files: folders made private, files read only when regular and bounded.

The data folder (``EDGESTACK_HOME``, README "Environment variables") holds caches edgestack
made itself: the prompt cache, the kernel verdict, the sha256 cache, the store's index, chat
history, the run log. It is trusted as the user's home is (anyone who can write there as the
user can change anything the user runs), so its checks guard against damage, not deliberate
edits. Damage here must never hang or crash a command:

- :func:`private_folder` creates the data folder and its subfolders as ``0700`` (owner only),
  as the XDG base directory specification asks for data folders; folders that already exist
  are left as they are.
- :func:`read_regular` reads a file only when it is a regular file (``os.stat`` before opening,
  and ``fstat`` on the opened descriptor, opened with ``O_NONBLOCK``: a FIFO or a device at that
  name is refused instead of blocking the process forever), at most ``limit`` bytes.
  What it refuses raises :class:`UnusableFile`, an ``OSError``, so callers that already treat
  an unreadable cache as absent need no new branch.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from ._env import settings

__all__ = ["FOLDER_MODE", "UnusableFile", "is_regular_or_missing", "private_folder", "read_regular"]

#: the mode of every folder edgestack creates in its data folder (owner only)
FOLDER_MODE = 0o700

_KINDS = (
    (stat.S_ISDIR, "a folder"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


class UnusableFile(OSError):
    """A data-folder file that is not a regular file, is too large, or changed while read."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"{path} is {reason}")
        self.path = path
        #: what is wrong, without the path ("a FIFO, not a regular file", ...)
        self.reason = reason


def _kind(mode: int) -> str:
    for test, kind in _KINDS:
        if test(mode):
            return kind
    return "not a regular file"


def private_folder(folder: Path) -> Path:
    """Create ``folder`` (and its missing parents); those inside the data folder, the data
    folder included, are created ``0700``. Returns ``folder``."""
    data = settings().data_dir.absolute()
    missing: list[Path] = []
    here = folder.absolute()
    while not here.exists() and here != here.parent:
        missing.append(here)
        here = here.parent
    for level in reversed(missing):
        private = level == data or level.is_relative_to(data)
        try:
            if private:
                level.mkdir(mode=FOLDER_MODE)
            else:
                level.mkdir()
        except FileExistsError:
            pass  # another process made it meanwhile
    if not folder.is_dir():
        raise NotADirectoryError(f"{folder} is not a folder; move it away")
    return folder


def is_regular_or_missing(path: Path) -> bool:
    """True when ``path`` is a regular file (symbolic links followed) or does not exist."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except FileNotFoundError:
        return True
    except OSError:
        return False


def read_regular(path: Path, limit: int) -> bytearray:
    """The whole of ``path``, a regular file of at most ``limit`` bytes.

    Raises FileNotFoundError when it is missing, :class:`UnusableFile` when it is something
    else than a regular file (checked before opening, and again on the opened descriptor), is
    larger than ``limit`` or changed size while being read, and OSError when it cannot be read.
    """
    st = os.stat(path)
    if not stat.S_ISREG(st.st_mode):
        raise UnusableFile(path, f"{_kind(st.st_mode)}, not a regular file")
    # O_NONBLOCK: a FIFO swapped in after the stat opens at once instead of waiting for a writer.
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(path, flags)
    with os.fdopen(fd, "rb", buffering=0) as fh:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise UnusableFile(path, f"{_kind(st.st_mode)}, not a regular file")
        if st.st_size > limit:
            raise UnusableFile(path, f"{st.st_size} bytes, more than the limit of {limit}")
        data = bytearray(st.st_size)
        view = memoryview(data)
        done = 0
        while done < len(data):
            n = fh.readinto(view[done:])
            if not n:
                break
            done += n
        view.release()
        if done != len(data) or fh.read(1):
            raise UnusableFile(path, "being written (its size changed while it was read)")
    return data
