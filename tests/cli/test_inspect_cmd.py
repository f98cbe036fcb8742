"""`edgestack inspect` on stacks and GGUF files."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import gguf
import pytest

from cli_support import run
from gguf_builders import GPTNEOX, QWEN2, TOKENS, M, tname, u32, weights, write_model


@pytest.mark.llama
@pytest.mark.torch
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


@pytest.mark.llama
@pytest.mark.torch
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


# Models llama.cpp would abort, hang on or refuse (one per family of checks; the full table is in
# tests/runtime/test_gguf_check.py): inspect says why in one line and exits 1.
UNLOADABLE: dict[str, tuple[dict[str, Any], str]] = {
    "duplicate-token": (
        {"tokens": [*TOKENS[:-1], TOKENS[97]]},
        f"{gguf.Keys.Tokenizer.LIST} has the same text at ids 97 and 256",
    ),
    "rope-dims-0": (
        {"arch": GPTNEOX, "kv": {gguf.Keys.Rope.DIMENSION_COUNT: u32(0)}},
        f"{GPTNEOX}.rope.dimension_count is 0, expected an even number from 2 to the head size 8",
    ),
    "wrong-shape": (
        {"arch": QWEN2, "tensors": {tname(M.FFN_UP, 1): weights(65, 32)}},
        f"tensor '{tname(M.FFN_UP, 1)}' has shape [32, 65], but llama.cpp's {QWEN2} expects [32, 64]",
    ),
}


@pytest.mark.parametrize("case", list(UNLOADABLE))
def test_inspect_reports_models_llama_cpp_cannot_load(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str
) -> None:
    options, expected = UNLOADABLE[case]
    path = write_model(tmp_path / "model.gguf", **options)
    for extra in ([], ["--json"]):
        code, out, err = run(["inspect", str(path), *extra], capsys)
        assert (code, out, err.count("\n")) == (1, "", 1), err
        assert err.startswith(f"edgestack: error: {path} is a GGUF model llama.cpp cannot load: ")
        assert expected in err and "re-convert it with `edgestack convert`" in err
    (tmp_path / "stack.toml").write_text(
        'version = 1\n[[stages]]\nname = "s"\nmodel = "model.gguf"\nprompt = "{question}"\n'
    )
    code, out, _ = run(["inspect", str(tmp_path)], capsys)
    assert code == 1 and "invalid:" in out and expected in out


def test_inspect_a_model_llama_cpp_can_load(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_model(tmp_path / "model.gguf", arch=QWEN2)
    code, out, err = run(["inspect", str(path)], capsys)
    assert (code, err) == (0, "")
    assert "architecture qwen2" in out and "blk.1.ffn_up.weight" in out


# A stack whose file is not there or not a file: the table on stdout says which, and one line on
# stderr names the stack file, the stage, the key and the file (it said nothing before).
BROKEN_FILES: dict[str, tuple[str, Any, str, str]] = {
    # case: (key, how to make the file, the table's word, the error line's)
    "missing-lora": ("lora", None, "missing", "does not exist; fix the path"),
    "missing-model": ("model", None, "missing", "does not exist; fix the path"),
    "fifo": ("lora", os.mkfifo, "not a regular file", "is not a regular file (a FIFO"),
    "folder": ("lora", Path.mkdir, "a folder", "is a folder, but a .gguf file is expected"),
    "empty": ("lora", Path.touch, "invalid:", "is not a valid GGUF file: the file is empty"),
    "empty-model": ("model", Path.touch, "invalid:", "is not a valid GGUF file: the file is"),
}


@pytest.mark.parametrize("case", list(BROKEN_FILES))
@pytest.mark.parametrize("as_json", [False, True], ids=["table", "json"])
def test_inspect_says_which_file_is_unusable(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str, as_json: bool
) -> None:
    key, make, in_table, in_error = BROKEN_FILES[case]
    write_model(tmp_path / "base.gguf", arch=QWEN2)
    broken = tmp_path / "broken.gguf"
    if make is not None:
        make(broken)
    model, lora = ("broken.gguf", None) if key == "model" else ("base.gguf", "broken.gguf")
    (tmp_path / "stack.toml").write_text(
        f'version = 1\n[[stages]]\nname = "ok"\nmodel = "base.gguf"\nprompt = "{{question}}"\n'
        f'[[stages]]\nname = "s"\nmodel = "{model}"\n'
        + (f'lora = "{lora}"\n' if lora else "")
        + 'prompt = "{ok}"\n'
    )
    code, out, err = run(["inspect", str(tmp_path), *(["--json"] if as_json else [])], capsys)
    assert code == 1 and err.count("\n") == 1, err
    assert err.startswith(
        f"edgestack: error: {tmp_path / 'stack.toml'}: stage 's', key '{key}': {broken} "
    )
    assert in_error in err
    if as_json:
        files = {f["path"]: f for f in json.loads(out)["files"]}
        assert in_table in files[str(broken)]["problem"]
        assert (files[str(broken)]["stage"], files[str(broken)]["key"]) == ("s", key)
    else:
        assert f"{broken}: {in_table}" in out
