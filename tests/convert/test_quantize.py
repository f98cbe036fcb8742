"""edge_stack.convert.quantize and `edgestack quantize`, through llama.cpp's own quantizer."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import gguf
import pytest
from output_nodes import char_device, fifo, link_to

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
from edge_stack.util._atomic import TEMP_MARK


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
    from edge_stack.engines.llama import LlamaContext, LlamaModel

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


# kind -> what is at the output path before `edgestack quantize -o` runs
NOT_REGULAR: dict[str, Callable[[Path, bool], Path]] = {
    "device": lambda d, force: char_device(d, force=force),
    "fifo": lambda d, _: fifo(d),
    "link to device": lambda d, force: link_to(char_device(d, force=force), d),
    "link to fifo": lambda d, _: link_to(fifo(d), d),
}


@pytest.mark.llama
@pytest.mark.torch
@pytest.mark.parametrize("force", [False, True])
@pytest.mark.parametrize("kind", list(NOT_REGULAR))
def test_cli_quantize_refuses_outputs_that_are_not_regular_files(
    tiny_gguf: Callable[..., Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    kind: str,
    force: bool,
) -> None:
    src = tiny_gguf("gptneox", "f32")
    out = NOT_REGULAR[kind](tmp_path, force)
    before = os.lstat(out)
    argv = ["quantize", str(src), "-o", str(out), "-t", "q8_0"] + (["--force"] if force else [])
    code, stdout, err = _cli(argv, capsys)
    assert (code, stdout) == (1, "")
    assert err.count("\n") == 1 and "not a regular file" in err
    after = os.lstat(out)
    assert (after.st_mode, after.st_ino) == (before.st_mode, before.st_ino)
    assert not [p for p in tmp_path.iterdir() if TEMP_MARK in p.name]


# qtype -> does the forced quantization succeed (replacing the old file) or fail (keeping it)?
FORCED: dict[str, bool] = {"q8_0": True, "q4_k_m": True, "q1_0": False}


@pytest.mark.llama
@pytest.mark.torch
@pytest.mark.parametrize("qtype", list(FORCED))
def test_cli_quantize_force_replaces_only_on_success(
    tiny_gguf: Callable[..., Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], qtype: str
) -> None:
    src = tiny_gguf("gptneox", "f32")
    out = tmp_path / "m.gguf"
    out.write_bytes(b"old model")
    code, _, err = _cli(["quantize", str(src), "-o", str(out), "-t", qtype, "--force"], capsys)
    if FORCED[qtype]:
        assert (code, err) == (0, "")
        assert _file_type(out) == QUANT_TYPES[qtype]
    else:  # q1_0 needs rows of 128 values: llama.cpp refuses these
        assert code == 1 and err.count("\n") == 1 and "q1_0" in err
        assert out.read_bytes() == b"old model"
    assert list(tmp_path.iterdir()) == [out]


@pytest.mark.llama
@pytest.mark.torch
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGSEGV])
def test_crashed_quantizer_is_a_quantize_error(
    tiny_gguf: Callable[..., Path], tmp_path: Path, sig: signal.Signals
) -> None:
    """llama.cpp dying (a segfault in a kernel, the OOM killer) is an error, not a success."""
    src = tiny_gguf("gptneox", "f32")
    out = tmp_path / "m.gguf"
    killed: list[int] = []

    def kill_the_child() -> None:
        deadline = time.monotonic() + 60
        while not killed and time.monotonic() < deadline:
            for entry in Path("/proc").iterdir():
                try:
                    cmdline = (entry / "cmdline").read_bytes()
                except OSError:
                    continue
                if b"_quantize_child" in cmdline and os.fsencode(tmp_path) in cmdline:
                    os.kill(int(entry.name), sig)
                    killed.append(int(entry.name))
                    break
            time.sleep(0.001)

    killer = threading.Thread(target=kill_the_child)
    killer.start()
    try:
        with pytest.raises(QuantizeError, match=f"killed by {sig.name}") as info:
            quantize(src, out, qtype="q8_0")
    finally:
        killer.join()
    assert killed and "\n" not in str(info.value)
    assert list(tmp_path.iterdir()) == []
