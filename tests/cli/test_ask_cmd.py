"""`edgestack ask` and `edgestack chat` on the tiny real stack."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from edge_stack import Stack
from edge_stack.util._env import settings

from cli_support import run
from stack_builders import write_stack

pytestmark = [pytest.mark.llama, pytest.mark.torch]


@pytest.fixture(scope="module")
def expected(tiny_stack: Path) -> dict[str, object]:
    with Stack.load(tiny_stack, threads=1) as stack:
        return stack.ask("What is 15 plus 28?").to_dict()


def test_ask_prints_the_answer(
    tiny_stack: Path, expected: dict[str, object], capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(["ask", "What is 15 plus 28?", "--stack", str(tiny_stack)], capsys)
    assert code == 0 and err == ""
    assert out == f"{expected['answer']}\n"


def test_ask_json_shape(
    tiny_stack: Path, expected: dict[str, object], capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(
        ["ask", "What is 15 plus 28?", "--stack", str(tiny_stack.parent), "--json"], capsys
    )
    assert code == 0 and err == ""
    data = json.loads(out)
    assert list(data) == ["stack", "question", "answer", "seconds", "stages"]
    assert data["stack"] == "tiny" and data["question"] == "What is 15 plus 28?"
    assert data["answer"] == expected["answer"]
    assert [list(s) for s in data["stages"]] == [
        ["name", "prompt", "output", "prompt_tokens", "completion_tokens", "seconds"]
    ] * 3
    strip = [{k: v for k, v in s.items() if k != "seconds"} for s in data["stages"]]
    assert strip == [{k: v for k, v in s.items() if k != "seconds"} for s in expected["stages"]]  # type: ignore[attr-defined]


def test_ask_trace_goes_to_stderr(
    tiny_stack: Path, expected: dict[str, object], capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(
        ["ask", "What is 15 plus 28?", "--stack", str(tiny_stack), "--trace"], capsys
    )
    assert code == 0 and out == f"{expected['answer']}\n"
    for stage in expected["stages"]:  # type: ignore[attr-defined]
        assert f"--- {stage['name']} prompt" in err
        assert stage["prompt"] in err
        if stage["name"] != "say":
            assert stage["output"] in err


@pytest.fixture(scope="module")
def known_stack(
    tmp_path_factory: pytest.TempPathFactory, tiny_model: Callable[[str], Path]
) -> Path:
    """One stage over the model with known logits (tests/logit_builders.py): greedy writes
    "aaaa...", sampling at temperature 1 mostly a and b, and it never stops early."""
    from logit_builders import known_logits_gguf

    gguf_path = known_logits_gguf(tmp_path_factory, tiny_model("gptneox"))[0]
    return write_stack(
        tmp_path_factory.mktemp("known-stack"),
        'name = "known"\nversion = 1\n[[stages]]\nname = "only"\nmodel = "known.gguf"\n'
        'prompt = "{question}"\nmax_tokens = 40\n',
        {"known.gguf": gguf_path},
    )


def test_env_stack_and_overrides(
    tiny_stack: Path,
    known_stack: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("EDGESTACK_STACK", str(known_stack))
    settings.cache_clear()

    def ask(*options: str) -> dict[str, object]:
        code, out, err = run(["ask", "hello", "--json", "--no-log", *options], capsys)
        assert code == 0, err
        return json.loads(out)  # type: ignore[no-any-return]

    greedy = ask()
    assert greedy["stack"] == "known" and greedy["answer"] == "a" * 40  # EDGESTACK_STACK's stack
    assert ask("--max-tokens", "7")["answer"] == "a" * 7
    hot = ask("--temperature", "1", "--seed", "3")["answer"]
    assert isinstance(hot, str) and len(hot) == 40 and set(hot) - {"a"}  # sampled, not greedy
    assert ask("--temperature", "1", "--seed", "3")["answer"] == hot
    assert ask("--temperature", "1", "--seed", "4")["answer"] != hot
    assert ask("--temperature", "0", "--seed", "4")["answer"] == "a" * 40
    # --stack wins over EDGESTACK_STACK.
    assert ask("--stack", str(tiny_stack))["stack"] == "tiny"


def test_run_log_and_logs_command(
    tiny_stack: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(["ask", "first {q}", "--stack", str(tiny_stack)], capsys)[0] == 0
    assert run(["ask", "not logged", "--stack", str(tiny_stack), "--no-log"], capsys)[0] == 0
    monkeypatch.setenv("EDGESTACK_NO_LOG", "1")
    settings.cache_clear()
    assert run(["ask", "not logged either", "--stack", str(tiny_stack)], capsys)[0] == 0
    monkeypatch.delenv("EDGESTACK_NO_LOG")
    settings.cache_clear()
    assert run(["ask", "second", "--stack", str(tiny_stack)], capsys)[0] == 0

    code, out, _ = run(["logs", "--json"], capsys)
    runs = json.loads(out)
    assert code == 0 and [r["question"] for r in runs] == ["second", "first {q}"]
    assert runs[0]["stack"] == "tiny" and runs[0]["stack_path"] == str(tiny_stack)
    assert [s["name"] for s in runs[1]["stages"]] == ["extract", "compute", "say"]
    assert runs[1]["stages"][0]["prompt"] == "Question: first {q}\nEquation:"

    code, out, _ = run(["logs", "-n", "1", "--stages"], capsys)
    assert code == 0 and "Q: second" in out and "first" not in out and "extract:" in out


def test_logs_empty(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(["logs"], capsys)
    assert code == 0 and out == "" and "no runs logged yet" in err
    assert json.loads(run(["logs", "--json"], capsys)[1]) == []


def test_chat_reads_stdin_to_the_end_skipping_blank_lines(
    tiny_stack: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with Stack.load(tiny_stack, threads=1) as stack:
        want = [stack.ask(q).text for q in ("one", "two {x}", "three")]
    monkeypatch.setattr(sys, "stdin", io.StringIO("one\ntwo {x}\n\nthree\n"))
    code, out, err = run(["chat", "--stack", str(tiny_stack)], capsys)
    assert code == 0 and out == "".join(f"{w}\n" for w in want) and err == ""


def test_chat_json_lines_until_eof(
    tiny_stack: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO("one\ntwo"))
    code, out, _ = run(["chat", "--stack", str(tiny_stack), "--json", "--no-log"], capsys)
    lines = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and [d["question"] for d in lines] == ["one", "two"]


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        (
            b"caf\xe9 au lait",
            "line 2 of standard input is not valid UTF-8 (byte 0xE9 at byte offset 3",
        ),
        (b"x" * 70_000, "line 2 of standard input is more than 65536 bytes"),
        (b"word " * 300, "stage extract"),  # too long for the stage's context
    ],
)
def test_chat_survives_a_bad_line(
    tiny_stack: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    bad: bytes,
    match: str,
) -> None:
    with Stack.load(tiny_stack, threads=1) as stack:
        want = [stack.ask(q).text for q in ("one", "two")]
    stdin = io.TextIOWrapper(io.BytesIO(b"one\n" + bad + b"\ntwo\n"), encoding="utf-8")
    monkeypatch.setattr(sys, "stdin", stdin)
    code, out, err = run(["chat", "--stack", str(tiny_stack), "--no-log"], capsys)
    assert code == 1 and out == "".join(f"{w}\n" for w in want)
    assert len(err.strip().splitlines()) == 1 and err.startswith("edgestack: error: ")
    assert match in err and "Traceback" not in err


def test_chat_survives_a_lone_surrogate(
    tiny_stack: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # A text stream without bytes underneath (an embedding program's own stdin object).
    monkeypatch.setattr(sys, "stdin", io.StringIO("one\nbad \ud800\ntwo\n"))
    code, out, err = run(["chat", "--stack", str(tiny_stack), "--no-log"], capsys)
    assert code == 1 and len(out.splitlines()) == 2
    assert len(err.strip().splitlines()) == 1 and "lone surrogate U+D800 at character 4" in err


def test_more_threads_than_cores_warns_on_stderr(tiny_stack: Path) -> None:
    from edge_stack.util._limits import cpu_threads

    threads = cpu_threads() + 1
    argv = ["ask", "What is 1 plus 1?", "--stack", str(tiny_stack), "--threads", str(threads)]
    proc = subprocess.run(
        [sys.executable, "-m", "edge_stack", *argv, "--no-log"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0 and proc.stdout.strip()
    lines = proc.stderr.strip().splitlines()
    assert (
        len(lines) == 1 and f"is {threads} but this process may use {threads - 1} cores" in lines[0]
    )


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["ask", "q", "--stack", "/nonexistent/stack.toml"], "does not exist"),
        (["chat", "--stack", "/nonexistent"], "does not exist"),
    ],
)
def test_missing_stack_is_one_line(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(argv, capsys)
    assert code == 1 and out == ""
    assert err.startswith("edgestack: error:") and message in err and err.count("\n") == 1


def test_no_stack_given_uses_the_bundled_one_or_says_how(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from edge_stack.util import _paths

    monkeypatch.setattr(_paths, "bundled_stack", lambda: None)
    code, out, err = run(["ask", "q"], capsys)
    assert code == 1 and out == "" and err.count("\n") == 1
    assert "bundled default stack" in err and "--stack" in err and "EDGESTACK_STACK" in err


def test_bad_manifest_and_bad_file_are_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "stack.toml").write_text(
        'version = 1\n[[stages]]\nname = "s"\nmodel = "m.gguf"\nprompt = "{later}"\n'
    )
    (tmp_path / "m.gguf").write_bytes(os.urandom(1000))
    code, _, err = run(["ask", "q", "--stack", str(tmp_path)], capsys)
    assert code == 1 and "stack.toml" in err and "key 'prompt'" in err and err.count("\n") == 1
    (tmp_path / "stack.toml").write_text(
        'version = 1\n[[stages]]\nname = "s"\nmodel = "m.gguf"\nprompt = "{question}"\n'
    )
    code, _, err = run(["ask", "q", "--stack", str(tmp_path)], capsys)
    assert code == 1 and "stage s" in err and "m.gguf" in err and err.count("\n") == 1
    assert "Traceback" not in err


def test_empty_question_is_a_usage_error(
    tiny_stack: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(["ask", "  ", "--stack", str(tiny_stack)], capsys)
    assert code == 2 and "empty" in err


def test_ctrl_c_exits_130_without_traceback(tiny_stack: Path, tmp_path: Path) -> None:
    # Four long stages whose grammar can never complete, so each one generates all of its
    # max_tokens; Ctrl-C arrives while the second one generates.
    stages = "".join(
        f'[[stages]]\nname = "s{i}"\nprompt = "Story: {{question}}"\n' for i in range(1, 5)
    )
    long = write_stack(
        tmp_path / "long",
        'version = 1\n[defaults]\nmodel = "base.gguf"\nn_ctx = 2048\nmax_tokens = 1500\n'
        "grammar = 'root ::= [a-z ] root'\n" + stages,
        {"base.gguf": tiny_stack.parent / "base.gguf"},
    )
    env = {**os.environ, "EDGESTACK_THREADS": "1"}
    answer = (tmp_path / "answer.txt").open("wb")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "edge_stack",
            "ask",
            "once upon a time",
            "--stack",
            str(long),
            "--trace",
            "--no-log",
        ],
        stdout=answer,
        stderr=subprocess.PIPE,
        env=env,
        # A shell's background jobs start with SIGINT ignored, and Python keeps it so.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    assert proc.stderr is not None
    seen = b""
    while b"--- s2 prompt" not in seen:
        line = proc.stderr.readline()
        assert line, seen
        seen += line
    assert b"[s1: " in seen and b" + 1500 generated tokens" in seen  # s1 ran to its end
    proc.send_signal(signal.SIGINT)
    rest = proc.stderr.read()
    proc.wait(timeout=60)
    answer.close()
    assert proc.returncode == 130, rest
    assert b"Traceback" not in rest and rest.rstrip().endswith(b"edgestack: interrupted")
    # Stopped inside s2: it never finished, and no later stage started.
    assert b"[s2: " not in rest and b"--- s3 prompt" not in rest
