"""The converter against transformers: logits, config spellings, shards, dtypes, metadata.

Tolerances: llama.cpp keeps its KV cache in f16, so even an f32 GGUF differs from transformers'
float32 forward by a few 1e-3 on these models (logits of magnitude ~5). We allow 0.02 for f32 and
0.03 for f16 weights (f16 rounding of the weights on top), and require the same top-1 token wherever the
reference's top-1 is not a near-tie; q8_0 and bf16 only need to agree on most top-1 tokens.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import gguf
import numpy as np
import pytest

from edge_stack.convert import convert_checkpoint

from model_builders import VARIANTS, hf_logits, llama_logits, rewrite_config

pytestmark = [pytest.mark.llama, pytest.mark.torch]

TEXT = "The quick brown fox, 42 times! Isn't it odd? 3.14\n\tend"

TOLERANCE = {"f32": 0.02, "f16": 0.03}
#: Gemma 3's logits are about twice as large as the others' (embeddings scaled by sqrt(64),
#: four norms a layer) and llama.cpp's GELU goes through an f16 table: the same relative error
#: shows as twice the absolute one (measured 0.020 / 0.038 at f32 / f16)
SCALE = {"gemma3": 2.0}


def _ids(model_dir: Path) -> list[int]:
    from transformers import AutoTokenizer

    return list(AutoTokenizer.from_pretrained(model_dir)(TEXT)["input_ids"])


def _kv(path: Path) -> dict[str, object]:
    reader = gguf.GGUFReader(path)
    out: dict[str, object] = {}
    for field in reader.fields.values():
        if field.types and field.types[0] == gguf.GGUFValueType.ARRAY:
            continue
        out[field.name] = field.contents()
    return out


@pytest.mark.parametrize("outtype", ["f32", "f16"])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_logits_match_transformers(
    variant: str, outtype: str, tiny_model: Callable[[str], Path], tiny_gguf: Callable[..., Path]
) -> None:
    model_dir = tiny_model(variant)
    ids = _ids(model_dir)
    ref = hf_logits(model_dir, ids)
    got = llama_logits(tiny_gguf(variant, outtype), ids)
    tol = TOLERANCE[outtype] * SCALE.get(variant, 1.0)
    assert got.shape == ref.shape
    assert np.abs(ref - got).max() < tol
    # Same top-1 token wherever the reference's choice is not a near-tie the tolerance could flip.
    top2 = np.sort(ref, axis=-1)[:, -2:]
    clear = top2[:, 1] - top2[:, 0] > 2 * tol
    assert clear.mean() > 0.5
    assert (ref.argmax(-1) == got.argmax(-1))[clear].all()


@pytest.mark.parametrize(("outtype", "min_top1"), [("bf16", 0.9), ("q8_0", 0.75)])
@pytest.mark.parametrize("variant", ["gptneox", "llama", "qwen2"])
def test_lossy_direct_types_stay_close(
    variant: str,
    outtype: str,
    min_top1: float,
    tiny_model: Callable[[str], Path],
    tiny_gguf: Callable[..., Path],
) -> None:
    model_dir = tiny_model(variant)
    ids = _ids(model_dir)
    ref = hf_logits(model_dir, ids)
    got = llama_logits(tiny_gguf(variant, outtype), ids)
    assert (ref.argmax(-1) == got.argmax(-1)).mean() >= min_top1
    kv = _kv(tiny_gguf(variant, outtype))
    want = {"bf16": gguf.LlamaFileType.MOSTLY_BF16, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[outtype]
    assert kv[gguf.Keys.General.FILE_TYPE] == want


def test_metadata(tiny_gguf: Callable[..., Path], tiny_model: Callable[[str], Path]) -> None:
    kv = _kv(tiny_gguf("gptneox", "f16"))
    arch = "gptneox"
    assert kv[gguf.Keys.General.ARCHITECTURE] == arch
    assert kv[gguf.Keys.General.TYPE] == "model"
    assert kv[gguf.Keys.General.NAME] == tiny_model("gptneox").name
    assert kv[gguf.Keys.General.FILE_TYPE] == gguf.LlamaFileType.MOSTLY_F16
    assert kv[gguf.Keys.LLM.EMBEDDING_LENGTH.format(arch=arch)] == 64
    assert kv[gguf.Keys.LLM.BLOCK_COUNT.format(arch=arch)] == 2
    assert kv[gguf.Keys.Rope.DIMENSION_COUNT.format(arch=arch)] == 4  # 0.25 * 16
    assert kv[gguf.Keys.LLM.USE_PARALLEL_RESIDUAL.format(arch=arch)] is True
    assert "edgestack" in str(kv[gguf.Keys.General.DESCRIPTION])


def _tensor_bytes(path: Path) -> dict[str, bytes]:
    return {t.name: bytes(t.data.tobytes()) for t in gguf.GGUFReader(path).tensors}


def _convert_copy(src: Path, tmp_path: Path, name: str, **config_changes: object) -> Path:
    folder = tmp_path / name
    shutil.copytree(src, folder)
    if config_changes:
        rewrite_config(folder, **config_changes)
    return convert_checkpoint(folder, tmp_path / f"{name}.gguf", outtype="f32")


@pytest.mark.parametrize(
    ("variant", "changes"),
    [
        # transformers 4.x spelled GPT-NeoX's rotary settings at the top level
        ("gptneox", {"rope_parameters": None, "rotary_pct": 0.25, "rotary_emb_base": 10000}),
        # ... and Llama/Qwen2's rope_theta, with rope_scaling null
        ("llama", {"rope_parameters": None, "rope_theta": 10000.0, "rope_scaling": None}),
        ("qwen2", {"rope_parameters": None, "rope_theta": 10000.0}),
    ],
)
def test_transformers_4_config_spellings(
    variant: str,
    changes: dict[str, object],
    tiny_model: Callable[[str], Path],
    tiny_gguf: Callable[..., Path],
    tmp_path: Path,
) -> None:
    old = _convert_copy(tiny_model(variant), tmp_path, "v4", **changes)
    new = tiny_gguf(variant, "f32")
    kv_old, kv_new = _kv(old), _kv(new)
    kv_old.pop(gguf.Keys.General.NAME)
    kv_new.pop(gguf.Keys.General.NAME)
    kv_old.pop(gguf.Keys.General.DESCRIPTION)
    kv_new.pop(gguf.Keys.General.DESCRIPTION)
    assert kv_old == kv_new
    assert _tensor_bytes(old) == _tensor_bytes(new)


def test_sharded_checkpoint_converts_like_single_file(
    tiny_model: Callable[[str], Path], tiny_gguf: Callable[..., Path], tmp_path: Path
) -> None:
    from transformers import AutoModelForCausalLM

    sharded = tmp_path / "sharded"
    shutil.copytree(tiny_model("llama"), sharded)
    (sharded / "model.safetensors").unlink()
    AutoModelForCausalLM.from_pretrained(tiny_model("llama")).save_pretrained(
        sharded, max_shard_size="100KB"
    )
    assert (sharded / "model.safetensors.index.json").exists()
    out = convert_checkpoint(sharded, tmp_path / "sharded.gguf", outtype="f32")
    assert _tensor_bytes(out) == _tensor_bytes(tiny_gguf("llama", "f32"))


def test_bf16_checkpoint(tiny_model: Callable[[str], Path], tmp_path: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    folder = tmp_path / "bf16"
    shutil.copytree(tiny_model("qwen2"), folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16)
    model.save_pretrained(folder)
    out = convert_checkpoint(folder, tmp_path / "bf16.gguf", outtype="f32")
    ids = _ids(folder)
    ref = hf_logits(folder, ids)  # loads the bf16 weights upcast to float32, as we do
    assert np.abs(ref - llama_logits(out, ids)).max() < TOLERANCE["f32"]


def test_llama3_rope_scaling_matches(tiny_model: Callable[[str], Path], tmp_path: Path) -> None:
    scaling = {
        "rope_type": "llama3",
        "rope_theta": 10000.0,
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 16,
    }
    folder = tmp_path / "llama3"
    shutil.copytree(tiny_model("llama"), folder)
    rewrite_config(folder, rope_parameters=scaling)
    out = convert_checkpoint(folder, tmp_path / "llama3.gguf", outtype="f32")
    assert "rope_freqs.weight" in _tensor_bytes(out)
    ids = _ids(folder) * 3  # long enough for the scaled low frequencies to matter
    ref = hf_logits(folder, ids)
    got = llama_logits(out, ids)
    assert np.abs(ref - got).max() < TOLERANCE["f32"]


def test_quantized_outtype_goes_through_llama_cpp(
    tiny_model: Callable[[str], Path], tmp_path: Path
) -> None:
    out = convert_checkpoint(tiny_model("llama"), tmp_path / "q.gguf", outtype="q4_k_m")
    assert _kv(out)[gguf.Keys.General.FILE_TYPE] == gguf.LlamaFileType.MOSTLY_Q4_K_M
    assert [p.name for p in tmp_path.iterdir()] == ["q.gguf"]  # the f32 intermediate is gone


def test_converter_never_imports_torch(tiny_model: Callable[[str], Path], tmp_path: Path) -> None:
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from edge_stack.convert import convert_checkpoint\n"
        f"convert_checkpoint({str(tiny_model('gptneox'))!r}, {str(tmp_path / 'x.gguf')!r})\n"
        "heavy = [m for m in ('torch', 'transformers', 'peft') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
