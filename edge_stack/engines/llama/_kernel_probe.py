"""The child side of the kernel probe: run a tiny model of each quantization type, report each.

Run as ``python -m edge_stack.engines.llama._kernel_probe FOLDER --types q8_0,q4_0 [--safe]``. For each type it
quantizes a tiny random float model written into FOLDER, loads it with llama.cpp's extra CPU
buffer types on (or off with ``--safe``), evaluates a prompt batch and a few single tokens, and
prints ``ok TYPE`` once that worked. A kernel that faults kills this process with a signal; the
parent (:mod:`edge_stack.engines.llama._kernels`) sees which type was running from the last line printed.

Deliberately independent of the rest of edgestack (only gguf-py, numpy and llama-cpp-python's
low-level API): it must give the same answer whatever state our own layers are in.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import signal
import sys
import time
from pathlib import Path

import numpy as np

#: the tiny model: every width a multiple of 256 (k-quant and IQ4_XS block size) and of the AMX
#: and repack tile sizes, so each extra buffer type accepts every weight matrix
N_EMBD, N_FF, N_HEAD, N_VOCAB, N_CTX = 256, 512, 4, 256, 64
PROMPT_TOKENS, SINGLE_TOKENS = 24, 4


def _byte_tokens() -> list[str]:
    """GPT-2's byte-level alphabet: every byte as one printable character (256 tokens)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return [chars[b] for b in range(256)]


def write_float_model(path: Path) -> None:
    """A one-layer llama-architecture GGUF with random f32 weights and a byte-level vocabulary."""
    import gguf

    rng = np.random.default_rng(0)
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_context_length(N_CTX)
    writer.add_embedding_length(N_EMBD)
    writer.add_block_count(1)
    writer.add_feed_forward_length(N_FF)
    writer.add_head_count(N_HEAD)
    writer.add_head_count_kv(N_HEAD)
    writer.add_rope_dimension_count(N_EMBD // N_HEAD)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(_byte_tokens())
    writer.add_token_types([gguf.TokenType.NORMAL] * N_VOCAB)
    # llama.cpp's BPE loader needs a merges list; one merge of two byte tokens is enough.
    writer.add_token_merges(["a b"])
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)

    def weight(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * 0.05).astype(np.float32)

    names = gguf.TENSOR_NAMES
    t = gguf.MODEL_TENSOR
    writer.add_tensor(names[t.TOKEN_EMBD] + ".weight", weight(N_VOCAB, N_EMBD))
    writer.add_tensor(names[t.OUTPUT_NORM] + ".weight", np.ones(N_EMBD, np.float32))
    writer.add_tensor(names[t.OUTPUT] + ".weight", weight(N_VOCAB, N_EMBD))
    for tensor, shape in (
        (t.ATTN_NORM, None),
        (t.ATTN_Q, (N_EMBD, N_EMBD)),
        (t.ATTN_K, (N_EMBD, N_EMBD)),
        (t.ATTN_V, (N_EMBD, N_EMBD)),
        (t.ATTN_OUT, (N_EMBD, N_EMBD)),
        (t.FFN_NORM, None),
        (t.FFN_GATE, (N_FF, N_EMBD)),
        (t.FFN_UP, (N_FF, N_EMBD)),
        (t.FFN_DOWN, (N_EMBD, N_FF)),
    ):
        data = np.ones(N_EMBD, np.float32) if shape is None else weight(*shape)
        writer.add_tensor(names[tensor].format(bid=0) + ".weight", data)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def _quantize(lib: object, src: Path, dst: Path, qtype: str) -> None:
    import gguf

    # With ``pure`` every matrix takes the file type's main type (Q4_K_M's is Q4_K).
    name = {"q4_k": "Q4_K_M", "q5_k": "Q5_K_M"}.get(qtype, qtype.upper())
    ftype = gguf.LlamaFileType[f"MOSTLY_{name}"]
    params = lib.llama_model_quantize_default_params()  # type: ignore[attr-defined]
    params.ftype = int(ftype)
    params.nthread = 1
    # Every matrix in the chosen type: the probe is about that type's kernels.
    params.pure = True
    failed = lib.llama_model_quantize(  # type: ignore[attr-defined]
        os.fsencode(src), os.fsencode(dst), ctypes.byref(params)
    )
    if failed:
        raise RuntimeError(f"llama.cpp could not quantize the probe model to {qtype}")


def _run(lib: object, path: Path, *, safe: bool) -> None:
    mparams = lib.llama_model_default_params()  # type: ignore[attr-defined]
    mparams.n_gpu_layers = 0
    mparams.use_extra_bufts = not safe
    model = lib.llama_model_load_from_file(os.fsencode(path), mparams)  # type: ignore[attr-defined]
    if not model:
        raise RuntimeError(f"llama.cpp could not load {path.name}")
    cparams = lib.llama_context_default_params()  # type: ignore[attr-defined]
    cparams.n_ctx = N_CTX
    cparams.n_batch = cparams.n_ubatch = PROMPT_TOKENS
    cparams.n_threads = cparams.n_threads_batch = 1
    ctx = lib.llama_init_from_model(model, cparams)  # type: ignore[attr-defined]
    if not ctx:
        raise RuntimeError("llama.cpp could not create a context for the probe model")
    try:
        tokens = [(7 * i + 3) % N_VOCAB for i in range(PROMPT_TOKENS + SINGLE_TOKENS)]
        # A many-row batch and single rows: the two matmul shapes generation uses.
        steps = [tokens[:PROMPT_TOKENS]] + [[tok] for tok in tokens[PROMPT_TOKENS:]]
        for step in steps:
            arr = (lib.llama_token * len(step))(*step)  # type: ignore[attr-defined]
            batch = lib.llama_batch_get_one(arr, len(step))  # type: ignore[attr-defined]
            if lib.llama_decode(ctx, batch) != 0:  # type: ignore[attr-defined]
                raise RuntimeError("llama_decode failed on the probe model")
            logits = lib.llama_get_logits_ith(ctx, -1)  # type: ignore[attr-defined]
            row = np.ctypeslib.as_array(logits, shape=(N_VOCAB,))
            if not np.isfinite(row).all():
                raise RuntimeError("the probe model gave non-finite logits")
    finally:
        lib.llama_free(ctx)  # type: ignore[attr-defined]
        lib.llama_model_free(model)  # type: ignore[attr-defined]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m edge_stack.engines.llama._kernel_probe")
    parser.add_argument("folder", type=Path)
    parser.add_argument("--types", required=True, help="comma-separated quantization types")
    parser.add_argument("--safe", action="store_true", help="extra CPU buffer types off")
    parser.add_argument("--fault", default="", help="(tests) types that pretend to fault")
    args = parser.parse_args(argv)

    import llama_cpp.llama_cpp as lib

    def quiet(_level: int, _text: bytes | None, _user: object) -> None:
        return None

    callback = lib.llama_log_callback(quiet)
    lib.llama_log_set(callback, ctypes.c_void_p(0))
    lib.llama_backend_init()

    folder: Path = args.folder
    source = folder / "probe.f32.gguf"
    if not source.is_file():
        write_float_model(source)
    faults = {name for name in args.fault.split(",") if name}
    for qtype in [name for name in args.types.split(",") if name]:
        print(f"start {qtype}", flush=True)
        target = source if qtype == "f32" else folder / f"probe.{qtype}.gguf"
        if not target.is_file():
            _quantize(lib, source, target, qtype)
        if qtype in faults:
            os.kill(os.getpid(), signal.SIGSEGV)
        if f"{qtype}:spin" in faults:  # (tests) a kernel that never returns, burning CPU
            while True:
                pass
        if f"{qtype}:slow" in faults:  # (tests) a starved machine: slow, but using no CPU
            time.sleep(3)
        _run(lib, target, safe=args.safe)
        print(f"ok {qtype}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
