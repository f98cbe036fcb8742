"""`edgestack bench` on the tiny real stack: the documented fields (no timing assertions)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cli_support import run

pytestmark = [pytest.mark.llama, pytest.mark.torch]

SPREAD = ["median", "min", "max"]


def test_bench_json_fields(tiny_stack: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(
        ["bench", "--stack", str(tiny_stack), "--runs", "2", "--threads", "1", "--json"], capsys
    )
    assert code == 0 and err == ""
    r = json.loads(out)
    assert list(r) == [
        "stack",
        "path",
        "runs",
        "threads",
        "question",
        "load_s",
        "cold_start_s",
        "seconds_per_question",
        "memory",
        "stages",
    ]
    assert r["stack"] == "tiny" and r["runs"] == 2 and r["threads"] == 1
    for key in ("load_s", "cold_start_s", "seconds_per_question"):
        assert list(r[key]) == SPREAD
        assert 0 < r[key]["min"] <= r[key]["median"] <= r[key]["max"]
    mem = r["memory"]
    assert mem["kind"] in ("pss", "rss_peak")
    assert list(mem) == [
        "kind",
        "process_mb",
        "runtime_mb",
        "stack_mb",
        "weights_mb",
        "kv_cache_mb",
        "state_mb",
        "adapters_mb",
    ]
    assert mem["weights_mb"] > 0 and mem["kv_cache_mb"] > 0 and mem["adapters_mb"] > 0
    assert [s["name"] for s in r["stages"]] == ["extract", "compute", "say"]
    for s in r["stages"]:
        assert list(s) == [
            "name",
            "model",
            "lora",
            "load_s",
            "prompt_tokens",
            "prompt_tok_s",
            "completion_tokens",
            "gen_tok_s",
            "ttft_s",
            "kv_cache_mb",
            "state_mb",
        ]
        assert list(s["load_s"]) == SPREAD and list(s["prompt_tok_s"]) == SPREAD
        assert s["prompt_tokens"] > 0 and s["prompt_tok_s"]["median"] > 0
        if s["completion_tokens"]:
            assert s["gen_tok_s"]["median"] > 0 and s["ttft_s"]["median"] > 0
    assert [s["lora"] for s in r["stages"]] == ["extract.lora.gguf", "compute.lora.gguf", None]


def test_bench_table(tiny_stack: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(["bench", "--stack", str(tiny_stack), "--runs", "1"], capsys)
    assert code == 0 and err == ""
    assert "cold start" in out and "memory (" in out
    for name in ("extract", "compute", "say"):
        assert any(line.startswith(name) for line in out.splitlines())


def test_bench_bad_runs(tiny_stack: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(["bench", "--stack", str(tiny_stack), "--runs", "0"], capsys)
    assert code == 2 and "--runs" in err
