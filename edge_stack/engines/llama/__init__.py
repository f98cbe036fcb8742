"""The llama.cpp engine: our layer over llama-cpp-python's C API, kernels, prompt cache.

What the rest of edgestack uses of it is exported here; the engine that loads a whole stack is
:mod:`edge_stack.engines.llama._engine`. See docs/architecture.md for what may import what.
Importing this package does not load llama.cpp (that happens on first use).
"""

from ._batch import BatchContext
from ._context import GenStats, GenToken, LlamaContext
from ._model import LlamaModel, set_llama_logging

__all__ = [
    "BatchContext",
    "GenStats",
    "GenToken",
    "LlamaContext",
    "LlamaModel",
    "set_llama_logging",
]
