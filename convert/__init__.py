"""The converter: Hugging Face checkpoints (and PEFT LoRA adapters) to GGUF.

Installed as ``edge_stack.convert`` (the source folder is the top-level ``convert/``).
It needs numpy, safetensors and gguf only; torch and transformers are test references.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path

from edge_stack._version import __version__
from edge_stack.errors import BadArgument
from edge_stack.util._atomic import atomic_output, check_output, temp_file

__all__ = ["DIRECT_OUTTYPES", "convert_checkpoint"]

logger = logging.getLogger(__name__)

#: outtypes the converter writes itself; every other llama.cpp type is quantized from f32
DIRECT_OUTTYPES = ("f32", "f16", "bf16", "q8_0")


def _check_outtype(outtype: str) -> str:
    name = outtype.lower()
    if name in DIRECT_OUTTYPES:
        return name
    from .quantize import QUANT_TYPES

    if name not in QUANT_TYPES:
        raise BadArgument(
            f"unknown --outtype {outtype!r}; choose one of {', '.join(DIRECT_OUTTYPES)} or a llama.cpp "
            f"type: {', '.join(sorted(t for t in QUANT_TYPES if t not in DIRECT_OUTTYPES))}"
        )
    return name


def convert_checkpoint(
    model: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    outtype: str = "f16",
    force: bool = False,
    merge_lora: Sequence[str | os.PathLike[str]] = (),
    lora_scale: float = 1.0,
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    """Convert a checkpoint folder or Hub id to a GGUF file at ``out`` and return its path.

    ``outtype`` is f32, f16, bf16 or q8_0 (written directly) or any llama.cpp file type such as
    q4_k_m (written at f32 to a temporary file, then quantized by llama.cpp). ``merge_lora`` adapters
    are merged into the weights in float32 first (W + lora_scale * s * B @ A). Nothing is left at
    ``out`` unless the whole conversion succeeds; an existing ``out`` is replaced only with ``force``.
    """
    from .arch import arch_for
    from .checkpoint import TensorSource, open_checkpoint
    from .hub import resolve_model_dir
    from .tokenizer import load_vocab
    from .writer import write_gguf

    target = Path(out)
    check_output(target, force=force)
    name = _check_outtype(outtype)
    model_dir = resolve_model_dir(os.fspath(model), kind="model")
    adapter_dirs = [resolve_model_dir(os.fspath(a), kind="adapter") for a in merge_lora]

    with open_checkpoint(model_dir) as ckpt:
        spec = arch_for(ckpt)
        vocab = load_vocab(model_dir, n_vocab=spec.hparams.n_vocab)
        source: TensorSource = ckpt
        if adapter_dirs:
            from .lora import merged_source

            source = merged_source(ckpt, spec, adapter_dirs, scale=lora_scale)
        metadata = _metadata(model, model_dir, adapter_dirs)

        def write(path: Path, direct: str) -> None:
            write_gguf(
                path, spec, vocab, source, outtype=direct, metadata=metadata, progress=progress
            )

        if name in DIRECT_OUTTYPES:
            with atomic_output(target, force=force) as tmp:
                write(tmp, name)
        else:
            from .quantize import quantize

            # Quantize from f32 so the only rounding is llama.cpp's own.
            with temp_file(target.parent, f"{target.name}.f32") as tmp:
                write(tmp, "f32")
                quantize(tmp, target, qtype=name, force=force)
    logger.info("converted %s -> %s (%s)", model, target, name)
    return target


def _metadata(
    model: str | os.PathLike[str], model_dir: Path, adapters: Sequence[Path]
) -> dict[str, str]:
    spec = str(model)
    is_hub = not Path(spec).expanduser().exists()
    name = spec.split("@")[0].rstrip("/").split("/")[-1] if is_hub else model_dir.name
    description = f"converted by edgestack {__version__} from {spec if is_hub else model_dir.name}"
    if adapters:
        description += " with LoRA merged: " + ", ".join(a.name for a in adapters)
    meta = {"name": name, "description": description}
    if is_hub:
        repo = spec.split("@")[0]
        meta["source_repo_url"] = f"https://huggingface.co/{repo}"
        meta["source_url"] = meta["source_repo_url"]
    return meta
