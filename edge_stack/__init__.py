"""edgestack: an offline runtime for stacks of small quantized language models on CPUs.

The public API is what ``__all__`` lists; modules whose names start with ``_`` are private.
"""

from __future__ import annotations

from .errors import (
    AdapterError,
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
    OutputExistsError,
    QuantizeError,
    TokenizerError,
    UnsupportedArchitecture,
    VerificationFailed,
)

__version__ = "0.1.0"

__all__ = [
    "AdapterError",
    "Cancelled",
    "CheckpointError",
    "ChecksumMismatch",
    "ContextOverflowError",
    "EdgeStackError",
    "EngineError",
    "GGUFFileError",
    "HubError",
    "ManifestError",
    "ModelFileNotFound",
    "OutputExistsError",
    "QuantizeError",
    "TokenizerError",
    "UnsupportedArchitecture",
    "VerificationFailed",
    "__version__",
]
