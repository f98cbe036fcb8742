"""The tensors of a model GGUF against the shapes llama.cpp's loader will ask for.

For each supported architecture this lists the ``create_tensor`` calls of its
``load_arch_tensors`` (``src/models/{gptneox,llama,qwen2,qwen3,gemma3,phi3}.cpp`` in
llama-cpp-python 0.3.36) and the
generic ones of ``llama_model_base::load_tensors`` (the optional per-weight ``.scale`` and
``.input_scale`` tensors), with the shapes they follow from :class:`~._gguf_hparams_check.HParams`
and the vocabulary size. llama.cpp throws on a missing required tensor, on a tensor of another
shape and on any tensor it did not ask for ("wrong number of tensors"); it aborts the process
(``GGML_ASSERT`` in ``ggml_rope_ext``, or the CPU kernels' unsupported-types abort at the first
decode) on vectors (norms, biases, rope factors) stored in anything but F32. Shapes are in ggml
order (``ne``: fastest dimension first), as GGUF stores them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import gguf

from ._hparams import GEMMA3, GPTNEOX, LLAMA, PHI3, QWEN2, QWEN3, HParams
from ._reader import Unloadable
from ._summary import TensorInfo

__all__ = ["check_tensors"]

_T = gguf.MODEL_TENSOR
_MAX_DIMS = 4
_VECTOR_TYPE = gguf.GGMLQuantizationType.F32.name
# Element types ggml's matrix kernels have no path for (integer tensors are not weights).
_NOT_WEIGHT_TYPES = frozenset(
    t.name
    for t in (
        gguf.GGMLQuantizationType.I8,
        gguf.GGMLQuantizationType.I16,
        gguf.GGMLQuantizationType.I32,
        gguf.GGMLQuantizationType.I64,
        gguf.GGMLQuantizationType.F64,
    )
)
_NVFP4 = "NVFP4"  # output.scale / output.input_scale exist only for an NVFP4 output matrix

#: a dimension: what it is (for messages) and its size
Dim = tuple[str, int]


@dataclass(frozen=True)
class _Want:
    name: str
    dims: tuple[Dim, ...]
    required: bool


class _Plan:
    """The create_tensor calls of one architecture, as llama.cpp would make them for this file."""

    def __init__(self, h: HParams, n_vocab: int, present: dict[str, TensorInfo]) -> None:
        self.h = h
        self.present = present
        self.wants: list[_Want] = []
        self.E: Dim = ("n_embd", h.n_embd)
        self.V: Dim = ("n_vocab", n_vocab)
        self.F: Dim = ("n_ff", h.n_ff)

    def add(
        self,
        tensor: gguf.MODEL_TENSOR,
        suffix: str,
        dims: tuple[Dim, ...],
        bid: int | None = None,
        *,
        required: bool = True,
    ) -> bool:
        """Ask for a tensor; whether the file has it (llama.cpp's create_tensor != NULL)."""
        base = gguf.TENSOR_NAMES[tensor]
        name = f"{base.format(bid=bid) if bid is not None else base}.{suffix}"
        self.wants.append(_Want(name, dims, required))
        return name in self.present

    def scales(self, tensor: gguf.MODEL_TENSOR, bid: int | None, n: Dim = ("1", 1)) -> None:
        # load_tensors looks for these for every weight matrix a layer ends up with.
        for suffix in ("scale", "input_scale"):
            self.add(tensor, suffix, (n,), bid, required=False)

    def matrix(
        self, tensor: gguf.MODEL_TENSOR, dims: tuple[Dim, ...], bid: int, *, required: bool = True
    ) -> bool:
        found = self.add(tensor, "weight", dims, bid, required=required)
        if found:
            self.scales(tensor, bid)
        return found

    def qkv(
        self,
        i: int,
        n_q: Dim,
        n_k: Dim,
        n_v: Dim,
        *,
        fused_only: bool = False,
    ) -> None:
        """create_tensor_qkv: a fused attn_qkv if the file has one, else attn_q/k/v.

        The separate ones are required without a fused one even where llama.cpp's loader marks
        them optional (Phi-3): its graph multiplies by them unchecked, a NULL dereference."""
        E = self.E
        total: Dim = (f"{n_q[0]} + {n_k[0]} + {n_v[0]}", n_q[1] + n_k[1] + n_v[1])
        fused = self.matrix(_T.ATTN_QKV, (E, total), i, required=fused_only)
        if fused_only:
            self.add(_T.ATTN_QKV, "bias", (total,), i)
            return
        if fused:
            if self.add(_T.ATTN_QKV, "bias", (total,), i, required=False):
                return
        else:
            for tensor, n in ((_T.ATTN_Q, n_q), (_T.ATTN_K, n_k), (_T.ATTN_V, n_v)):
                self.matrix(tensor, (E, n), i)
        for tensor, n in ((_T.ATTN_Q, n_q), (_T.ATTN_K, n_k), (_T.ATTN_V, n_v)):
            self.add(tensor, "bias", (n,), i, required=False)

    def embeddings(self, *, output_required: bool) -> None:
        E, V = self.E, self.V
        self.add(_T.TOKEN_EMBD, "weight", (E, V))
        self.add(_T.OUTPUT_NORM, "weight", (E,))
        # Without output.weight, llama and qwen2 reuse token_embd (a duplicate, not a new tensor).
        if self.add(_T.OUTPUT, "weight", (E, V), required=output_required):
            output = self.present[gguf.TENSOR_NAMES[_T.OUTPUT] + ".weight"]
            if output.type == _NVFP4:
                self.scales(_T.OUTPUT, None)


def _gptneox(p: _Plan) -> None:
    h, E, F = p.h, p.E, p.F
    p.embeddings(output_required=True)
    p.add(_T.OUTPUT_NORM, "bias", (E,))
    kv: Dim = ("n_head_kv * head_dim", h.head_v * h.n_head_kv)
    for i in range(h.n_layer):
        for norm in (_T.ATTN_NORM, _T.FFN_NORM):
            p.add(norm, "weight", (E,), i)
            p.add(norm, "bias", (E,), i)
        p.qkv(i, E, kv, kv, fused_only=True)
        p.matrix(_T.ATTN_OUT, (E, E), i)
        p.add(_T.ATTN_OUT, "bias", (E,), i)
        p.matrix(_T.FFN_DOWN, (F, E), i)
        p.add(_T.FFN_DOWN, "bias", (E,), i)
        p.matrix(_T.FFN_UP, (E, F), i)
        p.add(_T.FFN_UP, "bias", (F,), i)


def _llama(p: _Plan) -> None:
    h, E, F = p.h, p.E, p.F
    p.embeddings(output_required=False)
    q: Dim = ("n_head * head_dim", h.head_k * h.n_head)
    k: Dim = ("n_head_kv * head_dim", h.head_k * h.n_head_kv)
    v: Dim = ("n_head_kv * head_dim", h.head_v * h.n_head_kv)
    half_rot: Dim = ("rope.dimension_count / 2", h.n_rot // 2)
    X: Dim = ("n_expert", h.n_expert)
    for i in range(h.n_layer):
        p.add(_T.ATTN_NORM, "weight", (E,), i)
        p.qkv(i, q, k, v)
        p.matrix(_T.ATTN_OUT, (q, E), i)
        p.add(_T.ATTN_OUT, "bias", (E,), i, required=False)
        p.add(_T.FFN_NORM, "weight", (E,), i)
        # One tensor shared by all blocks (created once, then duplicated).
        if i == 0:
            if h.rope_scaling == "longrope":
                p.add(_T.ROPE_FACTORS_LONG, "weight", (half_rot,), required=False)
                p.add(_T.ROPE_FACTORS_SHORT, "weight", (half_rot,), required=False)
            else:
                p.add(_T.ROPE_FREQS, "weight", (half_rot,), required=False)
        if h.n_expert == 0:
            for tensor, dims in ((_T.FFN_GATE, (E, F)), (_T.FFN_DOWN, (F, E)), (_T.FFN_UP, (E, F))):
                p.matrix(tensor, dims, i)
            for tensor, n in ((_T.FFN_GATE, F), (_T.FFN_DOWN, E), (_T.FFN_UP, F)):
                p.add(tensor, "bias", (n,), i, required=False)
        else:
            p.add(_T.FFN_GATE_INP, "weight", (E, X), i)
            experts: tuple[tuple[gguf.MODEL_TENSOR, tuple[Dim, ...], bool], ...] = (
                (_T.FFN_GATE_EXP, (E, F, X), False),
                (_T.FFN_DOWN_EXP, (F, E, X), True),
                (_T.FFN_UP_EXP, (E, F, X), True),
            )
            for tensor, shape, required in experts:
                if p.add(tensor, "weight", shape, i, required=required):
                    p.scales(tensor, i, X)


def _qwen2(p: _Plan) -> None:
    h, E, F = p.h, p.E, p.F
    p.embeddings(output_required=False)
    p.add(_T.OUTPUT, "bias", (p.V,), required=False)
    kv: Dim = ("n_head_kv * head_dim", h.head_v * h.n_head_kv)
    for i in range(h.n_layer):
        p.add(_T.ATTN_NORM, "weight", (E,), i)
        p.qkv(i, E, kv, kv)
        p.matrix(_T.ATTN_OUT, (E, E), i)
        p.add(_T.FFN_NORM, "weight", (E,), i)
        for tensor, dims in ((_T.FFN_GATE, (E, F)), (_T.FFN_DOWN, (F, E)), (_T.FFN_UP, (E, F))):
            p.matrix(tensor, dims, i)


def _qwen3(p: _Plan) -> None:
    h, E, F = p.h, p.E, p.F
    p.embeddings(output_required=False)
    q: Dim = ("n_head * head_dim", h.head_k * h.n_head)
    kv: Dim = ("n_head_kv * head_dim", h.head_k * h.n_head_kv)
    head: Dim = ("head_dim", h.head_k)
    for i in range(h.n_layer):
        p.add(_T.ATTN_NORM, "weight", (E,), i)
        p.qkv(i, q, kv, kv)
        p.matrix(_T.ATTN_OUT, (q, E), i)
        p.add(_T.ATTN_K_NORM, "weight", (head,), i)
        p.add(_T.ATTN_Q_NORM, "weight", (head,), i)
        p.add(_T.FFN_NORM, "weight", (E,), i)
        for tensor, dims in ((_T.FFN_GATE, (E, F)), (_T.FFN_DOWN, (F, E)), (_T.FFN_UP, (E, F))):
            p.matrix(tensor, dims, i)


def _gemma3(p: _Plan) -> None:
    h, E, F = p.h, p.E, p.F
    p.embeddings(output_required=False)
    q: Dim = ("n_head * head_dim", h.head_k * h.n_head)
    kv: Dim = ("n_head_kv * head_dim", h.head_k * h.n_head_kv)
    head: Dim = ("head_dim", h.head_k)
    for i in range(h.n_layer):
        p.add(_T.ATTN_NORM, "weight", (E,), i)
        p.qkv(i, q, kv, kv)
        p.matrix(_T.ATTN_OUT, (q, E), i)
        p.add(_T.ATTN_POST_NORM, "weight", (E,), i)
        p.add(_T.ATTN_K_NORM, "weight", (head,), i)
        p.add(_T.ATTN_Q_NORM, "weight", (head,), i)
        p.add(_T.FFN_NORM, "weight", (E,), i)
        for tensor, dims in ((_T.FFN_GATE, (E, F)), (_T.FFN_UP, (E, F)), (_T.FFN_DOWN, (F, E))):
            p.matrix(tensor, dims, i)
        p.add(_T.FFN_POST_NORM, "weight", (E,), i)


def _phi3(p: _Plan) -> None:
    h, E, F = p.h, p.E, p.F
    p.embeddings(output_required=False)
    kv: Dim = ("n_head_kv * head_dim", h.head_k * h.n_head_kv)
    half_rot: Dim = ("rope.dimension_count / 2", h.n_rot // 2)
    up: Dim = ("2 * n_ff", 2 * h.n_ff)
    for i in range(h.n_layer):
        p.add(_T.ATTN_NORM, "weight", (E,), i)
        p.qkv(i, E, kv, kv)
        p.matrix(_T.ATTN_OUT, (E, E), i)
        p.add(_T.FFN_NORM, "weight", (E,), i)
        p.matrix(_T.FFN_DOWN, (F, E), i)
        p.matrix(_T.FFN_UP, (E, up), i)
        if i == 0:  # one tensor shared by all blocks
            p.add(_T.ROPE_FACTORS_LONG, "weight", (half_rot,), required=False)
            p.add(_T.ROPE_FACTORS_SHORT, "weight", (half_rot,), required=False)


_PLANS: dict[str, Callable[[_Plan], None]] = {
    GPTNEOX: _gptneox,
    LLAMA: _llama,
    QWEN2: _qwen2,
    QWEN3: _qwen3,
    GEMMA3: _gemma3,
    PHI3: _phi3,
}


def _padded(shape: tuple[int, ...]) -> tuple[int, ...]:
    return shape + (1,) * (_MAX_DIMS - len(shape))


def _fmt(shape: tuple[int, ...]) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def check_tensors(tensors: tuple[TensorInfo, ...], h: HParams, n_vocab: int) -> None:
    """Check every tensor against llama.cpp's loader for ``h.arch``.

    Every required tensor present, every tensor of the shape asked for (dimensions past the
    asked ones must be 1), vectors in F32 and matrices in a float or quantized type, and no
    tensor llama.cpp would not ask for.

    Raises:
        Unloadable: naming the tensor, the shape or type found and the one expected.
    """
    present = {t.name: t for t in tensors}
    plan = _Plan(h, n_vocab, present)
    _PLANS[h.arch](plan)
    for want in plan.wants:
        tensor = present.get(want.name)
        if tensor is None:
            if want.required:
                raise Unloadable(
                    f"tensor '{want.name}' is missing, but llama.cpp's {h.arch} needs it "
                    f"({_fmt(tuple(d for _, d in want.dims))}: {', '.join(n for n, _ in want.dims)})"
                )
            continue
        _check_one(want, tensor, h.arch)
    asked = {w.name for w in plan.wants}
    for tensor in tensors:
        if tensor.name not in asked:
            raise Unloadable(
                f"tensor '{tensor.name}' is not one llama.cpp's {h.arch} loads, and llama.cpp "
                "refuses a file with tensors it does not use"
            )


def _check_one(want: _Want, tensor: TensorInfo, arch: str) -> None:
    expected = tuple(d for _, d in want.dims)
    if _padded(tensor.shape) != _padded(expected):
        names = [n for n, _ in want.dims]
        if "n_vocab" in names and len(tensor.shape) == len(expected):
            at = names.index("n_vocab")
            others = all(tensor.shape[j] == expected[j] for j in range(len(expected)) if j != at)
            if others:
                raise Unloadable(
                    f"tensor '{want.name}' has {tensor.shape[at]} rows, but "
                    f"{gguf.Keys.Tokenizer.LIST} has {expected[at]} tokens (llama.cpp needs one "
                    "row per token)"
                )
        raise Unloadable(
            f"tensor '{want.name}' has shape {_fmt(tensor.shape)}, but llama.cpp's {arch} expects "
            f"{_fmt(expected)} ({', '.join(names)})"
        )
    if len(want.dims) == 1 and tensor.type != _VECTOR_TYPE:
        raise Unloadable(
            f"tensor '{want.name}' is stored as {tensor.type}, but llama.cpp needs vectors "
            f"(norms, biases, scales, rope factors) in {_VECTOR_TYPE}"
        )
    if tensor.type in _NOT_WEIGHT_TYPES:
        raise Unloadable(
            f"tensor '{want.name}' is stored as {tensor.type}, which llama.cpp cannot multiply "
            "with; expected a float or quantized type"
        )
