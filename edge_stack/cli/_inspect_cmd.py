"""`edgestack inspect`: what a stack or a GGUF file holds, without running anything."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from ._app import app

if TYPE_CHECKING:
    from ..formats.gguf._summary import GGUFSummary
    from ..manifest import StackSpec

_SHOWN_TENSORS = 40


def _mb(n: int | float) -> str:
    return f"{n / 1e6:.1f} MB"


def _is_gguf(path: Path) -> bool:
    if path.suffix.lower() == ".gguf":
        return True
    try:
        with path.open("rb") as fh:
            return fh.read(4) == b"GGUF"
    except OSError:
        return False


def _jsonable(value: object) -> object:
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return str(value)


def gguf_info(summary: GGUFSummary) -> dict[str, Any]:
    """A GGUF summary as plain JSON values."""
    tok = summary.tokenizer
    return {
        "path": str(summary.path),
        "size_bytes": summary.size_bytes,
        "gguf_version": summary.version,
        "kind": summary.kind,
        "arch": summary.arch,
        "name": summary.name,
        "file_type": summary.file_type,
        "n_params": summary.n_params,
        "n_tensors": summary.n_tensors,
        "tensor_bytes": summary.tensor_bytes,
        "context_length": summary.context_length,
        "lora_alpha": summary.lora_alpha,
        "tokenizer": None
        if tok is None
        else {
            "model": tok.model,
            "pre": tok.pre,
            "n_tokens": tok.n_tokens,
            "bos_id": tok.bos_id,
            "eos_id": tok.eos_id,
            "add_bos": tok.add_bos,
            "has_chat_template": tok.has_chat_template,
        },
        "metadata": {k: _jsonable(v) for k, v in summary.metadata.items()},
        "tensors": [
            {"name": t.name, "shape": list(t.shape), "type": t.type, "nbytes": t.nbytes}
            for t in summary.tensors
        ],
    }


def _kv_bytes(summary: GGUFSummary, n_ctx: int) -> int | None:
    """K and V caches in f16 for ``n_ctx`` tokens (llama.cpp's default cache type)."""
    import gguf

    md, arch = summary.metadata, summary.arch
    try:
        n_layer = int(md[gguf.Keys.LLM.BLOCK_COUNT.format(arch=arch)])  # type: ignore[call-overload]
        n_embd = int(md[gguf.Keys.LLM.EMBEDDING_LENGTH.format(arch=arch)])  # type: ignore[call-overload]
        n_head = int(md[gguf.Keys.Attention.HEAD_COUNT.format(arch=arch)])  # type: ignore[call-overload]
        n_head_kv = int(md.get(gguf.Keys.Attention.HEAD_COUNT_KV.format(arch=arch), n_head))  # type: ignore[call-overload]
    except (KeyError, TypeError, ValueError):
        return None
    return 2 * n_layer * n_ctx * (n_embd * n_head_kv // max(n_head, 1)) * 2


def stack_info(spec: StackSpec) -> dict[str, Any]:
    """A stack's stages, files, sizes and estimated memory as plain JSON values."""
    from ..errors import EdgeStackError
    from ..formats.gguf._check import check_gguf

    summaries: dict[Path, GGUFSummary | str] = {}

    def summary(path: Path, kind: str) -> GGUFSummary | str:
        if path not in summaries:
            if not path.is_file():
                summaries[path] = "missing"
            else:
                try:
                    summaries[path] = check_gguf(path, kind=kind)  # type: ignore[arg-type]
                except EdgeStackError as exc:
                    summaries[path] = f"invalid: {exc}"
        return summaries[path]

    stages = []
    kv_total = 0
    for stage in spec.stages:
        model = summary(stage.model, "model")
        if stage.lora:
            summary(stage.lora, "adapter")
        kv = _kv_bytes(model, stage.n_ctx) if not isinstance(model, str) else None
        kv_total += kv or 0
        stages.append(
            {
                "name": stage.name,
                "model": str(stage.model),
                "lora": str(stage.lora) if stage.lora else None,
                "lora_scale": stage.lora_scale,
                "prompt": stage.prompt,
                "stop": list(stage.stop),
                "max_tokens": stage.max_tokens,
                "temperature": stage.temperature,
                "n_ctx": stage.n_ctx,
                "kv_cache_bytes": kv,
            }
        )
    files = []
    for path, s in summaries.items():
        entry: dict[str, Any] = {"path": str(path)}
        if isinstance(s, str):
            entry["problem"] = s
        else:
            entry.update(kind=s.kind, arch=s.arch, file_type=s.file_type, size_bytes=s.size_bytes)
        files.append(entry)
    weights = sum(f.get("size_bytes", 0) for f in files if f.get("kind") == "model")
    adapters = sum(f.get("size_bytes", 0) for f in files if f.get("kind") == "adapter")
    return {
        "path": str(spec.path),
        "name": spec.name,
        "description": spec.description,
        "version": spec.version,
        "stages": stages,
        "files": files,
        "memory": {
            "model_bytes": weights,
            "adapter_bytes": adapters,
            "kv_cache_bytes": kv_total,
            "estimated_total_bytes": weights + adapters + kv_total,
        },
    }


def _print_gguf(info: dict[str, Any]) -> None:
    echo = typer.echo
    echo(f"{info['path']}  ({_mb(info['size_bytes'])}, GGUF v{info['gguf_version']})")
    echo(f"  kind         {info['kind']}")
    echo(f"  architecture {info['arch']}")
    if info["name"]:
        echo(f"  name         {info['name']}")
    echo(f"  type         {info['file_type']}")
    echo(f"  parameters   {info['n_params']:,}")
    echo(f"  tensors      {info['n_tensors']} ({_mb(info['tensor_bytes'])})")
    if info["context_length"]:
        echo(f"  context      {info['context_length']}")
    if info["lora_alpha"] is not None:
        echo(f"  lora alpha   {info['lora_alpha']}")
    tok = info["tokenizer"]
    if tok:
        echo(
            f"  tokenizer    {tok['model']} (pre {tok['pre']}), {tok['n_tokens']} tokens, "
            f"bos {tok['bos_id']} eos {tok['eos_id']} add_bos {tok['add_bos']}"
            + (", chat template" if tok["has_chat_template"] else "")
        )
    echo("metadata:")
    for key, value in info["metadata"].items():
        # Long arrays arrive as their summary text ("[string x 640: ...]"), shown unquoted.
        shown = value if not isinstance(value, str) or value.startswith("[") else repr(value)
        echo(f"  {key} = {str(shown)[:160]}")
    echo("tensors:")
    for t in info["tensors"][:_SHOWN_TENSORS]:
        shape = "x".join(str(d) for d in t["shape"])
        echo(f"  {t['name']:<40} {t['type']:<6} {shape:<16} {_mb(t['nbytes'])}")
    if len(info["tensors"]) > _SHOWN_TENSORS:
        echo(f"  ... {len(info['tensors']) - _SHOWN_TENSORS} more (--json lists all)")


def _print_stack(info: dict[str, Any]) -> None:
    echo = typer.echo
    echo(f"stack {info['name']} (manifest version {info['version']}): {info['path']}")
    if info["description"]:
        echo(f"  {info['description']}")
    echo("stages:")
    for i, s in enumerate(info["stages"], 1):
        lora = f" + {Path(s['lora']).name} (scale {s['lora_scale']})" if s["lora"] else ""
        echo(f"  {i}. {s['name']}: {Path(s['model']).name}{lora}")
        echo(
            f"     n_ctx {s['n_ctx']}, max_tokens {s['max_tokens']}, temperature "
            f"{s['temperature']}, stop {json.dumps(s['stop'])}"
        )
        echo(f"     prompt {json.dumps(s['prompt'], ensure_ascii=False)}")
    echo("files:")
    for f in info["files"]:
        if "problem" in f:
            echo(f"  {f['path']}: {f['problem']}")
        else:
            echo(
                f"  {f['path']}: {f['kind']}, {f['arch']}, {f['file_type']}, {_mb(f['size_bytes'])}"
            )
    m = info["memory"]
    echo(
        f"estimated memory: {_mb(m['estimated_total_bytes'])} = models {_mb(m['model_bytes'])} "
        f"(memory-mapped, shared by stages) + adapters {_mb(m['adapter_bytes'])} + KV caches "
        f"{_mb(m['kv_cache_bytes'])}; llama.cpp's compute buffers come on top"
    )


@app.command()
def inspect(
    path: Annotated[Path, typer.Argument(help="A stack.toml, a stack folder, or a .gguf file.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the details as JSON.")] = False,
) -> None:
    """Show a stack (stages, files, sizes, estimated memory) or a GGUF file (architecture,
    type, tensors, tokenizer, metadata). Nothing is loaded into llama.cpp.

    Examples:

      edgestack inspect models/word-problems/stack.toml

      edgestack inspect base.Q8_0.gguf

      edgestack inspect extract.lora.gguf --json
    """
    from ..errors import ModelFileNotFound
    from ..manifest import load_manifest

    if not path.exists():
        raise ModelFileNotFound(
            f"{path} does not exist; give a stack.toml, a stack folder or a .gguf"
        )
    if path.is_file() and _is_gguf(path):
        from ..formats.gguf._check import check_gguf

        info = gguf_info(check_gguf(path, kind=None))
        printer = _print_gguf
        bad = False
    else:
        info = stack_info(load_manifest(path, check_files=False))
        printer = _print_stack
        bad = any("problem" in f for f in info["files"])
    if as_json:
        typer.echo(json.dumps(info, ensure_ascii=False, indent=2))
    else:
        printer(info)
    if bad:
        raise typer.Exit(1)
