"""The environment, read once.

Every environment variable edgestack looks at is read here and nowhere else, so the set of knobs
is visible in one place and tests can override them by clearing the cache.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from ._limits import parse_threads


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
    #: EDGESTACK_THREADS as given ("" when unset); read it as a number through :attr:`threads`
    threads_text: str
    #: EDGESTACK_NO_PROMPT_CACHE=1: do not keep stages' fixed prompt starts on disk
    no_prompt_cache: bool = False
    #: EDGESTACK_KERNELS: auto (probe once, fall back where llama.cpp's fast kernels crash),
    #: full (llama.cpp's default, no probe) or safe (extra CPU buffer types always off)
    kernels: str = "auto"
    #: EDGESTACK_PROBE_FAULT (tests only): types the kernel probe pretends crash, comma-separated
    probe_fault: str = ""
    #: EDGESTACK_API_KEY: the key `edgestack serve` requires when --api-key is not given
    api_key: str | None = None
    #: EDGESTACK_ALLOW_OUTSIDE_PATHS=1: let a stack.toml name files outside its own folder
    allow_outside_paths: bool = False

    @property
    def threads(self) -> int | None:
        """EDGESTACK_THREADS: default thread count for llama.cpp (None when unset).

        Checked on use, not on reading, so that a bad value is a one-line error where threads
        are needed (BadArgument: 1 to MAX_THREADS), never a crash at start-up.
        """
        if not self.threads_text.strip():
            return None
        return parse_threads(self.threads_text, "EDGESTACK_THREADS")


@cache
def settings() -> Settings:
    """The settings from the environment, read on first use."""
    stack = os.environ.get("EDGESTACK_STACK")
    return Settings(
        stack=Path(stack) if stack else None,
        debug=_flag(os.environ.get("EDGESTACK_DEBUG")),
        no_log=_flag(os.environ.get("EDGESTACK_NO_LOG")),
        verbose=_flag(os.environ.get("EDGESTACK_VERBOSE")),
        data_dir=_data_dir(),
        threads_text=os.environ.get("EDGESTACK_THREADS", ""),
        no_prompt_cache=_flag(os.environ.get("EDGESTACK_NO_PROMPT_CACHE")),
        kernels=os.environ.get("EDGESTACK_KERNELS", "").strip().lower() or "auto",
        probe_fault=os.environ.get("EDGESTACK_PROBE_FAULT", "").strip().lower(),
        api_key=os.environ.get("EDGESTACK_API_KEY") or None,
        allow_outside_paths=_flag(os.environ.get("EDGESTACK_ALLOW_OUTSIDE_PATHS")),
    )


def named_secret(name: str) -> str | None:
    """The value of the environment variable ``name`` that a stack.toml names for a secret
    (a remote stage's ``api_key_env``); None when unset or empty. Read on each call, never
    cached or logged, so a key can be rotated without a restart."""
    value = os.environ.get(name, "").strip()
    return value or None


#: what edgestack sets for libgomp unless the user set a wait policy: spin this many
#: iterations (libgomp's own default is 300,000) before a waiting thread sleeps
OPENMP_DEFAULTS = {"GOMP_SPINCOUNT": "10000"}


def openmp_policy() -> dict[str, str]:
    """The OpenMP variables edgestack sets for llama.cpp's threads (empty if the user set one).

    llama-cpp-python's ggml runs its threads with OpenMP, whose threads wait for each other at
    every barrier (hundreds per token). Sleeping at once (OMP_WAIT_POLICY=PASSIVE) halved
    generation speed on an idle machine; spinning without end (ACTIVE) was slowest when other
    work wants the cores. A bounded spin matched libgomp's default on an idle machine and
    PASSIVE on a loaded one (benchmarks/thread_policy.py measures all of them). The user's own
    OMP_WAIT_POLICY or GOMP_SPINCOUNT always wins.
    """
    if "OMP_WAIT_POLICY" in os.environ or "GOMP_SPINCOUNT" in os.environ:
        return {}
    return dict(OPENMP_DEFAULTS)


def quiet_openmp() -> None:
    """Apply :func:`openmp_policy`; must run before libgomp is loaded (before llama_cpp)."""
    os.environ.update(openmp_policy())
