"""The hyperparameters of a model GGUF, checked as llama.cpp's ``load_hparams`` reads them.

llama.cpp (the one vendored in llama-cpp-python 0.3.36, ``src/llama-model.cpp`` and
``src/models/*.cpp``) aborts the whole process on some metadata instead of refusing the file:

- ``GGML_ASSERT(n_layer_all > 0 && n_layer_all <= LLAMA_MAX_LAYERS)`` on ``block_count``;
- ``GGML_ASSERT`` on ``nextn_predict_layers`` > ``block_count`` and on inconsistent expert counts;
- ``GGML_ASSERT(rope_scaling_type != UNSPECIFIED)`` on an unknown ``rope.scaling.type``;
- at the first decode, ``GGML_ASSERT(eps >= 0.0f)`` in the norms (a negative or NaN epsilon),
  ``GGML_ASSERT(n_dims <= ne0)`` / ``n_dims % 2 == 0`` in rope (``rope.dimension_count`` larger
  than the head or odd), ``GGML_ASSERT(n_embd_head == n_rot)`` (qwen2), key and value head sizes
  that differ, reshapes of ``n_embd`` values into heads that do not divide it, and
  ``n_head % n_head_kv`` broadcasts; a ``rope.dimension_count`` of 0 makes decode loop forever.

It throws (a clean refusal) on a key of the wrong type, a missing required key, or a per-layer
array of the wrong length; those are checked here too, so the message names the key.
Architectures other than :data:`SUPPORTED` get the checks llama.cpp makes for every architecture;
the supported ones also get their head, rope and norm checks, and :class:`HParams` for the tensor
shape checks.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import gguf

from ._reader import Header, Unloadable, type_name, wrong_type

__all__ = ["LLAMA_MAX_LAYERS", "SUPPORTED", "HParams", "check_hparams"]

#: llama.cpp's LLAMA_MAX_LAYERS (src/llama-hparams.h): the most blocks a model may have
LLAMA_MAX_LAYERS = 512
#: llama.cpp's LLAMA_MAX_EXPERTS (src/llama-hparams.h)
LLAMA_MAX_EXPERTS = 1024

GPTNEOX = gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.GPTNEOX]
LLAMA = gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA]
QWEN2 = gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.QWEN2]
QWEN3 = gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.QWEN3]
GEMMA3 = gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.GEMMA3]
PHI3 = gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.PHI3]
#: architectures whose hyperparameters and tensors are checked in full (the ones edgestack writes)
SUPPORTED = (GPTNEOX, LLAMA, QWEN2, QWEN3, GEMMA3, PHI3)
#: architectures whose head size may differ from embedding_length / head_count
_FREE_HEAD_SIZE = (LLAMA, QWEN3, GEMMA3)
#: architectures that rotate whole heads (rope.dimension_count == head size)
_WHOLE_HEAD_ROPE = (LLAMA, QWEN2, QWEN3, GEMMA3)
#: llama.cpp's LLAMA_ROPE_SCALING_TYPES (src/llama-model.cpp)
ROPE_SCALING_TYPES = ("none", "linear", "yarn", "longrope")

_V = gguf.GGUFValueType
_LLM, _ATT, _ROPE = gguf.Keys.LLM, gguf.Keys.Attention, gguf.Keys.Rope

# Keys load_hparams reads for every architecture, with the one type llama.cpp's get_key accepts.
_TYPED_KEYS: tuple[tuple[str, int], ...] = (
    (gguf.Keys.General.NAME, _V.STRING),
    (gguf.Keys.General.FILE_TYPE, _V.UINT32),
    (gguf.Keys.Split.LLM_KV_SPLIT_COUNT, _V.UINT16),
    (_LLM.CONTEXT_LENGTH, _V.UINT32),
    (_LLM.EMBEDDING_LENGTH, _V.UINT32),
    (_LLM.EMBEDDING_LENGTH_OUT, _V.UINT32),
    (_ATT.CAUSAL, _V.BOOL),
    (_LLM.POOLING_TYPE, _V.UINT32),
    (_LLM.BLOCK_COUNT, _V.UINT32),
    (_LLM.NEXTN_PREDICT_LAYERS, _V.UINT32),
    (_LLM.EXPERT_COUNT, _V.UINT32),
    (_LLM.EXPERT_GROUP_COUNT, _V.UINT32),
    (_LLM.EXPERT_GROUP_USED_COUNT, _V.UINT32),
    (_ROPE.SCALING_FINETUNED, _V.BOOL),
    (_ROPE.SCALING_ORIG_CTX_LEN, _V.UINT32),
    (_ROPE.FREQ_BASE, _V.FLOAT32),
    (_ROPE.SCALING_TYPE, _V.STRING),
    (_ROPE.SCALING_FACTOR, _V.FLOAT32),
    (_ROPE.SCALING_ATTN_FACTOR, _V.FLOAT32),
    (_ROPE.SCALING_ALPHA, _V.FLOAT32),
    (_ATT.KEY_LENGTH, _V.UINT32),
    (_ATT.VALUE_LENGTH, _V.UINT32),
    (_ROPE.DIMENSION_COUNT, _V.UINT32),
    (_ATT.KEY_LENGTH_SWA, _V.UINT32),
    (_ATT.VALUE_LENGTH_SWA, _V.UINT32),
    (_ROPE.DIMENSION_COUNT_SWA, _V.UINT32),
    (_ATT.LAYERNORM_EPS, _V.FLOAT32),
    (_ATT.LAYERNORM_RMS_EPS, _V.FLOAT32),
    (_LLM.USE_PARALLEL_RESIDUAL, _V.BOOL),
    (_LLM.VOCAB_SIZE, _V.UINT32),
)
# get_key_or_arr keys: one uint32, or an array with a value per block (uint32, int32 or bool).
_PER_LAYER_KEYS = (
    _LLM.FEED_FORWARD_LENGTH,
    _ATT.HEAD_COUNT,
    _ATT.HEAD_COUNT_KV,
    _LLM.EXPERT_USED_COUNT,
)
_PER_LAYER_ITEMS = (_V.UINT32, _V.INT32, _V.BOOL)
# Required by each supported architecture's load_arch_hparams (get_key without `false`).
_ARCH_REQUIRED: dict[str, tuple[str, ...]] = {
    GPTNEOX: (_ATT.LAYERNORM_EPS, _LLM.USE_PARALLEL_RESIDUAL),
    LLAMA: (_ATT.LAYERNORM_RMS_EPS,),
    QWEN2: (_ATT.LAYERNORM_RMS_EPS,),
    QWEN3: (_ATT.LAYERNORM_RMS_EPS,),
    GEMMA3: (_ATT.LAYERNORM_RMS_EPS,),
    PHI3: (_ATT.LAYERNORM_RMS_EPS,),
}
_DEFAULT_ROPE_SCALING = "linear"  # what load_hparams assumes without rope.scaling.type


@dataclass(frozen=True)
class HParams:
    """What the tensor shapes of a supported architecture follow from (llama.cpp's names)."""

    arch: str
    #: blocks with tensors: block_count minus nextn_predict_layers
    n_layer: int
    n_embd: int
    n_ff: int
    n_head: int
    n_head_kv: int
    #: key and value head sizes (attention.key_length / value_length, else n_embd / n_head)
    head_k: int
    head_v: int
    n_rot: int
    n_expert: int
    rope_scaling: str


def _num(value: float) -> str:
    # float32 values read back as doubles: 1e-5 would show as 9.999999747378752e-06.
    return f"{value:.6g}"


class _Meta:
    """Typed reads of one architecture's keys, each failure naming the key."""

    def __init__(self, header: Header, arch: str) -> None:
        self.header = header
        self.arch = arch

    def key(self, template: str) -> str:
        return template.format(arch=self.arch)

    def has(self, template: str) -> bool:
        return self.key(template) in self.header.metadata

    def get(self, template: str, default: object = None) -> object:
        return self.header.metadata.get(self.key(template), default)

    def uint(self, template: str, default: int | None = None) -> int:
        key = self.key(template)
        value = self.header.metadata.get(key, default)
        if value is None:
            raise Unloadable(f"it has no {key}, which llama.cpp requires")
        assert isinstance(value, int)  # the type was checked against _TYPED_KEYS
        return value

    def real(self, template: str) -> float | None:
        value = self.get(template)
        return None if value is None else float(value)  # type: ignore[arg-type]

    def per_layer(self, template: str, n_layer: int, default: Sequence[int]) -> list[int]:
        """A get_key_or_arr key as one value per block (``default`` when absent)."""
        key = self.key(template)
        if key not in self.header.metadata:
            return list(default)
        if self.header.types[key] != _V.ARRAY:
            value = self.header.metadata[key]
            assert isinstance(value, int)
            return [value] * n_layer
        return [int(v) for v in self.header.numbers[key]]


def _check_types(header: Header, meta: _Meta, n_layer: int | None) -> None:
    for template, wanted in _TYPED_KEYS:
        key = meta.key(template)
        found = header.types.get(key)
        if found is not None and found != wanted:
            raise wrong_type(header, key, f"a {type_name(wanted)}")
    for template in _PER_LAYER_KEYS:
        key = meta.key(template)
        found = header.types.get(key)
        if found is None or found == _V.UINT32:
            continue
        item = header.item_types.get(key)
        if found != _V.ARRAY or item not in _PER_LAYER_ITEMS:
            raise wrong_type(header, key, "a uint32 or an array of one uint32 per block")
        n = len(header.numbers[key])
        if n_layer is not None and n != n_layer:
            raise Unloadable(
                f"{key} is an array of {n} values, but {meta.key(_LLM.BLOCK_COUNT)} is {n_layer} "
                "(llama.cpp wants one value per block)"
            )


def check_hparams(header: Header, arch: str) -> HParams | None:
    """Check a model's hyperparameters; :class:`HParams` for a :data:`SUPPORTED` architecture.

    Limits: ``block_count`` 1 to :data:`LLAMA_MAX_LAYERS`; ``context_length`` and
    ``embedding_length`` at least 1; norm epsilons finite and >= 0; rope frequency base finite and
    > 0; scaling factor finite and >= 0; scaling type one of :data:`ROPE_SCALING_TYPES`;
    expert counts as llama.cpp asserts them. For supported architectures also: head counts >= 1,
    the same in every block, ``head_count % head_count_kv == 0``, key and value head sizes equal
    (``n_embd / head_count`` unless given, then dividing ``n_embd`` exactly), rope dimension even,
    from 2 to the head size (equal to it for llama and qwen2), ``feed_forward_length`` >= 1.

    Raises:
        Unloadable: naming the key, the value found and the one expected.
    """
    meta = _Meta(header, arch)
    block_key = meta.key(_LLM.BLOCK_COUNT)
    _check_types(header, meta, None)
    n_layer_all = meta.uint(_LLM.BLOCK_COUNT)
    if not 1 <= n_layer_all <= LLAMA_MAX_LAYERS:
        raise Unloadable(
            f"{block_key} is {n_layer_all}, expected 1 to {LLAMA_MAX_LAYERS} "
            "(llama.cpp aborts on any other count)"
        )
    _check_types(header, meta, n_layer_all)
    for template in (_LLM.CONTEXT_LENGTH, _LLM.EMBEDDING_LENGTH):
        if meta.uint(template) < 1:
            raise Unloadable(f"{meta.key(template)} is 0, expected at least 1")
    split = meta.get(gguf.Keys.Split.LLM_KV_SPLIT_COUNT, 0)
    if isinstance(split, int) and split > 1:
        raise Unloadable(
            f"it is one part of a model split in {split} files ({gguf.Keys.Split.LLM_KV_SPLIT_COUNT}"
            "); merge the parts into one file with llama-gguf-split --merge"
        )
    n_nextn = meta.uint(_LLM.NEXTN_PREDICT_LAYERS, 0)
    if n_nextn > n_layer_all:
        raise Unloadable(
            f"{meta.key(_LLM.NEXTN_PREDICT_LAYERS)} is {n_nextn}, more than {block_key} "
            f"{n_layer_all} (llama.cpp aborts)"
        )
    n_expert = _check_experts(meta, n_layer_all)
    rope_scaling = _check_floats_and_rope(meta)
    if arch not in SUPPORTED:
        return None
    for template in _ARCH_REQUIRED[arch]:
        if not meta.has(template):
            raise Unloadable(f"it has no {meta.key(template)}, which llama.cpp's {arch} requires")
    return _check_attention(meta, n_layer_all, n_layer_all - n_nextn, n_expert, rope_scaling)


def _check_experts(meta: _Meta, n_layer_all: int) -> int:
    n_expert = meta.uint(_LLM.EXPERT_COUNT, 0)
    used = max(meta.per_layer(_LLM.EXPERT_USED_COUNT, n_layer_all, [0]))
    groups = meta.uint(_LLM.EXPERT_GROUP_COUNT, 0)
    group_used = meta.uint(_LLM.EXPERT_GROUP_USED_COUNT, 0)
    key = meta.key(_LLM.EXPERT_COUNT)
    used_key = meta.key(_LLM.EXPERT_USED_COUNT)
    if n_expert > LLAMA_MAX_EXPERTS:
        problem = f"{key} is {n_expert}, more than llama.cpp's {LLAMA_MAX_EXPERTS}"
    elif used > n_expert:
        problem = f"{used_key} is {used}, more than {key} {n_expert}"
    elif n_expert and not used:
        problem = f"{key} is {n_expert} but {used_key} is 0 or missing"
    elif n_expert and groups >= n_expert:
        problem = f"{meta.key(_LLM.EXPERT_GROUP_COUNT)} is {groups}, not less than {key}"
    elif groups > 1 and (n_expert % groups or not 0 < group_used < groups):
        problem = (
            f"{key} {n_expert} with {groups} expert groups, {group_used} used, is inconsistent "
            "(groups must divide the experts and 0 < used groups < groups)"
        )
    elif not n_expert and groups:
        problem = f"{meta.key(_LLM.EXPERT_GROUP_COUNT)} is {groups} in a model without experts"
    else:
        return n_expert
    raise Unloadable(problem + " (llama.cpp aborts)")


def _check_floats_and_rope(meta: _Meta) -> str:
    for template in (_ATT.LAYERNORM_EPS, _ATT.LAYERNORM_RMS_EPS):
        eps = meta.real(template)
        if eps is not None and not (math.isfinite(eps) and eps >= 0):
            raise Unloadable(
                f"{meta.key(template)} is {_num(eps)}, expected a finite number >= 0 "
                "(llama.cpp aborts in its norm at the first decode)"
            )
    base = meta.real(_ROPE.FREQ_BASE)
    if base is not None and not (math.isfinite(base) and base > 0):
        raise Unloadable(
            f"{meta.key(_ROPE.FREQ_BASE)} is {_num(base)}, expected a finite number > 0"
        )
    for template in (_ROPE.SCALING_FACTOR, _ROPE.SCALING_ATTN_FACTOR):
        value = meta.real(template)
        if value is not None and not (math.isfinite(value) and value >= 0):
            raise Unloadable(
                f"{meta.key(template)} is {_num(value)}, expected a finite number >= 0"
            )
    scaling = meta.get(_ROPE.SCALING_TYPE, _DEFAULT_ROPE_SCALING)
    assert isinstance(scaling, str)
    if scaling not in ROPE_SCALING_TYPES:
        raise Unloadable(
            f"{meta.key(_ROPE.SCALING_TYPE)} is not one of {', '.join(ROPE_SCALING_TYPES)} "
            "(llama.cpp aborts on any other)"
        )
    return scaling


def _layer_value(
    meta: _Meta, template: str, n_layer_all: int, least: int, default: list[int] | None = None
) -> int:
    """A per-layer key that these architectures need as one value >= ``least`` for all blocks."""
    key = meta.key(template)
    if not meta.has(template) and default is None:
        raise Unloadable(f"it has no {key}, which llama.cpp's {meta.arch} needs")
    values = meta.per_layer(template, n_layer_all, default or [])
    low = min(values)
    if low < least:
        where = "" if len(set(values)) == 1 else f" in block {values.index(low)}"
        raise Unloadable(f"{key} is {low}{where}, expected at least {least}")
    if len(set(values)) > 1:
        raise Unloadable(
            f"{key} differs between blocks ({min(values)} to {max(values)}), but llama.cpp's "
            f"{meta.arch} uses one value for every block"
        )
    return values[0]


def _check_attention(
    meta: _Meta, n_layer_all: int, n_layer: int, n_expert: int, rope_scaling: str
) -> HParams:
    arch = meta.arch
    n_embd = meta.uint(_LLM.EMBEDDING_LENGTH)
    embd_key = meta.key(_LLM.EMBEDDING_LENGTH)
    head_key, kv_key = meta.key(_ATT.HEAD_COUNT), meta.key(_ATT.HEAD_COUNT_KV)
    n_head = _layer_value(meta, _ATT.HEAD_COUNT, n_layer_all, 1)
    # head_count_kv defaults to head_count, block by block
    heads = meta.per_layer(_ATT.HEAD_COUNT, n_layer_all, [])
    n_head_kv = _layer_value(meta, _ATT.HEAD_COUNT_KV, n_layer_all, 1, heads)
    if n_head % n_head_kv:
        raise Unloadable(
            f"{head_key} {n_head} is not a multiple of {kv_key} {n_head_kv} "
            "(llama.cpp cannot share key/value heads unevenly)"
        )
    given_k = meta.has(_ATT.KEY_LENGTH)
    if not given_k and n_embd % n_head:
        raise Unloadable(
            f"{embd_key} {n_embd} is not a multiple of {head_key} {n_head} "
            f"(without {meta.key(_ATT.KEY_LENGTH)} the head size is their quotient)"
        )
    head_k = meta.uint(_ATT.KEY_LENGTH, n_embd // n_head)
    head_v = meta.uint(_ATT.VALUE_LENGTH, n_embd // n_head)
    if head_k != head_v or head_k < 1:
        raise Unloadable(
            f"the key head size {head_k} and value head size {head_v} "
            f"({meta.key(_ATT.KEY_LENGTH)}, {meta.key(_ATT.VALUE_LENGTH)}) must be equal and at "
            f"least 1 for llama.cpp's {arch}"
        )
    if arch not in _FREE_HEAD_SIZE and head_k * n_head != n_embd:
        raise Unloadable(
            f"{meta.key(_ATT.KEY_LENGTH)} {head_k} x {head_key} {n_head} is not {embd_key} "
            f"{n_embd}, which llama.cpp's {arch} requires"
        )
    n_rot = _check_rope_dims(meta, head_k)
    n_ff = _layer_value(meta, _LLM.FEED_FORWARD_LENGTH, n_layer_all, 1)
    return HParams(
        arch=arch,
        n_layer=n_layer,
        n_embd=n_embd,
        n_ff=n_ff,
        n_head=n_head,
        n_head_kv=n_head_kv,
        head_k=head_k,
        head_v=head_v,
        n_rot=n_rot,
        n_expert=n_expert,
        rope_scaling=rope_scaling,
    )


def _check_rope_dims(meta: _Meta, head: int) -> int:
    key = meta.key(_ROPE.DIMENSION_COUNT)
    n_rot = meta.uint(_ROPE.DIMENSION_COUNT, head)
    if meta.arch in _WHOLE_HEAD_ROPE:
        if n_rot != head:
            raise Unloadable(
                f"{key} is {n_rot}, expected the head size {head}: llama.cpp's {meta.arch} "
                "rotates whole heads"
            )
    elif n_rot < 2 or n_rot % 2 or n_rot > head:
        consequence = "hangs in decode" if n_rot == 0 else "aborts in rope"
        raise Unloadable(
            f"{key} is {n_rot}, expected an even number from 2 to the head size {head} "
            f"(llama.cpp {consequence})"
        )
    if n_rot % 2:
        raise Unloadable(f"{key} is {n_rot}, expected an even number (llama.cpp aborts in rope)")
    return n_rot
