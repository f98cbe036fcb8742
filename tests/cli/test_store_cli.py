"""The store's commands end to end on the real bundled stack: package it, publish it on a Hub
of our own (loopback), pull it, ask it by name, list, show, eval, remove; and every bad input
as one line on stderr."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edge_stack import Stack
from edge_stack.store import package_stack
from edge_stack.util._paths import bundled_stacks, entry_path

from cli_support import run
from hub_builders import FakeHub, HubEnv, point_hub_at, serve_hub

pytestmark = pytest.mark.llama

QUESTION = "What is 15 plus 28?"


@pytest.fixture(scope="module")
def bundled() -> Path:
    path = bundled_stacks().get("word-problems")
    if path is None:
        pytest.skip(
            "the bundled stack is not built (edgestack build models/word-problems/recipe.toml)"
        )
    return path


@pytest.fixture(scope="module")
def published(bundled: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    out = tmp_path_factory.mktemp("package") / "word-problems"
    package_stack(bundled, out, repo="me/word-problems")
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("*") if p.is_file()}


@pytest.fixture(autouse=True)
def _loopback_only(monkeypatch: pytest.MonkeyPatch) -> None:
    real_connect = socket.socket.connect

    def connect(self: socket.socket, address: Any) -> Any:
        host = address[0] if isinstance(address, tuple) else str(address)
        assert host in {"127.0.0.1", "::1", "localhost"} or self.family == socket.AF_UNIX, address
        return real_connect(self, address)

    monkeypatch.setattr(socket.socket, "connect", connect)


@pytest.fixture
def hub(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, published: dict[str, bytes]
) -> Iterator[tuple[FakeHub, HubEnv]]:
    with serve_hub(FakeHub()) as server:
        server.add("me/word-problems", published)
        yield server, point_hub_at(monkeypatch, tmp_path, server.endpoint)


def test_pull_ask_list_show_eval_rm(
    hub: tuple[FakeHub, HubEnv], bundled: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    server, _ = hub
    code, out, err = run(["pull", "me/word-problems"], capsys)
    assert code == 0 and out == ""
    assert "pulling me/word-problems" in err and "base.q8_0.gguf  1.17 MB  sha256 ok" in err
    assert sorted(server.sent_files("me/word-problems")) == sorted(
        [
            "stack.toml",
            "base.q8_0.gguf",
            "extract.lora.gguf",
            "compute.lora.gguf",
            "answer.lora.gguf",
            "eval.jsonl",
            "README.md",
        ]
    )
    code, out, _ = run(["list", "--json"], capsys)
    rows = {r["name"]: r for r in json.loads(out)}
    assert code == 0 and rows["me/word-problems"]["kind"] == "pulled"
    assert rows["me/word-problems"]["stages"] == 3 and rows["word-problems"]["kind"] == "bundled"
    code, out, _ = run(["list"], capsys)
    assert out.splitlines()[0].split() == ["NAME", "SOURCE", "SIZE", "STAGES", "PULLED"]
    assert any(line.startswith("me/word-problems ") and " 3 " in line for line in out.splitlines())
    code, out, _ = run(["show", "me/word-problems"], capsys)
    assert code == 0 and "source   me/word-problems@" in out and "stack word-problems" in out
    assert "1. extract: base.q8_0.gguf + extract.lora.gguf" in out
    with Stack.load(bundled, threads=1) as stack:
        want = stack.ask(QUESTION).text
    code, out, err = run(["ask", QUESTION, "-s", "me/word-problems", "--no-log"], capsys)
    assert code == 0 and out == f"{want}\n"
    code, out, err = run(["eval", "-s", "me/word-problems", "--limit", "2", "--json"], capsys)
    assert code == 0 and json.loads(out)["n"] == 2, err
    code, out, err = run(["rm", "me/word-problems"], capsys)
    assert code == 0 and "removed me/word-problems, freed 1.6" in err
    code, out, err = run(["ask", QUESTION, "-s", "me/word-problems"], capsys)
    assert code == 1 and "edgestack pull me/word-problems" in err
    assert len(err.strip().splitlines()) == 1


def test_a_pulled_stack_loads_by_name_from_python(hub: tuple[FakeHub, HubEnv]) -> None:
    from edge_stack.store import pull_stack

    pull_stack("me/word-problems")
    with (
        Stack.load("me/word-problems", threads=1) as stack,
        Stack.load("word-problems", threads=1) as same,
    ):
        assert stack.ask(QUESTION).text == same.ask(QUESTION).text


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["pull", "nobody/nothing"], "does not exist or is private"),
        (["pull", "me/word-problems@nope"], "has no revision 'nope'"),
        (["pull", "-"], "does not name a Hub repository"),
        (["show", "nosuch"], "neither a stack.toml or folder nor the name of a stack"),
        (["show", "me/not-pulled"], "run `edgestack pull me/not-pulled`"),
        (["rm", "word-problems"], "is a bundled stack"),
        (["rm", "me/not-pulled"], "no pulled stack named 'me/not-pulled'"),
        (["ask", "q", "-s", "me/not-pulled"], "edgestack pull me/not-pulled"),
        (["eval", "-s", "word-problems", "--data", "missing.jsonl"], "data file"),
        (["eval", "-s", "NOSTACK"], "neither a stack.toml"),
        (["package", "word-problems"], "Missing option '--out'"),
        (["package", "word-problems", "-o", "x", "--repo", "a/b@c"], "without a revision"),
        (["bench", "-s", "nosuch"], "neither a stack.toml"),
        (["serve", "-s", "nosuch"], "neither a stack.toml"),
    ],
)
def test_bad_names_are_one_line(
    hub: tuple[FakeHub, HubEnv],
    argv: list[str],
    match: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    monkeypatch.chdir(tmp_path)
    code, out, err = run(argv, capsys)
    assert code in (1, 2) and out == ""
    assert len(err.strip().splitlines()) == 1 and err.startswith("edgestack: error: "), err
    assert match in err


def test_a_damaged_entry_shows_in_list_and_rm_removes_it(
    hub: tuple[FakeHub, HubEnv], capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(["pull", "me/word-problems"], capsys)[0] == 0
    entry_path("me/word-problems").write_text("{oops")
    code, out, err = run(["list"], capsys)
    assert code == 1 and "me/word-problems" in out and "is damaged (not JSON" in err
    code, out, err = run(["ask", QUESTION, "-s", "me/word-problems"], capsys)
    assert code == 1 and "is damaged" in err and "edgestack rm" in err
    code, out, err = run(["rm", "me/word-problems"], capsys)
    assert code == 0 and not entry_path("me/word-problems").exists()


def test_eval_finds_the_stacks_own_data(bundled: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(
        ["eval", "--stack", "word-problems", "--limit", "3", "--threads", "1"], capsys
    )
    assert code == 0 and out.startswith("accuracy ") and "(3/3, match number)" in out, err


def test_eval_without_data_says_where_it_looked(
    tmp_path: Path, bundled: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from edge_stack.store import package_stack as pack

    pack(bundled, tmp_path / "copy")
    (tmp_path / "copy" / "eval.jsonl").unlink()
    code, _, err = run(["eval", "-s", str(tmp_path / "copy")], capsys)
    assert code == 1 and "ships no eval.jsonl" in err and "--data" in err


def test_package_command(bundled: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(
        ["package", "word-problems", "-o", str(tmp_path / "p"), "--repo", "me/wp"], capsys
    )
    assert code == 0 and out == "" and "packaged word-problems into" in err
    assert "edgestack pull me/wp" in (tmp_path / "p" / "README.md").read_text()
    code, out, err = run(["package", "word-problems", "-o", str(tmp_path / "p")], capsys)
    assert code == 1 and "pass --force" in err


def test_the_server_serves_pulled_stacks_by_name(hub: tuple[FakeHub, HubEnv]) -> None:
    from edge_stack.serve import resolve_stacks
    from edge_stack.store import pull_stack

    pull_stack("me/word-problems")
    assert {"me/word-problems", "word-problems"} <= set(resolve_stacks([]))
    assert list(resolve_stacks(["me/word-problems"])) == ["me/word-problems"]
    entry_path("me/word-problems").write_text("{oops")
    served = resolve_stacks([])  # a damaged entry is skipped, the others are served
    assert "word-problems" in served and "me/word-problems" not in served
