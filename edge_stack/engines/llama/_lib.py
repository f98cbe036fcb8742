"""Loading llama.cpp once: backend init, its log routed or dropped, files checked before it loads.

Shared by :mod:`edge_stack.engines.llama._model`, :mod:`edge_stack.engines.llama._context` and the quantizer.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Self

from ...errors import ModelFileNotFound
from ...util._env import quiet_openmp, settings

if TYPE_CHECKING:
    from ...formats.gguf._summary import GGUFSummary

log = logging.getLogger(__name__)
_llama_log = logging.getLogger("edge_stack.llama_cpp")

_init_lock = threading.Lock()
_lib_module: Any = None
_verbose = False
_log_callback: Any = None  # kept alive: llama.cpp holds the raw function pointer
# ggml_log_level: NONE 0, DEBUG 1, INFO 2, WARN 3, ERROR 4, CONT 5 (continues the previous line)
_LOG_LEVELS = {
    0: logging.CRITICAL,
    1: logging.DEBUG,
    2: logging.INFO,
    3: logging.WARNING,
    4: logging.ERROR,
}
_WARN, _ERROR, _CONT = 3, 4, 5
_last_level = 0
# Warnings and errors llama.cpp logs while a `llama_errors()` block runs, for our own messages.
_captures: list[list[tuple[int, str]]] = []


# A Ctrl-C that landed inside the log callback, for raise_pending_interrupt() to raise later.
_pending_interrupt = False


def _on_llama_log(level: int, text: bytes | None, _user: Any) -> None:
    # Called from C through ctypes, which prints an exception escaping here as "Exception
    # ignored" and drops it: so nothing escapes, and a Ctrl-C (Python raises KeyboardInterrupt
    # wherever the main thread runs Python next, this callback included) is kept for later.
    # Not airtight: Python can raise it on the function's first line, before this `try`; hence
    # the quantizer runs llama.cpp in a child process that it kills on Ctrl-C.
    global _last_level, _pending_interrupt
    try:
        if level == _CONT:
            level = _last_level
        _last_level = level
        if not text or not (_verbose or _captures):
            return
        message = text.decode("utf-8", errors="replace").strip()
        if not message:
            return
        if level in (_WARN, _ERROR):
            for capture in _captures:
                capture.append((level, message))
        if _verbose:
            _llama_log.log(_LOG_LEVELS.get(level, logging.DEBUG), "%s", message)
    except KeyboardInterrupt:
        _pending_interrupt = True
    except BaseException:
        pass  # a lost log line is harmless; an exception escaping into C is not


def raise_pending_interrupt() -> None:
    """Raise the KeyboardInterrupt the log callback caught, if any (call after a llama.cpp call).

    A Ctrl-C often arrives while the main thread is inside llama.cpp; Python then raises it in
    the next Python code it runs, which may be the log callback, where it must not escape.
    """
    global _pending_interrupt
    if _pending_interrupt:
        _pending_interrupt = False
        raise KeyboardInterrupt


@contextlib.contextmanager
def llama_errors() -> Iterator[list[tuple[int, str]]]:
    """Collect the warnings and errors llama.cpp logs inside the block (even when its log is off)."""
    lines: list[tuple[int, str]] = []
    _captures.append(lines)
    try:
        yield lines
    finally:
        _captures.remove(lines)
    # A Ctrl-C that arrived during the C call and landed in the log callback surfaces here.
    raise_pending_interrupt()


def reason(
    lines: list[tuple[int, str]], default: str = "run with --verbose for llama.cpp's log"
) -> str:
    """What llama.cpp said last (its last error, else its last warning), or ``default``."""
    for wanted in (_ERROR, _WARN):
        said = [message for level, message in lines if level == wanted]
        if said:
            return said[-1]
    return default


def lib() -> Any:
    """``llama_cpp.llama_cpp``, with the backend initialised and the log routed, once."""
    global _lib_module, _log_callback
    if _lib_module is not None:
        return _lib_module
    with _init_lock:
        if _lib_module is None:
            quiet_openmp()
            import llama_cpp.llama_cpp as mod

            _log_callback = mod.llama_log_callback(_on_llama_log)
            mod.llama_log_set(_log_callback, ctypes.c_void_p(0))
            mod.llama_backend_init()
            _lib_module = mod
            set_llama_logging(settings().verbose or _verbose)
    return _lib_module


def set_llama_logging(verbose: bool) -> None:
    """Show llama.cpp's own log (through the ``edge_stack.llama_cpp`` logger) or drop it."""
    global _verbose
    _verbose = verbose
    if verbose and _llama_log.getEffectiveLevel() > logging.INFO:
        _llama_log.setLevel(logging.INFO)


def check_file(path: Path, kind: Literal["model", "adapter"]) -> GGUFSummary:
    """Validate a GGUF before llama.cpp sees it (llama.cpp may abort the process on a bad file)."""
    if not path.is_file():
        what = "LoRA adapter" if kind == "adapter" else "model"
        raise ModelFileNotFound(f"{what} file {path} does not exist; check the path")
    from ...formats.gguf._check import check_gguf

    return check_gguf(path, kind=kind)


def default_threads() -> int:
    """Threads for llama.cpp: EDGESTACK_THREADS, else every CPU this process may use."""
    from ...util._limits import cpu_threads

    return settings().threads or cpu_threads()


_stderr_lock = threading.Lock()


@contextlib.contextmanager
def native_stderr() -> Iterator[list[str]]:
    """Capture what C code writes to file descriptor 2 inside the block (into the yielded list).

    A few llama.cpp parsers (GBNF grammars) print their errors with ``fprintf(stderr)`` instead of
    the log callback; captured, the message can go into our one-line error instead.
    """
    captured: list[str] = []
    fd = 2  # C's stderr, whatever Python's sys.stderr is at the moment
    # Serialized: two overlapping redirections could leave fd 2 pointing at a temporary file.
    with _stderr_lock, tempfile.TemporaryFile() as tmp:
        if sys.stderr is not None:
            sys.stderr.flush()
        saved = os.dup(fd)
        os.dup2(tmp.fileno(), fd)
        try:
            yield captured
        finally:
            os.dup2(saved, fd)
            os.close(saved)
            tmp.seek(0)
            captured.append(tmp.read().decode("utf-8", errors="replace"))


class NativeHandle:
    """``with`` support and a finalizer for objects that own llama.cpp memory.

    Subclasses implement an idempotent :meth:`close`; leaving a ``with`` block or being
    garbage-collected calls it.
    """

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:  # noqa: SIM105  (no contextlib: module globals may be gone at shutdown)
            self.close()
        except Exception:  # pragma: no cover
            pass
