"""`edgestack plan`: the memory arithmetic, devices, suggestions and the command."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from edge_stack.errors import BadArgument
from edge_stack.manifest import load_manifest
from edge_stack.tools._devices import DEVICES, parse_device
from edge_stack.tools._plan import (
    CONTEXT_FIXED_BYTES,
    PROCESS_BYTES,
    RUNTIME_BYTES,
    VOCAB_BYTES_PER_TOKEN,
    ModelShape,
    compute_bytes,
    estimate,
    kv_cell_bytes,
    plan_stack,
)

from cli_support import run

SHAPE = ModelShape(
    path=Path("/m/a.gguf"),
    tensor_bytes=100_000_000,
    read_bytes=90_000_000,
    n_vocab=1000,
    n_layer=4,
    n_embd=64,
    n_ff=256,
    k_width=64,
    v_width=64,
    q4_0_bytes=30_000_000,
    file_type="Q8_0",
)


@pytest.mark.parametrize(
    ("kv_type", "cell"),
    [
        ("f16", 4 * (64 + 64) * 2),
        ("f32", 4 * (64 + 64) * 4),
        ("q8_0", 4 * (64 + 64) * 34 / 32),
        ("q4_0", 4 * (64 + 64) * 18 / 32),
    ],
)
def test_kv_cell_bytes(kv_type: str, cell: float) -> None:
    assert kv_cell_bytes(SHAPE, kv_type) == cell


STACK = """
name = "planned"
version = 1
[defaults]
model = "a.gguf"
[[stages]]
name = "one"
lora = "x.lora.gguf"
prompt = "{question}"
[[stages]]
name = "two"
lora = "y.lora.gguf"
prompt = "{one}"
kv_cache_type = "q8_0"
[[stages]]
name = "three"
lora = "x.lora.gguf"
prompt = "{two}"
[[stages]]
name = "four"
model = "b.gguf"
prompt = "{three}"
"""


@pytest.fixture
def spec(tmp_path: Path) -> object:
    for name in ("a.gguf", "b.gguf", "x.lora.gguf", "y.lora.gguf"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "stack.toml").write_text(STACK, encoding="utf-8")
    return load_manifest(tmp_path / "stack.toml")


def _shapes(root: Path) -> dict[Path, ModelShape]:
    a = ModelShape(**{**SHAPE.__dict__, "path": (root / "a.gguf").resolve()})
    b = ModelShape(
        **{**SHAPE.__dict__, "path": (root / "b.gguf").resolve(), "tensor_bytes": 7_000_000}
    )
    return {a.path: a, b.path: b}


N_CTX = {"one": 100, "two": 300, "three": 600, "four": 40}
CELL16 = kv_cell_bytes(SHAPE, "f16")
CELL8 = kv_cell_bytes(SHAPE, "q8_0")


@pytest.mark.parametrize(
    ("memory", "contexts", "kv"),
    [
        # shared: one and three share base a with f16 (streams of the larger, 768 cells);
        # two (q8_0) and four (base b) are alone
        ("shared", 3, 2 * 768 * CELL16 + 512 * CELL8 + 256 * CELL16),
        ("separate", 4, 256 * CELL16 + 512 * CELL8 + 768 * CELL16 + 256 * CELL16),
    ],
)
def test_estimate_counts_shared_files_once(
    spec: object, tmp_path: Path, memory: str, contexts: int, kv: float
) -> None:
    shapes = _shapes(tmp_path)
    adapters = {
        (tmp_path / "x.lora.gguf").resolve(): 3_000_000,
        (tmp_path / "y.lora.gguf").resolve(): 5_000_000,
    }
    e = estimate(spec.stages, shapes, adapters, N_CTX, memory=memory)  # type: ignore[attr-defined]
    assert e.weights_bytes == {"a.gguf": 100_000_000, "b.gguf": 7_000_000}
    assert e.adapters_bytes == {"x.lora.gguf": 3_000_000, "y.lora.gguf": 5_000_000}
    assert len(e.contexts) == contexts
    assert e.kv_bytes == pytest.approx(kv, abs=4)
    sequences = sum(c.n_seq for c in e.contexts)
    assert sequences == 4
    assert e.compute_bytes == 4 * compute_bytes(SHAPE) + contexts * CONTEXT_FIXED_BYTES
    vocab = 2 * VOCAB_BYTES_PER_TOKEN * 1000
    assert e.vocab_bytes == vocab
    assert e.total_bytes == 107_000_000 + 8_000_000 + e.kv_bytes + e.compute_bytes + vocab + (
        RUNTIME_BYTES + PROCESS_BYTES
    )
    assert e.stack_bytes == e.total_bytes - PROCESS_BYTES


def test_low_memory_estimate_is_the_largest_stage(spec: object, tmp_path: Path) -> None:
    shapes = _shapes(tmp_path)
    adapters = {
        (tmp_path / "x.lora.gguf").resolve(): 3_000_000,
        (tmp_path / "y.lora.gguf").resolve(): 5_000_000,
    }
    e = estimate(spec.stages, shapes, adapters, N_CTX, memory="low")  # type: ignore[attr-defined]
    # Stage two: base a, the larger adapter y, 512 q8_0 cells; plus base b's vocabulary alone.
    assert e.peak_stage == "two"
    kv = math.ceil(512 * CELL8)
    assert e.kv_bytes == kv
    assert e.total_bytes == (
        100_000_000
        + 5_000_000
        + kv
        + compute_bytes(SHAPE)
        + CONTEXT_FIXED_BYTES
        + VOCAB_BYTES_PER_TOKEN * 1000
        + 260 * 1000
        + RUNTIME_BYTES
        + PROCESS_BYTES
    )


@pytest.mark.parametrize(
    ("text", "name", "usable"),
    [
        ("pi4-1gb", "pi4-1gb", DEVICES["pi4-1gb"].usable_bytes),
        ("PI5-8GB", "pi5-8gb", DEVICES["pi5-8gb"].usable_bytes),
        ("1GB", "1GB", 1_000_000_000),
        ("1.5GiB", "1.5GiB", int(1.5 * (1 << 30))),
        ("512M", "512M", 512_000_000),
        ("300mib", "300mib", 300 << 20),
    ],
)
def test_parse_device(text: str, name: str, usable: int) -> None:
    device = parse_device(text, bandwidth=1e9)
    assert (device.name, device.usable_bytes) == (name, usable)
    assert device.bandwidth > 0 and device.source


@pytest.mark.parametrize("text", ["pi3", "1 potato", "-1GB", "10MB", "2PB"])
def test_parse_device_refuses(text: str) -> None:
    with pytest.raises(BadArgument, match="--device"):
        parse_device(text, bandwidth=1e9)


def test_device_table_bandwidths_give_the_issue_bound() -> None:
    # 170 MB read per token on a Pi 5: about 35 tokens/s.
    assert 32 <= DEVICES["pi5-4gb"].bandwidth / 170e6 <= 38
    assert DEVICES["pi4-1gb"].usable_bytes < DEVICES["pi4-2gb"].usable_bytes < (2 << 30)


WORD_PROBLEMS = Path(__file__).resolve().parents[2] / "models" / "word-problems" / "stack.toml"


@pytest.mark.llama
def test_plan_of_the_bundled_stack_and_what_makes_it_fit() -> None:
    spec = load_manifest(WORD_PROBLEMS)
    roomy = plan_stack(spec, parse_device("1GB", bandwidth=5e9))
    assert roomy.fits and not roomy.suggestions
    assert [s.n_ctx for s in roomy.stages] == [256, 256, 256]
    assert all(s.tok_s_bound == pytest.approx(5e9 / s.read_bytes) for s in roomy.stages)
    tight = plan_stack(
        spec, parse_device(f"{roomy.estimate.total_bytes - 1_000_000}B", bandwidth=5e9)
    )
    assert not tight.fits and tight.suggestions
    changes = [g.change for g in tight.suggestions]
    assert 'memory = "low"' in changes
    assert all(g.estimate.total_bytes < tight.estimate.total_bytes for g in tight.suggestions)
    assert any(g.fits for g in tight.suggestions)


@pytest.mark.llama
@pytest.mark.parametrize(("device", "code"), [("pi4-1gb", 0), ("20MB", 3)])
def test_plan_command(device: str, code: int, capsys: pytest.CaptureFixture[str]) -> None:
    got, out, err = run(["plan", str(WORD_PROBLEMS), "--device", device, "--json"], capsys)
    assert got == code, err
    plan = json.loads(out)
    assert plan["fits"] is (code == 0)
    assert plan["estimate"]["weights_bytes"] == {"base.q8_0.gguf": pytest.approx(1.1e6, rel=0.1)}
    assert len(plan["stages"]) == 3 and plan["device"]["source"]
    got, text, _ = run(["plan", str(WORD_PROBLEMS), "--device", device], capsys)
    verdict = "fits, " if code == 0 else "does NOT fit"
    assert got == code and verdict in text and "tok/s bound" in text
