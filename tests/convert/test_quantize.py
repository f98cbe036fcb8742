"""edge_stack.convert.quantize and `edgestack quantize`, through llama.cpp's own quantizer."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import gguf
import pytest

from edge_stack.cli import main
from edge_stack.convert.quantize import QUANT_TYPES, quant_type_names, quantize
from edge_stack.convert.verify import verify
from edge_stack.errors import (
    BadArgument,
    GGUFFileError,
    ModelFileNotFound,
    OutputExistsError,
    QuantizeError,
)


def _file_type(path: Path) -> int:
    field = gguf.GGUFReader(path).get_field(gguf.Keys.General.FILE_TYPE)
    assert field is not None
    return int(field.contents())


def _cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
        raise SystemExit(0)
    out, err = capsys.readouterr()
    return int(exit_info.value.code or 0), out, err


def test_quant_types_cover_llama_cpp() -> None:
    import llama_cpp.llama_cpp as llama

    for name, ftype in QUANT_TYPES.items():
        const = "LLAMA_FTYPE_" + ("ALL_" if name == "f32" else "MOSTLY_") + name.upper()
        assert getattr(llama, const) == int(ftype), name
    offered = {
        n.removeprefix("LLAMA_FTYPE_").removeprefix("ALL_").removeprefix("MOSTLY_").lower()
        for n in dir(llama)
        if n.startswith("LLAMA_FTYPE_") and n != "LLAMA_FTYPE_GUESSED"
    }
    assert offered <= set(quant_type_names())
    for common in (
        "q8_0",
        "q4_k_m",
        "q4_k_s",
        "q5_k_m",
        "q6_k",
        "q4_0",
        "q3_k_m",
        "q2_k",
        "f16",
        "bf16",
    ):
        assert common in QUANT_TYPES


@pytest.mark.llama
@pytest.mark.torch
@pytest.mark.parametrize("qtype", ["q8_0", "q4_k_m", "q6_k"])
def test_quantize_gives_loadable_file_that_verifies(
    tiny_gguf: Callable[..., Path], tmp_path: Path, qtype: str
) -> None:
    from edge_stack._llama import LlamaContext, LlamaModel

    src = tiny_gguf("gptneox", "f32")
    out = quantize(src, tmp_path / f"m.{qtype}.gguf", qtype=qtype, threads=1)
    assert out == tmp_path / f"m.{qtype}.gguf"
    assert _file_type(out) == QUANT_TYPES[qtype]
    assert out.stat().st_size < src.stat().st_size / 2
    assert [p.name for p in tmp_path.iterdir()] == [out.name]  # no temporary file left
    with LlamaModel.load(out) as model, LlamaContext(model, n_ctx=32, n_threads=1) as ctx:
        assert ctx.eval_logits([1, 2, 3]).shape == (3, model.n_vocab)
    report = verify(out, src, threads=1)
    assert report.passed, report.summary()
    assert report.file_type == qtype


@pytest.mark.llama
@pytest.mark.torch
def test_quantize_bad_inputs_leave_no_output(
    tiny_gguf: Callable[..., Path], tmp_path: Path
) -> None:
    src = tiny_gguf("gptneox", "f32")
    out = tmp_path / "out.gguf"
    with pytest.raises(ModelFileNotFound, match="does not exist"):
        quantize(tmp_path / "missing.gguf", out, qtype="q8_0")
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"not a gguf file at all" * 100)
    with pytest.raises(GGUFFileError):
        quantize(junk, out, qtype="q8_0")
    with pytest.raises(BadArgument, match="q4_k_m"):  # the message lists the valid names
        quantize(src, out, qtype="q9_z")
    assert not out.exists()

    out.write_bytes(b"keep me")
    with pytest.raises(OutputExistsError, match="--force"):
        quantize(src, out, qtype="q8_0")
    assert out.read_bytes() == b"keep me"
    quantize(src, out, qtype="q8_0", force=True)
    assert _file_type(out) == QUANT_TYPES["q8_0"]

    with pytest.raises(QuantizeError, match="already quantized"):
        quantize(out, tmp_path / "again.gguf", qtype="q4_0")
    assert not (tmp_path / "again.gguf").exists()
    again = quantize(out, tmp_path / "again.gguf", qtype="q4_0", allow_requantize=True)
    assert _file_type(again) == QUANT_TYPES["q4_0"]


@pytest.mark.llama
@pytest.mark.torch
def test_llama_cpp_failure_is_a_quantize_error(
    tiny_gguf: Callable[..., Path], tmp_path: Path
) -> None:
    # q1_0 needs rows of 128 values and has no fallback type: these tiny rows have 64.
    out = tmp_path / "q1.gguf"
    with pytest.raises(QuantizeError, match="q1_0"):
        quantize(tiny_gguf("gptneox", "f32"), out, qtype="q1_0")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.llama
@pytest.mark.torch
def test_cli_quantize(
    tiny_gguf: Callable[..., Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = tiny_gguf("gptneox", "f32")
    out = tmp_path / "m.q4_k_m.gguf"
    code, stdout, err = _cli(
        ["quantize", str(src), "-o", str(out), "--type", "Q4_K_M", "--threads", "1"], capsys
    )
    assert code == 0 and err == ""
    assert stdout.startswith(str(out)) and "q4_k_m" in stdout
    assert _file_type(out) == QUANT_TYPES["q4_k_m"]

    code, _, err = _cli(["quantize", str(src), "-o", str(out), "--type", "q4_k_m"], capsys)
    assert code == 1 and err.count("\n") == 1 and "--force" in err

    code, _, err = _cli(["quantize", str(src), "-o", str(tmp_path / "x.gguf"), "-t", "q7"], capsys)
    assert code == 1 and err.count("\n") == 1 and "unknown quantization type" in err
    assert not (tmp_path / "x.gguf").exists()


@pytest.mark.llama
@pytest.mark.torch
def test_cli_quantize_end_to_end_subprocess(tiny_gguf: Callable[..., Path], tmp_path: Path) -> None:
    src = tiny_gguf("gptneox", "f32")
    out = tmp_path / "m.q8_0.gguf"
    env = {**os.environ, "EDGESTACK_THREADS": "1"}
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "edge_stack",
            "quantize",
            str(src),
            "-o",
            str(out),
            "-t",
            "q8_0",
            "--json",
        ],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    assert run.stderr == ""  # llama.cpp's own log stays silent
    import json

    record = json.loads(run.stdout)
    assert record["output"] == str(out) and record["bytes"] == out.stat().st_size
    bad = subprocess.run(
        [
            sys.executable,
            "-m",
            "edge_stack",
            "quantize",
            str(tmp_path / "none.gguf"),
            "-o",
            str(tmp_path / "o.gguf"),
            "-t",
            "q8_0",
        ],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert bad.returncode != 0 and bad.stdout == ""
    assert bad.stderr.count("\n") == 1 and "does not exist" in bad.stderr
    assert "Traceback" not in bad.stderr and not (tmp_path / "o.gguf").exists()
