"""Every error edgestack raises on purpose.

All derive from :class:`EdgeStackError`, and each also derives from the builtin a caller would
catch anyway (``ManifestError`` is a ``ValueError``, ``ModelFileNotFound`` a ``FileNotFoundError``).
Messages are one line: what was expected, what was found (and where), and what to do next.
The CLI prints them as they are; nothing else is needed to make them readable.
"""

from __future__ import annotations


class EdgeStackError(Exception):
    """Root of every error edgestack raises on purpose."""

    #: process exit code the CLI uses for this error
    exit_code: int = 1


# --- inputs: files, folders, checkpoints -------------------------------------------------------


class BadArgument(EdgeStackError, ValueError):
    """An argument has a value we cannot use (unknown --outtype, negative count, ...)."""


class ModelFileNotFound(EdgeStackError, FileNotFoundError):
    """A model, adapter, checkpoint folder or stack file that should exist does not."""


class OutputExistsError(EdgeStackError, FileExistsError):
    """An output file exists and ``--force`` was not given."""


class CheckpointError(EdgeStackError, ValueError):
    """A Hugging Face checkpoint folder is unreadable or inconsistent (config, safetensors)."""


class UnsupportedArchitecture(CheckpointError):
    """The checkpoint's architecture is not one the converter knows."""


class TokenizerError(EdgeStackError, ValueError):
    """A tokenizer.json we cannot convert exactly (unknown pre-tokenizer structure, bad vocab)."""


class AdapterError(EdgeStackError, ValueError):
    """A PEFT LoRA adapter is unsupported or does not fit its base model."""


class GGUFFileError(EdgeStackError, ValueError):
    """A file is not a GGUF file llama.cpp can load safely (bad magic, truncated, inconsistent)."""


class HubError(EdgeStackError, OSError):
    """A Hugging Face Hub id could not be resolved (not cached while offline, unknown repo, ...)."""


# --- stacks ------------------------------------------------------------------------------------


class ManifestError(EdgeStackError, ValueError):
    """A stack.toml (or build recipe) is invalid: syntax, unknown keys, bad values, bad references."""


class ChecksumMismatch(EdgeStackError, ValueError):
    """A file's sha256 differs from the pin in its stack.toml."""


class GrammarError(EdgeStackError, ValueError):
    """A GBNF grammar llama.cpp would refuse or could not run safely (syntax, rules, limits)."""


class ContextOverflowError(EdgeStackError, ValueError):
    """A stage's prompt plus its max_tokens does not fit that stage's context."""


# --- running llama.cpp -------------------------------------------------------------------------


class EngineError(EdgeStackError, RuntimeError):
    """llama.cpp refused or failed an operation (load, decode, quantize)."""


class QuantizeError(EngineError):
    """llama.cpp could not quantize a file."""


class RemoteEngineError(EngineError, ConnectionError):
    """A stage's server (llama-server, vLLM, Ollama, edgestack serve, ...) could not be reached,
    failed, or answered something that is not a valid answer; the message names the stage and
    the URL."""


class VerificationFailed(EdgeStackError, AssertionError):
    """A converted model disagrees with its reference beyond the allowed thresholds."""


class Cancelled(EdgeStackError):
    """A generation was cancelled through its cancel handle (or Ctrl-C)."""

    exit_code = 130


# --- local data --------------------------------------------------------------------------------


class RunLogError(EdgeStackError, OSError):
    """The local run log cannot be read: damaged (not SQLite, malformed) or locked too long."""


class StoreError(EdgeStackError, OSError):
    """The stack store cannot do what was asked: a damaged or stale entry, a stack that cannot
    be removed (bundled), a Hub repository that is not a stack, unpinned files."""


# --- serving -----------------------------------------------------------------------------------


class ModelNotFound(EdgeStackError, LookupError):
    """A request named a model (stack) id that the server does not serve."""


class ServerBusy(EdgeStackError, RuntimeError):
    """The server's request queue is full; the client should retry later."""
