"""Check a GGUF file before llama.cpp sees it.

llama.cpp can take the whole process down on a malformed file, and a truncated model or a
mismatched adapter otherwise surfaces as a cryptic load failure. :func:`check_gguf` walks the
header (:mod:`._gguf_reader`: every length bound-checked, the checks of llama.cpp's ``gguf.cpp``,
every tensor's data inside the file) and, for a model, checks what llama.cpp's model loader
would assert on or refuse: hyperparameters (:mod:`._gguf_hparams_check`), vocabulary
(:mod:`._gguf_vocab_check`) and tensor shapes (:mod:`._gguf_tensor_check`). It returns a
:class:`GGUFSummary`. :func:`check_adapter_fits` mirrors ``llama_adapter_lora_init``'s checks of
an adapter against its base (:mod:`._gguf_adapter_check`).
"""

from __future__ import annotations

import logging
import mmap
from functools import lru_cache
from pathlib import Path
from types import MappingProxyType

import gguf

from ...errors import GGUFFileError, ModelFileNotFound
from ._adapter import check_fits, check_lora_structure, lora_pairs
from ._hparams import check_hparams
from ._reader import (
    FIXED_HEADER,
    Bad,
    Header,
    Unloadable,
    check_mapped_alignment,
    read_header,
)
from ._summary import (
    GGUFSummary,
    Kind,
    TensorInfo,
    context_length,
    file_type_name,
    lora_alpha,
    tokenizer_info,
)
from ._tensors import check_tensors
from ._vocab import check_vocab

__all__ = ["GGUFSummary", "TensorInfo", "check_adapter_fits", "check_gguf", "clear_cache"]

logger = logging.getLogger(__name__)


def _hint(kind: Kind) -> str:
    if kind == "adapter":
        return "re-create it with `edgestack export-lora` (or copy it again)"
    return "re-create it with `edgestack convert` (or copy/download it again)"


def _invalid(path: Path, problem: Bad, kind: Kind) -> GGUFFileError:
    if isinstance(problem, Unloadable):
        return GGUFFileError(
            f"{path} is a GGUF model llama.cpp cannot load: {problem}; the file is damaged or was "
            "written by a tool llama.cpp cannot read: re-convert it with `edgestack convert`"
        )
    return GGUFFileError(f"{path} is not a valid GGUF file: {problem}; {_hint(kind)}")


def _parse(path: Path, size: int, kind: Kind) -> GGUFSummary:
    """Read and check ``path`` (``size`` bytes); tensor data is never read."""
    if size < FIXED_HEADER.size:
        what = "empty" if size == 0 else f"only {size} bytes long"
        raise _invalid(path, Bad(f"the file is {what}, shorter than a GGUF header"), kind)
    with path.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        try:
            header = read_header(mm, size)
            summary = _summarize(path, size, header)
            if kind == "model" and _is_loadable_model(summary):
                _check_model(header, summary.arch)
        except Bad as exc:
            raise _invalid(path, exc, kind) from None
    return summary


def _is_loadable_model(summary: GGUFSummary) -> bool:
    """A model of an architecture llama.cpp knows (anything else check_gguf refuses anyway)."""
    gtype = summary.metadata.get(gguf.Keys.General.TYPE, gguf.GGUFType.MODEL)
    return gtype == gguf.GGUFType.MODEL and summary.arch in gguf.MODEL_ARCH_NAMES.values()


def _check_model(header: Header, arch: str) -> None:
    # In llama.cpp's order: hyperparameters, vocabulary, tensors; then how it maps their data.
    hparams = check_hparams(header, arch)
    n_vocab = check_vocab(header, arch)
    if hparams is not None:
        check_tensors(header.tensors, hparams, n_vocab)
    check_mapped_alignment(header)


def _summarize(path: Path, size: int, header: Header) -> GGUFSummary:
    general = gguf.Keys.General
    metadata = header.metadata
    arch = metadata.get(general.ARCHITECTURE)
    if not isinstance(arch, str) or not arch:
        raise Bad(f"it has no {general.ARCHITECTURE}")
    gtype = metadata.get(general.TYPE, gguf.GGUFType.MODEL)
    name = metadata.get(general.NAME)
    tensors = header.tensors
    return GGUFSummary(
        path=path,
        size_bytes=size,
        version=header.version,
        kind="adapter" if gtype == gguf.GGUFType.ADAPTER else "model",
        arch=arch,
        name=name if isinstance(name, str) else None,
        file_type=file_type_name(metadata.get(general.FILE_TYPE), tensors),
        n_params=sum(t.n_elements for t in tensors),
        tensors=tensors,
        metadata=MappingProxyType(metadata),
        tokenizer=tokenizer_info(metadata),
        context_length=context_length(metadata, arch),
        lora_alpha=lora_alpha(metadata) if gtype == gguf.GGUFType.ADAPTER else None,
        alignment=header.alignment,
        data_offset=header.data_offset,
    )


@lru_cache(maxsize=64)
def _parse_cached(path: Path, size: int, mtime_ns: int, inode: int, kind: Kind) -> GGUFSummary:
    # Keyed on size/mtime/inode too, so a file replaced on disk is parsed again; the kind decides
    # whether a model's loader checks run, and the hint in error messages.
    del mtime_ns, inode
    return _parse(path, size, kind)


# --- public checks -------------------------------------------------------------------------------


def check_gguf(path: Path, *, kind: Kind | None = "model") -> GGUFSummary:
    """Validate ``path`` as a GGUF ``kind`` before llama.cpp opens it, and describe it.

    Checks: the file exists and is a file; GGUF magic and version; the header's counts fit the
    file; every key, type, tensor name, shape, type and offset as llama.cpp's gguf.cpp checks
    them; every tensor's data inside the file; ``general.architecture`` present and known; and
    that the file is of the kind asked for (an adapter with ``adapter.type`` lora and only
    ``.lora_a``/``.lora_b`` pairs, or a model that is not an adapter). A model also gets the
    checks of llama.cpp's model loader: hyperparameters, vocabulary and, for the architectures
    edgestack converts (gptneox, llama, qwen2), every tensor's presence, shape and type.

    ``kind=None`` accepts either (``edgestack inspect``); ``summary.kind`` then says which it is,
    and each is checked as what it is.

    Raises:
        ModelFileNotFound: no such file.
        GGUFFileError: anything else; the message names the file and what to do.
    """
    path = Path(path).expanduser()
    what = {"adapter": "LoRA adapter", "model": "model", None: "GGUF"}[kind]
    try:
        st = path.stat()
    except FileNotFoundError:
        raise ModelFileNotFound(
            f"{what} file {path.absolute()} does not exist; check the path"
        ) from None
    if path.is_dir():
        raise GGUFFileError(
            f"{path} is a folder, but a {what} .gguf file is expected"
            + (
                "; convert a checkpoint folder with `edgestack convert` first"
                if kind == "model"
                else "; export a PEFT adapter folder with `edgestack export-lora` first"
            )
        )
    resolved = path.resolve()
    # The model loader's checks run only on files whose general.type says model, so kind=None
    # can parse as "model" whatever the file turns out to be.
    summary = _parse_cached(resolved, st.st_size, st.st_mtime_ns, st.st_ino, kind or "model")
    kind = kind or summary.kind
    try:
        _check_arch(summary)
        _check_kind(summary, kind, path)
    except Bad as exc:
        raise _invalid(path, exc, kind) from None
    logger.debug(
        "%s: GGUF v%d %s %s, %d tensors",
        path,
        summary.version,
        summary.arch,
        summary.file_type,
        summary.n_tensors,
    )
    return summary


def _check_arch(summary: GGUFSummary) -> None:
    if summary.arch not in gguf.MODEL_ARCH_NAMES.values():
        raise Bad(f"its architecture '{summary.arch}' is not one llama.cpp knows")


def _check_kind(summary: GGUFSummary, kind: Kind, path: Path) -> None:
    general = gguf.Keys.General
    gtype = summary.metadata.get(general.TYPE, gguf.GGUFType.MODEL)
    if kind == "model":
        if gtype == gguf.GGUFType.ADAPTER:
            raise GGUFFileError(
                f"{path} is a LoRA adapter, not a model: give it as the stage's `lora` "
                "(with its base model as `model`)"
            )
        if gtype != gguf.GGUFType.MODEL:
            raise GGUFFileError(f"{path} is a GGUF '{gtype}' file, not a model")
        return
    if gtype != gguf.GGUFType.ADAPTER:
        raise GGUFFileError(
            f"{path} is a {gtype if isinstance(gtype, str) else 'model'} GGUF, not a LoRA adapter "
            f"({general.TYPE} is {gtype!r}); give a model as the stage's `model`, and an adapter "
            "made with `edgestack export-lora` as its `lora`"
        )
    check_lora_structure(summary)


def check_adapter_fits(adapter: Path | GGUFSummary, base: Path | GGUFSummary) -> None:
    """Refuse an adapter that llama.cpp would not apply to ``base``, naming tensor and shapes.

    Mirrors llama-adapter.cpp: same architecture; every ``<name>.lora_a``/``.lora_b`` pair names
    a base tensor ``<name>``; in ggml order a base weight is ``[n_in, n_out]``, ``lora_a`` is
    ``[n_in, r]`` and ``lora_b`` is ``[r, n_out]`` (for ``token_embd`` the roles of A and B are
    swapped: ``lora_a`` is ``[r, n_vocab]`` and ``lora_b`` is ``[r, n_embd]``).
    Either argument may be a path or a summary from :func:`check_gguf`.

    Raises:
        AdapterError: the adapter does not fit the base.
        GGUFFileError / ModelFileNotFound: as :func:`check_gguf`.
    """
    a = adapter if isinstance(adapter, GGUFSummary) else check_gguf(adapter, kind="adapter")
    b = base if isinstance(base, GGUFSummary) else check_gguf(base, kind="model")
    try:
        pairs = lora_pairs(a)
    except Bad as exc:
        raise _invalid(a.path, exc, "adapter") from None
    check_fits(a, b, pairs)


def clear_cache() -> None:
    """Forget parsed headers (tests rewrite files in place within one mtime tick)."""
    _parse_cached.cache_clear()
