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
from .manifest import StackSpec, StageSpec, load_manifest
from .pipeline._events import Answer, Done, Event, StageFinished, StageStarted, StageTrace, Token
from .pipeline._stack import Stack

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
