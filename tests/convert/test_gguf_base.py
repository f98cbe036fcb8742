"""export-lora with a GGUF base: layout and fit read from the GGUF, not from a checkpoint.

The export over the GGUF must be the very export over the checkpoint it was converted from
(same tensors, byte for byte: same names, re-layouts and folded scales), whatever type the GGUF
is stored in, and a GGUF that the adapter does not fit must be refused before anything is written.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import gguf
import numpy as np
import pytest

from edge_stack.convert.lora import export_lora
from edge_stack.errors import AdapterError

from lora_builders import build_adapter, build_adapter_on, lora_config

pytestmark = [
    pytest.mark.torch,
    pytest.mark.filterwarnings("ignore::UserWarning:peft.*"),
    pytest.mark.filterwarnings("ignore::FutureWarning:transformers.*"),
]

IDS = [int(x) for x in np.random.default_rng(0).integers(1, 250, 24)]


def _tensors(path: Path) -> dict[str, np.ndarray]:
    return {t.name: np.array(t.data) for t in gguf.GGUFReader(path).tensors}


@pytest.mark.parametrize("outtype", ["f32", "q8_0"])
@pytest.mark.parametrize(
    "arch", ["gptneox", "llama", "qwen2", "mistral", "qwen3", "gemma3", "phi3"]
)
def test_export_over_gguf_equals_export_over_checkpoint(
    arch: str,
    outtype: str,
    tiny_model: Callable[[str], Path],
    tiny_gguf: Callable[..., Path],
    tmp_path: Path,
) -> None:
    base = tiny_model(arch)
    adapter = build_adapter(base, tmp_path / "adapter", arch, "patterns", IDS).path
    want = export_lora(adapter, base, tmp_path / "from-checkpoint.gguf")
    got = export_lora(adapter, tiny_gguf(arch, outtype), tmp_path / "from-gguf.gguf")
    a, b = _tensors(want), _tensors(got)
    assert a.keys() == b.keys()
    assert all(np.array_equal(a[k], b[k]) for k in a), arch


@pytest.mark.llama
def test_adapter_over_gguf_base_runs_like_peft(
    tiny_model: Callable[[str], Path], tiny_gguf: Callable[..., Path], tmp_path: Path
) -> None:
    from edge_stack.engines.llama import LlamaModel
    from edge_stack.engines.llama._context import LlamaContext

    built = build_adapter(tiny_model("llama"), tmp_path / "adapter", "llama", "rslora", IDS)
    base = tiny_gguf("llama", "f32")
    lora = export_lora(built.path, base, tmp_path / "a.gguf")
    with LlamaModel.load(base) as m, LlamaContext(m, n_ctx=64, n_threads=1, lora=lora) as ctx:
        got = ctx.eval_logits(IDS)
    assert np.abs(got - built.peft_logits).max() < 0.03
    assert np.abs(built.peft_logits - built.base_logits).max() > 1.0


def test_mismatched_gguf_base_is_refused(
    tiny_model: Callable[[str], Path], tiny_gguf: Callable[..., Path], tmp_path: Path
) -> None:
    adapter = build_adapter(tiny_model("llama"), tmp_path / "adapter", "llama", "plain", IDS).path
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(AdapterError) as info:
        export_lora(adapter, tiny_gguf("qwen2-tied", "f32"), out / "a.gguf")
    message = str(info.value)
    assert "\n" not in message
    assert re.search(r"ties its output layer|does not (fit|have)", message), message
    assert list(out.iterdir()) == []


def test_lm_head_lora_on_tied_gguf_base_is_refused(
    tiny_model: Callable[[str], Path], tiny_gguf: Callable[..., Path], tmp_path: Path
) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    base = tiny_model("llama-tied-mha")
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    folder = build_adapter_on(model, tmp_path / "adapter", lora_config("llama", "plain"))
    with pytest.raises(AdapterError, match="ties its output layer"):
        export_lora(folder, tiny_gguf("llama-tied-mha", "f32"), tmp_path / "a.gguf")
