"""The tensor plans of each supported architecture, tensor by tensor.

Each architecture gets complete tiny models (written with gguf-py; no llama.cpp, no torch), one per
layout llama.cpp's loader accepts (separate or fused Q/K/V, fused weight with split biases,
experts, longrope, one block), with every optional tensor present; these, and the same files with
only the required tensors, pass ``check_gguf``. Then, on the header of such a file, every tensor
llama.cpp asks for is taken out (a required one is refused with the whole message, an optional one
may be absent), given another shape, stored in a type llama.cpp cannot use, and tensors llama.cpp
never asks for are added (refused).

The expected tensors below are written from llama.cpp's ``create_tensor`` calls
(``src/models/{gptneox,llama,qwen2,qwen3,gemma3,phi3}.cpp``, ``create_tensor_qkv`` and the generic
``.scale``/``.input_scale`` pass of ``load_tensors`` in ``src/llama-model.cpp`` of
llama-cpp-python 0.3.36), not from the checker's plans. Shapes are in GGUF (ggml) order.
"""

from __future__ import annotations

import dataclasses
import mmap
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np
import pytest

from edge_stack.errors import GGUFFileError
from edge_stack.formats.gguf import _check as _gguf_check
from edge_stack.formats.gguf._check import check_gguf
from edge_stack.formats.gguf._hparams import GEMMA3, PHI3, QWEN3, HParams, check_hparams
from edge_stack.formats.gguf._reader import Unloadable, read_header
from edge_stack.formats.gguf._summary import TensorInfo
from edge_stack.formats.gguf._tensors import check_tensors
from edge_stack.formats.gguf._vocab import check_vocab

from gguf_builders import (
    GPTNEOX,
    LLAMA,
    MERGES,
    N_EMBD,
    N_FF,
    N_VOCAB,
    QWEN2,
    TOKENS,
    M,
    tname,
    write,
)

Dim = tuple[str, int]

N_LAYER, N_HEAD, N_HEAD_KV, N_EXPERT = 2, 4, 2, 4
#: head size of the architectures that take attention.key_length: 12, so that n_embd (32),
#: n_head * head_dim (48) and n_head_kv * head_dim (24) all differ
FREE_HEAD = 12
FREE_HEAD_ARCHS = (LLAMA, QWEN3, GEMMA3)
PARTIAL_ROPE = 4  # rope.dimension_count of gptneox and phi3 (head size 8)
E: Dim = ("n_embd", N_EMBD)
F: Dim = ("n_ff", N_FF)
VOCAB: Dim = ("n_vocab", N_VOCAB)
ONE: Dim = ("1", 1)
X: Dim = ("n_expert", N_EXPERT)
LOADER_HINT = (
    "; the file is damaged or was written by a tool llama.cpp cannot read: "
    "re-convert it with `edgestack convert`"
)


def head_dim(arch: str) -> int:
    return FREE_HEAD if arch in FREE_HEAD_ARCHS else N_EMBD // N_HEAD


def n_rot(arch: str) -> int:
    return PARTIAL_ROPE if arch in (GPTNEOX, PHI3) else head_dim(arch)


@dataclass(frozen=True)
class Want:
    """One create_tensor call: name, dimensions (what each is, its size), whether required."""

    name: str
    dims: tuple[Dim, ...]
    required: bool = True
    #: False for one side of an either/or (fused or separate Q/K/V): not dropped on its own
    alone: bool = True

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(n for _, n in self.dims)


@dataclass(frozen=True)
class Layout:
    """A file llama.cpp loads: which Q/K/V form, experts, rope scaling, blocks."""

    arch: str
    qkv: str = "separate"  # "separate", "fused" (with its bias), "fused-split-bias"
    experts: int = 0
    longrope: bool = False
    n_layer: int = N_LAYER


LAYOUTS = {
    "gptneox": Layout(GPTNEOX, qkv="fused"),
    "llama": Layout(LLAMA),
    "llama-fused": Layout(LLAMA, qkv="fused"),
    "llama-fused-split-bias": Layout(LLAMA, qkv="fused-split-bias"),
    "llama-moe": Layout(LLAMA, experts=N_EXPERT),
    "llama-longrope": Layout(LLAMA, longrope=True),
    "llama-1-block": Layout(LLAMA, n_layer=1),
    "qwen2": Layout(QWEN2),
    "qwen2-fused": Layout(QWEN2, qkv="fused"),
    "qwen3": Layout(QWEN3),
    "qwen3-fused": Layout(QWEN3, qkv="fused"),
    "gemma3": Layout(GEMMA3),
    "gemma3-fused": Layout(GEMMA3, qkv="fused-split-bias"),
    "phi3": Layout(PHI3, qkv="fused"),
    "phi3-separate": Layout(PHI3),
    "phi3-1-block": Layout(PHI3, qkv="fused-split-bias", n_layer=1),
}


class _Wants:
    def __init__(self) -> None:
        self.items: list[Want] = []

    def add(self, name: str, *dims: Dim, required: bool = True, alone: bool = True) -> None:
        self.items.append(Want(name, dims, required, alone))

    def matrix(
        self,
        tensor: gguf.MODEL_TENSOR,
        i: int,
        *dims: Dim,
        required: bool = True,
        alone: bool = True,
        n: Dim = ONE,
    ) -> None:
        """A weight matrix and the .scale/.input_scale load_tensors asks for once it exists."""
        self.add(tname(tensor, i), *dims, required=required, alone=alone)
        for suffix in ("scale", "input_scale"):
            self.add(tname(tensor, i, suffix), n, required=False)


def wants(layout: Layout) -> list[Want]:
    """Every tensor llama.cpp's loader asks for in ``layout`` (all optional ones present)."""
    arch, w = layout.arch, _Wants()
    head: Dim = ("head_dim", head_dim(arch))
    q: Dim = ("n_head * head_dim", head_dim(arch) * N_HEAD) if arch in FREE_HEAD_ARCHS else E
    kv: Dim = ("n_head_kv * head_dim", head_dim(arch) * N_HEAD_KV)
    half_rot: Dim = ("rope.dimension_count / 2", n_rot(arch) // 2)
    total: Dim = (f"{q[0]} + {kv[0]} + {kv[0]}", q[1] + 2 * kv[1])
    w.add(tname(M.TOKEN_EMBD), E, VOCAB)
    w.add(tname(M.OUTPUT_NORM), E)
    if arch == GPTNEOX:
        w.add(tname(M.OUTPUT_NORM, suffix="bias"), E)
    w.add(tname(M.OUTPUT), E, VOCAB, required=arch == GPTNEOX)
    if arch == QWEN2:
        w.add(tname(M.OUTPUT, suffix="bias"), VOCAB, required=False)
    for i in range(layout.n_layer):
        w.add(tname(M.ATTN_NORM, i), E)
        if arch == GPTNEOX:
            w.add(tname(M.ATTN_NORM, i, "bias"), E)
            w.matrix(M.ATTN_QKV, i, E, total)
            w.add(tname(M.ATTN_QKV, i, "bias"), total)
        elif layout.qkv == "separate":
            for tensor, n in ((M.ATTN_Q, q), (M.ATTN_K, kv), (M.ATTN_V, kv)):
                # Phi-3's loader marks them optional, but its graph multiplies by them
                # unchecked (a NULL dereference): the checker requires them there too.
                w.matrix(tensor, i, E, n)
            for tensor, n in ((M.ATTN_Q, q), (M.ATTN_K, kv), (M.ATTN_V, kv)):
                w.add(tname(tensor, i, "bias"), n, required=False)
        else:
            w.matrix(M.ATTN_QKV, i, E, total, required=False, alone=False)
            if layout.qkv == "fused":
                w.add(tname(M.ATTN_QKV, i, "bias"), total, required=False)
            else:
                for tensor, n in ((M.ATTN_Q, q), (M.ATTN_K, kv), (M.ATTN_V, kv)):
                    w.add(tname(tensor, i, "bias"), n, required=False)
        if arch == GPTNEOX:
            w.matrix(M.ATTN_OUT, i, E, E)
            w.add(tname(M.ATTN_OUT, i, "bias"), E)
        elif arch in FREE_HEAD_ARCHS:
            w.matrix(M.ATTN_OUT, i, q, E)
        else:
            w.matrix(M.ATTN_OUT, i, E, E)
        if arch == LLAMA:
            w.add(tname(M.ATTN_OUT, i, "bias"), E, required=False)
        if arch == GEMMA3:
            w.add(tname(M.ATTN_POST_NORM, i), E)
        if arch in (QWEN3, GEMMA3):
            w.add(tname(M.ATTN_K_NORM, i), head)
            w.add(tname(M.ATTN_Q_NORM, i), head)
        w.add(tname(M.FFN_NORM, i), E)
        if arch == GPTNEOX:
            w.add(tname(M.FFN_NORM, i, "bias"), E)
            w.matrix(M.FFN_DOWN, i, F, E)
            w.add(tname(M.FFN_DOWN, i, "bias"), E)
            w.matrix(M.FFN_UP, i, E, F)
            w.add(tname(M.FFN_UP, i, "bias"), F)
        elif arch == PHI3:
            w.matrix(M.FFN_DOWN, i, F, E)
            w.matrix(M.FFN_UP, i, E, ("2 * n_ff", 2 * N_FF))
        elif layout.experts:
            w.add(tname(M.FFN_GATE_INP, i), E, X)
            w.matrix(M.FFN_GATE_EXP, i, E, F, X, required=False, n=X)
            w.matrix(M.FFN_DOWN_EXP, i, F, E, X, n=X)
            w.matrix(M.FFN_UP_EXP, i, E, F, X, n=X)
        else:
            for tensor, dims in ((M.FFN_GATE, (E, F)), (M.FFN_DOWN, (F, E)), (M.FFN_UP, (E, F))):
                w.matrix(tensor, i, *dims)
            if arch == LLAMA:
                for tensor, n in ((M.FFN_GATE, F), (M.FFN_DOWN, E), (M.FFN_UP, F)):
                    w.add(tname(tensor, i, "bias"), n, required=False)
        if arch == GEMMA3:
            w.add(tname(M.FFN_POST_NORM, i), E)
        if i == 0 and (arch == PHI3 or layout.longrope):
            for tensor in (M.ROPE_FACTORS_LONG, M.ROPE_FACTORS_SHORT):
                w.add(tname(tensor), half_rot, required=False)
        elif i == 0 and arch == LLAMA:
            w.add(tname(M.ROPE_FREQS), half_rot, required=False)
    return w.items


def minimal(layout: Layout) -> list[Want]:
    """The required tensors only (and the Q/K/V form the layout uses)."""
    return [w for w in wants(layout) if w.required or not w.alone]


def write_layout(path: Path, layout: Layout, tensors: list[Want]) -> Path:
    arch = layout.arch
    w = gguf.GGUFWriter(str(path), arch)
    w.add_type(gguf.GGUFType.MODEL)
    w.add_name("tiny-plan-model")
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    w.add_context_length(128)
    w.add_embedding_length(N_EMBD)
    w.add_block_count(layout.n_layer)
    w.add_feed_forward_length(N_FF)
    w.add_head_count(N_HEAD)
    w.add_head_count_kv(N_HEAD_KV)
    if arch in FREE_HEAD_ARCHS:
        w.add_key_length(FREE_HEAD)
        w.add_value_length(FREE_HEAD)
    w.add_rope_dimension_count(n_rot(arch))
    if arch == GPTNEOX:
        w.add_layer_norm_eps(1e-5)
        w.add_parallel_residual(True)
    else:
        w.add_layer_norm_rms_eps(1e-5)
    if layout.longrope:
        w.add_rope_scaling_type(gguf.RopeScalingType.LONGROPE)
    if layout.experts:
        w.add_expert_count(layout.experts)
        w.add_expert_used_count(2)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(TOKENS)
    w.add_token_types([gguf.TokenType.NORMAL] * len(TOKENS))
    w.add_token_merges(MERGES)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    rng = np.random.default_rng(0)
    for want in tensors:
        numpy_shape = tuple(reversed(want.shape))
        w.add_tensor(want.name, (rng.standard_normal(numpy_shape) * 0.1).astype(np.float32))
    write(w)
    return path


@dataclass(frozen=True)
class Parsed:
    layout: Layout
    tensors: tuple[TensorInfo, ...]
    hparams: HParams
    n_vocab: int

    def check(self, tensors: tuple[TensorInfo, ...] | None = None) -> None:
        check_tensors(self.tensors if tensors is None else tensors, self.hparams, self.n_vocab)

    def without(self, *names: str) -> tuple[TensorInfo, ...]:
        assert set(names) <= {t.name for t in self.tensors}, names
        return tuple(t for t in self.tensors if t.name not in names)

    def changed(self, name: str, **change: object) -> tuple[TensorInfo, ...]:
        assert name in {t.name for t in self.tensors}, name
        return tuple(
            dataclasses.replace(t, **change) if t.name == name else t  # type: ignore[arg-type]
            for t in self.tensors
        )

    def plus(self, name: str, shape: tuple[int, ...], type_: str = "F32") -> tuple[TensorInfo, ...]:
        return (*self.tensors, TensorInfo(name, shape, type_, 4, 0))


@pytest.fixture(scope="module")
def full_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("plans")
    return {
        key: write_layout(root / f"{key}.gguf", lay, wants(lay)) for key, lay in LAYOUTS.items()
    }


@pytest.fixture(scope="module")
def parsed(full_files: dict[str, Path]) -> dict[str, Parsed]:
    out = {}
    for key, path in full_files.items():
        arch = LAYOUTS[key].arch
        with path.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            header = read_header(mm, path.stat().st_size)
        hparams = check_hparams(header, arch)
        assert hparams is not None
        out[key] = Parsed(LAYOUTS[key], header.tensors, hparams, check_vocab(header, arch))
    return out


@pytest.fixture(autouse=True)
def _fresh_cache() -> None:
    _gguf_check.clear_cache()


def fmt(shape: tuple[int, ...]) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def missing(arch: str, want: Want) -> str:
    labels = ", ".join(n for n, _ in want.dims)
    return (
        f"tensor '{want.name}' is missing, but llama.cpp's {arch} needs it "
        f"({fmt(want.shape)}: {labels})"
    )


def wrong_shape(arch: str, want: Want, found: tuple[int, ...]) -> str:
    labels = ", ".join(n for n, _ in want.dims)
    return (
        f"tensor '{want.name}' has shape {fmt(found)}, but llama.cpp's {arch} expects "
        f"{fmt(want.shape)} ({labels})"
    )


def unexpected(arch: str, name: str) -> str:
    return (
        f"tensor '{name}' is not one llama.cpp's {arch} loads, and llama.cpp refuses a file with "
        "tensors it does not use"
    )


def refused(parsed: Parsed, tensors: tuple[TensorInfo, ...]) -> str:
    with pytest.raises(Unloadable) as info:
        parsed.check(tensors)
    return str(info.value)


#: layouts whose tensors also get the type checks (the others differ from these in Q/K/V form,
#: rope scaling or block count only)
TYPED = ("gptneox", "llama", "llama-moe", "qwen2", "qwen3", "gemma3", "phi3")
#: layouts whose .scale/.input_scale tensors are tried one by one (in the others they only pass)
SCALED = ("gptneox", "llama", "llama-moe", "phi3-separate")


def cases(select: str) -> list[tuple[str, Want]]:
    """(layout, tensor) pairs: the tensors of block 0 and the ones outside blocks."""
    out = []
    for key, layout in LAYOUTS.items():
        if select in ("vector", "matrix") and key not in TYPED:
            continue
        for want in wants(layout):
            if want.name.startswith("blk.") and not want.name.startswith("blk.0."):
                continue
            if want.name.endswith("scale") and key not in SCALED:
                continue
            if (
                select == "all"
                or (select == "required" and want.required)
                or (select == "optional" and not want.required and want.alone)
                or (select == "vector" and len(want.dims) == 1)
                or (select == "matrix" and len(want.dims) > 1)
            ):
                out.append((key, want))
    return out


def ids(case: tuple[str, Want]) -> str:
    return f"{case[0]}:{case[1].name}"


# --- complete files -------------------------------------------------------------------------------


@pytest.mark.parametrize("key", list(LAYOUTS))
@pytest.mark.parametrize("which", ["all-optional-tensors", "required-only"])
def test_complete_model_passes(
    key: str, which: str, full_files: dict[str, Path], tmp_path: Path
) -> None:
    layout = LAYOUTS[key]
    if which == "required-only":
        tensors = minimal(layout)
        path = write_layout(tmp_path / f"{key}.gguf", layout, tensors)
        assert len(tensors) < len(wants(layout))
    else:
        tensors, path = wants(layout), full_files[key]
    summary = check_gguf(path)
    assert (summary.arch, summary.n_tensors) == (layout.arch, len(tensors))
    assert {t.name: t.shape for t in summary.tensors} == {t.name: t.shape for t in tensors}


@pytest.mark.parametrize("key", ["gptneox", "llama", "qwen2", "qwen3", "gemma3", "phi3"])
def test_broken_file_is_refused_by_check_gguf(key: str, tmp_path: Path) -> None:
    # One file per architecture through the whole check: its last block's ffn_norm missing.
    layout = LAYOUTS[key]
    gone = tname(M.FFN_NORM, N_LAYER - 1)
    want = next(w for w in wants(layout) if w.name == gone)
    tensors = [w for w in wants(layout) if w.name != gone]
    path = write_layout(tmp_path / f"{key}.gguf", layout, tensors)
    with pytest.raises(GGUFFileError) as info:
        check_gguf(path)
    expected = missing(layout.arch, want)
    assert (
        str(info.value) == f"{path} is a GGUF model llama.cpp cannot load: {expected}{LOADER_HINT}"
    )


# --- one tensor at a time -------------------------------------------------------------------------


@pytest.mark.parametrize("case", cases("required"), ids=ids)
def test_required_tensor_missing(case: tuple[str, Want], parsed: dict[str, Parsed]) -> None:
    key, want = case
    p = parsed[key]
    assert refused(p, p.without(want.name)) == missing(p.layout.arch, want)


@pytest.mark.parametrize("case", cases("optional"), ids=ids)
def test_optional_tensor_may_be_absent(case: tuple[str, Want], parsed: dict[str, Parsed]) -> None:
    key, want = case
    p = parsed[key]
    # A matrix's .scale/.input_scale are asked for only when the matrix is there.
    base = want.name.removesuffix(".weight")
    scales = [f"{base}.{s}" for s in ("scale", "input_scale")] if base != want.name else []
    p.check(p.without(want.name, *[s for s in scales if s in {t.name for t in p.tensors}]))


@pytest.mark.parametrize("case", cases("all"), ids=ids)
def test_wrong_shape_names_the_expected_one(
    case: tuple[str, Want], parsed: dict[str, Parsed]
) -> None:
    key, want = case
    p = parsed[key]
    found = (want.shape[0] + 1, *want.shape[1:])
    text = refused(p, p.changed(want.name, shape=found))
    if want.dims == (VOCAB,):  # qwen2's output.bias: one value per token
        assert text == (
            f"tensor '{want.name}' has {N_VOCAB + 1} rows, but {gguf.Keys.Tokenizer.LIST} has "
            f"{N_VOCAB} tokens (llama.cpp needs one row per token)"
        )
    else:
        assert text == wrong_shape(p.layout.arch, want, found)


@pytest.mark.parametrize("case", cases("vector"), ids=ids)
def test_vector_not_f32_is_refused(case: tuple[str, Want], parsed: dict[str, Parsed]) -> None:
    key, want = case
    p = parsed[key]
    assert refused(p, p.changed(want.name, type="F16")) == (
        f"tensor '{want.name}' is stored as F16, but llama.cpp needs vectors (norms, biases, "
        "scales, rope factors) in F32"
    )


@pytest.mark.parametrize("case", cases("matrix"), ids=ids)
def test_integer_matrix_is_refused(case: tuple[str, Want], parsed: dict[str, Parsed]) -> None:
    key, want = case
    p = parsed[key]
    assert refused(p, p.changed(want.name, type="I32")) == (
        f"tensor '{want.name}' is stored as I32, which llama.cpp cannot multiply with; expected a "
        "float or quantized type"
    )


# --- tensors llama.cpp does not ask for -----------------------------------------------------------

#: case -> (layout, tensor added, its shape, the tensor reported if not that one)
UNEXPECTED: dict[str, tuple[str, str, tuple[int, ...]] | tuple[str, str, tuple[int, ...], str]] = {
    # the block after the last one
    "gptneox-extra-block": ("gptneox", tname(M.ATTN_NORM, N_LAYER), (N_EMBD,)),
    "llama-extra-block": ("llama", tname(M.ATTN_NORM, N_LAYER), (N_EMBD,)),
    "phi3-extra-block": ("phi3-1-block", tname(M.ATTN_NORM, 1), (N_EMBD,)),
    # tensors of another architecture or layout
    "gptneox-separate-q": ("gptneox", tname(M.ATTN_Q, 0), (N_EMBD, N_EMBD)),
    "gptneox-gate": ("gptneox", tname(M.FFN_GATE, 0), (N_EMBD, N_FF)),
    "gptneox-rope-freqs": ("gptneox", tname(M.ROPE_FREQS), (2,)),
    "llama-output-norm-bias": ("llama", tname(M.OUTPUT_NORM, suffix="bias"), (N_EMBD,)),
    "llama-output-bias": ("llama", tname(M.OUTPUT, suffix="bias"), (N_VOCAB,)),
    "llama-k-norm": ("llama", tname(M.ATTN_K_NORM, 0), (FREE_HEAD,)),
    "llama-rope-long": ("llama", tname(M.ROPE_FACTORS_LONG), (FREE_HEAD // 2,)),
    "llama-gate-inp": ("llama", tname(M.FFN_GATE_INP, 0), (N_EMBD, N_EXPERT)),
    "llama-moe-dense-gate": ("llama-moe", tname(M.FFN_GATE, 0), (N_EMBD, N_FF)),
    "llama-longrope-freqs": ("llama-longrope", tname(M.ROPE_FREQS), (FREE_HEAD // 2,)),
    "llama-fused-and-q": ("llama-fused", tname(M.ATTN_Q, 0), (N_EMBD, 48)),
    "llama-fused-bias-and-q-bias": ("llama-fused", tname(M.ATTN_Q, 0, "bias"), (48,)),
    # with a fused attn_qkv, llama.cpp asks for no separate attn_q/k/v
    "llama-separate-and-fused": ("llama", tname(M.ATTN_QKV, 0), (N_EMBD, 96), tname(M.ATTN_Q, 0)),
    "llama-output-scale-f32": ("llama", tname(M.OUTPUT, suffix="scale"), (1,)),
    "llama-norm-scale": ("llama", tname(M.ATTN_NORM, 0, "scale"), (1,)),
    "qwen2-attn-out-bias": ("qwen2", tname(M.ATTN_OUT, 0, "bias"), (N_EMBD,)),
    "qwen2-ffn-up-bias": ("qwen2", tname(M.FFN_UP, 0, "bias"), (N_FF,)),
    "qwen2-rope-freqs": ("qwen2", tname(M.ROPE_FREQS), (4,)),
    "qwen3-output-bias": ("qwen3", tname(M.OUTPUT, suffix="bias"), (N_VOCAB,)),
    "qwen3-post-norm": ("qwen3", tname(M.ATTN_POST_NORM, 0), (N_EMBD,)),
    "gemma3-rope-freqs": ("gemma3", tname(M.ROPE_FREQS), (FREE_HEAD // 2,)),
    "gemma3-attn-out-bias": ("gemma3", tname(M.ATTN_OUT, 0, "bias"), (N_EMBD,)),
    "phi3-gate": ("phi3", tname(M.FFN_GATE, 0), (N_EMBD, N_FF)),
    "phi3-rope-freqs": ("phi3", tname(M.ROPE_FREQS), (PARTIAL_ROPE // 2,)),
    "phi3-k-norm": ("phi3", tname(M.ATTN_K_NORM, 0), (8,)),
}


@pytest.mark.parametrize("case", list(UNEXPECTED))
def test_tensor_llama_cpp_does_not_ask_for_is_refused(case: str, parsed: dict[str, Parsed]) -> None:
    key, name, shape, *reported = UNEXPECTED[case]
    p = parsed[key]
    assert refused(p, p.plus(name, shape)) == unexpected(p.layout.arch, (*reported, name)[0])


# --- the either/or and special cases --------------------------------------------------------------


@pytest.mark.parametrize(
    "key", ["llama-fused", "qwen2-fused", "qwen3-fused", "gemma3-fused", "phi3"]
)
def test_without_fused_qkv_the_separate_ones_are_needed(
    key: str, parsed: dict[str, Parsed]
) -> None:
    p = parsed[key]
    separate = dataclasses.replace(p.layout, qkv="separate")
    want = next(w for w in wants(separate) if w.name == tname(M.ATTN_Q, 0))
    assert refused(p, p.without(tname(M.ATTN_QKV, 0))) == missing(p.layout.arch, want)


def test_gptneox_needs_the_fused_qkv(parsed: dict[str, Parsed]) -> None:
    p = parsed["gptneox"]
    want = next(w for w in wants(p.layout) if w.name == tname(M.ATTN_QKV, 0))
    assert want.dims[1] == ("n_embd + n_head_kv * head_dim + n_head_kv * head_dim", 64)
    drop = (
        tname(M.ATTN_QKV, 0),
        tname(M.ATTN_QKV, 0, "scale"),
        tname(M.ATTN_QKV, 0, "input_scale"),
    )
    assert refused(p, p.without(*drop)) == missing(GPTNEOX, want)


@pytest.mark.parametrize(
    ("name", "rows"), [(tname(M.TOKEN_EMBD), N_VOCAB + 1), (tname(M.OUTPUT), 7)]
)
def test_rows_other_than_the_vocabulary(name: str, rows: int, parsed: dict[str, Parsed]) -> None:
    p = parsed["qwen3"]
    assert refused(p, p.changed(name, shape=(N_EMBD, rows))) == (
        f"tensor '{name}' has {rows} rows, but {gguf.Keys.Tokenizer.LIST} has {N_VOCAB} tokens "
        "(llama.cpp needs one row per token)"
    )


@pytest.mark.parametrize(
    ("shape", "ok"), [((N_EMBD, 1), True), ((N_EMBD, 1, 1, 1), True), ((N_EMBD, 2), False)]
)
def test_trailing_dimensions_of_one_are_the_same_shape(
    shape: tuple[int, ...], ok: bool, parsed: dict[str, Parsed]
) -> None:
    # llama.cpp compares the dimensions it asks for and wants 1 in the rest.
    p = parsed["gemma3"]
    name = tname(M.ATTN_POST_NORM, 1)
    tensors = p.changed(name, shape=shape)
    if ok:
        p.check(tensors)
    else:
        want = Want(name, (E,))
        assert refused(p, tensors) == wrong_shape(GEMMA3, want, shape)


@pytest.mark.parametrize("arch_key", ["llama", "qwen2", "qwen3", "gemma3", "phi3"])
def test_nvfp4_output_may_have_scales(arch_key: str, parsed: dict[str, Parsed]) -> None:
    # load_tensors asks for output.scale and output.input_scale only for an NVFP4 output matrix.
    p = parsed[arch_key]
    output = tname(M.OUTPUT)
    nvfp4 = tuple(
        dataclasses.replace(t, type="NVFP4") if t.name == output else t for t in p.tensors
    )
    scales = [tname(M.OUTPUT, suffix=s) for s in ("scale", "input_scale")]
    extra = tuple(TensorInfo(name, (1,), "F32", 4, 0) for name in scales)
    check_tensors(nvfp4, p.hparams, p.n_vocab)
    check_tensors((*nvfp4, *extra), p.hparams, p.n_vocab)
    for name in scales:
        bad = (*nvfp4, TensorInfo(name, (2,), "F32", 8, 0))
        with pytest.raises(Unloadable) as info:
            check_tensors(bad, p.hparams, p.n_vocab)
        assert str(info.value) == wrong_shape(p.layout.arch, Want(name, (ONE,)), (2,))
        assert refused(p, (*p.tensors, TensorInfo(name, (1,), "F32", 4, 0))) == unexpected(
            p.layout.arch, name
        )
