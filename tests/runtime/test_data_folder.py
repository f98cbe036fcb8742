"""A damaged data folder never hangs or breaks a command, and edgestack creates it owner-only.

Every file edgestack reads from its data folder (the prompt cache, the kernel verdict, the sha256
cache, the store's index, chat history) may be replaced by something that is not a regular file:
a FIFO blocked every ask in ``open()``, a deeply nested kernel verdict failed every ask with an
internal RecursionError. Each is now ignored (and rebuilt where edgestack owns the name). A
blocking read would hang a test, so each runs in a thread with a deadline; a FIFO a hung reader
waits on is then opened for writing, which lets the reader (and the test) go on.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import stat
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest

from edge_stack import Answer, Stack, StageTrace
from edge_stack.engines.llama import _kernels
from edge_stack.errors import StoreError
from edge_stack.util._env import settings

from stack_builders import write_stack

T = TypeVar("T")
#: how long a read may take before the test fails as blocked (seconds)
DEADLINE_S = float(os.environ.get("EDGESTACK_TEST_DEADLINE_S", "60"))

# A stage whose fixed start is long enough to be kept in the prompt cache (test_prompt_cache.py).
INSTRUCTIONS = "Read the question and write the arithmetic expression it describes. " * 6
ONE_STAGE = """
version = 1
[defaults]
model = "base.gguf"
max_tokens = 6
[[stages]]
name = "extract"
prompt = "{instructions}\\nQuestion: {{question}}\\nExpression:"
"""
QUESTION = "Sam has 4 pens and buys 2 more"


def _fifo(path: Path) -> None:
    os.mkfifo(path)


def _link_to_fifo(path: Path) -> None:
    target = path.parent / f".{path.name}.fifo"
    os.mkfifo(target)
    path.symlink_to(target)


def _folder(path: Path) -> None:
    path.mkdir()


#: things at a data file's name that are not regular files
NODES: dict[str, Callable[[Path], None]] = {
    "fifo": _fifo,
    "link to a fifo": _link_to_fifo,
    "folder": _folder,
}


def _unblock(folder: Path) -> None:
    """Let a reader or writer blocked on a FIFO in ``folder`` go on (a reader reads nothing)."""
    for path in folder.rglob("*"):
        if stat.S_ISFIFO(path.lstat().st_mode):
            for flags in (os.O_WRONLY, os.O_RDONLY):
                with contextlib.suppress(OSError):  # nobody is waiting on this one
                    os.close(os.open(path, flags | os.O_NONBLOCK))


def within(fn: Callable[[], T], folder: Path) -> T:
    """``fn()``, failing the test if it is still blocked after DEADLINE_S."""
    result: list[T] = []
    error: list[BaseException] = []

    def target() -> None:
        try:
            result.append(fn())
        except BaseException as exc:
            error.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(DEADLINE_S)
    if thread.is_alive():
        for _ in range(100):  # 20 s at most; then the thread is left blocked
            _unblock(folder)
            thread.join(0.2)
            if not thread.is_alive():
                break
        pytest.fail(f"blocked for more than {DEADLINE_S:g} s on a file of the data folder")
    if error:
        raise error[0]
    return result[0]


def _replace(path: Path, kind: str) -> None:
    if path.exists() or path.is_symlink():
        path.unlink()
    path.parent.mkdir(parents=True, exist_ok=True)
    NODES[kind](path)


def _is_regular(path: Path) -> bool:
    return stat.S_ISREG(path.lstat().st_mode)


# --- the prompt cache (F7) ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cached_stack(tiny_gguf: Callable[..., Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cached")
    files = {"base.gguf": tiny_gguf("gptneox", "f32")}
    return write_stack(root, ONE_STAGE.format(instructions=INSTRUCTIONS), files)


def _ask(stack: Path) -> str:
    with Stack.load(stack, threads=1) as loaded:
        return loaded.ask(QUESTION).text


@pytest.mark.llama
@pytest.mark.torch
@pytest.mark.parametrize("kind", list(NODES))
def test_prompt_cache_entry_that_is_not_a_file_is_ignored(cached_stack: Path, kind: str) -> None:
    folder = settings().data_dir / "prompt-cache"
    want = _ask(cached_stack)
    (entry,) = folder.glob("*.kv")
    _replace(entry, kind)
    assert within(lambda: _ask(cached_stack), folder) == want
    if kind == "folder":
        assert entry.is_dir()  # not ours to delete: left as it is, the answer still right
    else:
        assert _is_regular(entry)  # deleted, and the state saved again


# --- the kernel verdict (F8, F9) ------------------------------------------------------------------

#: a verdict file's damage -> what to put at its name
VERDICTS: dict[str, Callable[[Path], None]] = {
    **NODES,
    "deeply nested": lambda p: p.write_text("[" * 100_000 + "]" * 100_000),
    "nested in an object": lambda p: p.write_text('{"faulty": ' + "[" * 100_000 + "]" * 100_000),
    "too large": lambda p: p.write_text(" " * (_kernels.MAX_VERDICT_BYTES + 1) + "{}"),
    "huge number": lambda p: p.write_text(
        '{"faulty": [], "broken": [], "key": "k", "seconds": ' + "9" * 400 + "}"
    ),
    "types wrong": lambda p: p.write_text('{"faulty": "q4_0", "broken": [], "key": "k"}'),
    "how not an object": lambda p: p.write_text(
        '{"faulty": [], "broken": [], "key": "k", "how": [1]}'
    ),
}


@pytest.mark.llama
@pytest.mark.parametrize("damage", list(VERDICTS))
def test_damaged_kernel_verdict_is_probed_again(
    monkeypatch: pytest.MonkeyPatch, damage: str
) -> None:
    """The probe itself is tested in test_kernels.py; here it only answers, and is counted."""
    probes: list[int] = []

    def probe(*, fault: str = "") -> _kernels.Verdict:
        probes.append(1)
        return _kernels.Verdict(faulty=("q4_0",), how={"q4_0": "SIGSEGV"})

    monkeypatch.setattr(_kernels, "run_probe", probe)
    _kernels.clear_memo()
    path = _kernels._verdict_path(_kernels.probe_key())
    if path.exists():
        path.unlink()
    path.parent.mkdir(parents=True, exist_ok=True)
    VERDICTS[damage](path)
    try:
        found = within(_kernels.verdict, path.parent)
    finally:
        _kernels.clear_memo()
    assert probes == [1] and found.faulty == ("q4_0",)
    if damage == "folder":
        assert path.is_dir()
    else:  # replaced by the new verdict
        assert _is_regular(path) and json.loads(path.read_text())["faulty"] == ["q4_0"]


@pytest.mark.llama
@pytest.mark.parametrize("argv", [["doctor", "--no-ask", "--json"]], ids=["doctor"])
def test_cli_with_a_fifo_for_the_kernel_verdict(argv: list[str]) -> None:
    """The repro: a FIFO at kernels/KEY.json blocked doctor (and ask) forever."""
    home = settings().data_dir
    (path,) = (home / "kernels").glob("*.json")
    _replace(path, "fifo")
    env = {**os.environ, "EDGESTACK_HOME": str(home)}
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "edge_stack", *argv],
            capture_output=True,
            text=True,
            env=env,
            cwd=home,
            timeout=DEADLINE_S * 3,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired:
        _unblock(home)
        pytest.fail("edgestack blocked on a FIFO in the data folder")
    assert proc.returncode == 0, proc.stderr
    assert _is_regular(path) and "faulty" in json.loads(path.read_text())


# --- the sha256 cache, the store's index, chat history ----------------------------------------


@pytest.mark.parametrize("kind", list(NODES))
def test_sha256_cache_that_is_not_a_file(tmp_path: Path, kind: str) -> None:
    from edge_stack.util._pins import CACHE_NAME, file_sha256

    cache = settings().data_dir / CACHE_NAME
    _replace(cache, kind)
    model = tmp_path / "m.gguf"
    model.write_bytes(b"abc" * 1000)
    assert (
        within(lambda: file_sha256(model), cache.parent)
        == hashlib.sha256(model.read_bytes()).hexdigest()
    )
    if kind == "folder":
        assert cache.is_dir()
    else:  # started again, with this file in it
        assert _is_regular(cache) and str(model.resolve()) in json.loads(cache.read_text())


@pytest.mark.parametrize("kind", list(NODES))
def test_store_entry_that_is_not_a_file_is_damaged(kind: str) -> None:
    from edge_stack.util._paths import entry_path, read_entry

    path = entry_path("owner/name")
    _replace(path, kind)
    with pytest.raises(
        StoreError, match=r"store entry is damaged \(.*not a regular file\); remove"
    ):
        within(lambda: read_entry(path), path.parent)


# GNU readline reads its history file holding Python's lock, so a blocked read there would
# freeze the whole test process: this one runs in a child, which a deadline can kill.
CHAT_HISTORY_CHILD = """
import builtins
from edge_stack.cli import _ask_cmd

def end_of_input(*_args):
    raise EOFError

builtins.input = end_of_input
print(list(_ask_cmd._terminal_lines(True)))
"""


@pytest.mark.parametrize("kind", list(NODES))
def test_chat_history_that_is_not_a_file_is_left_alone(kind: str) -> None:
    pytest.importorskip("readline")
    from edge_stack.cli import _ask_cmd

    history = _ask_cmd._history_file()
    _replace(history, kind)
    before = history.lstat()
    home = settings().data_dir
    try:
        proc = subprocess.run(
            [sys.executable, "-c", CHAT_HISTORY_CHILD],
            capture_output=True,
            text=True,
            env={**os.environ, "EDGESTACK_HOME": str(home)},
            cwd=home,
            timeout=DEADLINE_S,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired:
        pytest.fail("chat blocked on its history file")
    assert (proc.returncode, proc.stdout) == (0, "[]\n"), proc.stderr
    assert "chat history" in proc.stderr and "history is off" in proc.stderr
    after = history.lstat()
    assert (after.st_ino, after.st_mode) == (before.st_ino, before.st_mode)


# --- owner-only folders (F10) -----------------------------------------------------------------


def _write_run_log() -> None:
    from edge_stack.tools._runlog import RunLog

    stage = StageTrace("s", "prompt", "out", 3, 2, 0.01)
    RunLog().append(Answer("out", (stage,), "demo", "q", 0.01), stack_path="/s/stack.toml")


def _write_sha256_cache() -> None:
    from edge_stack.util._pins import file_sha256

    model = settings().data_dir.parent.parent / "m.gguf"  # tmp_path
    model.write_bytes(b"abc")
    file_sha256(model)


def _write_verdict() -> None:
    _kernels._save(_kernels._verdict_path("k" * 24), _kernels.Verdict(key="k" * 24))


def _write_store_entry() -> None:
    from edge_stack.store._registry import write_entry

    manifest = settings().data_dir.parent.parent / "stack.toml"  # tmp_path
    write_entry(
        name="owner/name",
        repo="owner/name",
        revision=None,
        commit="0" * 40,
        manifest=manifest,
        files=[],
    )


def _write_chat_history() -> None:
    pytest.importorskip("readline")
    from edge_stack.cli import _ask_cmd

    lines = _ask_cmd._terminal_lines(True)
    with pytest.MonkeyPatch.context() as mp:
        answers = iter(["What is 2 plus 3?"])

        def typed(*_args: object) -> str:
            try:
                return next(answers)
            except StopIteration:
                raise EOFError from None

        mp.setattr("builtins.input", typed)
        assert list(lines) == ["What is 2 plus 3?"]


#: writer -> (what it writes, the subfolder of the data folder it creates or None)
WRITERS: dict[str, tuple[Callable[[], None], str | None]] = {
    "run log": (_write_run_log, None),
    "sha256 cache": (_write_sha256_cache, None),
    "kernel verdict": (_write_verdict, "kernels"),
    "store index": (_write_store_entry, "stacks"),
    "chat history": (_write_chat_history, None),
}


@pytest.mark.parametrize("writer", list(WRITERS))
def test_data_folder_and_subfolders_are_created_owner_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, writer: str
) -> None:
    write, sub = WRITERS[writer]
    home = tmp_path / "share" / "edgestack"
    monkeypatch.setenv("EDGESTACK_HOME", str(home))
    settings.cache_clear()
    old = os.umask(0o022)
    try:
        write()
    finally:
        os.umask(old)
    assert stat.S_IMODE(home.stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / "share").stat().st_mode) == 0o755  # not edgestack's
    if sub is not None:
        assert stat.S_IMODE((home / sub).stat().st_mode) == 0o700


@pytest.mark.llama
@pytest.mark.torch
def test_prompt_cache_folder_is_owner_only(
    cached_stack: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    monkeypatch.setenv("EDGESTACK_HOME", str(home))
    settings.cache_clear()
    _ask(cached_stack)  # an f32 model: no kernel probe, only the prompt cache is written
    assert list((home / "prompt-cache").glob("*.kv"))
    for folder in (home, home / "prompt-cache"):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700
