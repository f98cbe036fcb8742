"""`edgestack inspect` on stacks and GGUF files."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from cli_support import run

pytestmark = [pytest.mark.llama, pytest.mark.torch]


def test_inspect_stack(tiny_stack: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["inspect", str(tiny_stack)], capsys)
    assert code == 0
    assert "stack tiny" in out and "1. extract: base.gguf + extract.lora.gguf" in out
    assert "3. say: base.gguf" in out and "estimated memory" in out
    code, out, _ = run(["inspect", str(tiny_stack.parent), "--json"], capsys)
    info = json.loads(out)
    assert [s["name"] for s in info["stages"]] == ["extract", "compute", "say"]
    kinds = sorted(f["kind"] for f in info["files"])
    assert kinds == ["adapter", "adapter", "model"]  # the base is listed once
    memory = info["memory"]
    assert memory["model_bytes"] == (tiny_stack.parent / "base.gguf").stat().st_size
    # 3 stages x 2 (K, V) x 2 layers x 256 positions x 64 dims x 2 bytes
    assert memory["kv_cache_bytes"] == 3 * 2 * 2 * 256 * 64 * 2


def test_inspect_gguf(tiny_stack: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["inspect", str(tiny_stack.parent / "base.gguf")], capsys)
    assert code == 0 and "architecture gptneox" in out and "Q8_0" in out and "tokenizer" in out
    assert "blk.0.attn_qkv.weight" in out
    code, out, _ = run(["inspect", str(tiny_stack.parent / "base.gguf"), "--json"], capsys)
    info = json.loads(out)
    assert (
        info["arch"] == "gptneox"
        and info["kind"] == "model"
        and info["n_tensors"] == len(info["tensors"])
    )
    code, out, _ = run(["inspect", str(tiny_stack.parent / "extract.lora.gguf"), "--json"], capsys)
    assert json.loads(out)["kind"] == "adapter"


def test_inspect_bad_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(os.urandom(512))
    code, _, err = run(["inspect", str(bad)], capsys)
    assert code == 1 and "bad.gguf" in err and err.count("\n") == 1
    code, _, err = run(["inspect", str(tmp_path / "nope.gguf")], capsys)
    assert code == 1 and "does not exist" in err
    (tmp_path / "stack.toml").write_text(
        'version = 1\n[[stages]]\nname = "s"\nmodel = "bad.gguf"\nprompt = "{question}"\n'
        '[[stages]]\nname = "t"\nmodel = "gone.gguf"\nprompt = "{s}"\n'
    )
    code, out, _ = run(["inspect", str(tmp_path)], capsys)
    assert code == 1 and "invalid:" in out and "gone.gguf: missing" in out
