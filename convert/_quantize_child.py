"""The process that runs llama.cpp's quantizer for :func:`edge_stack.convert.quantize.quantize`.

``llama_model_quantize`` runs in C for seconds and has no progress or abort callback, so nothing
inside its process can stop it early; the parent runs it here and kills this process on Ctrl-C.
Internal; the command line is built by the parent::

    python -P -m edge_stack.convert._quantize_child PARENT_PID SOURCE OUTPUT FTYPE THREADS
        ALLOW_REQUANTIZE VERBOSE

It prints one JSON line, ``{"rc": <llama_model_quantize's result>, "log": [[level, message]...]}``
(llama.cpp's warnings and errors), and exits 0; any other exit means it crashed or was killed.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import signal
import sys

_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>
_N_ARGS = 7


def _die_with_parent(parent: int) -> None:
    """Be killed when the parent dies (even by SIGKILL): nobody would wait for our output."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    # The parent may have died before prctl ran; we were then handed to another process.
    if os.getppid() != parent:
        os._exit(1)


def main(argv: list[str]) -> int:
    # Ctrl-C is the parent's to handle (it kills us); here it could only interrupt the log
    # callback that llama.cpp calls into Python.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if len(argv) != _N_ARGS:
        print(f"expected {_N_ARGS} arguments, got {len(argv)}", file=sys.stderr)
        return 2
    parent, source, output, ftype, threads, requantize, verbose = argv
    _die_with_parent(int(parent))

    from edge_stack.engines.llama._lib import lib, llama_errors, set_llama_logging

    if verbose == "1":
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    llama = lib()
    set_llama_logging(verbose == "1")
    params = llama.llama_model_quantize_default_params()
    params.nthread = int(threads)
    params.ftype = int(ftype)
    params.allow_requantize = requantize == "1"
    with llama_errors() as lines:
        rc = llama.llama_model_quantize(
            os.fsencode(source), os.fsencode(output), ctypes.byref(params)
        )
    print(json.dumps({"rc": int(rc), "log": lines}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
