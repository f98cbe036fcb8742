"""Things at an output path that are not regular files, for the tests that must refuse them.

A test of ``--force`` never points at the real /dev/null when it could replace it: if the check
under test were broken, a root test run would turn the system's /dev/null into a GGUF file.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

DEV_NULL = Path("/dev/null")


def char_device(folder: Path, *, force: bool) -> Path:
    """/dev/null when nothing could replace it, else a copy of it (a new node) in ``folder``."""
    if not force:
        return DEV_NULL  # without --force even a broken check only says "already exists"
    path = folder / "null"
    try:
        os.mknod(path, stat.S_IFCHR | 0o666, os.makedev(1, 3))
    except PermissionError:
        if os.geteuid() == 0:
            pytest.skip("cannot create a device node, and root could replace /dev/null")
        return DEV_NULL  # /dev is not writable for this user: nothing can replace it
    return path


def fifo(folder: Path, name: str = "pipe") -> Path:
    path = folder / name
    os.mkfifo(path)
    return path


def link_to(target: Path, folder: Path, name: str = "link.gguf") -> Path:
    link = folder / name
    link.symlink_to(target)
    return link
