"""edgestack: an offline runtime for stacks of small quantized language models on CPUs.

The public API is what ``__all__`` lists; modules whose names start with ``_`` are private.
"""

from __future__ import annotations

from ._version import __version__
from .errors import (
    AdapterError,
    BadArgument,
    Cancelled,
    CheckpointError,
    ChecksumMismatch,
    ContextOverflowError,
    EdgeStackError,
    EngineError,
    GGUFFileError,
    HubError,
    ManifestError,
    ModelFileNotFound,
    ModelNotFound,
    OutputExistsError,
    QuantizeError,
    ServerBusy,
    TokenizerError,
    UnsupportedArchitecture,
    VerificationFailed,
)

# typing.TYPE_CHECKING without importing typing (a few ms before the command's signal handlers)
TYPE_CHECKING = False
if TYPE_CHECKING:
    from .manifest import StackSpec, StageSpec, load_manifest
    from .pipeline._events import (
        Answer,
        Done,
        Event,
        StageFinished,
        StageStarted,
        StageTrace,
        Token,
    )
    from .pipeline._stack import Stack

# Imported on first use (PEP 562), so that `import edge_stack` is light: the `edgestack` command
# installs its signal handlers (edge_stack._entry) before anything heavier is imported.
_LAZY = {
    "StackSpec": "manifest",
    "StageSpec": "manifest",
    "load_manifest": "manifest",
    "Answer": "pipeline._events",
    "Done": "pipeline._events",
    "Event": "pipeline._events",
    "StageFinished": "pipeline._events",
    "StageStarted": "pipeline._events",
    "StageTrace": "pipeline._events",
    "Token": "pipeline._events",
    "Stack": "pipeline._stack",
}


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'edge_stack' has no attribute {name!r}")
    from importlib import import_module

    value = getattr(import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "AdapterError",
    "Answer",
    "BadArgument",
    "Cancelled",
    "CheckpointError",
    "ChecksumMismatch",
    "ContextOverflowError",
    "Done",
    "EdgeStackError",
    "EngineError",
    "Event",
    "GGUFFileError",
    "HubError",
    "ManifestError",
    "ModelFileNotFound",
    "ModelNotFound",
    "OutputExistsError",
    "QuantizeError",
    "ServerBusy",
    "Stack",
    "StackSpec",
    "StageFinished",
    "StageSpec",
    "StageStarted",
    "StageTrace",
    "Token",
    "TokenizerError",
    "UnsupportedArchitecture",
    "VerificationFailed",
    "__version__",
    "load_manifest",
]
