"""Running the CLI in-process, through its real error boundary (edge_stack.cli.main)."""

from __future__ import annotations

import pytest

from edge_stack.cli import main


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """``edgestack ARGV``: (exit code, stdout, stderr)."""
    try:
        main(argv)
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err
