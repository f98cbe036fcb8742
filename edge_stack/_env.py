"""The environment, read once.

Every environment variable edgestack looks at is read here and nowhere else, so the set of knobs
is visible in one place and tests can override them by clearing the cache.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cache
from pathlib import Path


def _flag(value: str | None) -> bool:
    return (value or "").strip().lower() in {"1", "true", "yes", "on"}


def _data_dir() -> Path:
    # XDG on Linux, the usual places elsewhere; EDGESTACK_HOME overrides them all.
    if home := os.environ.get("EDGESTACK_HOME"):
        return Path(home)
    if xdg := os.environ.get("XDG_DATA_HOME"):
        return Path(xdg) / "edgestack"
    if os.name == "nt" and (appdata := os.environ.get("LOCALAPPDATA")):
        return Path(appdata) / "edgestack"
    return Path.home() / ".local" / "share" / "edgestack"


@dataclass(frozen=True)
class Settings:
    """What the environment says; see the README for each variable."""

    #: EDGESTACK_STACK: stack used when --stack is not given
    stack: Path | None
    #: EDGESTACK_DEBUG=1: show tracebacks instead of one-line errors
    debug: bool
    #: EDGESTACK_NO_LOG=1: do not append asks to the local SQLite log
    no_log: bool
    #: EDGESTACK_VERBOSE=1: let llama.cpp print its own log
    verbose: bool
    #: EDGESTACK_HOME (or XDG_DATA_HOME/edgestack): the run log and other user data
    data_dir: Path
    #: EDGESTACK_THREADS: default thread count for llama.cpp
    threads: int | None
    #: EDGESTACK_NO_PROMPT_CACHE=1: do not keep stages' fixed prompt starts on disk
    no_prompt_cache: bool = False


@cache
def settings() -> Settings:
    """The settings from the environment, read on first use."""
    stack = os.environ.get("EDGESTACK_STACK")
    threads = os.environ.get("EDGESTACK_THREADS", "").strip()
    return Settings(
        stack=Path(stack) if stack else None,
        debug=_flag(os.environ.get("EDGESTACK_DEBUG")),
        no_log=_flag(os.environ.get("EDGESTACK_NO_LOG")),
        verbose=_flag(os.environ.get("EDGESTACK_VERBOSE")),
        data_dir=_data_dir(),
        threads=int(threads) if threads.isdigit() and int(threads) > 0 else None,
        no_prompt_cache=_flag(os.environ.get("EDGESTACK_NO_PROMPT_CACHE")),
    )


def quiet_openmp() -> None:
    """Make llama.cpp's OpenMP threads sleep, not spin, while they wait for each other.

    llama-cpp-python's ggml is built with OpenMP, whose threads busy-wait at every barrier
    (hundreds per token). When other processes want the same cores (a shared machine, a desktop
    app) the spinning threads eat the time slices the working ones need: measured with the two
    cores busy, a 32-token prompt took 1.37 s spinning and 0.06 s sleeping, generation 25 against
    108 tokens/s. Must run before libgomp is loaded; the user's own OMP_WAIT_POLICY (or
    GOMP_SPINCOUNT) wins, and OMP_WAIT_POLICY=active restores spinning.
    """
    if "OMP_WAIT_POLICY" not in os.environ and "GOMP_SPINCOUNT" not in os.environ:
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
