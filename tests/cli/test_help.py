"""Help that reads well: -h as --help, every command's summary whole in the list, examples in
every command's help, shell completion that can be installed."""

from __future__ import annotations

import subprocess
import sys

import pytest
from typer.main import get_command

from edge_stack.cli import app

from cli_support import run

COMMANDS = sorted(get_command(app).commands)  # type: ignore[attr-defined]


def test_the_store_commands_are_there() -> None:
    assert {"list", "pull", "show", "rm", "package"} <= set(COMMANDS)


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_examples_and_takes_dash_h(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run([command, "-h"], capsys)
    assert code == 0 and err == ""
    assert out.startswith(f"Usage: edgestack {command} ")
    examples = out.split("Examples:", 1)[1].split("Options:", 1)[0]
    assert f"edgestack {command}" in examples or command == "export-lora"
    assert run([command, "--help"], capsys)[1] == out


def test_command_list_shows_whole_summaries(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["-h"], capsys)
    assert code == 0 and "-h, --help" in out
    listing = out.split("Commands:", 1)[1]
    assert "..." not in listing
    # The longest summary is there to its last word, wrapped rather than cut.
    assert "for weights and KV cache)." in " ".join(listing.split())
    for command in COMMANDS:
        assert f"\n  {command} " in listing


@pytest.mark.parametrize("option", ["--stack", "-s"])
@pytest.mark.parametrize("command", ["ask", "chat", "eval", "bench", "serve"])
def test_every_command_that_uses_a_stack_takes_the_same_option(
    command: str, option: str, capsys: pytest.CaptureFixture[str]
) -> None:
    out = run([command, "-h"], capsys)[1]
    assert "-s, --stack" in out and "STACK" in out


def test_shell_completion_can_be_shown_and_installed() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "edge_stack", "--show-completion", "bash"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0 and "_edgestack_completion" in proc.stdout
    out = subprocess.run(
        [sys.executable, "-m", "edge_stack", "-h"], capture_output=True, text=True, timeout=60
    ).stdout
    assert "--install-completion" in out
