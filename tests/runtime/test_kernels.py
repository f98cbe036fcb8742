"""The kernel probe (edge_stack.engines.llama._kernels): real child processes, real llama.cpp, real signals.

Faults are simulated with EDGESTACK_PROBE_FAULT, which makes the probe child kill itself with
SIGSEGV when it reaches a type: the parent's detection, the verdict, its cache and the fallback
(extra buffer types off) all run for real. On a machine whose AMX kernels really fault, the
session's own probe (tests/conftest.py) finds them the same way.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

from edge_stack.engines.llama import _kernels
from edge_stack.errors import EngineError
from edge_stack.util._env import settings

pytestmark = pytest.mark.llama

REINSTALL_FRAGMENT = "pip install --force-reinstall --no-cache-dir --no-deps llama-cpp-python"


@pytest.fixture
def fresh_probe(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """A data folder with no verdict in it, and nothing remembered in this process."""
    monkeypatch.setenv("EDGESTACK_HOME", str(tmp_path / "home"))
    settings.cache_clear()
    _kernels.clear_memo()
    yield tmp_path / "home"
    _kernels.clear_memo()


def test_this_machine_runs_every_probed_type_in_safe_mode(fresh_probe: Path) -> None:
    found = _kernels.verdict()
    assert found.broken == ()
    assert set(found.faulty) <= set(_kernels.PROBED_TYPES)
    assert (fresh_probe / "kernels" / f"{found.key}.json").is_file()


def test_simulated_fault_is_detected_by_signal_and_only_that_type(
    fresh_probe: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EDGESTACK_PROBE_FAULT", "q8_0,q4_1")
    settings.cache_clear()
    found = _kernels.verdict()
    assert found.faulty == ("q4_1", "q8_0")
    assert found.how == {"q8_0": "SIGSEGV", "q4_1": "SIGSEGV"}
    assert found.broken == ()  # the fallback was probed for real, and works here


def test_a_spinning_kernel_is_hung_by_its_cpu_time(
    fresh_probe: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EDGESTACK_PROBE_FAULT", "q4_0:spin")
    monkeypatch.setattr(_kernels, "CHILD_CPU_LIMIT_S", 3.0)
    settings.cache_clear()
    found = _kernels.verdict()
    assert found.faulty == ("q4_0",)
    assert found.how == {"q4_0": "timeout"}


def test_a_starved_child_is_waited_for_not_counted_as_hung(
    fresh_probe: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a machine busy with other work a child can wait long for a core: only its CPU time
    counts (its q4_0 step here takes 3 s of sleep, no CPU, beyond a 2 s limit)."""
    monkeypatch.setenv("EDGESTACK_PROBE_FAULT", "q4_0:slow")
    monkeypatch.setattr(_kernels, "PROBED_TYPES", ("q4_0",))
    monkeypatch.setattr(_kernels, "CHILD_CPU_LIMIT_S", 2.0)
    settings.cache_clear()
    found = _kernels.verdict()
    assert found.faulty == () and found.how == {}


@pytest.mark.parametrize(
    ("types", "expected"),
    [
        ({"F32"}, True),  # never reaches the extra buffer types
        ({"F32", "Q8_0"}, False),  # holds a faulty type: all extra buffer types off
        ({"F32", "Q4_0"}, True),  # a working type keeps its fast kernels
        ({"F16", "Q4_1"}, False),
    ],
)
def test_extra_buffer_types_are_off_only_for_models_holding_a_faulty_type(
    fresh_probe: Path, monkeypatch: pytest.MonkeyPatch, types: set[str], expected: bool
) -> None:
    monkeypatch.setenv("EDGESTACK_PROBE_FAULT", "q8_0,q4_1")
    settings.cache_clear()
    assert _kernels.use_extra_bufts(types, Path("m.gguf")) is expected


@pytest.mark.parametrize(("mode", "expected"), [("full", True), ("safe", False)])
def test_explicit_modes_skip_the_probe(
    fresh_probe: Path, monkeypatch: pytest.MonkeyPatch, mode: str, expected: bool
) -> None:
    monkeypatch.setenv("EDGESTACK_KERNELS", mode)
    monkeypatch.setenv("EDGESTACK_PROBE_FAULT", "q8_0")
    settings.cache_clear()
    assert _kernels.use_extra_bufts({"Q8_0"}, Path("m.gguf")) is expected
    assert not (fresh_probe / "kernels").exists()


def test_unknown_mode_is_one_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGESTACK_KERNELS", "fastest")
    settings.cache_clear()
    with pytest.raises(EngineError, match=r"EDGESTACK_KERNELS is 'fastest'; use one of auto"):
        _kernels.use_extra_bufts({"Q8_0"}, Path("m.gguf"))


def test_a_model_that_faults_even_in_safe_mode_is_refused(
    fresh_probe: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = _kernels.probe_key()
    path = _kernels._verdict_path(key)
    _kernels._memo[key, path] = _kernels.Verdict(
        faulty=("q8_0",), broken=("q8_0",), how={"q8_0": "SIGILL"}, key=key
    )
    with pytest.raises(EngineError, match=r"base\.gguf holds Q8_0 weights.*reinstall llama\.cpp"):
        _kernels.use_extra_bufts({"Q8_0", "F32"}, Path("/x/base.gguf"))


@pytest.mark.parametrize("damage", ["", "{", '{"faulty": 3}', '{"key": "other"}', "[]"])
def test_a_damaged_or_foreign_verdict_file_is_probed_again(
    fresh_probe: Path, monkeypatch: pytest.MonkeyPatch, damage: str
) -> None:
    monkeypatch.setenv("EDGESTACK_PROBE_FAULT", "q4_0")
    settings.cache_clear()
    path = _kernels._verdict_path(_kernels.probe_key())
    path.parent.mkdir(parents=True)
    path.write_text(damage)
    found = _kernels.verdict()
    assert found.faulty == ("q4_0",)
    assert json.loads(path.read_text())["faulty"] == ["q4_0"]


def _cli(args: list[str], home: Path, **env: str) -> subprocess.CompletedProcess[str]:
    import os

    full = {**os.environ, "EDGESTACK_HOME": str(home), "EDGESTACK_THREADS": "1", **env}
    full.pop("EDGESTACK_KERNELS", None)
    return subprocess.run(
        [sys.executable, "-m", "edge_stack", *args],
        capture_output=True,
        text=True,
        env=full,
        timeout=300,
        stdin=subprocess.DEVNULL,
    )


def test_cli_falls_back_with_one_warning_line_then_stays_quiet(
    tmp_path: Path, stack_path: Path
) -> None:
    """The tiny stack's base is Q8_0: with Q8_0 'faulting', ask still answers, the same text."""
    home = tmp_path / "home"
    plain = _cli(["ask", "Tom has 3 apples.", "--stack", str(stack_path), "--no-log"], home)
    assert plain.returncode == 0, plain.stderr
    first = _cli(
        ["ask", "Tom has 3 apples.", "--stack", str(stack_path), "--no-log"],
        home,
        EDGESTACK_PROBE_FAULT="q8_0",
    )
    assert first.returncode == 0, first.stderr
    assert first.stdout == plain.stdout
    lines = first.stderr.strip().splitlines()
    assert len(lines) == 1, first.stderr
    assert "crash on this machine for Q8_0" in lines[0]
    assert "SIGSEGV" in lines[0] and REINSTALL_FRAGMENT in lines[0]
    again = _cli(
        ["ask", "Tom has 3 apples.", "--stack", str(stack_path), "--no-log"],
        home,
        EDGESTACK_PROBE_FAULT="q8_0",
    )
    assert again.returncode == 0 and again.stdout == plain.stdout
    assert again.stderr == ""  # the verdict is cached: no second probe, no second warning


@pytest.fixture(scope="module")
def quantized_models(
    tiny_gguf: Callable[..., Path], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Path]:
    from edge_stack.convert.quantize import quantize

    out = tmp_path_factory.mktemp("quantized")
    source = tiny_gguf("llama", "f32")
    models = {"q8_0": tiny_gguf("llama", "q8_0")}
    for qtype in ("q4_0", "q4_1"):
        models[qtype] = quantize(source, out / f"llama.{qtype}.gguf", qtype=qtype)
    return models


_GENERATE = textwrap.dedent(
    """
    import sys
    from edge_stack.engines.llama import LlamaContext, LlamaModel
    model = LlamaModel.load(sys.argv[1])
    ctx = LlamaContext(model, n_ctx=128, n_threads=2)
    tokens = model.tokenize("Tom has 3 apples and", add_bos=model.add_bos, special=False)
    text = "".join(t.text for t in ctx.generate(tokens, max_tokens=16, temperature=0.0))
    print(ctx.last_stats.completion_tokens)
    """
)


@pytest.mark.parametrize("qtype", ["q8_0", "q4_0", "q4_1"])
@pytest.mark.parametrize("kernels", ["auto", "safe"])
def test_quantized_models_run_through_the_runtime_without_a_signal(
    quantized_models: dict[str, Path], tmp_path: Path, qtype: str, kernels: str
) -> None:
    import os

    env = {**os.environ, "EDGESTACK_KERNELS": kernels}
    proc = subprocess.run(
        [sys.executable, "-c", _GENERATE, str(quantized_models[qtype])],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, f"exit {proc.returncode}: {proc.stderr[-500:]}"
    assert int(proc.stdout.split()[-1]) >= 1


@pytest.mark.parametrize(("fault", "repacked"), [("", True), ("q4_0", False), ("iq4_nl", True)])
def test_model_load_switches_llama_cpps_extra_buffer_types(
    fresh_probe: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    quantized_models: dict[str, Path],
    fault: str,
    repacked: bool,
) -> None:
    """llama.cpp says where it put the weights: CPU_REPACK only while Q4_0 is not faulty."""
    import logging

    from edge_stack.engines.llama import LlamaModel
    from edge_stack.engines.llama._lib import lib

    info = lib().llama_print_system_info().decode()
    if "REPACK = 1" not in info or not any(f in info for f in ("AVX2 = 1", "NEON = 1")):
        pytest.skip("this llama.cpp build has no Q4_0 repacking for this CPU")
    monkeypatch.setenv("EDGESTACK_PROBE_FAULT", fault)
    settings.cache_clear()
    caplog.set_level(logging.INFO, logger="edge_stack.llama_cpp")
    model = LlamaModel.load(quantized_models["q4_0"], verbose=True)
    model.close()
    buffers = [r.getMessage() for r in caplog.records if "model buffer size" in r.getMessage()]
    assert buffers, "llama.cpp logged no model buffers"
    assert any("CPU_REPACK" in line for line in buffers) is repacked
