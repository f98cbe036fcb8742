"""Quantizing GGUF files with llama.cpp's own quantizer (``llama_model_quantize``).

No quantizer is written here: llama.cpp picks the per-tensor types of each file type (q4_k_m keeps
some tensors at q6_k, rows that are not whole blocks fall back to another type, ...).

llama.cpp runs in a child process (:mod:`._quantize_child`) that is killed on Ctrl-C:
``llama_model_quantize`` runs in C for seconds and its params have no progress or abort callback,
so in-process it could be stopped only between its log lines, by an exception raised inside
llama.cpp's log callback, which ctypes reports and drops. The child's output is the temporary
file of :func:`~edge_stack.util._atomic.atomic_output`, so an interrupted run leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path

import gguf

from edge_stack.errors import BadArgument, QuantizeError
from edge_stack.util._atomic import atomic_output, check_output

__all__ = ["QUANT_TYPES", "fallbacks", "quant_type_names", "quantize", "tensor_type_mix"]

logger = logging.getLogger(__name__)

# Characters of a crashed quantizer's last stderr line quoted in the error.
_MAX_SAID = 200


def _type_name(ftype: gguf.LlamaFileType) -> str:
    return ftype.name.removeprefix("ALL_").removeprefix("MOSTLY_").lower()


#: every llama.cpp file type by its lower-case name (``q4_k_m``, ``q8_0``, ``f16``, ``iq4_xs``...)
QUANT_TYPES: Mapping[str, gguf.LlamaFileType] = {
    _type_name(t): t for t in gguf.LlamaFileType if t is not gguf.LlamaFileType.GUESSED
}

#: file types that are not quantized: quantizing from them loses nothing twice
_FLOAT_TYPES = frozenset(
    {gguf.LlamaFileType.ALL_F32, gguf.LlamaFileType.MOSTLY_F16, gguf.LlamaFileType.MOSTLY_BF16}
)


def _llama_types() -> dict[str, int]:
    """QUANT_TYPES plus any type the installed llama.cpp knows and gguf does not (yet)."""
    from edge_stack.engines.llama._lib import lib

    found = {name: int(t) for name, t in QUANT_TYPES.items()}
    llama = lib()
    for attr in dir(llama):
        if attr.startswith("LLAMA_FTYPE_") and attr != "LLAMA_FTYPE_GUESSED":
            name = attr.removeprefix("LLAMA_FTYPE_").removeprefix("ALL_").removeprefix("MOSTLY_")
            found.setdefault(name.lower(), int(getattr(llama, attr)))
    return found


def quant_type_names() -> list[str]:
    """Every type name :func:`quantize` accepts, sorted."""
    return sorted(_llama_types())


def quantize(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    *,
    qtype: str,
    force: bool = False,
    threads: int | None = None,
    allow_requantize: bool = False,
) -> Path:
    """Quantize the GGUF model ``src`` to ``dst`` as ``qtype`` (e.g. ``"q4_k_m"``); return ``dst``.

    ``src`` should be f32, f16 or bf16: quantizing an already quantized file compounds the
    rounding, so it is refused unless ``allow_requantize``. ``dst`` is written to a temporary file
    and renamed at the end; an existing ``dst`` is replaced only with ``force``.
    """
    from edge_stack.engines.llama._lib import check_file, default_threads, reason
    from edge_stack.util._limits import check_threads

    source, target = Path(src), Path(dst)
    types = _llama_types()
    name = qtype.strip().lower()
    if name not in types:
        raise BadArgument(
            f"unknown quantization type {qtype!r}; choose one of: {', '.join(sorted(types))}"
        )
    check_output(target, force=force)
    check_file(source, "model")
    if target.exists() and target.resolve() == source.resolve():
        raise BadArgument(f"input and output are the same file ({source}); write to a new path")
    if not allow_requantize:
        _refuse_requantize(source, name)

    with atomic_output(target, force=force) as tmp:
        logger.info("quantizing %s -> %s (%s)", source, target, name)
        lines = _run_quantizer(
            source,
            tmp,
            types[name],
            default_threads() if threads is None else check_threads(threads, "threads"),
            allow_requantize,
        )
        if lines is not None:
            raise QuantizeError(
                f"llama.cpp could not quantize {source} to {name}: {reason(lines)}" + _hint(name)
            )
        report = fallback_report(tmp, name)
    if report:
        logger.warning("%s: %s", target, report)
    return target


def tensor_type_mix(path: str | os.PathLike[str]) -> dict[str, int]:
    """How many tensors of a GGUF file are stored in each type, most first."""
    counts: dict[str, int] = {}
    for tensor in gguf.GGUFReader(path).tensors:
        kind = tensor.tensor_type.name
        counts[kind] = counts.get(kind, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def _main_type(name: str) -> gguf.GGMLQuantizationType | None:
    """The tensor type a file type is named after (q4_k_m -> Q4_K), if there is one."""
    base = name.upper()
    for suffix in ("_XXS", "_XS", "_S", "_M", "_L", "_NL"):
        candidate = base.removesuffix(suffix)
        if candidate in gguf.GGMLQuantizationType.__members__:
            return gguf.GGMLQuantizationType[candidate]
    return gguf.GGMLQuantizationType.__members__.get(base)


def fallbacks(path: str | os.PathLike[str], name: str) -> dict[str, int]:
    """Matrices that llama.cpp stored in another type than ``name``'s because their rows are not
    a whole number of its blocks: fallback type -> count."""
    main = _main_type(name)
    if main is None:
        return {}
    block = gguf.GGML_QUANT_SIZES[main][0]
    found: dict[str, int] = {}
    for tensor in gguf.GGUFReader(path).tensors:
        width = int(tensor.shape[0])
        if len(tensor.shape) > 1 and width % block and tensor.tensor_type != main:
            kind = tensor.tensor_type.name
            found[kind] = found.get(kind, 0) + 1
    return found


def fallback_report(path: str | os.PathLike[str], name: str) -> str | None:
    """One line on the fallbacks of a file quantized as ``name``, or None when there are none."""
    found = fallbacks(path, name)
    if not found:
        return None
    main = _main_type(name)
    assert main is not None
    block = gguf.GGML_QUANT_SIZES[main][0]
    mix = ", ".join(f"{k} x {v}" for k, v in tensor_type_mix(path).items())
    moved = ", ".join(f"{k} x {v}" for k, v in found.items())
    return (
        f"{sum(found.values())} matrices are not {main.name} ({moved}): their rows are not a "
        f"multiple of {main.name}'s {block}-value blocks, so llama.cpp used another type; "
        f"tensor types: {mix}"
    )


def _run_quantizer(
    source: Path, output: Path, ftype: int, threads: int, requantize: bool
) -> list[tuple[int, str]] | None:
    """Quantize in a child process; None on success, else llama.cpp's warnings and errors.

    Ctrl-C (KeyboardInterrupt) or any other exception while it runs kills the child first.
    """
    from edge_stack.engines.llama import _lib as _llama_lib

    verbose = _llama_lib._verbose
    command = [
        sys.executable,
        "-P",  # not the current folder's modules: the installed edgestack
        "-m",
        "edge_stack.convert._quantize_child",
        str(os.getpid()),
        os.fsdecode(source),
        os.fsdecode(output),
        str(ftype),
        str(threads),
        "1" if requantize else "0",
        "1" if verbose else "0",
    ]
    child: subprocess.Popen[bytes] | None = None
    try:
        with _sigint_held():
            # Its own process group: the terminal's Ctrl-C reaches only us; we stop the child.
            child = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=None if verbose else subprocess.PIPE,
                process_group=0,
            )
        out, err = child.communicate()
    finally:
        if child is not None and child.poll() is None:
            child.kill()
            child.wait()
    said = (err or b"").decode("utf-8", errors="replace").strip().splitlines()
    try:
        result = json.loads(out.decode("utf-8").strip().splitlines()[-1])
    except (UnicodeDecodeError, IndexError, ValueError):
        result = None
    if child.returncode != 0 or not isinstance(result, dict):
        last = f": {said[-1][:_MAX_SAID]}" if said else ""
        raise QuantizeError(
            f"llama.cpp's quantizer stopped while quantizing {source} "
            f"({_exit_status(child.returncode)}{last}); "
            "run again with EDGESTACK_VERBOSE=1 to see llama.cpp's log"
        )
    if result["rc"] == 0:
        return None
    return [(int(level), str(message)) for level, message in result["log"]]


@contextlib.contextmanager
def _sigint_held() -> Iterator[None]:
    """Hold a Ctrl-C back until the block ends (on the main thread, the only one it reaches).

    Raised inside ``Popen()``, it would leave a started child that nobody kills, writing on.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, _frame: caught.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.SIG_DFL if previous is None else previous)
        if caught:
            signal.raise_signal(signal.SIGINT)


def _exit_status(code: int) -> str:
    if code >= 0:
        return f"exit code {code}"
    try:
        return f"killed by {signal.Signals(-code).name}"
    except ValueError:
        return f"killed by signal {-code}"


def _refuse_requantize(source: Path, name: str) -> None:
    reader = gguf.GGUFReader(source)
    field = reader.get_field(gguf.Keys.General.FILE_TYPE)
    if field is None:
        return  # llama.cpp guesses the type from the tensors; let it decide
    ftype = int(field.contents())
    if ftype in {int(t) for t in _FLOAT_TYPES}:
        return
    try:
        have = _type_name(gguf.LlamaFileType(ftype))
    except ValueError:
        have = f"file type {ftype}"
    raise QuantizeError(
        f"{source} is already quantized ({have}); quantizing it again to {name} compounds the "
        "rounding: quantize the f32/f16/bf16 file instead, or pass --allow-requantize"
    )


def _hint(name: str) -> str:
    if name.startswith("iq") or name in {"q2_k_s", "iq1_s", "iq1_m"}:
        return (
            " (this type needs an importance matrix, which edgestack does not compute; try q4_k_m)"
        )
    return ""
