"""check_gguf / check_adapter_fits on small GGUF files written here with gguf.GGUFWriter.

The base model is a complete (tiny, random) Llama GGUF that llama.cpp loads, so the llama-marked
tests can show that llama.cpp accepts exactly the adapters check_adapter_fits accepts.
"""

from __future__ import annotations

import os
import shutil
import struct
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import pytest

from edge_stack import _gguf_check
from edge_stack._gguf_check import check_adapter_fits, check_gguf
from edge_stack._gguf_summary import ArraySummary, GGUFSummary
from edge_stack.errors import AdapterError, GGUFFileError, ModelFileNotFound

M = gguf.MODEL_TENSOR
LLAMA = gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA]
GPTNEOX = gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.GPTNEOX]
N_EMBD, N_FF, N_HEAD, N_LAYER = 32, 64, 4, 2
RANK = 4


def tname(tensor: gguf.MODEL_TENSOR, bid: int | None = None) -> str:
    name = gguf.TENSOR_NAMES[tensor]
    return (name.format(bid=bid) if bid is not None else name) + ".weight"


def _byte_tokens() -> list[str]:
    """GPT-2's byte-to-unicode alphabet: a byte-level BPE vocabulary llama.cpp accepts."""
    keep = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
    chars = dict(zip(keep, keep, strict=True))
    extra = 0
    for b in range(256):
        if b not in chars:
            chars[b] = 256 + extra
            extra += 1
    return [chr(chars[b]) for b in range(256)]


TOKENS = [*_byte_tokens(), "ab"]
N_VOCAB = len(TOKENS)


def base_shapes(n_embd: int = N_EMBD, n_ff: int = N_FF) -> dict[str, tuple[int, ...]]:
    """Tensor name -> numpy shape (numpy order is GGUF's reversed: [n_out, n_in])."""
    shapes: dict[str, tuple[int, ...]] = {
        tname(M.TOKEN_EMBD): (N_VOCAB, n_embd),
        tname(M.OUTPUT_NORM): (n_embd,),
        tname(M.OUTPUT): (N_VOCAB, n_embd),
    }
    for i in range(N_LAYER):
        shapes[tname(M.ATTN_NORM, i)] = (n_embd,)
        for t in (M.ATTN_Q, M.ATTN_K, M.ATTN_V, M.ATTN_OUT):
            shapes[tname(t, i)] = (n_embd, n_embd)
        shapes[tname(M.FFN_NORM, i)] = (n_embd,)
        shapes[tname(M.FFN_GATE, i)] = (n_ff, n_embd)
        shapes[tname(M.FFN_UP, i)] = (n_ff, n_embd)
        shapes[tname(M.FFN_DOWN, i)] = (n_embd, n_ff)
    return shapes


def _write(writer: gguf.GGUFWriter) -> None:
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def write_model(
    path: Path,
    *,
    arch: str = LLAMA,
    n_embd: int = N_EMBD,
    n_ff: int = N_FF,
    general_type: str | None = gguf.GGUFType.MODEL,
    drop_keys: Sequence[str] = (),
    long_vocab: int = 0,
) -> Path:
    """A complete tiny Llama GGUF (f32, random weights) that llama.cpp can load."""
    rng = np.random.default_rng(0)
    w = gguf.GGUFWriter(str(path), arch)
    if general_type is not None:
        w.add_type(general_type)
    w.add_name("tiny-test-model")
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    w.add_context_length(128)
    w.add_embedding_length(n_embd)
    w.add_block_count(N_LAYER)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(N_HEAD)
    w.add_head_count_kv(N_HEAD)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_dimension_count(n_embd // N_HEAD)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    tokens = TOKENS + [f"extra{i}" for i in range(long_vocab)]
    w.add_token_list(tokens)
    w.add_token_types([gguf.TokenType.NORMAL] * len(tokens))
    w.add_token_merges(["a b"] + [f"x{i} y{i}" for i in range(long_vocab)])
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_chat_template("{{ messages[0]['content'] }}")
    for name, shape in base_shapes(n_embd, n_ff).items():
        w.add_tensor(name, (rng.standard_normal(shape) * 0.1).astype(np.float32))
    for key in drop_keys:
        del w.kv_data[0][key]
    _write(w)
    return path


def write_adapter(
    path: Path,
    *,
    arch: str = LLAMA,
    n_embd: int = N_EMBD,
    n_ff: int = N_FF,
    targets: Sequence[str] = (tname(M.ATTN_Q, 0), tname(M.FFN_UP, 1), tname(M.ATTN_V, 1)),
    general_type: str | None = gguf.GGUFType.ADAPTER,
    adapter_type: str = "lora",
    alpha: float = 8.0,
    rank_b: int = RANK,
    extra: dict[str, tuple[int, ...]] | None = None,
    drop: Sequence[str] = (),
) -> Path:
    """A LoRA adapter GGUF for the tensors ``targets`` of a base with these sizes.

    GGUF (ggml) order: base weight [n_in, n_out], lora_a [n_in, r], lora_b [r, n_out]; numpy
    shapes are the reverse. token_embd swaps the roles (lora_a [r, n_vocab], lora_b [r, n_embd]).
    """
    rng = np.random.default_rng(1)
    shapes = base_shapes(n_embd, n_ff)
    w = gguf.GGUFWriter(str(path), arch)
    if general_type is not None:
        w.add_type(general_type)
    w.add_string(gguf.Keys.Adapter.TYPE, adapter_type)
    w.add_float32(gguf.Keys.Adapter.LORA_ALPHA, alpha)
    tensors: dict[str, tuple[int, ...]] = {}
    for name in targets:
        n_out, n_in = shapes[name]
        if name == tname(M.TOKEN_EMBD):
            tensors[name + ".lora_a"] = (n_out, RANK)  # ggml [r, n_vocab]
            tensors[name + ".lora_b"] = (n_in, rank_b)  # ggml [r, n_embd]
        else:
            tensors[name + ".lora_a"] = (RANK, n_in)  # ggml [n_in, r]
            tensors[name + ".lora_b"] = (n_out, rank_b)  # ggml [r, n_out]
    tensors.update(extra or {})
    for name, shape in tensors.items():
        if name not in drop:
            w.add_tensor(name, (rng.standard_normal(shape) * 0.01).astype(np.float32))
    _write(w)
    return path


# --- fixtures and file surgery --------------------------------------------------------------------


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("gguf-check")
    return {
        "model": write_model(root / "model.gguf"),
        "adapter": write_adapter(root / "adapter.lora.gguf"),
    }


@pytest.fixture(autouse=True)
def _fresh_cache() -> None:
    # Files are rewritten in place by some tests, faster than the mtime clock ticks.
    _gguf_check.clear_cache()


def copy_with(
    src: Path, dst: Path, *, cut: int | None = None, patch: dict[int, bytes] | None = None
) -> Path:
    data = bytearray(src.read_bytes())
    for offset, raw in (patch or {}).items():
        data[offset : offset + len(raw)] = raw
    dst.write_bytes(bytes(data[:cut] if cut is not None else data))
    return dst


def key_value_offset(path: Path, key: str) -> int:
    """Offset of the value-type field that follows ``key`` in the header."""
    raw = path.read_bytes()
    at = raw.index(key.encode())
    return at + len(key)


def tensor_info_offset(path: Path, name: str, field: str) -> int:
    """Offset of ``field`` (n_dims, type or offset) in ``name``'s 2-D tensor-table entry."""
    end = path.read_bytes().index(name.encode()) + len(name)
    return end + {"n_dims": 0, "type": 4 + 2 * 8, "offset": 4 + 2 * 8 + 4}[field]


EMBD = tname(M.TOKEN_EMBD)


def message(exc: pytest.ExceptionInfo[Exception]) -> str:
    text = str(exc.value)
    assert "\n" not in text, text
    return text


# --- valid files ----------------------------------------------------------------------------------


def test_model_summary(files: dict[str, Path]) -> None:
    path = files["model"]
    s = check_gguf(path)
    assert isinstance(s, GGUFSummary)
    assert (s.path, s.size_bytes, s.version) == (path.resolve(), path.stat().st_size, 3)
    assert (s.kind, s.arch, s.name, s.file_type) == ("model", LLAMA, "tiny-test-model", "F32")
    shapes = base_shapes()
    assert s.n_tensors == len(shapes)
    assert s.n_params == sum(int(np.prod(shape)) for shape in shapes.values())
    embd = s.tensor_map()[tname(M.TOKEN_EMBD)]
    assert (embd.shape, embd.type, embd.nbytes) == ((N_EMBD, N_VOCAB), "F32", N_EMBD * N_VOCAB * 4)
    assert s.context_length == 128
    assert s.lora_alpha is None
    tok = s.tokenizer
    assert tok is not None
    assert (tok.model, tok.pre, tok.n_tokens, tok.bos_id, tok.eos_id) == (
        "gpt2",
        "default",
        N_VOCAB,
        1,
        2,
    )
    assert tok.has_chat_template
    assert s.metadata[gguf.Keys.LLM.EMBEDDING_LENGTH.format(arch=LLAMA)] == N_EMBD
    tokens = s.metadata[gguf.Keys.Tokenizer.LIST]
    assert isinstance(tokens, ArraySummary)
    assert (tokens.length, tokens.item_type) == (N_VOCAB, "string")
    assert tokens.head[:3] == tuple(TOKENS[:3])
    assert s.metadata[gguf.Keys.Tokenizer.MERGES] == ["a b"]  # short arrays stay whole
    assert s.tensor_bytes + s.data_offset <= s.size_bytes


def test_adapter_summary(files: dict[str, Path]) -> None:
    s = check_gguf(files["adapter"], kind="adapter")
    assert (s.kind, s.arch, s.lora_alpha, s.file_type, s.n_tensors) == (
        "adapter",
        LLAMA,
        8.0,
        "F32",
        6,
    )
    assert s.tokenizer is None
    assert s.tensor_map()[tname(M.ATTN_Q, 0) + ".lora_a"].shape == (N_EMBD, RANK)


def test_either_kind(files: dict[str, Path], tmp_path: Path) -> None:
    assert check_gguf(files["model"], kind=None).kind == "model"
    assert check_gguf(files["adapter"], kind=None).kind == "adapter"
    bad = write_adapter(tmp_path / "bad.lora.gguf", adapter_type="control_vector")
    with pytest.raises(GGUFFileError, match="adapter of type 'control_vector'"):
        check_gguf(bad, kind=None)


@pytest.mark.parametrize("which", ["model", "adapter"])
def test_agrees_with_gguf_reader(files: dict[str, Path], which: str) -> None:
    """gguf's own reader (slow, test-only reference) sees the same tensors and values."""
    path = files[which]
    ours = check_gguf(path, kind="adapter" if which == "adapter" else "model")
    reader = gguf.GGUFReader(path)
    assert reader.data_offset == ours.data_offset
    theirs = [
        (
            t.name,
            tuple(int(d) for d in t.shape),
            t.tensor_type.name,
            int(t.n_bytes),
            int(t.data_offset),
        )
        for t in reader.tensors
    ]
    assert theirs == [(t.name, t.shape, t.type, t.nbytes, t.offset) for t in ours.tensors]
    for key, field in reader.fields.items():
        if key.startswith("GGUF."):
            continue
        value = ours.metadata[key]
        if isinstance(value, ArraySummary):
            assert value.length == len(field.data)
        elif isinstance(value, float):
            assert value == pytest.approx(field.contents())
        else:
            assert value == field.contents(), key


def test_large_vocabulary_is_fast(tmp_path: Path) -> None:
    """A Pythia-sized vocabulary (50k tokens, 50k merges) is checked in well under a second."""
    path = write_model(tmp_path / "big-vocab.gguf", long_vocab=50_000)
    start = time.perf_counter()
    s = check_gguf(path)
    seconds = time.perf_counter() - start
    assert s.tokenizer is not None and s.tokenizer.n_tokens == N_VOCAB + 50_000
    assert seconds < 0.5, f"check_gguf took {seconds:.3f} s"


def test_summaries_are_cached_until_the_file_changes(
    files: dict[str, Path], tmp_path: Path
) -> None:
    assert check_gguf(files["model"]) is check_gguf(files["model"])
    copy = shutil.copy(files["model"], tmp_path / "copy.gguf")
    first = check_gguf(Path(copy))
    copy_with(files["adapter"], Path(copy))  # replaced in place: other size
    with pytest.raises(GGUFFileError, match="is a LoRA adapter, not a model"):
        check_gguf(Path(copy))
    assert first.kind == "model"


# --- bad files ------------------------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ModelFileNotFound) as info:
        check_gguf(tmp_path / "nope.gguf")
    assert "nope.gguf does not exist" in message(info)


def test_folder(tmp_path: Path) -> None:
    with pytest.raises(GGUFFileError, match="is a folder"):
        check_gguf(tmp_path)


def _header_patch(field: str, value: int) -> dict[int, bytes]:
    offset, fmt = {
        "magic": (0, "<I"),
        "version": (4, "<I"),
        "n_tensors": (8, "<Q"),
        "n_kv": (16, "<Q"),
    }[field]
    return {offset: struct.pack(fmt, value)}


BadFile = Callable[[Path, Path], Path]

BAD_FILES: dict[str, tuple[BadFile, str]] = {
    "empty": (lambda m, d: copy_with(m, d, cut=0), "the file is empty"),
    "tiny": (lambda m, d: copy_with(m, d, cut=10), "only 10 bytes long"),
    "random-bytes": (
        lambda m, d: d.write_bytes(np.random.default_rng(7).bytes(4096)) and d,
        "does not start with the GGUF magic",
    ),
    "wrong-magic": (
        lambda m, d: copy_with(m, d, patch={0: b"GGML"}),
        "does not start with the GGUF magic",
    ),
    "zip": (lambda m, d: copy_with(m, d, patch={0: b"PK\x03\x04"}), "zip archive"),
    "lfs-pointer": (
        lambda m, d: (
            d.write_bytes(b"version https://git-lfs.github.com/spec/v1\noid sha256:00\nsize 9\n")
            and d
        ),
        "git lfs pull",
    ),
    "version-1": (lambda m, d: copy_with(m, d, patch=_header_patch("version", 1)), "version 1"),
    "version-99": (
        lambda m, d: copy_with(m, d, patch=_header_patch("version", 99)),
        "version 99 is not supported",
    ),
    "big-endian": (
        lambda m, d: copy_with(m, d, patch=_header_patch("version", 3 << 24)),
        "big-endian",
    ),
    "absurd-n-tensors": (
        lambda m, d: copy_with(m, d, patch=_header_patch("n_tensors", 2**40)),
        "claims 1099511627776 tensors",
    ),
    "absurd-n-kv": (
        lambda m, d: copy_with(m, d, patch=_header_patch("n_kv", 2**62)),
        "metadata keys, which need at least",
    ),
    "absurd-array-length": (
        lambda m, d: copy_with(
            m,
            d,
            patch={
                key_value_offset(m, gguf.Keys.Tokenizer.TOKEN_TYPE) + 8: struct.pack("<Q", 2**61)
            },
        ),
        f"its metadata (key '{gguf.Keys.Tokenizer.TOKEN_TYPE}') claims",
    ),
    "absurd-string-array": (
        lambda m, d: copy_with(
            m,
            d,
            patch={key_value_offset(m, gguf.Keys.Tokenizer.LIST) + 8: struct.pack("<Q", 2**61)},
        ),
        f"its metadata (key '{gguf.Keys.Tokenizer.LIST}') claims",
    ),
    "bad-value-type": (
        lambda m, d: copy_with(
            m, d, patch={key_value_offset(m, gguf.Keys.General.NAME): struct.pack("<I", 77)}
        ),
        f"key '{gguf.Keys.General.NAME}' has invalid value type 77",
    ),
    "too-many-dims": (
        lambda m, d: copy_with(
            m, d, patch={tensor_info_offset(m, EMBD, "n_dims"): struct.pack("<I", 9)}
        ),
        f"tensor '{EMBD}' has 9 dimensions (at most 4)",
    ),
    "unknown-tensor-type": (
        lambda m, d: copy_with(
            m, d, patch={tensor_info_offset(m, EMBD, "type"): struct.pack("<I", 200)}
        ),
        f"tensor '{EMBD}' has unknown ggml type 200",
    ),
    "bad-tensor-offset": (
        lambda m, d: copy_with(
            m, d, patch={tensor_info_offset(m, EMBD, "offset"): struct.pack("<Q", 64)}
        ),
        f"tensor '{EMBD}' has data offset 64, expected 0",
    ),
    "cut-in-metadata": (
        lambda m, d: copy_with(m, d, cut=key_value_offset(m, gguf.Keys.Tokenizer.LIST) + 1000),
        f"cut short inside its metadata (key '{gguf.Keys.Tokenizer.LIST}')",
    ),
    "cut-in-tensor-table": (
        lambda m, d: copy_with(m, d, cut=m.read_bytes().rindex(tname(M.FFN_DOWN, 1).encode()) + 5),
        "cut short inside its tensor table (tensor 21 of 21)",
    ),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_bad_file_is_one_clear_error(files: dict[str, Path], tmp_path: Path, case: str) -> None:
    make, expected = BAD_FILES[case]
    path = make(files["model"], tmp_path / f"{case}.gguf")
    start = time.perf_counter()
    with pytest.raises(GGUFFileError) as info:
        check_gguf(path)
    assert time.perf_counter() - start < 1.0  # absurd counts must not be looped over
    text = message(info)
    assert text.startswith(f"{path} is not a valid GGUF file: ")
    assert expected in text
    assert text.endswith("re-create it with `edgestack convert` (or copy/download it again)")


@pytest.mark.parametrize("missing", [1, 100, 4000])
def test_truncated_tensor_data_says_how_much_is_missing(
    files: dict[str, Path], tmp_path: Path, missing: int
) -> None:
    full = check_gguf(files["model"])
    end = max(t.offset + t.nbytes for t in full.tensors)
    path = copy_with(files["model"], tmp_path / "cut.gguf", cut=end - missing)
    with pytest.raises(GGUFFileError) as info:
        check_gguf(path)
    assert f"({missing} bytes missing" in message(info)


def test_truncated_adapter_hint(files: dict[str, Path], tmp_path: Path) -> None:
    size = files["adapter"].stat().st_size
    path = copy_with(files["adapter"], tmp_path / "cut.lora.gguf", cut=size - 64)
    with pytest.raises(GGUFFileError, match=r"bytes missing.*`edgestack export-lora`"):
        check_gguf(path, kind="adapter")


def test_alignment_must_be_a_power_of_two(tmp_path: Path) -> None:
    w = gguf.GGUFWriter(str(tmp_path / "align.gguf"), LLAMA)
    w.add_custom_alignment(64)  # the writer refuses 48 itself, so patch it in afterwards
    w.add_tensor("output_norm.weight", np.ones(32, dtype=np.float32))
    _write(w)
    path = tmp_path / "align.gguf"
    value_at = key_value_offset(path, gguf.Keys.General.ALIGNMENT) + 4
    copy_with(path, path, patch={value_at: struct.pack("<I", 48)})
    with pytest.raises(
        GGUFFileError, match=f"{gguf.Keys.General.ALIGNMENT} is 48, not a power of two"
    ):
        check_gguf(path)


def test_alignment_must_be_uint32(tmp_path: Path) -> None:
    w = gguf.GGUFWriter(str(tmp_path / "align.gguf"), LLAMA)
    w.add_uint64(gguf.Keys.General.ALIGNMENT, 64)
    w.add_tensor("output_norm.weight", np.ones(32, dtype=np.float32))
    _write(w)
    with pytest.raises(
        GGUFFileError, match=f"{gguf.Keys.General.ALIGNMENT} must be a uint32, not uint64"
    ):
        check_gguf(tmp_path / "align.gguf")


def test_custom_alignment(tmp_path: Path) -> None:
    w = gguf.GGUFWriter(str(tmp_path / "align.gguf"), LLAMA)
    w.add_custom_alignment(64)
    w.add_tensor("output_norm.weight", np.ones(32, dtype=np.float32))
    w.add_tensor("token_embd.weight", np.ones((3, 32), dtype=np.float32))
    _write(w)
    s = check_gguf(tmp_path / "align.gguf")
    assert (s.alignment, s.data_offset % 64, s.tensors[1].offset - s.tensors[0].offset) == (
        64,
        0,
        128,
    )
    assert s.file_type == "F32"  # no general.file_type: the type of most tensor bytes


def test_no_architecture(tmp_path: Path) -> None:
    path = write_model(tmp_path / "noarch.gguf", drop_keys=[gguf.Keys.General.ARCHITECTURE])
    with pytest.raises(GGUFFileError, match=f"has no {gguf.Keys.General.ARCHITECTURE}"):
        check_gguf(path)


def test_unknown_architecture(tmp_path: Path) -> None:
    path = write_model(tmp_path / "odd.gguf", arch="not-an-arch")
    with pytest.raises(
        GGUFFileError, match=r"architecture 'not-an-arch' is not one llama\.cpp knows"
    ):
        check_gguf(path)


def test_model_without_general_type_is_a_model(tmp_path: Path) -> None:
    assert check_gguf(write_model(tmp_path / "old.gguf", general_type=None)).kind == "model"


# --- the right kind -----------------------------------------------------------------------------


def test_adapter_given_as_model(files: dict[str, Path]) -> None:
    with pytest.raises(GGUFFileError) as info:
        check_gguf(files["adapter"])
    assert "is a LoRA adapter, not a model" in message(info)


@pytest.mark.parametrize("general_type", [gguf.GGUFType.MODEL, None])
def test_model_given_as_adapter(
    files: dict[str, Path], tmp_path: Path, general_type: str | None
) -> None:
    path = files["model"] if general_type else write_model(tmp_path / "m.gguf", general_type=None)
    with pytest.raises(GGUFFileError) as info:
        check_gguf(path, kind="adapter")
    assert "model GGUF, not a LoRA adapter" in message(info)


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({"adapter_type": "control_vector"}, "adapter of type 'control_vector'"),
        (
            {"extra": {"blk.0.attn_q.weight.scale": (4,)}},
            "'blk.0.attn_q.weight.scale' is neither a .lora_a nor",
        ),
        ({"drop": [tname(M.FFN_UP, 1) + ".lora_b"]}, f"'{tname(M.FFN_UP, 1)}.lora_b' is missing"),
        ({"targets": ()}, "has no LoRA tensors"),
    ],
    ids=["adapter-type", "odd-tensor", "half-pair", "empty"],
)
def test_malformed_adapter(tmp_path: Path, options: dict[str, Any], expected: str) -> None:
    path = write_adapter(tmp_path / "bad.lora.gguf", **options)
    with pytest.raises(GGUFFileError) as info:
        check_gguf(path, kind="adapter")
    assert expected in message(info)


def test_norm_tensors_in_adapters_are_ignored_like_llama_cpp(tmp_path: Path) -> None:
    path = write_adapter(
        tmp_path / "norm.lora.gguf",
        extra={tname(M.ATTN_NORM, 0).replace(".weight", "") + "_norm.weight": (N_EMBD,)},
    )
    assert check_gguf(path, kind="adapter").n_tensors == 7


# --- adapter against base -----------------------------------------------------------------------


def test_adapter_fits_its_base(files: dict[str, Path], tmp_path: Path) -> None:
    check_adapter_fits(files["adapter"], files["model"])
    check_adapter_fits(check_gguf(files["adapter"], kind="adapter"), check_gguf(files["model"]))
    embd = write_adapter(
        tmp_path / "embd.lora.gguf", targets=[tname(M.TOKEN_EMBD), tname(M.OUTPUT)]
    )
    check_adapter_fits(embd, files["model"])


def test_adapter_for_another_architecture(files: dict[str, Path], tmp_path: Path) -> None:
    path = write_adapter(tmp_path / "neox.lora.gguf", arch=GPTNEOX)
    with pytest.raises(AdapterError) as info:
        check_adapter_fits(path, files["model"])
    assert f"is for architecture '{GPTNEOX}', but base model" in message(info)
    assert f"is '{LLAMA}'" in message(info)


def test_adapter_tensor_missing_in_base(files: dict[str, Path], tmp_path: Path) -> None:
    path = write_adapter(
        tmp_path / "extra.lora.gguf",
        extra={
            "blk.7.attn_q.weight.lora_a": (RANK, N_EMBD),
            "blk.7.attn_q.weight.lora_b": (N_EMBD, RANK),
        },
    )
    with pytest.raises(AdapterError) as info:
        check_adapter_fits(path, files["model"])
    assert "changes tensor 'blk.7.attn_q.weight', which base model" in message(info)


@pytest.mark.parametrize(
    ("options", "tensor", "base", "lora_a", "lora_b"),
    [
        ({"n_embd": 48}, tname(M.ATTN_Q, 0), "[32, 32]", "[48, 4]", "[4, 48]"),
        (
            {"n_ff": 96, "targets": [tname(M.FFN_UP, 1)]},
            tname(M.FFN_UP, 1),
            "[32, 64]",
            "[32, 4]",
            "[4, 96]",
        ),
        (
            {"n_embd": 48, "targets": [tname(M.TOKEN_EMBD)]},
            tname(M.TOKEN_EMBD),
            "[32, 257]",
            "[4, 257]",
            "[4, 48]",
        ),
    ],
    ids=["hidden-size", "ffn-size", "token-embd"],
)
def test_adapter_shape_mismatch_names_tensor_and_shapes(
    files: dict[str, Path],
    tmp_path: Path,
    options: dict[str, Any],
    tensor: str,
    base: str,
    lora_a: str,
    lora_b: str,
) -> None:
    path = write_adapter(tmp_path / "other.lora.gguf", **options)
    with pytest.raises(AdapterError) as info:
        check_adapter_fits(path, files["model"])
    text = message(info)
    assert f"tensor '{tensor}' is {base} in the base" in text
    assert f"lora_a {lora_a} and lora_b {lora_b}" in text


def test_adapter_rank_mismatch(files: dict[str, Path], tmp_path: Path) -> None:
    path = write_adapter(tmp_path / "rank.lora.gguf", rank_b=RANK + 1, targets=[tname(M.ATTN_K, 0)])
    with pytest.raises(AdapterError, match="whose ranks differ"):
        check_adapter_fits(path, files["model"])


def test_adapter_fits_checks_both_files(files: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(GGUFFileError, match="is a LoRA adapter, not a model"):
        check_adapter_fits(files["adapter"], files["adapter"])
    with pytest.raises(ModelFileNotFound):
        check_adapter_fits(tmp_path / "missing.gguf", files["model"])


# --- llama.cpp itself -----------------------------------------------------------------------------

ADAPTER_VARIANTS: dict[str, dict[str, Any]] = {
    "fits": {},
    "fits-token-embd": {"targets": [tname(M.TOKEN_EMBD), tname(M.OUTPUT), tname(M.ATTN_OUT, 1)]},
    "other-hidden-size": {"n_embd": 48},
    "other-ffn-size": {"n_ff": 96, "targets": [tname(M.FFN_DOWN, 0)]},
    "token-embd-other-size": {"n_embd": 48, "targets": [tname(M.TOKEN_EMBD)]},
    "rank-mismatch": {"rank_b": RANK + 1},
    "missing-base-tensor": {
        "extra": {
            "blk.9.ffn_up.weight.lora_a": (RANK, N_EMBD),
            "blk.9.ffn_up.weight.lora_b": (N_FF, RANK),
        }
    },
    "other-arch": {"arch": GPTNEOX},
}


@pytest.fixture(scope="module")
def llama_base(files: dict[str, Path]) -> Any:
    from llama_cpp import llama_cpp as lib

    lib.llama_backend_init()
    params = lib.llama_model_default_params()
    model = lib.llama_model_load_from_file(os.fsencode(files["model"]), params)
    assert model, "llama.cpp could not load the test base model"
    yield lib, model
    lib.llama_model_free(model)


@pytest.mark.llama
@pytest.mark.parametrize("variant", list(ADAPTER_VARIANTS))
def test_llama_cpp_accepts_exactly_what_we_accept(
    files: dict[str, Path], tmp_path: Path, llama_base: Any, variant: str
) -> None:
    """Our checks mirror llama-adapter.cpp: never stricter, never looser."""
    lib, model = llama_base
    path = write_adapter(tmp_path / f"{variant}.lora.gguf", **ADAPTER_VARIANTS[variant])
    try:
        check_adapter_fits(path, files["model"])
        ours = True
    except AdapterError:
        ours = False
    adapter = lib.llama_adapter_lora_init(model, os.fsencode(path))
    theirs = bool(adapter)
    if adapter:
        lib.llama_adapter_lora_free(adapter)
    assert ours == theirs == variant.startswith("fits")


@pytest.mark.llama
def test_llama_model_load_never_sees_a_bad_file(files: dict[str, Path], tmp_path: Path) -> None:
    try:
        from edge_stack._llama import LlamaContext, LlamaModel
    except ImportError:
        pytest.skip("edge_stack._llama is not written yet")
    truncated = copy_with(
        files["model"], tmp_path / "cut.gguf", cut=files["model"].stat().st_size - 100
    )
    with pytest.raises(GGUFFileError, match="bytes missing"):
        LlamaModel.load(truncated)
    garbage = tmp_path / "garbage.gguf"
    garbage.write_bytes(np.random.default_rng(3).bytes(10_000))
    with pytest.raises(GGUFFileError, match="GGUF magic"):
        LlamaModel.load(garbage)
    wrong = write_adapter(tmp_path / "wide.lora.gguf", n_embd=48)
    model = LlamaModel.load(files["model"])
    try:
        with pytest.raises(AdapterError, match="does not fit base model"):
            LlamaContext(model, n_ctx=32, n_threads=1, lora=wrong)
        ctx = LlamaContext(model, n_ctx=32, n_threads=1, lora=files["adapter"])
        ctx.close()
    finally:
        model.close()
