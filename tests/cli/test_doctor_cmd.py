"""`edgestack doctor`: the report, the probe's verdict in it, and a damaged data folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edge_stack.engines.llama import _kernels
from edge_stack.util._env import settings

from cli_support import run

pytestmark = pytest.mark.llama


def _doctor(capsys: pytest.CaptureFixture[str], *args: str) -> dict[str, object]:
    code, out, err = run(["doctor", "--json", *args], capsys)
    assert code == 0, err
    report: dict[str, object] = json.loads(out)
    return report


def test_report_names_versions_cpu_kernels_and_a_working_bundled_stack(
    capsys: pytest.CaptureFixture[str],
) -> None:
    import llama_cpp

    report = _doctor(capsys)
    assert report["llama_cpp"]["llama_cpp_python"] == llama_cpp.__version__  # type: ignore[index]
    assert "CPU :" in report["llama_cpp"]["system_info"]  # type: ignore[index]
    assert report["kernels"]["mode"] == "auto"  # type: ignore[index]
    assert report["kernels"]["broken"] == []  # type: ignore[index]
    assert report["bundled_stack"]["status"] == "ok"  # type: ignore[index]
    assert "41" in report["bundled_stack"]["answer"]  # type: ignore[index]


def test_a_faulting_kernel_is_reported_with_the_fix(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EDGESTACK_PROBE_FAULT", "q4_k")
    settings.cache_clear()
    _kernels.clear_memo()
    code, out, _err = run(["doctor", "--no-ask"], capsys)
    _kernels.clear_memo()
    assert code == 0
    assert "fast kernels crash for q4_k (SIGSEGV)" in out
    assert "GGML_NATIVE=OFF" in out


def test_a_damaged_run_log_is_reported_not_raised(
    capsys: pytest.CaptureFixture[str],
) -> None:
    log = settings().data_dir / "runs.sqlite3"
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_bytes(b"SQLite format 3\x00" + b"\xff" * 4000)
    report = _doctor(capsys, "--no-ask")
    assert "damaged" in report["run_log"]["status"]  # type: ignore[index]


def test_explicit_kernel_mode_is_shown_without_probing(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("EDGESTACK_KERNELS", "safe")
    settings.cache_clear()
    code, out, _err = run(["doctor", "--no-ask"], capsys)
    assert code == 0
    assert "EDGESTACK_KERNELS=safe (no probe)" in out
