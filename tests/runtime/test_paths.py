"""Which stack a command uses."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_stack.errors import BadArgument, ModelFileNotFound
from edge_stack.util._env import settings
from edge_stack.util._paths import find_stack


def test_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    a = tmp_path / "a"
    b = tmp_path / "b"
    for d in (a, b):
        d.mkdir()
        (d / "stack.toml").write_text("version = 1\n")
    monkeypatch.setenv("EDGESTACK_STACK", str(b))
    settings.cache_clear()
    assert find_stack(a) == a / "stack.toml"  # --stack wins
    assert find_stack(a / "stack.toml") == a / "stack.toml"
    assert find_stack() == b / "stack.toml"  # then the environment


def test_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ModelFileNotFound, match="from --stack"):
        find_stack(tmp_path / "nope")
    monkeypatch.setenv("EDGESTACK_STACK", str(tmp_path / "gone.toml"))
    settings.cache_clear()
    with pytest.raises(ModelFileNotFound, match="EDGESTACK_STACK"):
        find_stack()


def test_bundled_default_or_clear_error() -> None:
    from edge_stack.util._paths import bundled_stack

    bundled = bundled_stack()
    if bundled is None:
        with pytest.raises(ModelFileNotFound, match="--stack"):
            find_stack()
    else:
        assert find_stack() == bundled and bundled.name == "stack.toml"


# --- bad paths: one-line errors from the one shared check ---------------------------------


def _bad_path(tmp_path: Path, kind: str) -> str:
    """A path of the given kind under ``tmp_path``."""
    import os
    import socket

    if kind == "nul":
        return str(tmp_path / "a\0b")
    if kind == "loop":
        os.symlink(tmp_path / "loop", tmp_path / "loop")
        return str(tmp_path / "loop")
    if kind == "folder":
        (tmp_path / "dir" / "stack.toml").mkdir(parents=True)
        return str(tmp_path / "dir")
    if kind == "fifo":
        os.mkfifo(tmp_path / "fifo")
        return str(tmp_path / "fifo")
    if kind == "socket":
        sock = socket.socket(socket.AF_UNIX)
        sock.bind(str(tmp_path / "sock"))
        sock.close()
        return str(tmp_path / "sock")
    if kind == "device":
        return "/dev/zero"
    if kind == "missing":
        return str(tmp_path / "missing" / "file")
    if kind == "under a file":
        (tmp_path / "plain").write_text("x")
        return str(tmp_path / "plain" / "stack.toml")
    raise AssertionError(kind)


BAD_PATHS = [
    ("nul", BadArgument, "has a NUL byte at character"),
    ("loop", BadArgument, "is a symlink loop"),
    ("folder", BadArgument, "is a folder, not a regular file"),
    ("fifo", BadArgument, r"is a FIFO \(named pipe\), not a regular file"),
    ("socket", BadArgument, "is a socket, not a regular file"),
    ("device", BadArgument, "is a character device, not a regular file"),
    ("missing", ModelFileNotFound, "does not exist"),
    ("under a file", ModelFileNotFound, "does not exist"),
]


@pytest.mark.parametrize(("kind", "error", "match"), BAD_PATHS)
def test_checked_file_refuses(
    tmp_path: Path, kind: str, error: type[Exception], match: str
) -> None:
    from edge_stack.util._paths import checked_file

    path = _bad_path(tmp_path, kind)
    with pytest.raises(error, match=match) as info:
        checked_file(path, "batch file", "--batch", hint="give a text file")
    message = str(info.value)
    assert "\n" not in message and "(from --batch)" in message
    assert message.startswith("batch file ")
    if kind not in ("nul", "loop"):  # those say what to fix in the path itself
        assert message.endswith("; give a text file")


@pytest.mark.parametrize(("kind", "error", "match"), BAD_PATHS)
def test_find_stack_refuses(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str, error: type[Exception], match: str
) -> None:
    path = _bad_path(tmp_path, kind)
    if kind == "folder":  # a stack folder is fine; its stack.toml must be a file
        match = "stack.toml .*is a folder"
    with pytest.raises(error, match=match) as info:
        find_stack(path)
    assert "\n" not in str(info.value) and "(from --stack)" in str(info.value)
    monkeypatch.setenv("EDGESTACK_STACK", path.replace("\0", ""))
    settings.cache_clear()
    if kind != "nul":  # the environment cannot hold a NUL byte
        with pytest.raises(error, match=match):
            find_stack()


def test_checked_file_follows_good_symlinks(tmp_path: Path) -> None:
    from edge_stack.util._paths import checked_file

    (tmp_path / "real.txt").write_text("q\n")
    (tmp_path / "link.txt").symlink_to(tmp_path / "real.txt")
    assert checked_file(tmp_path / "link.txt", "batch file", "--batch") == tmp_path / "link.txt"
