"""`edgestack convert --verify`: against the checkpoint, and with LoRA merged in."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from cli_support import run
from lora_builders import build_adapter

pytestmark = [pytest.mark.llama, pytest.mark.torch]


def test_verify_plain_and_merged(
    tiny_model: Callable[[str], Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = tiny_model("gptneox")
    code, out, err = run(
        ["convert", str(base), "-o", str(tmp_path / "plain.gguf"), "--outtype", "q8_0", "--verify"],
        capsys,
    )
    assert code == 0, err
    assert "plain.gguf" in out and "top-1" in err

    adapter = build_adapter(base, tmp_path / "peft", "gptneox", "plain", [1, 2, 3], seed=5).path
    merged = tmp_path / "merged.gguf"
    argv = ["convert", str(base), "-o", str(merged), "--outtype", "q8_0"]
    code, out, err = run([*argv, "--merge-lora", str(adapter), "--verify"], capsys)
    assert code == 0, err
    assert "merged.gguf" in out and "top-1" in err
    assert not list(tmp_path.glob("**/reference.f32.gguf"))  # the reference was temporary
