"""The CLI's one error boundary (edge_stack.cli.main): every kind of failure becomes one stderr
line and its exit code; EDGESTACK_DEBUG=1 shows the traceback instead; --verbose shows llama.cpp's
own log.

The failures are raised from inside a real command (`edgestack logs`, whose run log is replaced
by one that raises), so they cross typer and the boundary exactly as a real failure does.
"""

from __future__ import annotations

import errno
import logging
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import typer

from edge_stack.errors import Cancelled, EdgeStackError, ManifestError
from edge_stack.util._env import settings

from cli_support import run

FAILURES: dict[str, tuple[Callable[[], BaseException], int, str]] = {
    "edgestack-error": (
        lambda: ManifestError("stack.toml: stage 'x',\n key 'prompt': bad;\tfix it"),
        1,
        "edgestack: error: stack.toml: stage 'x', key 'prompt': bad; fix it\n",
    ),
    "cancelled": (
        lambda: Cancelled("stack s: cancelled during stage a"),
        130,
        "edgestack: error: stack s: cancelled during stage a\n",
    ),
    "os-error": (
        lambda: OSError(errno.ENOSPC, "No space left on device", "/data/out.gguf"),
        1,
        "edgestack: error: [Errno 28] No space left on device: '/data/out.gguf'\n",
    ),
    "internal": (
        lambda: ZeroDivisionError("division by zero\nin the middle"),
        1,
        "edgestack: internal error: ZeroDivisionError: division by zero in the middle (run "
        "again with EDGESTACK_DEBUG=1 for the traceback, and please report it)\n",
    ),
    "ctrl-c": (KeyboardInterrupt, 130, "edgestack: interrupted\n"),
}


def _fail_with(monkeypatch: pytest.MonkeyPatch, make: Callable[[], BaseException]) -> None:
    from edge_stack.tools import _runlog

    def broken(*args: object, **kwargs: object) -> None:
        raise make()

    monkeypatch.setattr(_runlog, "RunLog", broken)


def _debug(monkeypatch: pytest.MonkeyPatch, on: bool) -> None:
    if on:
        monkeypatch.setenv("EDGESTACK_DEBUG", "1")
    else:
        monkeypatch.delenv("EDGESTACK_DEBUG", raising=False)
    settings.cache_clear()


@pytest.mark.parametrize("case", list(FAILURES))
def test_each_failure_is_one_line_and_its_exit_code(
    case: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    make, code, line = FAILURES[case]
    _fail_with(monkeypatch, make)
    got, out, err = run(["logs"], capsys)
    assert (got, out) == (code, "")
    # click prints an empty line before its own Abort on Ctrl-C; nothing else may come first.
    assert err.lstrip("\n") == line


@pytest.mark.parametrize("case", list(FAILURES))
def test_debug_shows_the_traceback_instead(
    case: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    make, _, _ = FAILURES[case]
    _fail_with(monkeypatch, make)
    _debug(monkeypatch, True)
    expected = type(make())
    # Ctrl-C inside a command reaches the boundary as click's Abort, which is not a traceback
    # case (the user pressed Ctrl-C): it stays one line even with EDGESTACK_DEBUG=1.
    if expected is KeyboardInterrupt:
        assert run(["logs"], capsys)[0] == 130
        return
    with pytest.raises(expected):
        run(["logs"], capsys)
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("debug", [False, True])
def test_debug_sets_the_log_level(
    debug: bool, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # pytest keeps its own handlers on the root logger, which would make basicConfig a no-op.
    monkeypatch.setattr(logging.root, "handlers", [])
    monkeypatch.setattr(logging.root, "level", logging.ERROR)
    _debug(monkeypatch, debug)
    assert run(["logs", "--json"], capsys)[0] == 0
    assert logging.root.level == (logging.DEBUG if debug else logging.WARNING)
    (handler,) = logging.root.handlers
    assert handler.formatter is not None
    assert handler.formatter._fmt == "%(levelname)s %(name)s: %(message)s"


def test_exit_codes_a_command_returns(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """typer.Exit from inside a command keeps its code; 130 also says it was interrupted."""
    for code, line in ((3, ""), (130, "edgestack: interrupted\n"), (0, "")):
        _fail_with(monkeypatch, lambda code=code: typer.Exit(code))  # type: ignore[misc]
        assert run(["logs"], capsys)[0::2] == (code, line)


def test_usage_errors_and_bare_command(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(["logs", "--limit", "zero"], capsys)
    assert code == 2 and out == ""
    assert err.startswith("edgestack: error: Invalid value for '--limit' ")
    assert err.endswith("; see 'edgestack logs --help'\n") and err.count("\n") == 1
    code, out, err = run(["no-such-command"], capsys)
    assert code == 2 and err.endswith("; see 'edgestack --help'\n") and err.count("\n") == 1
    code, out, err = run([], capsys)  # no arguments: the help, as `edgestack --help`
    assert code == 2 and "Usage: edgestack" in out + err and "Commands" in out + err
    code, out, err = run(["--version"], capsys)
    assert code == 0 and out.startswith("edgestack ") and err == ""


def test_a_real_os_error_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Not injected: a path the OS refuses (its name is too long) in a real command."""
    long_name = tmp_path / ("x" * 300 + ".gguf")
    code, out, err = run(["inspect", str(long_name)], capsys)
    assert code == 1 and out == "" and err.count("\n") == 1
    assert err.startswith("edgestack: error: ") and "Traceback" not in err


def _edgestack(*argv: str, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("EDGESTACK_DEBUG")}
    environ.update(env)
    return subprocess.run(
        [sys.executable, "-m", "edge_stack", *argv],
        capture_output=True,
        text=True,
        env=environ,
        timeout=300,
    )


@pytest.mark.llama
@pytest.mark.torch
def test_debug_and_verbose_in_a_real_process(tiny_stack: Path, tmp_path: Path) -> None:
    bad = tmp_path / "stack.toml"
    bad.write_text('version = 1\n[[stages]]\nname = "s"\nmodel = "m.gguf"\nprompt = "{later}"\n')
    quiet = _edgestack("ask", "q", "--stack", str(bad))
    assert quiet.returncode == 1 and quiet.stderr.count("\n") == 1
    loud = _edgestack("ask", "q", "--stack", str(bad), EDGESTACK_DEBUG="1")
    assert loud.returncode == 1 and "Traceback (most recent call last)" in loud.stderr
    assert "edge_stack.errors.ManifestError: " in loud.stderr

    argv = ("ask", "What is 15 plus 28?", "--stack", str(tiny_stack), "--no-log", "--threads", "1")
    plain = _edgestack(*argv)
    verbose = _edgestack(*argv, "--verbose")
    assert plain.returncode == verbose.returncode == 0
    assert plain.stderr == "" and verbose.stdout == plain.stdout
    # llama.cpp's own loader log, as `llama-cli` prints it
    assert "llama_model_loader" in verbose.stderr or "load_tensors" in verbose.stderr
    debug = _edgestack(*argv, EDGESTACK_DEBUG="1")
    assert debug.stdout == plain.stdout and "DEBUG edge_stack" in debug.stderr


def test_library_errors_are_one_line_edgestack_errors() -> None:
    assert issubclass(ManifestError, EdgeStackError) and issubclass(ManifestError, ValueError)


# --- the boundary's own branches, with the app replaced (mutation testing found them untested) --


def _app_that(outcome: object) -> Callable[..., object]:
    def app(**_: object) -> object:
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    return app


@pytest.mark.parametrize(
    ("outcome", "code"),
    [
        (SystemExit(5), 5),  # a SystemExit that is not about stdout keeps its code
        (typer.Exit(4), 4),
        (0, None),  # a command's return value: 0 and None are success
        (None, None),
        (True, None),  # a bool is not an exit code
        (3, 3),
    ],
)
def test_exit_codes_pass_the_boundary(
    outcome: object, code: int | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    import edge_stack.cli as cli

    monkeypatch.setattr(cli, "app", _app_that(outcome))
    if code is None:
        assert cli.main([]) is None
        return
    with pytest.raises(SystemExit) as info:
        cli.main([])
    assert info.value.code == code


@pytest.mark.parametrize(
    ("exc", "line"),
    [
        (
            __import__("click").ClickException("Bad value."),  # no ctx at all
            "edgestack: error: Bad value; see 'edgestack --help'",
        ),
        (
            __import__("click").UsageError("Missing thing.", ctx=None),
            "edgestack: error: Missing thing; see 'edgestack --help'",
        ),
    ],
)
def test_usage_line_without_a_context(exc: Exception, line: str) -> None:
    from edge_stack.cli import _usage_line

    assert _usage_line(exc) == line  # type: ignore[arg-type]


def test_usage_line_names_the_subcommand() -> None:
    import click

    from edge_stack.cli import _usage_line

    ctx = click.Context(click.Command("ask"), info_name="edgestack ask")
    assert _usage_line(click.UsageError("No such option: --x.", ctx=ctx)) == (
        "edgestack: error: No such option: --x; see 'edgestack ask --help'"
    )

    class Bare:  # a context without a command path
        pass

    exc = click.UsageError("Odd.")
    exc.ctx = Bare()  # type: ignore[assignment]
    assert _usage_line(exc) == "edgestack: error: Odd; see 'edgestack --help'"


def test_exit_130_from_a_command_says_interrupted(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import edge_stack.cli as cli

    monkeypatch.setattr(cli, "app", _app_that(typer.Exit(130)))
    with pytest.raises(SystemExit) as info:
        cli.main([])
    assert info.value.code == 130
    assert capsys.readouterr().err == "edgestack: interrupted\n"


def test_no_arguments_show_the_help_not_an_error_line(capsys: pytest.CaptureFixture[str]) -> None:
    import edge_stack.cli as cli

    with pytest.raises(SystemExit):
        cli.main([])
    out = capsys.readouterr()
    assert "Usage:" in out.out + out.err
    assert "edgestack: error:" not in out.out + out.err
