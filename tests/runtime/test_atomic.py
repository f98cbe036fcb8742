"""Atomic outputs: all or nothing, no overwrite without force, ordinary file modes, regular files
only, and temporary files that a later run can tell apart from those still in use."""

from __future__ import annotations

import logging
import os
import re
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from output_nodes import char_device, fifo, link_to

from edge_stack.errors import ModelFileNotFound, OutputExistsError
from edge_stack.util import _atomic
from edge_stack.util._atomic import (
    STALE_AFTER_S,
    TEMP_MARK,
    atomic_output,
    find_leftovers,
    remove_leftovers,
    temp_dir,
    temp_file,
    temp_name,
)

_TEMP = re.compile(rf"^\.a\.bin\.{TEMP_MARK}-[A-Za-z0-9-]+-{os.getpid()}-[0-9a-f]{{8}}$")


def test_success_renames_with_normal_mode(tmp_path: Path) -> None:
    out = tmp_path / "a.bin"
    with atomic_output(out, force=False) as tmp:
        assert _TEMP.match(tmp.name), tmp.name  # the one recognizable temporary name
        tmp.write_bytes(b"data")
        assert not out.exists()
    assert out.read_bytes() == b"data"
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(out.stat().st_mode) == 0o666 & ~umask
    assert list(tmp_path.iterdir()) == [out]


def test_failure_leaves_nothing(tmp_path: Path) -> None:
    out = tmp_path / "a.bin"
    with pytest.raises(RuntimeError), atomic_output(out, force=False) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_existing_needs_force_and_failed_forced_write_keeps_it(tmp_path: Path) -> None:
    out = tmp_path / "a.bin"
    out.write_bytes(b"old")
    with pytest.raises(OutputExistsError, match="--force"), atomic_output(out, force=False):
        pass
    assert out.read_bytes() == b"old"
    with pytest.raises(RuntimeError), atomic_output(out, force=True) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("boom")
    assert out.read_bytes() == b"old"
    with atomic_output(out, force=True) as tmp:
        tmp.write_bytes(b"new")
    assert out.read_bytes() == b"new"
    assert list(tmp_path.iterdir()) == [out]


def test_missing_folder_and_folder_target(tmp_path: Path) -> None:
    with (
        pytest.raises(ModelFileNotFound, match="mkdir"),
        atomic_output(tmp_path / "no" / "a.bin", force=False),
    ):
        pass
    with pytest.raises(OutputExistsError, match="folder"), atomic_output(tmp_path, force=True):
        pass


def test_temp_file_and_dir_are_removed(tmp_path: Path) -> None:
    with temp_file(tmp_path, "m.gguf.f32") as f, temp_dir(tmp_path, "build") as d:
        assert f.name.startswith(f".m.gguf.f32.{TEMP_MARK}-") and f.is_file()
        assert d.name.startswith(f".build.{TEMP_MARK}-") and d.is_dir()
        (d / "inside.gguf").write_bytes(b"x")
    assert list(tmp_path.iterdir()) == []


# --- outputs that are not regular files --------------------------------------------------------


def _socket(folder: Path, _force: bool) -> Path:
    # AF_UNIX paths are limited to ~100 bytes: pytest's tmp_path may be longer, so bind by name
    # from inside the folder.
    sock = socket.socket(socket.AF_UNIX)
    cwd = os.getcwd()
    os.chdir(folder)
    try:
        sock.bind("sock")
    finally:
        os.chdir(cwd)
    sock.close()
    return folder / "sock"


# kind -> (make(folder, force), what the error calls it)
NOT_REGULAR: dict[str, tuple[Callable[[Path, bool], Path], str]] = {
    "char device": (lambda d, force: char_device(d, force=force), "character device"),
    "fifo": (lambda d, _: fifo(d), "FIFO"),
    "socket": (_socket, "socket"),
    "link to device": (
        lambda d, force: link_to(char_device(d, force=force), d),
        "character device",
    ),
    "link to fifo": (lambda d, _: link_to(fifo(d), d), "FIFO"),
}


@pytest.mark.parametrize("force", [False, True])
@pytest.mark.parametrize("kind", list(NOT_REGULAR))
def test_outputs_are_only_regular_files(tmp_path: Path, kind: str, force: bool) -> None:
    make, said = NOT_REGULAR[kind]
    out = make(tmp_path, force)
    before = os.lstat(out)
    with (
        pytest.raises(OutputExistsError, match=f"is a {said}.*not a regular file") as info,
        atomic_output(out, force=force),
    ):
        pytest.fail("the block must not run")
    assert "\n" not in str(info.value)
    after = os.lstat(out)
    assert (after.st_mode, after.st_ino, after.st_rdev) == (
        before.st_mode,
        before.st_ino,
        before.st_rdev,
    )
    assert not [p for p in tmp_path.iterdir() if TEMP_MARK in p.name]


def test_symlink_output_replaces_the_link_not_its_target(tmp_path: Path) -> None:
    real = tmp_path / "real.gguf"
    real.write_bytes(b"target")
    link = tmp_path / "link.gguf"
    link.symlink_to(real)
    with (
        pytest.raises(OutputExistsError, match=r"symbolic link.*--force"),
        atomic_output(link, force=False),
    ):
        pass
    with atomic_output(link, force=True) as tmp:
        tmp.write_bytes(b"new")
    assert not link.is_symlink() and link.read_bytes() == b"new"
    assert real.read_bytes() == b"target"


def test_output_turned_into_fifo_while_writing_is_not_replaced(tmp_path: Path) -> None:
    out = tmp_path / "a.bin"
    with pytest.raises(OutputExistsError, match="FIFO"), atomic_output(out, force=True) as tmp:
        tmp.write_bytes(b"data")
        os.mkfifo(out)
    assert stat.S_ISFIFO(os.lstat(out).st_mode)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin"]


# --- leftovers ---------------------------------------------------------------------------------


@pytest.fixture
def live_pid() -> Iterator[int]:
    """A process that is running for the whole test (another edgestack, as far as files go)."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        yield child.pid
    finally:
        child.kill()
        child.wait()


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def _host() -> str:
    return temp_name("x").split(f"{TEMP_MARK}-")[1].rsplit("-", 2)[0]


HOURS = 3600.0

# case -> (owner: "dead" / "live" / "self" / "other-host", seconds since written, stale?)
LEFTOVERS: dict[str, tuple[str, float, bool]] = {
    "owner gone": ("dead", 0.0, True),
    "owner gone, old": ("dead", 48 * HOURS, True),
    "owner running": ("live", 0.0, False),
    "owner running, old file": ("live", 48 * HOURS, True),  # pid reused by a newer process
    "this process": ("self", 48 * HOURS, False),
    "other host, recent": ("other-host", 1 * HOURS, False),
    "other host, old": ("other-host", STALE_AFTER_S + HOURS, True),
}


@pytest.mark.parametrize("directory", [False, True])
@pytest.mark.parametrize("case", list(LEFTOVERS))
def test_leftovers_removed_by_next_write_only_when_stale(
    tmp_path: Path,
    live_pid: int,
    case: str,
    directory: bool,
    caplog: pytest.LogCaptureFixture,
) -> None:
    owner, age, stale = LEFTOVERS[case]
    pid = {"dead": _dead_pid(), "live": live_pid, "self": os.getpid(), "other-host": live_pid}
    host = "some-other-host" if owner == "other-host" else _host()
    junk = tmp_path / f".m.gguf.{TEMP_MARK}-{host}-{pid[owner]}-0123abcd"
    if directory:
        junk.mkdir()
        (junk / "part.gguf").write_bytes(b"x" * 1000)
        os.utime(junk / "part.gguf", (time.time() - age,) * 2)
    else:
        junk.write_bytes(b"x" * 1000)
    os.utime(junk, (time.time() - age,) * 2)
    unrelated = tmp_path / ".m.gguf.tmp"  # not edgestack's: never touched
    unrelated.write_bytes(b"keep")

    found = find_leftovers(tmp_path)
    assert [f.path for f in found] == ([junk] if stale else [])
    if stale:
        assert found[0].size == 1000 and found[0].stale and found[0].reason
    [listed] = find_leftovers(tmp_path, include_live=True)
    assert listed.path == junk and listed.stale == stale

    caplog.set_level(logging.INFO, logger="edge_stack.util._atomic")
    with atomic_output(tmp_path / "other.gguf", force=False) as tmp:
        tmp.write_bytes(b"out")
    assert junk.exists() != stale
    assert unrelated.read_bytes() == b"keep"
    assert (str(junk) in caplog.text) == stale


def test_legacy_names_only_on_request_and_only_when_old(tmp_path: Path) -> None:
    old, new = tmp_path / ".m.gguf.ab_12xyz.f32.tmp", tmp_path / ".m.gguf.cd34efgh.tmp"
    for path, age in ((old, 48 * HOURS), (new, 0.0)):
        path.write_bytes(b"x")
        os.utime(path, (time.time() - age,) * 2)
    assert find_leftovers(tmp_path) == [] and remove_leftovers(tmp_path) == []
    assert [str(f) for f in find_leftovers(tmp_path, legacy=True)] == [str(old)]
    assert [f.path for f in remove_leftovers(tmp_path, legacy=True)] == [old]
    assert sorted(tmp_path.iterdir()) == [new]


def test_remove_leftovers_takes_a_list_and_skips_live_ones(tmp_path: Path, live_pid: int) -> None:
    dead = tmp_path / temp_name("a.gguf").replace(f"-{os.getpid()}-", f"-{_dead_pid()}-")
    live = tmp_path / temp_name("b.gguf").replace(f"-{os.getpid()}-", f"-{live_pid}-")
    for path in (dead, live):
        path.write_bytes(b"x")
    found = find_leftovers(tmp_path, include_live=True)
    assert {f.path: f.stale for f in found} == {dead: True, live: False}
    assert [f.path for f in remove_leftovers(found)] == [dead]
    assert list(tmp_path.iterdir()) == [live]


# --- the owner verdict at its boundaries (issue 19: mutation testing) ---------------------------
# _owner_verdict is given the host, PID and times directly, and the process start time comes
# from a stand-in, so the limits (24 h, the PID range, the 2 s clock slack) are tested exactly.

_SLACK = _atomic._CLOCK_SLACK_S


# case -> (host ("this" / "other"), pid ("self" / "child" / a number), mtime offset of the
# process start in seconds (None: /proc cannot tell), age in s, (stale, reason pattern))
VERDICTS: dict[str, tuple[str, object, float | None, float, tuple[bool, str]]] = {
    "other host, 24 h exactly": (
        "other",
        "child",
        None,
        STALE_AFTER_S,
        (False, r"less than 24 h ago \(its process"),
    ),
    "other host, just over 24 h": (
        "other",
        "child",
        None,
        STALE_AFTER_S + 0.5,
        (
            True,
            r"^written on another host and "
            r"untouched for over 24 h$",
        ),
    ),
    "this process": (
        "this",
        "self",
        None,
        10 * STALE_AFTER_S,
        (False, "^this process is using it$"),
    ),
    "pid 0": ("this", 0, None, 0.0, (True, r"^process 0 cannot exist$")),
    "pid -1": ("this", -1, None, 0.0, (True, r"^process -1 cannot exist$")),
    "pid at the limit": ("this", _atomic._PID_MAX, None, 0.0, (True, "cannot exist")),
    "start unknown": ("this", "child", None, 0.0, (False, r"^process \d+ is running$")),
    "started before the write": ("this", "child", -100.0, 0.0, (False, "is running")),
    "started within the slack": ("this", "child", _SLACK - 0.5, 0.0, (False, "is running")),
    "started at the slack": ("this", "child", _SLACK, 0.0, (False, "is running")),
    "started after the slack": (
        "this",
        "child",
        _SLACK + 0.5,
        0.0,
        (True, r"^process \d+ is gone \(its PID now belongs"),
    ),
}


@pytest.fixture
def live_child() -> Iterator[subprocess.Popen[bytes]]:
    """A process of ours that runs for the whole test: only it is ever signalled."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        yield child
    finally:
        child.kill()
        child.wait()


@pytest.mark.parametrize("case", list(VERDICTS))
def test_owner_verdict_boundaries(
    case: str, live_child: subprocess.Popen[bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    host, pid_kind, start_offset, age, (stale, reason) = VERDICTS[case]
    pid = {"self": os.getpid(), "child": live_child.pid}.get(pid_kind, pid_kind)  # type: ignore[call-overload]
    mtime = 1_000_000.0
    asked: list[int] = []

    def start(p: int) -> float | None:
        asked.append(p)
        return None if start_offset is None else mtime + start_offset

    monkeypatch.setattr(_atomic, "_process_start", start)
    verdict = _atomic._owner_verdict(
        _atomic._HOST if host == "this" else "other-host", pid, mtime, age
    )
    assert verdict[0] is stale and re.search(reason, verdict[1]), verdict
    assert asked == ([pid] if case.startswith(("start", "started")) else [])
    # asking only looks (signal 0): the owner is still running
    with pytest.raises(subprocess.TimeoutExpired):
        live_child.wait(timeout=0.3)


def test_owner_verdict_of_another_users_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """os.kill says "not yours" (PermissionError): the process runs, unless its PID was reused."""

    def kill(_pid: int, _sig: int) -> None:
        raise PermissionError("not yours")

    monkeypatch.setattr(_atomic.os, "kill", kill)
    monkeypatch.setattr(_atomic, "_process_start", lambda _pid: 10.0)
    assert _atomic._owner_verdict(_atomic._HOST, 4321, 100.0, 0.0) == (
        False,
        "process 4321 is running",
    )
    assert _atomic._owner_verdict(_atomic._HOST, 4321, 1.0, 0.0) == (
        True,
        "process 4321 is gone (its PID now belongs to a newer process)",
    )


def test_owner_verdict_only_looks_at_the_owner(monkeypatch: pytest.MonkeyPatch) -> None:
    """PID 1 can own a file (edgestack as a container's first process); it is only asked
    whether it exists (signal 0). os.kill is a stand-in: PID 1 is never signalled here."""
    calls: list[tuple[int, int]] = []
    monkeypatch.setattr(_atomic.os, "kill", lambda pid, sig: calls.append((pid, sig)))
    monkeypatch.setattr(_atomic, "_process_start", lambda _pid: None)
    for pid in (1, _atomic._PID_MAX - 1):
        assert _atomic._owner_verdict(_atomic._HOST, pid, 0.0, 0.0) == (
            False,
            f"process {pid} is running",
        )
    assert calls == [(1, 0), (_atomic._PID_MAX - 1, 0)]


@pytest.mark.parametrize("comm", ["python", "x) 1 2 (3"])
def test_process_start_time(tmp_path: Path, comm: str) -> None:
    """/proc/PID/stat's start time, also for a program whose name holds ") " and spaces."""
    program = tmp_path / comm
    program.symlink_to(sys.executable)
    before = time.time()
    child = subprocess.Popen([str(program), "-c", "import time; time.sleep(60)"])
    after = time.time()
    try:
        started = _atomic._process_start(child.pid)
        assert started is not None
        # /proc/stat's boot time is whole seconds (1 s) and the start time is in clock ticks
        assert before - 1.5 <= started <= after + 0.5, (before, started, after)
    finally:
        child.kill()
        child.wait()
    assert _atomic._process_start(_dead_pid()) is None


def test_leftover_size_and_age_count_everything_inside(tmp_path: Path) -> None:
    """A folder's size is all the files in it (subfolders too); its age is its newest write."""
    junk = tmp_path / f".m.gguf.{TEMP_MARK}-some-other-host-123-0123abcd"
    (junk / "sub").mkdir(parents=True)
    (junk / "a.gguf").write_bytes(b"x" * 300)
    (junk / "sub" / "b.gguf").write_bytes(b"x" * 700)
    old = time.time() - 48 * HOURS
    for path in (junk / "a.gguf", junk / "sub", junk):
        os.utime(path, (old, old))
    os.utime(junk / "sub" / "b.gguf", (old + 47 * HOURS,) * 2)  # written one hour ago
    [item] = find_leftovers(tmp_path, include_live=True)
    assert item.size == 1000
    assert 1 * HOURS - 60 < item.age_s < 1 * HOURS + 60
    assert item.owner == "process 123 on some-other-host" and not item.stale

    os.utime(junk / "sub" / "b.gguf", (old, old))
    [item] = find_leftovers(tmp_path, include_live=True)
    assert 48 * HOURS - 60 < item.age_s < 48 * HOURS + 60 and item.stale
    assert item.reason == "written on another host and untouched for over 24 h"


def test_leftover_folder_whose_files_vanish_while_measured(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file removed between listing the folder and measuring it (its owner cleaning up) is
    skipped, not an error: the rest of the folder still counts."""
    junk = tmp_path / f".m.gguf.{TEMP_MARK}-some-other-host-123-0123abcd"
    junk.mkdir()
    (junk / "kept.gguf").write_bytes(b"x" * 300)
    (junk / "gone.gguf").write_bytes(b"x" * 700)
    real_lstat = os.lstat

    def lstat(path: Any, *args: Any, **kwargs: Any) -> os.stat_result:
        if str(path).endswith("gone.gguf"):
            raise FileNotFoundError(2, "No such file or directory", str(path))
        return real_lstat(path, *args, **kwargs)

    monkeypatch.setattr(_atomic.os, "lstat", lstat)
    [item] = find_leftovers(tmp_path, include_live=True)
    assert item.size == 300


def test_leftover_file_size_and_age(tmp_path: Path) -> None:
    junk = tmp_path / f".m.gguf.{TEMP_MARK}-some-other-host-123-0123abcd"
    junk.write_bytes(b"x" * 1234)
    os.utime(junk, (time.time() - 2 * HOURS,) * 2)
    [item] = find_leftovers(tmp_path, include_live=True)
    assert item.size == 1234 and 2 * HOURS - 60 < item.age_s < 2 * HOURS + 60
