"""Small real stacks for runtime and CLI tests, and the files they use.

The integration stack is built the way users build theirs: a tiny random GPT-NeoX checkpoint
converted by edgestack (tests/conftest.py's tiny_model/tiny_gguf), and random PEFT adapters
(tests/lora_builders.py) exported by edgestack's LoRA exporter. ``random_lora`` writes an adapter
GGUF directly, for quick tests of adapter files that need no PEFT source.
"""

from __future__ import annotations

import shutil
import textwrap
from pathlib import Path

import pytest

_CACHE: dict[tuple[str, str], Path] = {}

#: tensors the random adapters touch (GGUF names without "blk.N." and ".weight")
LORA_TARGETS = ("attn_qkv", "attn_output", "ffn_up", "ffn_down")


def random_lora(base: Path, out: Path, *, seed: int, rank: int = 4, std: float = 0.4) -> Path:
    """A GGUF LoRA adapter for ``base`` with random A and B on every block's LORA_TARGETS."""
    import gguf
    import numpy as np

    reader = gguf.GGUFReader(base)
    arch_field = reader.get_field(gguf.Keys.General.ARCHITECTURE)
    assert arch_field is not None
    arch = str(arch_field.contents())
    rng = np.random.default_rng(seed)
    writer = gguf.GGUFWriter(out, arch=arch)
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, float(rank))
    for tensor in reader.tensors:
        parts = tensor.name.split(".")
        if (
            len(parts) != 4
            or parts[0] != "blk"
            or parts[2] not in LORA_TARGETS
            or parts[3] != "weight"
        ):
            continue
        n_in, n_out = (int(d) for d in tensor.shape[:2])  # ggml order: ne0 = inputs
        a = rng.normal(0.0, std, size=(rank, n_in)).astype(np.float32)
        b = rng.normal(0.0, std, size=(n_out, rank)).astype(np.float32)
        writer.add_tensor(f"{tensor.name}.lora_a", a)
        writer.add_tensor(f"{tensor.name}.lora_b", b)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out


def write_stack(root: Path, toml: str, files: dict[str, Path]) -> Path:
    """A stack folder: ``files`` copied in under their new names, and stack.toml."""
    root.mkdir(parents=True, exist_ok=True)
    for name, src in files.items():
        if not (root / name).exists():
            shutil.copyfile(src, root / name)
    path = root / "stack.toml"
    path.write_text(textwrap.dedent(toml), encoding="utf-8")
    return path


#: questions the runtime tests ask a stack: plain ones, braces, a bare word
QUESTIONS = [
    "Tom has 12 apples and buys 7 more. How many apples does he have?",
    "What is 15 plus 28?",
    "A {curly} question with {{double}} braces and {extract}",
    "Sam has 23 stamps",
    "zero",
    "Mia gives away 4 of her 9 pens. How many are left?",
    "What is 3 times 4?",
    "Ann has 5 bags with 6 marbles in each bag.",
]


THREE_STAGES = """
name = "tiny"
version = 1
[defaults]
model = "base.gguf"
n_ctx = 256
max_tokens = 12
temperature = 0.0
[[stages]]
name = "extract"
lora = "extract.lora.gguf"
prompt = "Question: {question}\\nEquation:"
[[stages]]
name = "compute"
lora = "compute.lora.gguf"
prompt = "Equation: {extract}\\nValue:"
max_tokens = 8
[[stages]]
name = "say"
prompt = "<|endoftext|>Question: {question}\\nValue: {compute}\\nAnswer:"
"""


def three_stage_stack(factory: pytest.TempPathFactory, base_hf: Path, base_gguf: Path) -> Path:
    """The integration stack: two LoRA stages (real PEFT adapters, exported) and one plain stage
    over one Q8_0 base, built once per session."""
    key = (str(factory.getbasetemp()), "three")
    if key not in _CACHE:
        from edge_stack.convert.lora import export_lora

        from lora_builders import build_adapter

        root = factory.mktemp("three-stage")
        files = {"base.gguf": base_gguf}
        for seed, name in enumerate(("extract", "compute"), start=11):
            peft_dir = build_adapter(
                base_hf, factory.mktemp(f"peft-{name}"), "gptneox", "plain", [1, 2, 3], seed=seed
            ).path
            files[f"{name}.lora.gguf"] = export_lora(
                peft_dir, base_hf, factory.mktemp(f"lora-{name}") / f"{name}.gguf", outtype="f16"
            )
        _CACHE[key] = write_stack(root, THREE_STAGES, files)
    return _CACHE[key]
