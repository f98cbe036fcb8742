"""The README's examples run as written.

Every `edgestack ...` command in the README's code blocks is parsed by the real CLI (command,
options and arguments must all exist and take those values); those that need nothing but the
bundled stack (ask, chat, list, show, eval, inspect, logs, with echo/printf pipes) are run as
written, in a folder outside the source tree, and the Python API example is run as a script.
Every docs/*.md a docstring, pyproject.toml or the README names exists.
"""

from __future__ import annotations

import itertools
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from typer.main import get_command

from edge_stack.cli import app
from edge_stack.util._paths import bundled_stacks

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
#: commands that need only the bundled stack and run in seconds
RUNNABLE = {"ask", "chat", "list", "show", "eval", "inspect", "logs"}
#: placeholders of the synopsis, and names that stand for something the reader has
PLACEHOLDER = re.compile(r"owner/name|OWNER|\bSTACK\b|QUESTION|FILE|MODEL|ADAPTER|\.\.\.|my-stack")


def blocks(kind: str) -> list[str]:
    """The README's fenced code blocks of ``kind`` ("bash", "python", "" for plain)."""
    found: list[str] = []
    current: list[str] | None = None
    fence = ""
    for line in README.read_text(encoding="utf-8").splitlines():
        if current is None:
            if line.startswith("```"):
                fence, current = line[3:].strip(), []
        elif line.startswith("```"):
            if fence == kind:
                found.append("\n".join(current) + "\n")
            current = None
        else:
            current.append(line)
    return found


def edgestack_lines() -> list[str]:
    """Each shell line of the README's bash blocks that runs edgestack (comments dropped)."""
    lines = []
    for block in blocks("bash"):
        for line in block.replace("\\\n", " ").splitlines():
            line = re.sub(r"\s+#\s.*$", "", line).strip()
            if re.search(r"(^|[|&;]\s*)edgestack ", line):
                lines.append(line)
    return lines


def invocations(line: str) -> list[list[str]]:
    """The argument lists of every edgestack command in a shell line."""
    out = []
    for part in re.split(r"\s*(?:\|\||&&|\||;)\s*", line):
        words = shlex.split(part.split(" > ")[0].split(" < ")[0])
        if words and words[0] == "edgestack":
            out.append(words[1:])
    return out


LINES = edgestack_lines()
SYNOPSIS = next(b for b in blocks("") if b.startswith("edgestack ask QUESTION"))


def test_the_readme_has_examples_to_check() -> None:
    assert len(LINES) >= 10 and len(SYNOPSIS.splitlines()) >= 15


@pytest.mark.parametrize("line", LINES)
def test_every_example_parses(line: str) -> None:
    group = get_command(app)
    for argv in invocations(line):
        if argv[0].startswith("-"):  # edgestack --install-completion and the like
            continue
        command = group.commands[argv[0]]  # type: ignore[attr-defined]
        command.make_context(argv[0], list(argv[1:]), parent=None)  # raises on a bad option


@pytest.mark.parametrize("line", SYNOPSIS.splitlines())
def test_every_synopsis_line_names_real_options(line: str) -> None:
    group = get_command(app)
    words = line.split()
    assert words[0] == "edgestack"
    command = group.commands[words[1]]  # type: ignore[attr-defined]
    known = {opt for p in command.params for opt in (*p.opts, *p.secondary_opts)}
    for option in re.findall(r"(?<![\w-])(--?[a-z][a-z-]*)", line.split("  ")[0]):
        assert option in known, f"{option} is not an option of edgestack {words[1]}"


def _stacks_named(argv: list[str]) -> list[str]:
    named = [v for k, v in itertools.pairwise(argv) if k in ("--stack", "-s")]
    if argv[0] in ("show", "inspect") and len(argv) > 1:
        named.append(argv[1])
    return named


def _runnable(line: str) -> bool:
    """Only edgestack (with echo/printf feeding it), only commands that need nothing but the
    bundled stack, and no stack other than it (a stack an earlier step would have made)."""
    programs = {re.split(r"\s+", p.strip())[0] for p in re.split(r"\||&&|;", line) if p.strip()}
    calls = invocations(line)
    return (
        programs <= {"edgestack", "echo", "printf"}
        and all(argv[0] in RUNNABLE for argv in calls)
        and all(name == "word-problems" for argv in calls for name in _stacks_named(argv))
        and not PLACEHOLDER.search(line)
    )


def _installed(line: str) -> str:
    """``line`` without a leading ``pip install ... &&`` (this environment has edgestack)."""
    return re.sub(r"^pip install [^&|;]*&&\s*", "", line)


RUN = [_installed(line) for line in LINES if _runnable(_installed(line))]


@pytest.fixture(scope="module")
def outside(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if "word-problems" not in bundled_stacks():
        pytest.skip("the bundled stack is not built")
    return tmp_path_factory.mktemp("readme-cwd")


def _env() -> dict[str, str]:
    bin_dir = Path(sys.executable).parent
    return {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        "EDGESTACK_THREADS": "1",
    }


@pytest.mark.llama
@pytest.mark.slow
@pytest.mark.parametrize("line", RUN)
def test_runnable_examples_run_as_written(line: str, outside: Path) -> None:
    proc = subprocess.run(
        ["bash", "-c", f"set -o pipefail; {line}"],
        cwd=outside,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, f"{line}\n{proc.stderr}"
    assert proc.stdout.strip() or " > " in line


def test_enough_examples_are_run() -> None:
    commands = {argv[0] for line in RUN for argv in invocations(line)}
    assert {"ask", "eval", "show"} <= commands, RUN


@pytest.mark.llama
@pytest.mark.slow
def test_python_api_example_runs_outside_the_source_tree(outside: Path) -> None:
    (code,) = [b for b in blocks("python") if "Stack.load" in b]
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=outside,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[0].strip() and "extract" in proc.stdout


def test_named_documents_exist() -> None:
    texts = [README.read_text(), (ROOT / "pyproject.toml").read_text()]
    for folder in ("edge_stack", "convert", "builder"):
        texts += [p.read_text() for p in (ROOT / folder).rglob("*.py")]
    named = set()
    for text in texts:
        named |= set(re.findall(r"\b((?:docs/)?[\w-]+\.md)\b", text))
    for name in sorted(named):
        if name.startswith("docs/") or name.isupper() or name == "DESIGN.md":
            assert (ROOT / name).is_file(), f"{name} is named but not in the repository"
    assert not (ROOT / "DESIGN.md").exists() or "DESIGN.md" in named
