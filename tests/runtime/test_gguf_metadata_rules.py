"""The GGUF metadata rules (hyperparameters, vocabulary, file kind, adapter pairs), rule by rule.

Each rule gets its boundaries: the value at each limit (accepted) and just past it (refused, with
the whole one-line message), each optional key absent, and a wrong type. The files are tiny GGUFs
written with gguf-py (tests/gguf_builders.py); no llama.cpp, no torch. Accepted hyperparameters
and vocabularies are checked on the header alone (check_hparams / check_vocab), so that a value at
a limit need not come with tensors of that size.
"""

from __future__ import annotations

import dataclasses
import logging
import mmap
import os
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import gguf
import pytest

from edge_stack.errors import AdapterError, GGUFFileError, ModelFileNotFound
from edge_stack.formats.gguf import _check as _gguf_check
from edge_stack.formats.gguf._check import check_adapter_fits, check_gguf
from edge_stack.formats.gguf._hparams import HParams, check_hparams
from edge_stack.formats.gguf._reader import FIXED_HEADER, Header, Unloadable, read_header
from edge_stack.formats.gguf._vocab import check_vocab

from gguf_builders import (
    GPTNEOX,
    LLAMA,
    N_EMBD,
    N_FF,
    N_VOCAB,
    RANK,
    TOKENS,
    M,
    V,
    array,
    f32,
    string,
    tname,
    u32,
    write,
    write_adapter,
    write_model,
)

K, TOK = gguf.Keys, gguf.Keys.Tokenizer
LLM, ATT, ROPE = gguf.Keys.LLM, gguf.Keys.Attention, gguf.Keys.Rope
NORMAL, BYTE = int(gguf.TokenType.NORMAL), int(gguf.TokenType.BYTE)
CONVERT_HINT = "re-create it with `edgestack convert` (or copy/download it again)"
EXPORT_HINT = "re-create it with `edgestack export-lora` (or copy it again)"
T = TypeVar("T")


@pytest.fixture(autouse=True)
def _fresh_cache() -> None:
    _gguf_check.clear_cache()


def key(template: str, arch: str = LLAMA) -> str:
    return template.format(arch=arch)


def val(value: Any, vtype: gguf.GGUFValueType) -> gguf.GGUFValue:
    return gguf.GGUFValue(value, vtype)


def unloadable(path: Path, problem: str) -> str:
    """The whole message check_gguf gives for a model llama.cpp's loader cannot use."""
    return (
        f"{path} is a GGUF model llama.cpp cannot load: {problem}; the file is damaged or was "
        "written by a tool llama.cpp cannot read: re-convert it with `edgestack convert`"
    )


def refused(path: Path, kind: str | None = "model") -> str:
    with pytest.raises(GGUFFileError) as info:
        check_gguf(path, kind=kind)  # type: ignore[arg-type]
    text = str(info.value)
    assert "\n" not in text
    return text


def on_header(path: Path, check: Callable[[Header], T]) -> T:
    with path.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        return check(read_header(mm, path.stat().st_size))


# --- hyperparameters --------------------------------------------------------------------------

HP_REFUSED: dict[str, tuple[dict[str, Any], str]] = {
    "block-count-0": (
        {"kv": {LLM.BLOCK_COUNT: u32(0)}},
        f"{LLAMA}.block_count is 0, expected 1 to 512 (llama.cpp aborts on any other count)",
    ),
    "block-count-513": (
        {"kv": {LLM.BLOCK_COUNT: u32(513)}},
        f"{LLAMA}.block_count is 513, expected 1 to 512 (llama.cpp aborts on any other count)",
    ),
    "no-block-count": (
        {"kv": {LLM.BLOCK_COUNT: None}},
        f"it has no {LLAMA}.block_count, which llama.cpp requires",
    ),
    "context-length-0": (
        {"kv": {LLM.CONTEXT_LENGTH: u32(0)}},
        f"{LLAMA}.context_length is 0, expected at least 1",
    ),
    "embedding-length-0": (
        {"kv": {LLM.EMBEDDING_LENGTH: u32(0)}},
        f"{LLAMA}.embedding_length is 0, expected at least 1",
    ),
    "split-in-2": (
        {"kv": {K.Split.LLM_KV_SPLIT_COUNT: val(2, V.UINT16)}},
        "it is one part of a model split in 2 files (split.count); merge the parts into one file "
        "with llama-gguf-split --merge",
    ),
    "nextn-past-blocks": (
        {"kv": {LLM.NEXTN_PREDICT_LAYERS: u32(3)}},
        f"{LLAMA}.nextn_predict_layers is 3, more than {LLAMA}.block_count 2 (llama.cpp aborts)",
    ),
    # per-layer keys: a uint32, or an array (uint32, int32, bool) with one value per block
    "per-layer-float-array": (
        {"kv": {ATT.HEAD_COUNT: array([4.0, 4.0], V.FLOAT32)}},
        f"{LLAMA}.attention.head_count has type array of float32, but llama.cpp reads a uint32 or "
        "an array of one uint32 per block",
    ),
    "per-layer-float": (
        {"kv": {ATT.HEAD_COUNT: f32(4.0)}},
        f"{LLAMA}.attention.head_count has type float32, but llama.cpp reads a uint32 or an array "
        "of one uint32 per block",
    ),
    "per-layer-array-too-long": (
        {"kv": {LLM.FEED_FORWARD_LENGTH: array([N_FF] * 3, V.UINT32)}},
        f"{LLAMA}.feed_forward_length is an array of 3 values, but {LLAMA}.block_count is 2 "
        "(llama.cpp wants one value per block)",
    ),
    # experts (llama-model.cpp's GGML_ASSERTs)
    "experts-1025": (
        {"kv": {LLM.EXPERT_COUNT: u32(1025), LLM.EXPERT_USED_COUNT: u32(1)}},
        f"{LLAMA}.expert_count is 1025, more than llama.cpp's 1024 (llama.cpp aborts)",
    ),
    "experts-used-past-count": (
        {"kv": {LLM.EXPERT_COUNT: u32(2), LLM.EXPERT_USED_COUNT: u32(3)}},
        f"{LLAMA}.expert_used_count is 3, more than {LLAMA}.expert_count 2 (llama.cpp aborts)",
    ),
    "experts-none-used": (
        {"kv": {LLM.EXPERT_COUNT: u32(2)}},
        f"{LLAMA}.expert_count is 2 but {LLAMA}.expert_used_count is 0 or missing "
        "(llama.cpp aborts)",
    ),
    "expert-groups-as-many-as-experts": (
        {
            "kv": {
                LLM.EXPERT_COUNT: u32(2),
                LLM.EXPERT_USED_COUNT: u32(1),
                LLM.EXPERT_GROUP_COUNT: u32(2),
            }
        },
        f"{LLAMA}.expert_group_count is 2, not less than {LLAMA}.expert_count (llama.cpp aborts)",
    ),
    "expert-groups-not-dividing": (
        {
            "kv": {
                LLM.EXPERT_COUNT: u32(3),
                LLM.EXPERT_USED_COUNT: u32(1),
                LLM.EXPERT_GROUP_COUNT: u32(2),
                LLM.EXPERT_GROUP_USED_COUNT: u32(1),
            }
        },
        f"{LLAMA}.expert_count 3 with 2 expert groups, 1 used, is inconsistent (groups must "
        "divide the experts and 0 < used groups < groups) (llama.cpp aborts)",
    ),
    "expert-groups-none-used": (
        {
            "kv": {
                LLM.EXPERT_COUNT: u32(4),
                LLM.EXPERT_USED_COUNT: u32(1),
                LLM.EXPERT_GROUP_COUNT: u32(2),
            }
        },
        f"{LLAMA}.expert_count 4 with 2 expert groups, 0 used, is inconsistent (groups must "
        "divide the experts and 0 < used groups < groups) (llama.cpp aborts)",
    ),
    "expert-groups-all-used": (
        {
            "kv": {
                LLM.EXPERT_COUNT: u32(4),
                LLM.EXPERT_USED_COUNT: u32(1),
                LLM.EXPERT_GROUP_COUNT: u32(2),
                LLM.EXPERT_GROUP_USED_COUNT: u32(2),
            }
        },
        f"{LLAMA}.expert_count 4 with 2 expert groups, 2 used, is inconsistent (groups must "
        "divide the experts and 0 < used groups < groups) (llama.cpp aborts)",
    ),
    "expert-group-without-experts": (
        {"kv": {LLM.EXPERT_GROUP_COUNT: u32(1)}},
        f"{LLAMA}.expert_group_count is 1 in a model without experts (llama.cpp aborts)",
    ),
    # floats
    "rms-eps-negative": (
        {"kv": {ATT.LAYERNORM_RMS_EPS: f32(-1.0)}},
        f"{LLAMA}.attention.layer_norm_rms_epsilon is -1, expected a finite number >= 0 "
        "(llama.cpp aborts in its norm at the first decode)",
    ),
    "freq-base-0": (
        {"kv": {ROPE.FREQ_BASE: f32(0.0)}},
        f"{LLAMA}.rope.freq_base is 0, expected a finite number > 0",
    ),
    "scaling-factor-negative": (
        {"kv": {ROPE.SCALING_FACTOR: f32(-0.5)}},
        f"{LLAMA}.rope.scaling.factor is -0.5, expected a finite number >= 0",
    ),
    "attn-factor-infinite": (
        {"kv": {ROPE.SCALING_ATTN_FACTOR: f32(float("inf"))}},
        f"{LLAMA}.rope.scaling.attn_factor is inf, expected a finite number >= 0",
    ),
    "scaling-type-unknown": (
        {"kv": {ROPE.SCALING_TYPE: string("dynamic")}},
        f"{LLAMA}.rope.scaling.type is not one of none, linear, yarn, longrope "
        "(llama.cpp aborts on any other)",
    ),
    # one value for every block, at least 1
    "no-head-count": (
        {"kv": {ATT.HEAD_COUNT: None}},
        f"it has no {LLAMA}.attention.head_count, which llama.cpp's {LLAMA} needs",
    ),
    "head-count-0": (
        {"kv": {ATT.HEAD_COUNT: u32(0)}},
        f"{LLAMA}.attention.head_count is 0, expected at least 1",
    ),
    "ffn-0-in-block-1": (
        {"kv": {LLM.FEED_FORWARD_LENGTH: array([N_FF, 0], V.UINT32)}},
        f"{LLAMA}.feed_forward_length is 0 in block 1, expected at least 1",
    ),
    "ffn-0-in-blocks-0-and-2": (
        {
            "kv": {
                LLM.BLOCK_COUNT: u32(3),
                LLM.FEED_FORWARD_LENGTH: array([0, N_FF, 0], V.INT32),
            }
        },
        f"{LLAMA}.feed_forward_length is 0 in block 0, expected at least 1",
    ),
    "ffn-differs-between-blocks": (
        {"kv": {LLM.FEED_FORWARD_LENGTH: array([N_FF, 32], V.UINT32)}},
        f"{LLAMA}.feed_forward_length differs between blocks (32 to 64), but llama.cpp's {LLAMA} "
        "uses one value for every block",
    ),
    # heads
    "heads-not-multiple-of-kv-heads": (
        {"kv": {ATT.HEAD_COUNT_KV: u32(3)}},
        f"{LLAMA}.attention.head_count 4 is not a multiple of {LLAMA}.attention.head_count_kv 3 "
        "(llama.cpp cannot share key/value heads unevenly)",
    ),
    "embedding-not-multiple-of-heads": (
        {"kv": {ATT.HEAD_COUNT: u32(3), ATT.HEAD_COUNT_KV: u32(3)}},
        f"{LLAMA}.embedding_length 32 is not a multiple of {LLAMA}.attention.head_count 3 "
        f"(without {LLAMA}.attention.key_length the head size is their quotient)",
    ),
    "key-and-value-heads-differ": (
        {"kv": {ATT.KEY_LENGTH: u32(8), ATT.VALUE_LENGTH: u32(16)}},
        f"the key head size 8 and value head size 16 ({LLAMA}.attention.key_length, "
        f"{LLAMA}.attention.value_length) must be equal and at least 1 for llama.cpp's {LLAMA}",
    ),
    "head-size-0": (
        {"kv": {ATT.KEY_LENGTH: u32(0), ATT.VALUE_LENGTH: u32(0)}},
        f"the key head size 0 and value head size 0 ({LLAMA}.attention.key_length, "
        f"{LLAMA}.attention.value_length) must be equal and at least 1 for llama.cpp's {LLAMA}",
    ),
    "head-size-1-rope-odd": (
        {"kv": {ATT.KEY_LENGTH: u32(1), ATT.VALUE_LENGTH: u32(1), ROPE.DIMENSION_COUNT: u32(1)}},
        f"{LLAMA}.rope.dimension_count is 1, expected an even number (llama.cpp aborts in rope)",
    ),
    "head-size-7-rope-odd": (
        {"kv": {ATT.KEY_LENGTH: u32(7), ATT.VALUE_LENGTH: u32(7), ROPE.DIMENSION_COUNT: u32(7)}},
        f"{LLAMA}.rope.dimension_count is 7, expected an even number (llama.cpp aborts in rope)",
    ),
    "gptneox-head-size-not-embedding-over-heads": (
        {"arch": GPTNEOX, "kv": {ATT.KEY_LENGTH: u32(16), ATT.VALUE_LENGTH: u32(16)}},
        f"{GPTNEOX}.attention.key_length 16 x {GPTNEOX}.attention.head_count 4 is not "
        f"{GPTNEOX}.embedding_length 32, which llama.cpp's {GPTNEOX} requires",
    ),
    # rope dimensions
    "llama-rope-not-whole-head": (
        {"kv": {ROPE.DIMENSION_COUNT: u32(4)}},
        f"{LLAMA}.rope.dimension_count is 4, expected the head size 8: llama.cpp's {LLAMA} "
        "rotates whole heads",
    ),
    "gptneox-rope-0": (
        {"arch": GPTNEOX, "kv": {ROPE.DIMENSION_COUNT: u32(0)}},
        f"{GPTNEOX}.rope.dimension_count is 0, expected an even number from 2 to the head size 8 "
        "(llama.cpp hangs in decode)",
    ),
    "gptneox-rope-odd": (
        {"arch": GPTNEOX, "kv": {ROPE.DIMENSION_COUNT: u32(3)}},
        f"{GPTNEOX}.rope.dimension_count is 3, expected an even number from 2 to the head size 8 "
        "(llama.cpp aborts in rope)",
    ),
    "gptneox-rope-past-head": (
        {"arch": GPTNEOX, "kv": {ROPE.DIMENSION_COUNT: u32(10)}},
        f"{GPTNEOX}.rope.dimension_count is 10, expected an even number from 2 to the head size 8 "
        "(llama.cpp aborts in rope)",
    ),
    # keys of the wrong type (llama.cpp's get_key throws)
    "name-not-string": (
        {"kv": {K.General.NAME: u32(1)}},
        f"{K.General.NAME} has type uint32, but llama.cpp reads a string",
    ),
    "context-length-uint64": (
        {"kv": {LLM.CONTEXT_LENGTH: val(128, V.UINT64)}},
        f"{LLAMA}.context_length has type uint64, but llama.cpp reads a uint32",
    ),
    "split-count-uint32": (
        {"kv": {K.Split.LLM_KV_SPLIT_COUNT: u32(1)}},
        "split.count has type uint32, but llama.cpp reads a uint16",
    ),
    "freq-base-float64": (
        {"kv": {ROPE.FREQ_BASE: val(10000.0, V.FLOAT64)}},
        f"{LLAMA}.rope.freq_base has type float64, but llama.cpp reads a float32",
    ),
    "parallel-residual-uint8": (
        {"arch": GPTNEOX, "kv": {LLM.USE_PARALLEL_RESIDUAL: val(1, V.UINT8)}},
        f"{GPTNEOX}.use_parallel_residual has type uint8, but llama.cpp reads a bool",
    ),
    "gptneox-without-layer-norm-eps": (
        {"arch": GPTNEOX, "kv": {ATT.LAYERNORM_EPS: None}},
        f"it has no {GPTNEOX}.attention.layer_norm_epsilon, which llama.cpp's {GPTNEOX} requires",
    ),
}


@pytest.mark.parametrize("case", list(HP_REFUSED))
def test_hyperparameters_refused(tmp_path: Path, case: str) -> None:
    options, problem = HP_REFUSED[case]
    path = write_model(tmp_path / f"{case}.gguf", **options)
    assert refused(path) == unloadable(path, problem)


BASE = HParams(
    arch=LLAMA,
    n_layer=2,
    n_embd=N_EMBD,
    n_ff=N_FF,
    n_head=4,
    n_head_kv=4,
    head_k=8,
    head_v=8,
    n_rot=8,
    n_expert=0,
    rope_scaling="linear",
)
NEOX = dataclasses.replace(BASE, arch=GPTNEOX, n_rot=4)

# Values at each limit, and optional keys left out: accepted, with these hyperparameters.
HP_ACCEPTED: dict[str, tuple[dict[str, Any], HParams]] = {
    "llama": ({}, BASE),
    "gptneox": ({"arch": GPTNEOX}, NEOX),
    "block-count-512": (
        {"kv": {LLM.BLOCK_COUNT: u32(512)}},
        dataclasses.replace(BASE, n_layer=512),
    ),
    "context-length-1": ({"kv": {LLM.CONTEXT_LENGTH: u32(1)}}, BASE),
    "split-in-1": ({"kv": {K.Split.LLM_KV_SPLIT_COUNT: val(1, V.UINT16)}}, BASE),
    "nextn-1": ({"kv": {LLM.NEXTN_PREDICT_LAYERS: u32(1)}}, dataclasses.replace(BASE, n_layer=1)),
    "nextn-all-blocks": (
        {"kv": {LLM.NEXTN_PREDICT_LAYERS: u32(2)}},
        dataclasses.replace(BASE, n_layer=0),
    ),
    "experts-1024": (
        {"kv": {LLM.EXPERT_COUNT: u32(1024), LLM.EXPERT_USED_COUNT: u32(1)}},
        dataclasses.replace(BASE, n_expert=1024),
    ),
    "one-expert-group": (
        {
            "kv": {
                LLM.EXPERT_COUNT: u32(2),
                LLM.EXPERT_USED_COUNT: u32(1),
                LLM.EXPERT_GROUP_COUNT: u32(1),
            }
        },
        dataclasses.replace(BASE, n_expert=2),
    ),
    "expert-groups": (
        {
            "kv": {
                LLM.EXPERT_COUNT: u32(4),
                LLM.EXPERT_USED_COUNT: array([1, 2], V.INT32),
                LLM.EXPERT_GROUP_COUNT: u32(2),
                LLM.EXPERT_GROUP_USED_COUNT: u32(1),
            }
        },
        dataclasses.replace(BASE, n_expert=4),
    ),
    "rms-eps-0": ({"kv": {ATT.LAYERNORM_RMS_EPS: f32(0.0)}}, BASE),
    "freq-base-half": ({"kv": {ROPE.FREQ_BASE: f32(0.5)}}, BASE),
    "scaling-factors-0": (
        {"kv": {ROPE.SCALING_FACTOR: f32(0.0), ROPE.SCALING_ATTN_FACTOR: f32(0.0)}},
        BASE,
    ),
    "scaling-factors-half": (
        {"kv": {ROPE.SCALING_FACTOR: f32(0.5), ROPE.SCALING_ATTN_FACTOR: f32(0.5)}},
        BASE,
    ),
    "scaling-yarn": (
        {"kv": {ROPE.SCALING_TYPE: string("yarn")}},
        dataclasses.replace(BASE, rope_scaling="yarn"),
    ),
    "ffn-1": ({"kv": {LLM.FEED_FORWARD_LENGTH: u32(1)}}, dataclasses.replace(BASE, n_ff=1)),
    "no-kv-heads": ({"kv": {ATT.HEAD_COUNT_KV: None}}, BASE),
    "kv-heads-per-block-default": (
        {"kv": {ATT.HEAD_COUNT: array([4, 4], V.UINT32), ATT.HEAD_COUNT_KV: None}},
        BASE,
    ),
    "one-kv-head": ({"kv": {ATT.HEAD_COUNT_KV: u32(1)}}, dataclasses.replace(BASE, n_head_kv=1)),
    "one-head": (
        {"kv": {ATT.HEAD_COUNT: u32(1), ATT.HEAD_COUNT_KV: u32(1), ROPE.DIMENSION_COUNT: u32(32)}},
        dataclasses.replace(BASE, n_head=1, n_head_kv=1, head_k=32, head_v=32, n_rot=32),
    ),
    "llama-head-size-given-not-dividing": (
        {
            "kv": {
                ATT.HEAD_COUNT: u32(3),
                ATT.HEAD_COUNT_KV: u32(3),
                ATT.KEY_LENGTH: u32(8),
                ATT.VALUE_LENGTH: u32(8),
            }
        },
        dataclasses.replace(BASE, n_head=3, n_head_kv=3),
    ),
    "llama-head-size-2": (
        {"kv": {ATT.KEY_LENGTH: u32(2), ATT.VALUE_LENGTH: u32(2), ROPE.DIMENSION_COUNT: u32(2)}},
        dataclasses.replace(BASE, head_k=2, head_v=2, n_rot=2),
    ),
    "llama-head-size-free": (
        {"kv": {ATT.KEY_LENGTH: u32(16), ATT.VALUE_LENGTH: u32(16), ROPE.DIMENSION_COUNT: u32(16)}},
        dataclasses.replace(BASE, head_k=16, head_v=16, n_rot=16),
    ),
    "no-rope-dimension-count": ({"kv": {ROPE.DIMENSION_COUNT: None}}, BASE),
    "gptneox-rope-2": (
        {"arch": GPTNEOX, "kv": {ROPE.DIMENSION_COUNT: u32(2)}},
        dataclasses.replace(NEOX, n_rot=2),
    ),
    "gptneox-rope-whole-head": (
        {"arch": GPTNEOX, "kv": {ROPE.DIMENSION_COUNT: u32(8)}},
        dataclasses.replace(NEOX, n_rot=8),
    ),
}


@pytest.mark.parametrize("case", list(HP_ACCEPTED))
def test_hyperparameters_accepted(tmp_path: Path, case: str) -> None:
    options, expected = HP_ACCEPTED[case]
    path = write_model(tmp_path / f"{case}.gguf", **options)
    assert on_header(path, lambda h: check_hparams(h, expected.arch)) == expected


# --- vocabulary -------------------------------------------------------------------------------

SPM_TOKENS = [f"<0x{b:02X}>" for b in range(256)] + ["ab"]
SPM_TYPES = [BYTE] * 256 + [NORMAL]
SPM = {TOK.MODEL: string("llama"), TOK.MERGES: None}


def spm_with(replaced: dict[int, str]) -> dict[str, Any]:
    """A SentencePiece vocabulary whose byte tokens at ``replaced`` are other (normal) tokens."""
    tokens, types = list(SPM_TOKENS), list(SPM_TYPES)
    for byte, text in replaced.items():
        tokens[byte], types[byte] = text, NORMAL
    return {"tokens": tokens, "token_types": types, "kv": SPM}


def with_tokens(extra: list[str], **options: Any) -> dict[str, Any]:
    tokens = [*TOKENS, *extra]
    return {"tokens": tokens, "token_types": [NORMAL] * len(tokens), **options}


MERGE_PROBLEM = "(llama.cpp's BPE tokenizer needs 'left right' pairs from tokenizer.ggml.tokens)"
PRE_TYPES = "not one of the 91 pre-tokenizer types llama.cpp knows for a BPE vocabulary (gpt2)"
PRE_END = "(llama.cpp fails to load it without saying why)"
PHI3_TOKENS = ["</s>", "<unk>", "<s>", "<|endoftext|>"]

VOCAB_REFUSED: dict[str, tuple[dict[str, Any], str]] = {
    "tokenizer-unknown": (
        {"kv": {TOK.MODEL: string("sentencepiece")}},
        f"{TOK.MODEL} is not a tokenizer llama.cpp knows (expected one of no_vocab, none, llama, "
        "bert, gpt2, hybriddna, whitespace, t5, rwkv, test, plamo2, gemma4)",
    ),
    "tokenizer-none": (
        {"kv": {TOK.MODEL: string("none")}},
        f"{TOK.MODEL} is 'none': the model has no vocabulary, so it cannot tokenize a prompt "
        "(llama.cpp aborts the process on the first one)",
    ),
    "tokenizer-model-not-string": (
        {"kv": {TOK.MODEL: u32(2)}},
        f"{TOK.MODEL} has type uint32, but llama.cpp reads a string",
    ),
    "add-bos-not-bool": (
        {"kv": {TOK.ADD_BOS: u32(1)}},
        f"{TOK.ADD_BOS} has type uint32, but llama.cpp reads a bool",
    ),
    "token-type-count-int32": (
        {"kv": {TOK.TOKEN_TYPE_COUNT: val(2, V.INT32)}},
        f"{TOK.TOKEN_TYPE_COUNT} has type int32, but llama.cpp reads a uint32",
    ),
    "pre-no-close-match": (
        {"kv": {TOK.PRE: string("zzzzzzzz")}},
        f"{TOK.PRE} is 'zzzzzzzz', {PRE_TYPES} {PRE_END}",
    ),
    "pre-close-match": (
        {"kv": {TOK.PRE: string("GPT-2")}},
        f"{TOK.PRE} is 'GPT-2', {PRE_TYPES}, e.g. 'gpt-2' {PRE_END}",
    ),
    "pre-shown-whole-at-40": (
        {"kv": {TOK.PRE: string("q" * 38)}},
        f"{TOK.PRE} is '{'q' * 38}', {PRE_TYPES} {PRE_END}",
    ),
    "pre-shortened-past-40": (
        {"kv": {TOK.PRE: string("q" * 39)}},
        f"{TOK.PRE} is '{'q' * 35}...', {PRE_TYPES} {PRE_END}",
    ),
    "pre-cut-at-first-nul": (
        {"kv": {TOK.PRE: string("zzz\x00gpt-2\x00x")}},
        f"{TOK.PRE} is 'zzz', {PRE_TYPES} {PRE_END}",
    ),
    "nul-cut-at-first": (
        {"tokens": [*TOKENS[:-1], "q\x00r\x00s"]},
        f"token 256 of {TOK.LIST} holds a NUL byte, but llama.cpp reads token texts as C strings: "
        "it would cut it to 'q' (aborting the process when another token reads the same)",
    ),
    "nul-after-invalid-utf8": (
        {"kv": {TOK.LIST: array([t.encode() for t in TOKENS[:-1]] + [b"\xff\x00z"], V.STRING)}},
        f"token 256 of {TOK.LIST} holds a NUL byte, but llama.cpp reads token texts as C strings: "
        "it would cut it to '\\ufffd' (aborting the process when another token reads the same)",
    ),
    "duplicate-token": (
        {"tokens": [*TOKENS[:-1], TOKENS[97]]},
        f"{TOK.LIST} has the same text at ids 97 and 256, but every token text must be unique "
        "(llama.cpp aborts on duplicates)",
    ),
    "scores-of-uint32": (
        {"kv": {TOK.SCORES: array([0] * N_VOCAB, V.UINT32)}},
        f"{TOK.SCORES} has type array of uint32, but llama.cpp reads an array of float32 or int32",
    ),
    "token-types-not-array": (
        {"kv": {TOK.TOKEN_TYPE: val(1, V.INT32)}},
        f"{TOK.TOKEN_TYPE} has type int32, but llama.cpp reads an array of int32",
    ),
    "scores-one-long": (
        {"kv": {TOK.SCORES: array([0.0] * (N_VOCAB + 1), V.FLOAT32)}},
        f"{TOK.SCORES} has 258 entries, but {TOK.LIST} has 257 tokens (expected one per token)",
    ),
    "token-type-7": (
        {"token_types": [NORMAL] * 5 + [7] + [NORMAL] * (N_VOCAB - 6)},
        f"{TOK.TOKEN_TYPE} of token 5 is 7, expected 0 to 6 (llama_token_type)",
    ),
    "token-type-negative": (
        {"token_types": [NORMAL] * 5 + [-1] + [NORMAL] * (N_VOCAB - 6)},
        f"{TOK.TOKEN_TYPE} of token 5 is -1, expected 0 to 6 (llama_token_type)",
    ),
    "byte-token-in-wordpiece": (
        {
            "tokens": [*TOKENS[:-1], "<0x0A>"],
            "token_types": [NORMAL] * (N_VOCAB - 1) + [BYTE],
            "kv": {TOK.MODEL: string("bert")},
        },
        f"token 256 has {TOK.TOKEN_TYPE} BYTE, which a WordPiece vocabulary cannot have "
        "(llama.cpp aborts when it turns that token into text)",
    ),
    "byte-token-misspelled": (
        {"token_types": [NORMAL] * 97 + [BYTE] + [NORMAL] * (N_VOCAB - 98)},
        f"token 97 has {TOK.TOKEN_TYPE} BYTE but is not spelled <0xHH>, so llama.cpp cannot "
        "turn it into text",
    ),
    "eos-id-past-end": (
        {"kv": {TOK.EOS_ID: u32(N_VOCAB)}},
        f"{TOK.EOS_ID} is 257, but {TOK.LIST} has only 257 tokens (ids 0 to 256)",
    ),
    "no-merges": (
        {"kv": {TOK.MERGES: None}},
        f"it has no {TOK.MERGES}, which llama.cpp's BPE tokenizer (gpt2) requires",
    ),
    "no-merges-other-pre": (
        {"kv": {TOK.MERGES: None, TOK.PRE: string("llama-bpe")}},
        f"it has no {TOK.MERGES}, which llama.cpp's BPE tokenizer (gpt2) requires",
    ),
    "merges-of-int32": (
        {"kv": {TOK.MERGES: array([1, 2], V.INT32)}},
        f"{TOK.MERGES} has type array of int32, but llama.cpp reads an array of strings",
    ),
    "merge-two-spaces": ({"merges": ["a b b"]}, f"{TOK.MERGES} entry 0 is not"),
    "merge-tab-inside-half": ({"merges": ["a\tb c"]}, f"{TOK.MERGES} entry 0 is not"),
    "merge-leading-space": ({"merges": [" a"]}, f"{TOK.MERGES} entry 0 is not"),
    "merge-halves-not-tokens": ({"merges": ["aXX XXb"]}, f"{TOK.MERGES} entry 0 is not"),
    "merges-joined-halves-are-tokens": (
        with_tokens(["\tXX", "XX\t"], merges=["a \t", "\t d"]),
        f"{TOK.MERGES} entry 0 is not",
    ),
    "merge-empty-right-with-empty-token": (
        with_tokens([""], merges=["a "]),
        f"{TOK.MERGES} entry 0 is not",
    ),
    "merge-empty-left-with-empty-token": (
        with_tokens([""], merges=[" b"]),
        f"{TOK.MERGES} entry 0 is not",
    ),
    "merge-without-space-with-empty-token": (
        with_tokens([""], merges=["ab"]),
        f"{TOK.MERGES} entry 0 is not",
    ),
    "merge-right-half-with-space": (
        with_tokens(["a b", "b b"], merges=["a b b"]),
        f"{TOK.MERGES} entry 0 is not",
    ),
    "merge-after-one-of-all-tokens": (
        {
            "tokens": ["a", "b"],
            "token_types": [NORMAL, NORMAL],
            "merges": ["a b", "a"],
            "kv": {TOK.EOS_ID: u32(1)},
        },
        f"{TOK.MERGES} entry 1 is not",
    ),
    "spm-without-a-byte": (
        spm_with({0x41: "zz"}),
        f"{TOK.LIST} has no token <0x41> for byte 65, which llama.cpp's SentencePiece tokenizer "
        "falls back to",
    ),
    "phi-3-name-without-its-tokens": (
        {"kv": {K.General.NAME: string("Phi-3-mini")}},
        f"{K.General.NAME} 'Phi-3-mini' makes llama.cpp look up token '</s>', which {TOK.LIST} "
        "lacks (llama.cpp fails to load it); rename the model",
    ),
    "phi3-name-without-one-token": (
        with_tokens(PHI3_TOKENS[:-1], kv={K.General.NAME: string("tiny-phi3")}),
        f"{K.General.NAME} 'tiny-phi3' makes llama.cpp look up token '<|endoftext|>', which "
        f"{TOK.LIST} lacks (llama.cpp fails to load it); rename the model",
    ),
}


@pytest.mark.parametrize("case", list(VOCAB_REFUSED))
def test_vocabulary_refused(tmp_path: Path, case: str) -> None:
    options, problem = VOCAB_REFUSED[case]
    if problem.endswith("entry 0 is not") or problem.endswith("entry 1 is not"):
        problem += f" two known tokens separated by one space {MERGE_PROBLEM}"
    path = write_model(tmp_path / f"{case}.gguf", **options)
    assert refused(path) == unloadable(path, problem)


VOCAB_ACCEPTED: dict[str, tuple[dict[str, Any], int]] = {
    "gpt2": ({}, N_VOCAB),
    "kimi-k2-without-merges": (
        {"kv": {TOK.MERGES: None, TOK.PRE: string("kimi-k2")}},
        N_VOCAB,
    ),
    "pre-cut-at-first-nul": ({"kv": {TOK.PRE: string("gpt-2\x00x\x00y")}}, N_VOCAB),
    "token-type-undefined": ({"token_types": [0] * N_VOCAB}, N_VOCAB),
    "token-type-byte-spelled": (
        {"tokens": [*TOKENS[:-1], "<0x0A>"], "token_types": [NORMAL] * (N_VOCAB - 1) + [BYTE]},
        N_VOCAB,
    ),
    "eos-id-last": ({"kv": {TOK.EOS_ID: u32(N_VOCAB - 1)}}, N_VOCAB),
    "scores-int32": ({"kv": {TOK.SCORES: array([0] * N_VOCAB, V.INT32)}}, N_VOCAB),
    "only-two-tokens": (
        {
            "tokens": ["a", "b"],
            "token_types": [NORMAL, NORMAL],
            "merges": ["a b"],
            "kv": {TOK.EOS_ID: u32(1)},
        },
        2,
    ),
    "spm": (spm_with({}), 257),
    "spm-bytes-as-themselves": (spm_with({0x01: "\x01", 0x41: "A"}), 257),
    "phi3-name-with-its-tokens": (
        with_tokens(PHI3_TOKENS, kv={K.General.NAME: string("Phi-3-mini")}),
        N_VOCAB + 4,
    ),
}


@pytest.mark.parametrize("case", list(VOCAB_ACCEPTED))
def test_vocabulary_accepted(tmp_path: Path, case: str) -> None:
    options, n_vocab = VOCAB_ACCEPTED[case]
    path = write_model(tmp_path / f"{case}.gguf", **options)
    assert on_header(path, lambda h: check_vocab(h, LLAMA)) == n_vocab


def test_empty_token_list(tmp_path: Path) -> None:
    """gguf-py writes no empty arrays: a one-token list is cut to none in the file's bytes."""
    path = tmp_path / "empty.gguf"
    w = gguf.GGUFWriter(str(path), LLAMA)
    w.add_tokenizer_model("gpt2")
    w.add_token_list(["x"])  # the last key: nothing after it moves
    write(w)
    raw = path.read_bytes()
    count_at = raw.index(TOK.LIST.encode()) + len(TOK.LIST) + 4 + 4  # after type, item type
    path.write_bytes(raw[:count_at] + struct.pack("<Q", 0) + raw[count_at + 8 + 8 + 1 :])
    with pytest.raises(Unloadable) as info:
        on_header(path, lambda h: check_vocab(h, LLAMA))
    assert str(info.value) == f"{TOK.LIST} is empty, expected at least one token"


def test_vocabulary_of_a_model_without_general_type_is_checked(tmp_path: Path) -> None:
    path = write_model(tmp_path / "old.gguf", general_type=None, tokens=[*TOKENS[:-1], TOKENS[97]])
    assert refused(path) == unloadable(
        path,
        f"{TOK.LIST} has the same text at ids 97 and 256, but every token text must be unique "
        "(llama.cpp aborts on duplicates)",
    )


# --- the file and its kind ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "what"), [("model", "model"), ("adapter", "LoRA adapter"), (None, "GGUF")]
)
def test_missing_file_names_the_kind(tmp_path: Path, kind: str | None, what: str) -> None:
    path = tmp_path / "nope.gguf"
    with pytest.raises(ModelFileNotFound) as info:
        check_gguf(path, kind=kind)  # type: ignore[arg-type]
    assert str(info.value) == f"{what} file {path.absolute()} does not exist; check the path"


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        (
            "model",
            "a model .gguf file is expected; convert a checkpoint folder with "
            "`edgestack convert` first",
        ),
        (
            "adapter",
            "a LoRA adapter .gguf file is expected; export a PEFT adapter folder with "
            "`edgestack export-lora` first",
        ),
        (
            None,
            "a GGUF .gguf file is expected; export a PEFT adapter folder with "
            "`edgestack export-lora` first",
        ),
    ],
)
def test_folder_names_the_kind(tmp_path: Path, kind: str | None, expected: str) -> None:
    with pytest.raises(GGUFFileError) as info:
        check_gguf(tmp_path, kind=kind)  # type: ignore[arg-type]
    assert str(info.value) == f"{tmp_path} is a folder, but {expected}"


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_model(tmp_path_factory.mktemp("rules") / "model.gguf")


@pytest.mark.parametrize(
    ("size", "kind", "expected"),
    [
        (0, "adapter", f"the file is empty, shorter than a GGUF header; {EXPORT_HINT}"),
        (0, None, f"the file is empty, shorter than a GGUF header; {CONVERT_HINT}"),
        (
            FIXED_HEADER.size - 1,
            "model",
            f"the file is only 23 bytes long, shorter than a GGUF header; {CONVERT_HINT}",
        ),
        (
            FIXED_HEADER.size,
            "model",
            "its header claims 21 tensors and 20 metadata keys, which need at least 829 bytes, "
            f"but the file has only 24: it is cut short or corrupt; {CONVERT_HINT}",
        ),
    ],
)
def test_short_file(
    model: Path, tmp_path: Path, size: int, kind: str | None, expected: str
) -> None:
    path = tmp_path / "short.gguf"
    path.write_bytes(model.read_bytes()[:size])
    assert refused(path, kind) == f"{path} is not a valid GGUF file: {expected}"


@pytest.mark.parametrize("arch", [val(5, V.UINT32), string("")], ids=["uint32", "empty"])
def test_architecture_not_a_name(tmp_path: Path, arch: gguf.GGUFValue) -> None:
    path = write_model(tmp_path / "arch.gguf", kv={K.General.ARCHITECTURE: arch})
    assert refused(path) == (
        f"{path} is not a valid GGUF file: it has no {K.General.ARCHITECTURE}; {CONVERT_HINT}"
    )


def test_summary_fields(tmp_path: Path) -> None:
    path = write_model(
        tmp_path / "q8.gguf",
        kv={
            K.General.FILE_TYPE: u32(int(gguf.LlamaFileType.MOSTLY_Q8_0)),
            K.Adapter.LORA_ALPHA: f32(8),
        },
    )
    s = check_gguf(path)
    assert (s.file_type, s.lora_alpha, s.name) == ("Q8_0", None, "tiny-test-model")
    nameless = write_adapter(tmp_path / "a.lora.gguf", kv={K.General.NAME: u32(1)})
    a = check_gguf(nameless, kind="adapter")
    assert (a.name, a.lora_alpha) == (None, 8.0)


def test_cache_sees_a_file_rewritten_in_place(model: Path, tmp_path: Path) -> None:
    """Same path, size and inode, new mtime: parsed again."""
    path = tmp_path / "m.gguf"
    path.write_bytes(model.read_bytes())
    st = path.stat()
    check_gguf(path)
    data = bytearray(path.read_bytes())
    data[:4] = b"GGML"
    with path.open("r+b") as f:
        f.write(data)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert path.stat().st_ino == st.st_ino
    assert "does not start with the GGUF magic" in refused(path)


def test_cache_sees_a_file_replaced(model: Path, tmp_path: Path) -> None:
    """Same path, size and mtime, new inode (a rename over it): parsed again."""
    path = tmp_path / "m.gguf"
    path.write_bytes(model.read_bytes())
    st = path.stat()
    check_gguf(path)
    other = tmp_path / "other.gguf"
    data = bytearray(model.read_bytes())
    data[:4] = b"GGML"
    other.write_bytes(bytes(data))
    os.utime(other, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.replace(other, path)
    assert (path.stat().st_mtime_ns, path.stat().st_size) == (st.st_mtime_ns, st.st_size)
    assert "does not start with the GGUF magic" in refused(path)


def test_check_is_logged(model: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger=_gguf_check.__name__)
    check_gguf(model)
    assert [r.getMessage() for r in caplog.records] == [f"{model}: GGUF v3 llama F32, 21 tensors"]


def test_kind_messages(model: Path, tmp_path: Path) -> None:
    adapter = write_adapter(tmp_path / "a.lora.gguf")
    assert refused(adapter) == (
        f"{adapter} is a LoRA adapter, not a model: give it as the stage's `lora` "
        "(with its base model as `model`)"
    )
    vocab = write_model(tmp_path / "vocab.gguf", general_type="vocab")
    assert refused(vocab) == f"{vocab} is a GGUF 'vocab' file, not a model"
    use = "give a model as the stage's `model`, and an adapter made with `edgestack export-lora` "
    assert refused(vocab, "adapter") == (
        f"{vocab} is a vocab GGUF, not a LoRA adapter (general.type is 'vocab'); {use}as its `lora`"
    )
    untyped = write_model(tmp_path / "untyped.gguf", general_type=None)  # a model, as llama.cpp
    assert refused(untyped, "adapter") == (
        f"{untyped} is a model GGUF, not a LoRA adapter (general.type is 'model'); {use}as its "
        "`lora`"
    )
    numbered = write_model(tmp_path / "numbered.gguf", kv={K.General.TYPE: u32(1)})
    assert refused(numbered, "adapter") == (
        f"{numbered} is a model GGUF, not a LoRA adapter (general.type is 1); {use}as its `lora`"
    )
    with pytest.raises(GGUFFileError) as info:
        check_adapter_fits(model, model)
    assert str(info.value) == (
        f"{model} is a model GGUF, not a LoRA adapter (general.type is 'model'); {use}as its `lora`"
    )


def test_adapter_of_unknown_architecture(tmp_path: Path) -> None:
    path = write_adapter(tmp_path / "odd.lora.gguf", arch="not-an-arch")
    assert refused(path, "adapter") == (
        f"{path} is not a valid GGUF file: its architecture 'not-an-arch' is not one llama.cpp "
        f"knows; {EXPORT_HINT}"
    )


# --- adapters -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "problem"),
    [
        (
            {"drop": [tname(M.ATTN_Q, 0) + ".lora_a"]},
            f"adapter tensor '{tname(M.ATTN_Q, 0)}.lora_a' is missing (its pair is there)",
        ),
        (
            {"drop": [tname(M.ATTN_Q, 0) + ".lora_b"]},
            f"adapter tensor '{tname(M.ATTN_Q, 0)}.lora_b' is missing (its pair is there)",
        ),
        ({"targets": ()}, "the adapter has no LoRA tensors"),
    ],
    ids=["no-lora-a", "no-lora-b", "no-pairs"],
)
def test_malformed_adapter(tmp_path: Path, options: dict[str, Any], problem: str) -> None:
    path = write_adapter(tmp_path / "bad.lora.gguf", **options)
    assert refused(path, "adapter") == f"{path} is not a valid GGUF file: {problem}; {EXPORT_HINT}"


def test_summary_of_a_model_given_as_adapter(model: Path) -> None:
    s = check_gguf(model)
    with pytest.raises(GGUFFileError) as info:
        check_adapter_fits(s, s)
    assert str(info.value) == (
        f"{s.path} is not a valid GGUF file: adapter tensor '{s.tensors[0].name}' is neither a "
        f".lora_a nor a .lora_b; {EXPORT_HINT}"
    )


ATTN_Q0 = tname(M.ATTN_Q, 0)
EMBD = tname(M.TOKEN_EMBD)
FITS: dict[str, tuple[dict[str, Any], str]] = {
    "base-lacks-tensor": (
        {
            "extra": {
                "blk.7.attn_q.weight.lora_a": (RANK, N_EMBD),
                "blk.7.attn_q.weight.lora_b": (N_EMBD, RANK),
            }
        },
        "changes tensor 'blk.7.attn_q.weight', which base model {base} does not have; is it the "
        "base the adapter was trained on?",
    ),
    "wider": (
        {"n_embd": 48, "targets": [ATTN_Q0]},
        "does not fit base model {base}: tensor '" + ATTN_Q0 + "' is [32, 32] in the base, but "
        "the adapter has lora_a [48, 4] and lora_b [4, 48] (expected lora_a [32, r] and lora_b "
        "[r, 32]); it was made for another model",
    ),
    "ffn-wider": (
        {"n_ff": 96, "targets": [tname(M.FFN_UP, 1)]},
        "does not fit base model {base}: tensor '" + tname(M.FFN_UP, 1) + "' is [32, 64] in the "
        "base, but the adapter has lora_a [32, 4] and lora_b [4, 96] (expected lora_a [32, r] and "
        "lora_b [r, 64]); it was made for another model",
    ),
    "token-embd-wider": (
        {"n_embd": 48, "targets": [EMBD]},
        "does not fit base model {base}: tensor '" + EMBD + "' is [32, 257] in the base, but the "
        "adapter has lora_a [4, 257] and lora_b [4, 48] (expected lora_a [r, 257] and lora_b "
        "[r, 32]); it was made for another model",
    ),
    "ranks-differ": (
        {"rank_b": RANK + 1, "targets": [ATTN_Q0]},
        ": tensor '" + ATTN_Q0 + "' has lora_a [32, 4] and lora_b [5, 32], whose ranks differ; "
        "re-export the adapter",
    ),
}


@pytest.mark.parametrize("case", list(FITS))
def test_adapter_does_not_fit(model: Path, tmp_path: Path, case: str) -> None:
    options, problem = FITS[case]
    path = write_adapter(tmp_path / f"{case}.lora.gguf", **options)
    with pytest.raises(AdapterError) as info:
        check_adapter_fits(path, model)
    sep = "" if problem.startswith(":") else " "
    assert str(info.value) == f"adapter {path.resolve()}{sep}" + problem.format(
        base=model.resolve()
    )
