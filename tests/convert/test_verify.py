"""edge_stack.convert.verify and `edgestack verify`: GGUF and transformers references."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from edge_stack.cli import main
from edge_stack.convert.verify import (
    DEFAULT_THRESHOLDS,
    Thresholds,
    compare_logits,
    default_thresholds,
    verify,
)
from edge_stack.errors import BadArgument, ModelFileNotFound


def _cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
        raise SystemExit(0)
    out, err = capsys.readouterr()
    return int(exit_info.value.code or 0), out, err


@pytest.fixture(scope="module")
def other_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A second random GPT-NeoX with the same tokenizer and shapes but other weights."""
    from edge_stack.convert import convert_checkpoint

    from model_builders import build_model

    root = tmp_path_factory.mktemp("other")
    hf = build_model("gptneox", root / "hf", seed=1)
    return convert_checkpoint(hf, root / "other.f32.gguf", outtype="f32")


@pytest.mark.parametrize(
    ("file_type", "expected"),
    [
        ("f32", "f32"),
        ("F16", "f16"),
        ("q8_0", "q8_0"),
        ("q6_k", "q6_k"),
        ("q5_k_m", "q5"),
        ("q5_0", "q5"),
        ("q4_k_m", "q4"),
        ("iq4_xs", "q4"),
        ("q3_k_s", "low"),
        ("tq2_0", "low"),
        ("unknown", "low"),
    ],
)
def test_default_thresholds_by_type(file_type: str, expected: str) -> None:
    assert default_thresholds(file_type) == DEFAULT_THRESHOLDS[expected]


def test_thresholds_get_looser_with_fewer_bits() -> None:
    order = ["f32", "f16", "bf16", "q8_0", "q6_k", "q5", "q4", "low"]
    limits = [DEFAULT_THRESHOLDS[k] for k in order]
    assert all(
        a.min_top1 >= b.min_top1 and a.max_kl <= b.max_kl for a, b in itertools.pairwise(limits)
    )


def test_compare_logits_metrics() -> None:
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(6, 50)).astype(np.float32)
    same = compare_logits("t", ref.copy(), ref)
    assert (same.top1_agreement, same.mean_kl, same.max_abs_dlogit) == (1.0, 0.0, 0.0)
    shifted = compare_logits("t", ref + 3.0, ref)  # a constant shift changes no probability
    assert shifted.mean_kl < 1e-9 and shifted.top1_agreement == 1.0
    assert shifted.max_abs_dlogit == pytest.approx(3.0)
    other = compare_logits("t", rng.normal(size=(6, 50)).astype(np.float32), ref)
    assert other.mean_kl > 0.1 and other.n_tokens == 6


@pytest.mark.llama
@pytest.mark.torch
@pytest.mark.parametrize(
    "variant",
    ["gptneox", "llama", "qwen2", "llama-spm", "mistral", "qwen3", "gemma3", "phi3"],
)
@pytest.mark.parametrize("outtype", ["f32", "f16"])
def test_conversion_matches_transformers(
    tiny_gguf: Callable[..., Path], tiny_model: Callable[[str], Path], variant: str, outtype: str
) -> None:
    report = verify(tiny_gguf(variant, outtype), tiny_model(variant))
    assert report.passed, report.summary()
    assert report.reference_kind == "transformers" and report.file_type == outtype
    assert report.top1_agreement >= 0.99 and report.mean_kl < 1e-4
    assert len(report.texts) == 5 and all(t.n_tokens > 10 for t in report.texts)


@pytest.mark.llama
@pytest.mark.torch
def test_gguf_reference_and_custom_texts(tiny_gguf: Callable[..., Path]) -> None:
    f32, f16 = tiny_gguf("gptneox", "f32"), tiny_gguf("gptneox", "f16")
    report = verify(f16, f32, texts=["one short text", "and another one\nwith a newline"])
    assert report.passed and report.reference_kind == "gguf" and len(report.texts) == 2
    assert report.max_abs_dlogit < 0.1
    self_check = verify(f32, f32)
    assert self_check.top1_agreement == 1.0 and self_check.max_abs_dlogit == 0.0
    strict = verify(f16, f32, thresholds={"max_kl": 0.0})
    assert not strict.passed and strict.thresholds.min_top1 == DEFAULT_THRESHOLDS["f16"].min_top1
    assert verify(f16, f32, thresholds=Thresholds(min_top1=0.0, max_kl=1.0)).passed
    with pytest.raises(BadArgument, match="unknown threshold"):
        verify(f16, f32, thresholds={"min_top5": 0.5})


@pytest.mark.llama
@pytest.mark.torch
def test_different_model_fails(tiny_gguf: Callable[..., Path], other_gguf: Path) -> None:
    report = verify(tiny_gguf("gptneox", "f32"), other_gguf)
    assert not report.passed
    assert report.top1_agreement < 0.2 and report.mean_kl > DEFAULT_THRESHOLDS["low"].max_kl


@pytest.mark.llama
@pytest.mark.torch
def test_bad_references(tiny_gguf: Callable[..., Path], tmp_path: Path) -> None:
    from edge_stack.convert import convert_checkpoint

    from model_builders import build_model

    cand = tiny_gguf("gptneox", "f32")
    with pytest.raises(ModelFileNotFound, match="does not exist"):
        verify(cand, tmp_path / "nowhere.gguf")
    wider = build_model("gptneox", tmp_path / "wide", pad_vocab_to=256)  # 768 tokens, not 640
    with pytest.raises(BadArgument, match="different vocabularies"):
        verify(cand, convert_checkpoint(wider, tmp_path / "wide.gguf", outtype="f16"))
    with pytest.raises(BadArgument, match="different vocabularies"):
        verify(cand, wider)
    with pytest.raises(ModelFileNotFound):
        verify(tmp_path / "missing.gguf", cand)


@pytest.mark.llama
@pytest.mark.torch
def test_cli_verify(
    tiny_gguf: Callable[..., Path], other_gguf: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    f32, f16 = tiny_gguf("gptneox", "f32"), tiny_gguf("gptneox", "f16")
    code, out, err = _cli(["verify", str(f16), "--reference", str(f32)], capsys)
    assert code == 0 and err == ""
    assert out.strip().splitlines()[-1].startswith("PASS f16")

    code, out, err = _cli(["verify", str(f16), "-r", str(f32), "--json"], capsys)
    record = json.loads(out)
    assert code == 0 and record["passed"] is True and len(record["texts"]) == 5

    code, out, err = _cli(["verify", str(f32), "-r", str(other_gguf)], capsys)
    assert code == 1 and "FAIL f32" in out
    assert err.count("\n") == 1 and err.startswith("edgestack: error:") and "does not match" in err

    code, _, err = _cli(["verify", str(f16), "-r", str(f32), "--max-kl", "0"], capsys)
    assert code == 1 and "max 0e+00" in err


@pytest.mark.llama
@pytest.mark.torch
def test_verify_runs_without_torch(tiny_gguf: Callable[..., Path], tmp_path: Path) -> None:
    """GGUF-vs-GGUF needs neither torch nor transformers; a folder reference says what to do."""
    f32, f16 = tiny_gguf("gptneox", "f32"), tiny_gguf("gptneox", "f16")
    (tmp_path / "hf").mkdir()
    script = (
        "import sys\n"
        "sys.modules['torch'] = None\n"
        "sys.modules['transformers'] = None\n"
        "from edge_stack.cli import main\n"
        "main(sys.argv[1:])\n"
    )
    env = {**os.environ, "EDGESTACK_THREADS": "1"}
    ok = subprocess.run(
        [sys.executable, "-c", script, "verify", str(f16), "-r", str(f32)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert ok.returncode == 0, ok.stderr
    assert "PASS" in ok.stdout and ok.stderr == ""
    no_torch = subprocess.run(
        [sys.executable, "-c", script, "verify", str(f16), "-r", str(tmp_path / "hf")],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert no_torch.returncode == 1
    assert no_torch.stderr.count("\n") == 1 and "needs transformers and torch" in no_torch.stderr
