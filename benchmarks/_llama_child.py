"""A bare llama.cpp speed child, run as ``python -c CHILD MODEL THREADS N_GEN EXTRA ROUNDS``.

Plain llama-cpp-python low-level calls with llama.cpp's defaults (no edgestack code), so the
environment it inherits (OpenMP policy) and the ``EXTRA`` switch (llama.cpp's extra CPU buffer
types, 1 or 0) are the only things that differ between runs. Prints one JSON list of rounds:
prompt tokens/s (128-token prompt) and generation tokens/s.
"""

CHILD = r"""
import ctypes, json, os, sys, time
import llama_cpp.llama_cpp as lib
path, threads, n_gen, extra, repeat = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "1", int(sys.argv[5])
cb = lib.llama_log_callback(lambda *a: None)
lib.llama_log_set(cb, ctypes.c_void_p(0))
lib.llama_backend_init()
mp = lib.llama_model_default_params()
mp.use_extra_bufts = extra
model = lib.llama_model_load_from_file(path.encode(), mp)
cp = lib.llama_context_default_params()
cp.n_ctx, cp.n_batch, cp.n_ubatch = 512, 512, 512
cp.n_threads = cp.n_threads_batch = threads
cp.no_perf = True
ctx = lib.llama_init_from_model(model, cp)
n_vocab = lib.llama_vocab_n_tokens(lib.llama_model_get_vocab(model))
prompt = [(37 * i + 11) % n_vocab for i in range(128)]
results = []
for _ in range(repeat):
    lib.llama_memory_clear(lib.llama_get_memory(ctx), True)
    arr = (lib.llama_token * len(prompt))(*prompt)
    t0 = time.perf_counter()
    assert lib.llama_decode(ctx, lib.llama_batch_get_one(arr, len(prompt))) == 0
    t1 = time.perf_counter()
    tok = lib.llama_token(prompt[-1])
    for _ in range(n_gen):
        # Fixed next tokens: the speed of a step does not depend on which token it is.
        tok = lib.llama_token((tok.value * 7 + 3) % n_vocab)
        assert lib.llama_decode(ctx, lib.llama_batch_get_one(ctypes.pointer(tok), 1)) == 0
    t2 = time.perf_counter()
    results.append({"prompt_tps": len(prompt) / (t1 - t0), "gen_tps": n_gen / (t2 - t1)})
print(json.dumps(results))
"""
