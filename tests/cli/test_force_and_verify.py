"""--force replaces an output, a failed write with --force keeps the old file, and
`convert --verify` that fails leaves nothing behind (convert, export-lora, eval); `convert
--lora-scale` reaches the merge. Each through the real CLI boundary (edge_stack.cli.main)."""

from __future__ import annotations

import errno
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from edge_stack.util._atomic import TEMP_MARK

from cli_support import run
from lora_builders import build_adapter

pytestmark = [pytest.mark.llama, pytest.mark.torch]

OLD = b"the old file, kept unless a new one is complete"


@pytest.fixture(scope="module")
def adapter(tiny_model: Callable[[str], Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tiny_model("gptneox")
    return build_adapter(
        base, tmp_path_factory.mktemp("peft"), "gptneox", "plain", [1, 2, 3], seed=5
    ).path


def _tensors(path: Path) -> dict[str, np.ndarray]:
    import gguf

    return {t.name: np.array(t.data) for t in gguf.GGUFReader(path).tensors}


def _same_tensors(a: Path, b: Path) -> bool:
    ta, tb = _tensors(a), _tensors(b)
    return ta.keys() == tb.keys() and all(np.array_equal(ta[k], tb[k]) for k in ta)


def _no_temps(folder: Path) -> bool:
    return not [p for p in folder.rglob("*") if TEMP_MARK in p.name]


def _disk_full_after(calls: int) -> Callable[..., object]:
    """A stand-in that lets ``calls`` calls through, then fails as a full disk does."""
    seen = 0

    def wrap(real: Callable[..., object]) -> Callable[..., object]:
        def call(*args: object, **kwargs: object) -> object:
            nonlocal seen
            seen += 1
            if seen > calls:
                raise OSError(errno.ENOSPC, "No space left on device")
            return real(*args, **kwargs)

        return call

    return wrap


def test_convert_force_replaces_and_a_failed_forced_write_keeps_the_old_file(
    tiny_model: Callable[[str], Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from edge_stack.convert import convert_checkpoint, writer

    base = tiny_model("gptneox")
    (tmp_path / "ref").mkdir()
    reference = convert_checkpoint(base, tmp_path / "ref" / "m.gguf", outtype="f16")
    out = tmp_path / "out" / "m.gguf"
    out.parent.mkdir()
    out.write_bytes(OLD)
    argv = ["convert", str(base), "-o", str(out), "--outtype", "f16"]
    capsys.readouterr()  # what building the fixtures printed
    monkeypatch.setattr(writer, "_encode", _disk_full_after(3)(writer._encode))
    code, stdout, err = run([*argv, "--force"], capsys)
    assert (code, stdout) == (1, "") and err.count("\n") == 1
    assert err.startswith("edgestack: error: ") and "No space left on device" in err
    assert out.read_bytes() == OLD and _no_temps(out.parent)
    monkeypatch.undo()
    code, stdout, err = run(argv, capsys)
    assert code == 1 and "--force" in err and out.read_bytes() == OLD
    code, stdout, err = run([*argv, "--force"], capsys)
    assert code == 0 and stdout.startswith(f"{out}\tf16\t")
    assert _same_tensors(out, reference) and _no_temps(out.parent)


def test_convert_verify_that_fails_writes_nothing(
    tiny_model: Callable[[str], Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from edge_stack.convert import verify

    # Real conversion and verification, against a bar no file can reach.
    monkeypatch.setitem(verify.DEFAULT_THRESHOLDS, "q8_0", verify.Thresholds(1.01, 0.0))  # type: ignore[arg-type]
    base = tiny_model("gptneox")
    out = tmp_path / "m.gguf"
    argv = ["convert", str(base), "-o", str(out), "--outtype", "q8_0", "--verify"]
    capsys.readouterr()  # what building the fixtures printed
    code, stdout, err = run(argv, capsys)
    assert (code, stdout) == (1, "")
    lines = err.strip().splitlines()
    assert lines[0].startswith("FAIL q8_0: top-1 agreement")  # the report, then the error
    assert lines[-1].startswith(f"edgestack: error: {out} disagrees with {base}: FAIL q8_0")
    assert lines[-1].endswith("it was not written. Check the checkpoint, or try a finer --outtype")
    assert list(tmp_path.iterdir()) == []  # no output, no temporary file, no reference
    out.write_bytes(OLD)
    code, _, err = run([*argv, "--force"], capsys)
    assert code == 1 and out.read_bytes() == OLD and list(tmp_path.iterdir()) == [out]
    monkeypatch.undo()
    code, stdout, err = run([*argv, "--force"], capsys)
    assert code == 0 and "PASS q8_0" in err and out.read_bytes()[:4] == b"GGUF"
    assert list(tmp_path.iterdir()) == [out]


def test_convert_lora_scale_reaches_the_merge(
    tiny_model: Callable[[str], Path],
    adapter: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from edge_stack.convert import convert_checkpoint

    base = tiny_model("gptneox")

    def cli(scale: str, name: str) -> Path:
        out = tmp_path / name
        argv = ["convert", str(base), "-o", str(out), "--outtype", "f32"]
        code, _, err = run(
            [*argv, "--merge-lora", str(adapter), "--lora-scale", scale, "--verify"], capsys
        )
        assert code == 0 and "PASS f32" in err, err
        return out

    half = cli("0.5", "half.gguf")
    lib = convert_checkpoint(
        base, tmp_path / "lib.gguf", outtype="f32", merge_lora=[adapter], lora_scale=0.5
    )
    assert _same_tensors(half, lib)
    full = convert_checkpoint(base, tmp_path / "full.gguf", outtype="f32", merge_lora=[adapter])
    assert not _same_tensors(half, full)
    # Scale 0 is the base itself.
    plain = convert_checkpoint(base, tmp_path / "plain.gguf", outtype="f32")
    assert _same_tensors(cli("0", "zero.gguf"), plain)


def test_export_lora_force_replaces_and_a_failed_forced_write_keeps_the_old_file(
    tiny_model: Callable[[str], Path],
    adapter: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import gguf

    from edge_stack.convert.lora import export_lora

    base = tiny_model("gptneox")
    reference = export_lora(adapter, base, tmp_path / "ref.gguf")
    out = tmp_path / "out" / "a.gguf"
    out.parent.mkdir()
    out.write_bytes(OLD)
    argv = ["export-lora", str(adapter), "--base", str(base), "-o", str(out), "--force"]
    capsys.readouterr()  # what building the fixtures printed
    real = gguf.GGUFWriter.write_tensors_to_file

    def half_then_full(self: gguf.GGUFWriter, *args: object, **kwargs: object) -> None:
        assert self.fout is not None
        self.fout[0].write(b"\0" * 4096)  # some bytes reach the file first
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(gguf.GGUFWriter, "write_tensors_to_file", half_then_full)
    code, stdout, err = run(argv, capsys)
    assert (code, stdout) == (1, "") and "No space left on device" in err and err.count("\n") == 1
    assert out.read_bytes() == OLD and _no_temps(out.parent)
    monkeypatch.setattr(gguf.GGUFWriter, "write_tensors_to_file", real)
    code, stdout, err = run([*argv, "--json"], capsys)
    assert code == 0 and json.loads(stdout)["output"] == str(out)
    assert _same_tensors(out, reference) and _no_temps(out.parent)


def test_eval_report_force_replaces_and_a_failed_run_keeps_the_old_report(
    tiny_stack: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = tmp_path / "good.jsonl"
    good.write_text(json.dumps({"question": "What is 15 plus 28?", "answer": 43}) + "\n")
    bad = tmp_path / "bad.jsonl"  # the second question does not fit the stage's context
    bad.write_text(
        json.dumps({"question": "What is 1 plus 2?", "answer": 3})
        + "\n"
        + json.dumps({"question": "word " * 400, "answer": 1})
        + "\n"
    )
    report = tmp_path / "report.json"
    report.write_bytes(OLD)
    argv = [
        "eval",
        "--stack",
        str(tiny_stack),
        "--threads",
        "1",
        "--report",
        str(report),
        "--force",
    ]
    code, _, err = run([*argv, "--data", str(bad)], capsys)
    assert code == 1 and "stage extract" in err and err.count("\n") == 1
    assert report.read_bytes() == OLD and _no_temps(tmp_path)
    code, _, err = run([*argv, "--data", str(good)], capsys)
    assert code == 0, err
    body = json.loads(report.read_text())
    assert body["n"] == 1 and body["cases"][0]["question"] == "What is 15 plus 28?"
