"""check_gguf on small GGUF files written with gguf.GGUFWriter (tests/gguf_builders.py).

The structure checks (gguf.cpp's) run on files cut and patched byte by byte; the model loader's
checks on complete tiny models of each supported architecture with one thing broken each. The
llama-marked tests show in a child process that llama.cpp, unchecked, really aborts or hangs on
a sample of those files, and loads the unbroken ones.
"""

from __future__ import annotations

import mmap
import os
import shutil
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import pytest

from edge_stack.errors import AdapterError, GGUFFileError, ModelFileNotFound
from edge_stack.formats.gguf import _check as _gguf_check
from edge_stack.formats.gguf._check import check_gguf
from edge_stack.formats.gguf._reader import read_header
from edge_stack.formats.gguf._summary import ArraySummary, GGUFSummary
from edge_stack.formats.gguf._vocab import check_vocab

from gguf_builders import (
    GPTNEOX,
    HEAD_DIM,
    LLAMA,
    N_EMBD,
    N_FF,
    N_HEAD,
    N_LAYER,
    N_VOCAB,
    QWEN2,
    RANK,
    TOKENS,
    M,
    V,
    array,
    f32,
    model_shapes,
    string,
    tname,
    u32,
    weights,
    write,
    write_adapter,
    write_model,
)
from model_builders import VARIANTS

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
    shapes = model_shapes()
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


def test_large_vocabulary_is_checked(tmp_path: Path) -> None:
    """A Pythia-sized vocabulary (50k tokens, 50k merges) is read and checked whole (its speed
    is measured by benchmarks/gguf_check_speed.py, not here: a shared machine's clock flakes)."""
    path = write_model(tmp_path / "big-vocab.gguf", long_vocab=50_000)
    s = check_gguf(path)
    assert s.tokenizer is not None and s.tokenizer.n_tokens == N_VOCAB + 50_000


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
    # Absurd counts (2^61 strings) must not be looped over: CPU time, not the wall clock (which
    # other processes on a shared machine stretch), and a bound no loop over them could meet.
    start = time.process_time()
    with pytest.raises(GGUFFileError) as info:
        check_gguf(path)
    assert time.process_time() - start < 5.0
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
    write(w)
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
    write(w)
    with pytest.raises(
        GGUFFileError, match=f"{gguf.Keys.General.ALIGNMENT} must be a uint32, not uint64"
    ):
        check_gguf(tmp_path / "align.gguf")


def test_custom_alignment(tmp_path: Path) -> None:
    path = write_model(
        tmp_path / "align.gguf", alignment=64, kv={gguf.Keys.General.FILE_TYPE: None}
    )
    s = check_gguf(path)
    assert (s.alignment, s.data_offset % 64) == (64, 0)
    assert all(t.offset % 64 == 0 for t in s.tensors)
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


# --- what llama.cpp's model loader asserts on -----------------------------------------------------

K, TOK = gguf.Keys, gguf.Keys.Tokenizer
NORMAL, BYTE = int(gguf.TokenType.NORMAL), int(gguf.TokenType.BYTE)


def types_with(at: int, value: int, n: int = N_VOCAB) -> list[int]:
    types = [NORMAL] * n
    types[at] = value
    return types


HEAD_KEY = K.Attention.HEAD_COUNT.format(arch=LLAMA)
# id -> (write_model options, what the one-line error must say). One row per class of problem.
MUTANTS: dict[str, tuple[dict[str, Any], str]] = {
    # vocabulary
    "duplicate-token": (
        {"tokens": [*TOKENS[:-1], TOKENS[97]]},
        f"{TOK.LIST} has the same text at ids 97 and 256",
    ),
    "empty-token-clashes": (
        {"tokens": [*TOKENS[:-2], "", "[EMPTY_255]"]},
        f"{TOK.LIST} has the same text at ids 255 and 256",
    ),
    "no-token-list": ({"kv": {TOK.LIST: None}}, f"it has no {TOK.LIST}"),
    "token-list-not-strings": (
        {"kv": {TOK.LIST: array(range(N_VOCAB), V.INT32)}},
        f"{TOK.LIST} has type array of int32, but llama.cpp reads an array of strings",
    ),
    "no-tokenizer-model": ({"kv": {TOK.MODEL: None}}, f"it has no {TOK.MODEL}"),
    "unknown-tokenizer-model": (
        {"kv": {TOK.MODEL: string("sentencepiece")}},
        f"{TOK.MODEL} is not a tokenizer llama.cpp knows",
    ),
    "bos-out-of-range": (
        {"kv": {TOK.BOS_ID: u32(N_VOCAB)}},
        f"{TOK.BOS_ID} is {N_VOCAB}, but {TOK.LIST} has only {N_VOCAB} tokens",
    ),
    "pad-id-signed": (
        {"kv": {TOK.PAD_ID: gguf.GGUFValue(-1, V.INT32)}},
        f"{TOK.PAD_ID} has type int32, but llama.cpp reads a uint32",
    ),
    "token-type-unknown": (
        {"token_types": types_with(5, 9)},
        f"{TOK.TOKEN_TYPE} of token 5 is 9, expected 0 to 6",
    ),
    "token-types-short": (
        {"token_types": [NORMAL] * (N_VOCAB - 1)},
        f"{TOK.TOKEN_TYPE} has {N_VOCAB - 1} entries, but {TOK.LIST} has {N_VOCAB} tokens",
    ),
    "scores-long": (
        {"kv": {TOK.SCORES: array([0.0] * (N_VOCAB + 1), V.FLOAT32)}},
        f"{TOK.SCORES} has {N_VOCAB + 1} entries",
    ),
    "byte-token-misspelled": (
        {"token_types": types_with(97, BYTE)},
        f"token 97 has {TOK.TOKEN_TYPE} BYTE but is not spelled <0xHH>",
    ),
    "no-merges": ({"kv": {TOK.MERGES: None}}, f"it has no {TOK.MERGES}"),
    "merge-of-unknown-token": (
        {"merges": ["a b", "ab zz"]},
        f"{TOK.MERGES} entry 1 is not two known tokens separated by one space",
    ),
    "merge-without-space": ({"merges": ["ab"]}, f"{TOK.MERGES} entry 0 is not two known tokens"),
    "merge-with-two-spaces": (
        {"merges": ["a b", "a b b"]},
        f"{TOK.MERGES} entry 1 is not two known tokens",
    ),
    # llama.cpp reads token texts as C strings: "a\0b" is "a", a duplicate (abort)
    "nul-in-token": (
        {"tokens": [*TOKENS[:-1], "a\x00b"]},
        f"token {N_VOCAB - 1} of {TOK.LIST} holds a NUL byte, but llama.cpp reads token texts "
        "as C strings: it would cut it to 'a'",
    ),
    "nul-starting-token": (
        {"tokens": [*TOKENS[:-1], "\x00zz"]},
        f"token {N_VOCAB - 1} of {TOK.LIST} holds a NUL byte, but llama.cpp reads token texts "
        "as C strings: it would cut it to nothing",
    ),
    # no vocabulary: llama.cpp loads it, then aborts on the first tokenization
    "vocab-none": (
        {"kv": {TOK.MODEL: string("none"), K.LLM.VOCAB_SIZE: u32(N_VOCAB)}},
        f"{TOK.MODEL} is 'none': the model has no vocabulary",
    ),
    "vocab-no_vocab": (
        {"kv": {TOK.MODEL: string("no_vocab")}},
        f"{TOK.MODEL} is 'no_vocab': the model has no vocabulary",
    ),
    # unknown pre-tokenizer types: llama.cpp refuses the load without saying why
    "pre-upper-case": (
        {"kv": {TOK.PRE: string("GPT-2")}},
        f"{TOK.PRE} is 'GPT-2', not one of the 91 pre-tokenizer types llama.cpp knows for a BPE "
        "vocabulary (gpt2), e.g. 'gpt-2'",
    ),
    "pre-of-another-vocab-type": (
        {"kv": {TOK.PRE: string("t5")}},
        f"{TOK.PRE} is 't5', not one of the 91",
    ),
    "pre-misspelled": ({"kv": {TOK.PRE: string("rwkv6")}}, f"{TOK.PRE} is 'rwkv6', not one"),
    "pre-invalid-utf8": (
        {"kv": {TOK.PRE: gguf.GGUFValue(b"gpt-2\xff", V.STRING)}},
        f"{TOK.PRE} is 'gpt-2\\ufffd', not one",
    ),
    "pre-long": (
        {"kv": {TOK.PRE: string("x" * 10_000)}},
        f"{TOK.PRE} is 'xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx...', not one",
    ),
    "sentencepiece-without-byte-tokens": (
        {"kv": {TOK.MODEL: string("llama")}},
        f"{TOK.LIST} has no token <0x00> for byte 0",
    ),
    "more-tokens-than-embedding-rows": (
        {"tokens": [*TOKENS, "zz"], "token_types": [NORMAL] * (N_VOCAB + 1)},
        f"tensor 'token_embd.weight' has {N_VOCAB} rows, but {TOK.LIST} has {N_VOCAB + 1} tokens",
    ),
    # hyperparameters
    "block-count-0": (
        {"kv": {K.LLM.BLOCK_COUNT: u32(0)}},
        f"{LLAMA}.block_count is 0, expected 1 to 512",
    ),
    "block-count-huge": (
        {"kv": {K.LLM.BLOCK_COUNT: u32(100_000)}},
        f"{LLAMA}.block_count is 100000, expected 1 to 512",
    ),
    "block-count-signed": (
        {"kv": {K.LLM.BLOCK_COUNT: gguf.GGUFValue(2, V.INT32)}},
        f"{LLAMA}.block_count has type int32, but llama.cpp reads a uint32",
    ),
    "no-context-length": (
        {"kv": {K.LLM.CONTEXT_LENGTH: None}},
        f"it has no {LLAMA}.context_length",
    ),
    "context-length-0": (
        {"kv": {K.LLM.CONTEXT_LENGTH: u32(0)}},
        f"{LLAMA}.context_length is 0, expected at least 1",
    ),
    "head-count-0": ({"kv": {K.Attention.HEAD_COUNT: u32(0)}}, f"{HEAD_KEY} is 0"),
    "head-count-not-dividing-embedding": (
        {"kv": {K.Attention.HEAD_COUNT: u32(5), K.Attention.HEAD_COUNT_KV: u32(5)}},
        f"{LLAMA}.embedding_length 32 is not a multiple of {HEAD_KEY} 5",
    ),
    "kv-heads-not-dividing-heads": (
        {"kv": {K.Attention.HEAD_COUNT_KV: u32(3)}},
        f"{HEAD_KEY} 4 is not a multiple of {HEAD_KEY}_kv 3",
    ),
    "per-layer-array-too-short": (
        {"kv": {K.Attention.HEAD_COUNT: array([4, 4, 4], V.UINT32)}},
        f"{HEAD_KEY} is an array of 3 values, but {LLAMA}.block_count is 2",
    ),
    "per-layer-heads-differ": (
        {"kv": {K.Attention.HEAD_COUNT: array([4, 2], V.UINT32)}},
        f"{HEAD_KEY} differs between blocks (2 to 4)",
    ),
    "key-and-value-heads-differ": (
        {"kv": {K.Attention.KEY_LENGTH: u32(8), K.Attention.VALUE_LENGTH: u32(4)}},
        "the key head size 8 and value head size 4",
    ),
    "no-feed-forward-length": (
        {"kv": {K.LLM.FEED_FORWARD_LENGTH: None}},
        f"it has no {LLAMA}.feed_forward_length",
    ),
    "rope-dims-0": (
        {"arch": GPTNEOX, "kv": {K.Rope.DIMENSION_COUNT: u32(0)}},
        f"{GPTNEOX}.rope.dimension_count is 0, expected an even number from 2 to the head size 8",
    ),
    "rope-dims-odd": (
        {"arch": GPTNEOX, "kv": {K.Rope.DIMENSION_COUNT: u32(3)}},
        f"{GPTNEOX}.rope.dimension_count is 3, expected an even number",
    ),
    "rope-dims-beyond-head": (
        {"arch": GPTNEOX, "kv": {K.Rope.DIMENSION_COUNT: u32(16)}},
        f"{GPTNEOX}.rope.dimension_count is 16, expected an even number from 2 to the head size 8",
    ),
    "rope-dims-partial-qwen2": (
        {"arch": QWEN2, "kv": {K.Rope.DIMENSION_COUNT: u32(4)}},
        f"{QWEN2}.rope.dimension_count is 4, expected the head size 8",
    ),
    "rms-eps-negative": (
        {"kv": {K.Attention.LAYERNORM_RMS_EPS: f32(-1e-5)}},
        f"{LLAMA}.attention.layer_norm_rms_epsilon is -1e-05, expected a finite number >= 0",
    ),
    "rms-eps-nan": (
        {"kv": {K.Attention.LAYERNORM_RMS_EPS: f32(float("nan"))}},
        f"{LLAMA}.attention.layer_norm_rms_epsilon is nan, expected a finite number >= 0",
    ),
    "norm-eps-infinite": (
        {"arch": GPTNEOX, "kv": {K.Attention.LAYERNORM_EPS: f32(float("-inf"))}},
        f"{GPTNEOX}.attention.layer_norm_epsilon is -inf",
    ),
    "no-norm-eps": (
        {"kv": {K.Attention.LAYERNORM_RMS_EPS: None}},
        f"it has no {LLAMA}.attention.layer_norm_rms_epsilon",
    ),
    "rope-freq-base-0": (
        {"kv": {K.Rope.FREQ_BASE: f32(0.0)}},
        f"{LLAMA}.rope.freq_base is 0, expected a finite number > 0",
    ),
    "rope-scaling-type-unknown": (
        {"kv": {K.Rope.SCALING_TYPE: string("ntk")}},
        f"{LLAMA}.rope.scaling.type is not one of none, linear, yarn, longrope",
    ),
    "experts-used-without-experts": (
        {"kv": {K.LLM.EXPERT_USED_COUNT: u32(2)}},
        f"{LLAMA}.expert_used_count is 2, more than {LLAMA}.expert_count 0",
    ),
    "nextn-layers-beyond-blocks": (
        {"kv": {K.LLM.NEXTN_PREDICT_LAYERS: u32(3)}},
        f"{LLAMA}.nextn_predict_layers is 3, more than {LLAMA}.block_count 2",
    ),
    "split-model-part": (
        {"kv": {K.Split.LLM_KV_SPLIT_COUNT: gguf.GGUFValue(2, V.UINT16)}},
        "it is one part of a model split in 2 files",
    ),
    # tensors
    "block-count-beyond-tensors": (
        {"kv": {K.LLM.BLOCK_COUNT: u32(3)}},
        f"tensor '{tname(M.ATTN_NORM, 2)}' is missing, but llama.cpp's {LLAMA} needs it",
    ),
    "block-count-below-tensors": (
        {"kv": {K.LLM.BLOCK_COUNT: u32(1)}},
        f"tensor '{tname(M.ATTN_NORM, 1)}' is not one llama.cpp's {LLAMA} loads",
    ),
    "missing-tensor": (
        {"tensors": {tname(M.FFN_UP, 1): None}},
        f"tensor '{tname(M.FFN_UP, 1)}' is missing, but llama.cpp's {LLAMA} needs it ([32, 64]",
    ),
    "missing-bias-gptneox": (
        {"arch": GPTNEOX, "tensors": {tname(M.ATTN_QKV, 0, "bias"): None}},
        f"tensor '{tname(M.ATTN_QKV, 0, 'bias')}' is missing",
    ),
    "embedding-length-vs-tensors": (
        {"kv": {K.LLM.EMBEDDING_LENGTH: u32(48), K.Rope.DIMENSION_COUNT: u32(12)}},
        f"tensor 'token_embd.weight' has shape [32, {N_VOCAB}], but llama.cpp's {LLAMA} expects "
        f"[48, {N_VOCAB}] (n_embd, n_vocab)",
    ),
    "wrong-shape": (
        {"tensors": {tname(M.FFN_UP, 0): weights(N_FF + 1, N_EMBD)}},
        f"tensor '{tname(M.FFN_UP, 0)}' has shape [32, 65], but llama.cpp's {LLAMA} expects "
        "[32, 64] (n_embd, n_ff)",
    ),
    "extra-dimension": (
        {"tensors": {tname(M.OUTPUT_NORM): weights(2, N_EMBD)}},
        f"tensor '{tname(M.OUTPUT_NORM)}' has shape [32, 2], but llama.cpp's {LLAMA} expects [32]",
    ),
    "unused-tensor": (
        {"tensors": {tname(M.ATTN_ROT_EMBD, 0): weights(4)}},
        f"tensor '{tname(M.ATTN_ROT_EMBD, 0)}' is not one llama.cpp's {LLAMA} loads",
    ),
    "fused-and-separate-qkv": (
        {"arch": QWEN2, "tensors": {tname(M.ATTN_QKV, 0): weights(3 * N_EMBD, N_EMBD)}},
        f"tensor '{tname(M.ATTN_Q, 0)}' is not one llama.cpp's {QWEN2} loads",
    ),
    "f16-norm": (
        {"tensors": {tname(M.ATTN_NORM, 0): weights(N_EMBD, dtype=np.float16)}},
        f"tensor '{tname(M.ATTN_NORM, 0)}' is stored as F16, but llama.cpp needs vectors",
    ),
    "f16-rope-freqs": (
        {"tensors": {tname(M.ROPE_FREQS): weights(HEAD_DIM // 2, dtype=np.float16)}},
        f"tensor '{tname(M.ROPE_FREQS)}' is stored as F16",
    ),
    "rope-freqs-wrong-length": (
        {"tensors": {tname(M.ROPE_FREQS): weights(HEAD_DIM)}},
        f"tensor '{tname(M.ROPE_FREQS)}' has shape [8], but llama.cpp's {LLAMA} expects [4]",
    ),
    # gguf.cpp accepts general.alignment 1; llama.cpp maps the data and aborts on misalignment
    "tensor-data-misaligned": (
        {"alignment": 1},
        f"tensor '{EMBD}' starts at byte 5668, not a multiple of 32 "
        f"({K.General.ALIGNMENT} is 1), so llama.cpp aborts when it maps the file",
    ),
    "integer-weights": (
        {"tensors": {tname(M.FFN_UP, 0): weights(N_FF, N_EMBD, dtype=np.int32)}},
        f"tensor '{tname(M.FFN_UP, 0)}' is stored as I32",
    ),
}


@pytest.mark.parametrize("case", list(MUTANTS))
def test_model_llama_cpp_cannot_load_is_refused(tmp_path: Path, case: str) -> None:
    options, expected = MUTANTS[case]
    path = write_model(tmp_path / f"{case}.gguf", **options)
    with pytest.raises(GGUFFileError) as info:
        check_gguf(path)
    text = message(info)
    assert text.startswith(f"{path} is a GGUF model llama.cpp cannot load: ")
    assert expected in text
    assert text.endswith(
        "the file is damaged or was written by a tool llama.cpp cannot read: "
        "re-convert it with `edgestack convert`"
    )
    _gguf_check.clear_cache()
    with pytest.raises(GGUFFileError) as either:
        check_gguf(path, kind=None)  # `edgestack inspect` gets the same message
    assert str(either.value) == text


def test_a_model_given_as_adapter_is_refused_as_not_an_adapter(tmp_path: Path) -> None:
    path = write_model(tmp_path / "dup.gguf", tokens=[*TOKENS[:-1], TOKENS[97]])
    with pytest.raises(GGUFFileError, match="model GGUF, not a LoRA adapter"):
        check_gguf(path, kind="adapter")


# Layouts llama.cpp loads (and decodes with): none may be refused.
VALID: dict[str, dict[str, Any]] = {
    "gptneox": {"arch": GPTNEOX},
    "llama": {"arch": LLAMA},
    "qwen2": {"arch": QWEN2},
    "llama-tied-output": {"tensors": {tname(M.OUTPUT): None}},
    "qwen2-tied-output-with-bias": {
        "arch": QWEN2,
        "tensors": {tname(M.OUTPUT): None, tname(M.OUTPUT, suffix="bias"): weights(N_VOCAB)},
    },
    "llama-grouped-query": {
        "kv": {K.Attention.HEAD_COUNT_KV: u32(2)},
        "tensors": {
            tname(t, i): weights(N_EMBD // 2, N_EMBD)
            for t in (M.ATTN_K, M.ATTN_V)
            for i in range(N_LAYER)
        },
    },
    "llama-fused-qkv-and-biases": {
        "tensors": {
            **{tname(t, i): None for t in (M.ATTN_Q, M.ATTN_K, M.ATTN_V) for i in range(N_LAYER)},
            **{tname(M.ATTN_QKV, i): weights(3 * N_EMBD, N_EMBD) for i in range(N_LAYER)},
            tname(M.ATTN_OUT, 0, "bias"): weights(N_EMBD),
            tname(M.FFN_GATE, 1, "bias"): weights(N_FF),
        },
    },
    "llama-rope-freqs-and-scales": {
        "tensors": {
            tname(M.ROPE_FREQS): weights(HEAD_DIM // 2),
            tname(M.ATTN_Q, 0, "scale"): weights(1),
        },
    },
    "llama-mixture-of-experts": {
        "kv": {K.LLM.EXPERT_COUNT: u32(2), K.LLM.EXPERT_USED_COUNT: u32(1)},
        "tensors": {
            **{
                tname(t, i): None
                for t in (M.FFN_GATE, M.FFN_UP, M.FFN_DOWN)
                for i in range(N_LAYER)
            },
            **{tname(M.FFN_GATE_INP, i): weights(2, N_EMBD) for i in range(N_LAYER)},
            **{tname(M.FFN_GATE_EXP, i): weights(2, N_FF, N_EMBD) for i in range(N_LAYER)},
            **{tname(M.FFN_UP_EXP, i): weights(2, N_FF, N_EMBD) for i in range(N_LAYER)},
            **{tname(M.FFN_DOWN_EXP, i): weights(2, N_EMBD, N_FF) for i in range(N_LAYER)},
        },
    },
    "llama-head-size-given": {
        "kv": {K.Attention.KEY_LENGTH: u32(HEAD_DIM), K.Attention.VALUE_LENGTH: u32(HEAD_DIM)},
    },
    "per-layer-arrays": {
        "kv": {
            K.Attention.HEAD_COUNT: array([N_HEAD] * N_LAYER, V.UINT32),
            K.LLM.FEED_FORWARD_LENGTH: array([N_FF] * N_LAYER, V.INT32),
        },
    },
    "byte-tokens-spelled-right": {
        "tokens": [*TOKENS[:-1], "<0x0A>"],
        "token_types": types_with(N_VOCAB - 1, BYTE),
    },
    "empty-token": {"tokens": [*TOKENS[:-1], ""]},
    "special-ids-in-range": {"kv": {TOK.PAD_ID: u32(N_VOCAB - 1), TOK.UNK_ID: u32(0)}},
    "pre-of-llama-3": {"kv": {TOK.PRE: string("llama-bpe")}},
    "pre-of-qwen2": {"kv": {TOK.PRE: string("qwen2")}},
    "no-pre": {"kv": {TOK.PRE: None}},  # llama.cpp warns and uses "default"
    "pre-cut-at-nul": {"kv": {TOK.PRE: string("gpt-2\x00junk")}},  # a C string: "gpt-2"
    "aligned-to-64": {"alignment": 64},
    "sentencepiece-pre-ignored": {  # llama.cpp reads tokenizer.ggml.pre for BPE only
        "tokens": [f"<0x{b:02X}>" for b in range(256)] + ["ab"],
        "token_types": [BYTE] * 256 + [NORMAL],
        "kv": {TOK.MODEL: string("llama"), TOK.PRE: string("GPT-2"), TOK.MERGES: None},
    },
    "rope-scaling-linear": {
        "kv": {K.Rope.SCALING_TYPE: string("linear"), K.Rope.SCALING_FACTOR: f32(2.0)}
    },
    "unchecked-architecture": {"arch": gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.PHI2]},
}
# Layouts that only our checks pass: llama.cpp's phi2 loader wants phi2's own tensors.
NOT_RUN = ("unchecked-architecture",)


@pytest.mark.parametrize("case", list(VALID))
def test_models_llama_cpp_loads_pass(tmp_path: Path, case: str) -> None:
    s = check_gguf(write_model(tmp_path / f"{case}.gguf", **VALID[case]))
    assert s.kind == "model"


BUNDLED = sorted((Path(__file__).parents[2] / "models" / "word-problems").glob("*.gguf"))


@pytest.mark.parametrize("path", BUNDLED, ids=[p.name for p in BUNDLED])
def test_bundled_stack_passes(path: Path) -> None:
    assert check_gguf(path, kind=None).arch == GPTNEOX


@pytest.mark.torch
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_converted_models_pass(tiny_gguf: Callable[..., Path], variant: str) -> None:
    summary = check_gguf(tiny_gguf(variant))
    assert summary.arch == {"mistral": "llama"}.get(VARIANTS[variant][0], VARIANTS[variant][0])


def test_vocabulary_checks_count_a_large_vocabulary(tmp_path: Path) -> None:
    """A 50k-token vocabulary with 50k merges passes every vocabulary check (their speed:
    benchmarks/gguf_check_speed.py)."""
    path = write_model(tmp_path / "big-vocab.gguf", long_vocab=50_000)
    with path.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        header = read_header(mm, path.stat().st_size)
    assert check_vocab(header, LLAMA) == N_VOCAB + 50_000


# --- the same files, unchecked, in llama.cpp ------------------------------------------------------

# Loads each model with raw llama.cpp, tokenizes, decodes, and turns every token into text.
# Exit 0: all went well; 3: llama.cpp refused a model; 4: it refused a context.
UNCHECKED_LOAD = """
import ctypes, sys
import llama_cpp.llama_cpp as lib
quiet = lib.llama_log_callback(lambda level, text, data: None)
lib.llama_log_set(quiet, ctypes.c_void_p(0))
lib.llama_backend_init()
for path in sys.argv[1:]:
    print("loading", path, flush=True)
    model = lib.llama_model_load_from_file(path.encode(), lib.llama_model_default_params())
    if not model:
        sys.exit(3)
    params = lib.llama_context_default_params()
    params.n_ctx = params.n_batch = 64
    params.n_threads = params.n_threads_batch = 1
    ctx = lib.llama_init_from_model(model, params)
    if not ctx:
        sys.exit(4)
    vocab = lib.llama_model_get_vocab(model)
    tokens = (lib.llama_token * 64)()
    text = b"ab ab hello"
    n = lib.llama_tokenize(vocab, text, len(text), tokens, 64, True, True)
    print("decoding", flush=True)
    lib.llama_decode(ctx, lib.llama_batch_get_one(tokens, n))
    piece = ctypes.create_string_buffer(64)
    for token in range(lib.llama_vocab_n_tokens(vocab)):
        lib.llama_token_to_piece(vocab, token, piece, 64, 0, True)
    lib.llama_free(ctx)
    lib.llama_model_free(model)
"""
LOAD_SECONDS = 120  # a load that takes longer is itself a failure (the machine may be busy)
HANG_SECONDS = 5  # a tiny model decodes 9 tokens in milliseconds; this long is a hang


def run_unchecked(paths: list[Path], tmp_path: Path) -> tuple[str, str]:
    """("ok" | "refused" | "crashed" | "hung", stderr) of llama.cpp loading and using ``paths``."""
    out, err = tmp_path / "child.out", tmp_path / "child.err"
    env = {**os.environ, "GGML_NO_BACKTRACE": "1"}  # no gdb backtrace on abort: slow, noisy
    with out.open("w") as fout, err.open("w") as ferr:
        child = subprocess.Popen(
            [sys.executable, "-c", UNCHECKED_LOAD, *map(str, paths)],
            stdout=fout,
            stderr=ferr,
            env=env,
        )
        progress, deadline = "", time.monotonic() + LOAD_SECONDS
        while child.poll() is None and time.monotonic() < deadline:
            now = out.read_text()
            if now != progress:
                progress = now
                wait = HANG_SECONDS if now.endswith("decoding\n") else LOAD_SECONDS
                deadline = time.monotonic() + wait
            time.sleep(0.05)
        if child.poll() is None:
            child.kill()
            child.wait()
            assert progress.endswith("decoding\n"), f"llama.cpp stuck outside decode: {progress}"
            return "hung", err.read_text()
    code = child.returncode
    outcome = "ok" if code == 0 else "refused" if code in (3, 4) else "crashed"
    return outcome, err.read_text()


# A representative few of MUTANTS: what llama.cpp does with them unchecked (each costs a process).
UNCHECKED: dict[str, tuple[str, str]] = {
    "duplicate-token": ("crashed", "GGML_ASSERT(id_to_token.size() == token_to_id.size())"),
    "block-count-0": ("crashed", "GGML_ASSERT(hparams.n_layer_all > 0"),
    "rope-scaling-type-unknown": ("crashed", "LLAMA_ROPE_SCALING_TYPE_UNSPECIFIED"),
    "rms-eps-nan": ("crashed", "GGML_ASSERT(eps >= 0.0f)"),
    "f16-norm": ("crashed", "unsupported types"),
    "rope-dims-0": ("hung", ""),
    "nul-in-token": ("crashed", "GGML_ASSERT(id_to_token.size() == token_to_id.size())"),
    "vocab-none": ("crashed", 'GGML_ASSERT(tokenizer && "Tokenizer not initialized'),
    "tensor-data-misaligned": ("crashed", "buffer pointer must be aligned"),
    "pre-upper-case": ("refused", ""),
}


@pytest.mark.llama
@pytest.mark.parametrize("case", list(UNCHECKED))
def test_refused_files_really_break_llama_cpp(tmp_path: Path, case: str) -> None:
    options, _ = MUTANTS[case]
    expected, evidence = UNCHECKED[case]
    path = write_model(tmp_path / f"{case}.gguf", **options)
    with pytest.raises(GGUFFileError):
        check_gguf(path)
    outcome, stderr = run_unchecked([path], tmp_path)
    assert outcome == expected, stderr[-2000:]
    assert evidence in stderr


@pytest.mark.llama
def test_every_accepted_layout_works_in_llama_cpp(tmp_path: Path) -> None:
    """The VALID files (and so the mutants' bases) load, decode and detokenize: never stricter."""
    paths = [
        write_model(tmp_path / f"{case}.gguf", **options)
        for case, options in VALID.items()
        if case not in NOT_RUN
    ]
    outcome, stderr = run_unchecked(paths, tmp_path)
    assert outcome == "ok", stderr[-2000:]


# --- the runtime's own loading ----------------------------------------------------------------


@pytest.mark.llama
def test_llama_model_load_never_sees_a_bad_file(files: dict[str, Path], tmp_path: Path) -> None:
    from edge_stack.engines.llama import LlamaContext, LlamaModel

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
