"""One vocabulary for numbers (sizes, wall and stage times), names resolved the same way
everywhere, and error hints that point at something the user can change."""

from __future__ import annotations

import json
import re
import sqlite3
import sys
from pathlib import Path

import pytest

from edge_stack.errors import ModelFileNotFound
from edge_stack.util._paths import bundled_stacks, resolve_stack
from edge_stack.util._units import format_bytes

from cli_support import run

WORD_PROBLEMS = bundled_stacks().get("word-problems")
needs_bundled = pytest.mark.skipif(WORD_PROBLEMS is None, reason="the bundled stack is not built")


@pytest.mark.parametrize(
    ("n", "shown"),
    [
        (0, "0 B"),
        (999, "999 B"),
        (1000, "1.00 kB"),
        (19_500, "19.5 kB"),
        (133_824, "134 kB"),
        (1_172_192, "1.17 MB"),
        (43_200_000, "43.2 MB"),
        (999_499, "999 kB"),
        (999_500, "1.00 MB"),
        (4_700_000_000, "4.70 GB"),
        (-1500, "-1.50 kB"),
    ],
)
def test_sizes_have_one_format(n: int, shown: str) -> None:
    assert format_bytes(n) == shown


@needs_bundled
@pytest.mark.parametrize(
    "argv", [["inspect", "word-problems"], ["show", "word-problems"], ["list"]]
)
def test_commands_print_sizes_in_that_format(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(argv, capsys)
    sizes = re.findall(r"\b\d[\d.]* ?(?:B|kB|MB|GB|KiB|MiB|GiB)\b", out)
    assert code == 0 and sizes
    for size in sizes:
        assert re.fullmatch(r"\d+(\.\d+)? (B|kB|MB|GB)", size), size
        digits = size.split()[0].replace(".", "").lstrip("0")
        assert len(digits) <= 3, size


@needs_bundled
@pytest.mark.llama
def test_logs_show_wall_time_and_stage_time(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, _ = run(["ask", "What is 15 plus 28?", "--threads", "1"], capsys)
    assert code == 0
    (entry,) = json.loads(run(["logs", "--json"], capsys)[1])
    stages = sum(s["seconds"] for s in entry["stages"])
    assert entry["seconds"] == pytest.approx(stages, abs=0.01)
    assert entry["wall_seconds"] > entry["seconds"]  # loading the stack is part of the wait
    out = run(["logs"], capsys)[1]
    assert re.search(r"word-problems  wall \d+\.\d{3} s, stages \d+\.\d{3} s", out), out


def test_logs_written_before_wall_time_existed_still_read(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from edge_stack.tools._runlog import default_log_path

    path = default_log_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(path) as db:
        db.executescript(
            """
            CREATE TABLE runs (id INTEGER PRIMARY KEY AUTOINCREMENT, created REAL NOT NULL,
              stack TEXT NOT NULL, stack_path TEXT NOT NULL, question TEXT NOT NULL,
              answer TEXT NOT NULL, seconds REAL NOT NULL);
            CREATE TABLE stages (run_id INTEGER NOT NULL, idx INTEGER NOT NULL, name TEXT NOT NULL,
              prompt TEXT NOT NULL, output TEXT NOT NULL, prompt_tokens INTEGER NOT NULL,
              completion_tokens INTEGER NOT NULL, seconds REAL NOT NULL,
              PRIMARY KEY (run_id, idx));
            INSERT INTO runs VALUES (1, 1700000000.0, 'old', '/x', 'q?', 'a.', 0.25);
            """
        )
    code, out, err = run(["logs"], capsys)
    assert code == 0 and "old  wall -, stages 0.250 s" in out, err
    assert json.loads(run(["logs", "--json"], capsys)[1])[0]["wall_seconds"] is None

    from edge_stack.pipeline._events import Answer
    from edge_stack.tools._runlog import log_answer

    log_answer(Answer("a", (), "new", "q", 0.5), stack_path="/y", wall_seconds=0.75)
    runs = json.loads(run(["logs", "--json"], capsys)[1])
    assert [(r["stack"], r["wall_seconds"]) for r in runs] == [("new", 0.75), ("old", None)]


@needs_bundled
@pytest.mark.llama
def test_inspect_estimates_what_llama_cpp_allocates(caplog: pytest.LogCaptureFixture) -> None:
    import logging

    from edge_stack import Stack
    from edge_stack.cli._inspect_cmd import stack_info
    from edge_stack.manifest import load_manifest

    assert WORD_PROBLEMS is not None
    info = stack_info(load_manifest(WORD_PROBLEMS))
    with caplog.at_level(logging.INFO), Stack.load(WORD_PROBLEMS, threads=1, verbose=True):
        pass
    log = caplog.text
    compute = [float(x) for x in re.findall(r"CPU compute buffer size =\s+([\d.]+) MiB", log)]
    kv = [float(x) for x in re.findall(r"CPU KV buffer size =\s+([\d.]+) MiB", log)]
    assert compute and kv, log[-2000:]
    mib = 1 << 20
    assert info["stages"][0]["compute_bytes"] / mib == pytest.approx(compute[0], abs=0.006)
    assert info["memory"]["kv_cache_bytes"] / mib == pytest.approx(sum(kv), abs=0.02)


@needs_bundled
@pytest.mark.llama
def test_context_overflow_on_a_bundled_stack_points_at_a_copy(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, _, err = run(["ask", "plus one " * 400, "--threads", "1", "--no-log"], capsys)
    assert code == 1 and len(err.strip().splitlines()) == 1
    assert "edgestack package word-problems -o my-stack" in err and "--max-tokens" in err
    assert "in stack.toml, or shorten" not in err


@needs_bundled
def test_names_and_paths_resolve_the_same_way_everywhere(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert WORD_PROBLEMS is not None
    monkeypatch.chdir(tmp_path)
    assert resolve_stack("word-problems", "--stack") == WORD_PROBLEMS
    # A folder of that name without a stack.toml does not hide the name ...
    (tmp_path / "word-problems").mkdir()
    assert resolve_stack("word-problems", "--stack") == WORD_PROBLEMS
    # ... one with a stack.toml does: what is on disk is what the user points at.
    (tmp_path / "word-problems" / "stack.toml").write_text("version = 1\n")
    local = (tmp_path / "word-problems" / "stack.toml").resolve()
    assert resolve_stack("word-problems", "--stack") == local
    assert resolve_stack("./word-problems", "--stack") == local
    with pytest.raises(ModelFileNotFound, match="does not exist"):
        resolve_stack("./nope", "--stack")
    with pytest.raises(ModelFileNotFound, match="edgestack pull someone/else"):
        resolve_stack("someone/else", "--stack")


@needs_bundled
@pytest.mark.llama
def test_environment_stack_takes_a_name(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    from edge_stack.util._env import settings

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("EDGESTACK_STACK", "word-problems")
    settings.cache_clear()
    code, out, err = run(
        ["ask", "What is 2 plus 3?", "--threads", "1", "--json", "--no-log"], capsys
    )
    assert code == 0 and json.loads(out)["stack"] == "word-problems", err
    monkeypatch.setenv("EDGESTACK_STACK", "no/such-stack")
    settings.cache_clear()
    code, _, err = run(["ask", "q", "--no-log"], capsys)
    assert code == 1 and "(from EDGESTACK_STACK)" in err and "edgestack pull no/such-stack" in err


def test_stack_option_is_a_name_or_a_path_for_every_command() -> None:
    # The commands that use a stack share one option definition (cli/_app.py: StackOpt).
    import inspect as pyinspect

    from edge_stack.cli import _ask_cmd, _bench_cmd, _eval_cmd
    from edge_stack.cli._app import StackOpt

    for function in (_ask_cmd.ask, _ask_cmd.chat, _bench_cmd.bench, _eval_cmd.eval_):
        hints = pyinspect.signature(function).parameters["stack"].annotation
        assert hints in ("StackOpt", StackOpt), function.__name__
    assert sys.modules["edge_stack.cli._app"].STACK_HELP.startswith("The stack: a name")
