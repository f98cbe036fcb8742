"""Every bad input to the converter: one clear error, and nothing left at the output path."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from edge_stack.convert import convert_checkpoint
from edge_stack.errors import (
    BadArgument,
    CheckpointError,
    EdgeStackError,
    ModelFileNotFound,
    OutputExistsError,
    TokenizerError,
    UnsupportedArchitecture,
)

pytestmark = pytest.mark.torch


def _truncate(folder: Path) -> None:
    path = folder / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 1000])


def _corrupt_header(folder: Path) -> None:
    path = folder / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[8:20] = b"not json at "
    path.write_bytes(bytes(data))


def _only_bin(folder: Path) -> None:
    (folder / "model.safetensors").rename(folder / "pytorch_model.bin")


def _edit_config(**changes: object) -> Callable[[Path], None]:
    def edit(folder: Path) -> None:
        cfg = json.loads((folder / "config.json").read_text())
        cfg.update(changes)
        (folder / "config.json").write_text(json.dumps(cfg))

    return edit


def _drop_key(key: str) -> Callable[[Path], None]:
    def edit(folder: Path) -> None:
        cfg = json.loads((folder / "config.json").read_text())
        del cfg[key]
        (folder / "config.json").write_text(json.dumps(cfg))

    return edit


CASES: list[tuple[str, Callable[[Path], None], type[EdgeStackError], str]] = [
    ("no config", lambda f: (f / "config.json").unlink(), ModelFileNotFound, "config.json"),
    (
        "config not json",
        lambda f: (f / "config.json").write_text("{oops"),
        CheckpointError,
        "line 1",
    ),
    (
        "no weights",
        lambda f: (f / "model.safetensors").unlink(),
        ModelFileNotFound,
        "model.safetensors",
    ),
    ("pytorch bin only", _only_bin, CheckpointError, "save_pretrained"),
    ("truncated safetensors", _truncate, CheckpointError, "truncated"),
    ("corrupt header", _corrupt_header, CheckpointError, "safetensors"),
    (
        "unknown architecture",
        _edit_config(model_type="gpt2", architectures=["GPT2LMHeadModel"]),
        UnsupportedArchitecture,
        "gpt_neox, llama, mistral, qwen2, qwen3, gemma3_text, phi3",
    ),
    ("vocab smaller than tokenizer", _edit_config(vocab_size=100), TokenizerError, "vocab"),
    (
        "hidden size disagrees with weights",
        _edit_config(hidden_size=128, num_attention_heads=8),
        CheckpointError,
        "shape",
    ),
    ("missing key", _drop_key("num_hidden_layers"), CheckpointError, "num_hidden_layers"),
    ("unsupported activation", _edit_config(hidden_act="relu"), CheckpointError, "hidden_act"),
]


@pytest.mark.parametrize(("name", "damage", "error", "fragment"), CASES, ids=[c[0] for c in CASES])
def test_bad_checkpoint(
    name: str,
    damage: Callable[[Path], None],
    error: type[EdgeStackError],
    fragment: str,
    tiny_model: Callable[[str], Path],
    tmp_path: Path,
) -> None:
    folder = tmp_path / "ckpt"
    shutil.copytree(tiny_model("gptneox"), folder)
    damage(folder)
    out = tmp_path / "out.gguf"
    with pytest.raises(error) as info:
        convert_checkpoint(folder, out)
    message = str(info.value)
    assert fragment in message
    assert "\n" not in message
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]  # no temporary file left either


def test_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(ModelFileNotFound, match="does not exist"):
        convert_checkpoint(tmp_path / "nope", tmp_path / "out.gguf")


def test_file_instead_of_folder(tiny_model: Callable[[str], Path], tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="folder"):
        convert_checkpoint(tiny_model("gptneox") / "config.json", tmp_path / "out.gguf")


def test_existing_output_needs_force(tiny_model: Callable[[str], Path], tmp_path: Path) -> None:
    out = tmp_path / "out.gguf"
    out.write_bytes(b"precious")
    with pytest.raises(OutputExistsError, match="--force"):
        convert_checkpoint(tiny_model("gptneox"), out)
    assert out.read_bytes() == b"precious"
    convert_checkpoint(tiny_model("gptneox"), out, force=True)
    assert out.read_bytes()[:4] == b"GGUF"


def test_unknown_outtype(tiny_model: Callable[[str], Path], tmp_path: Path) -> None:
    with pytest.raises(BadArgument, match="q4_k_m"):
        convert_checkpoint(tiny_model("gptneox"), tmp_path / "out.gguf", outtype="q9_z")


def test_failure_mid_write_leaves_nothing(
    tiny_model: Callable[[str], Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from edge_stack.convert import checkpoint

    calls = {"n": 0}
    original = checkpoint.Checkpoint.read_rows

    def failing(self: checkpoint.Checkpoint, name: str, rows: object) -> object:
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt  # as if the user pressed Ctrl-C halfway
        return original(self, name, rows)  # type: ignore[arg-type]

    monkeypatch.setattr(checkpoint.Checkpoint, "read_rows", failing)
    out_dir = tmp_path / "outs"
    out_dir.mkdir()
    with pytest.raises(KeyboardInterrupt):
        convert_checkpoint(tiny_model("gptneox"), out_dir / "out.gguf")
    assert list(out_dir.iterdir()) == []


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edge_stack", *args], capture_output=True, text=True, timeout=300
    )


def test_cli_convert_success_and_errors(tiny_model: Callable[[str], Path], tmp_path: Path) -> None:
    out = tmp_path / "m.gguf"
    ok = _cli("convert", str(tiny_model("llama")), "-o", str(out), "--outtype", "q8_0")
    assert ok.returncode == 0, ok.stderr
    assert str(out) in ok.stdout
    again = _cli("convert", str(tiny_model("llama")), "-o", str(out))
    assert again.returncode == 1
    assert again.stderr.count("\n") == 1
    assert "already exists" in again.stderr and "--force" in again.stderr
    assert "Traceback" not in again.stderr
    missing = _cli("convert", str(tmp_path / "nowhere"), "-o", str(tmp_path / "x.gguf"))
    assert missing.returncode == 1
    assert missing.stderr.startswith("edgestack: error:") and missing.stderr.count("\n") == 1
