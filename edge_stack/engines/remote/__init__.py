"""The remote engine: stages that run on a server (llama-server, llama-cpp-python's server, vLLM,
Ollama, another edgestack, any OpenAI-compatible API) behind the same
:class:`~edge_stack.engines._backend.StageRunner` interface as local stages.

What each server can carry is in ``_dialects`` (pure), the HTTP side (timeouts, retries,
streaming, cancellation) in ``_http``, the runner in ``_runner``. docs/remote-engines.md has the
stage keys and every limit. Importing this package imports neither httpx nor llama.cpp.
"""

from ._dialects import DIALECTS, Dialect, unsupported
from ._runner import PromptTokens, RemoteRunner

__all__ = ["DIALECTS", "Dialect", "PromptTokens", "RemoteRunner", "unsupported"]
