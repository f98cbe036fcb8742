"""Quantization fallbacks are reported: rows that are not whole blocks of the asked type.

The tiny models are 64 values wide; q4_k_m's Q4_K blocks hold 256, so llama.cpp stores those
matrices in another type (Q5_0, Q8_0, ...). quantize and convert say so in one warning line,
`quantize --json` lists them, and inspect shows the mix of types.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path

import pytest

from edge_stack.convert import convert_checkpoint
from edge_stack.convert.quantize import fallbacks, quantize, tensor_type_mix

pytestmark = [pytest.mark.llama, pytest.mark.torch]


@pytest.mark.parametrize(
    ("qtype", "reported"),
    [("q4_k_m", True), ("q8_0", False), ("q4_0", False)],  # 64 is a multiple of 32
)
def test_quantize_reports_fallbacks(
    qtype: str,
    reported: bool,
    tiny_gguf: Callable[..., Path],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="edge_stack.convert.quantize"):
        out = quantize(tiny_gguf("llama", "f32"), tmp_path / "q.gguf", qtype=qtype)
    found = fallbacks(out, qtype)
    assert bool(found) is reported
    lines = [r.getMessage() for r in caplog.records if "llama.cpp used another type" in r.message]
    assert len(lines) == (1 if reported else 0)
    if reported:
        assert "Q4_K's 256-value blocks" in lines[0] and "\n" not in lines[0]
        mix = tensor_type_mix(out)
        assert len([k for k in mix if k != "F32"]) >= 2  # really a mix


def test_convert_reports_and_inspect_shows_the_mix(
    tiny_model: Callable[[str], Path],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from edge_stack.cli import main

    with caplog.at_level(logging.WARNING):
        out = convert_checkpoint(tiny_model("qwen3"), tmp_path / "q.gguf", outtype="q4_k_m")
    assert any("llama.cpp used another type" in r.message for r in caplog.records)
    main(["inspect", str(out), "--json"])
    info = json.loads(capsys.readouterr().out)
    assert info["tensor_types"] == tensor_type_mix(out)
    main(["inspect", str(out)])
    shown = capsys.readouterr().out
    assert "tensor types " in shown and "Q5_0 x" in shown
