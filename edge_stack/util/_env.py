"""The environment, read once.

Every environment variable edgestack looks at is read here and nowhere else, so the set of knobs
is visible in one place and tests can override them by clearing the cache.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from ._limits import cpu_threads, parse_threads


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


#: what edgestack sets for libgomp on an idle machine unless the user set a wait policy: spin
#: this many iterations (libgomp's own default is 300,000) before a waiting thread sleeps
OPENMP_DEFAULTS = {"GOMP_SPINCOUNT": "10000"}
#: what it sets when other work is running on the cores: threads sleep at once
OPENMP_BUSY = {"OMP_WAIT_POLICY": "PASSIVE"}
#: other runnable tasks per usable core from which the machine counts as busy
BUSY_TASKS_PER_CORE = 0.5
#: how many times /proc/loadavg's count of runnable tasks is read (1 ms apart; median taken)
_RUNNABLE_SAMPLES = 5


def other_runnable_tasks() -> int | None:
    """Tasks other than this one that want a CPU now (Linux: /proc/loadavg), or None.

    The 1-minute load average reacts too slowly (a minute after other work starts it shows a
    third of it), so the kernel's instantaneous count of runnable tasks is read a few times.
    """
    import statistics
    import time

    counts = []
    for i in range(_RUNNABLE_SAMPLES):
        try:
            field = Path("/proc/loadavg").read_text().split()[3]
            counts.append(int(field.split("/")[0]))
        except (OSError, IndexError, ValueError):
            return None
        if i + 1 < _RUNNABLE_SAMPLES:
            time.sleep(0.001)
    return max(0, int(statistics.median(counts)) - 1)  # the count includes this reader


def openmp_policy(others: int | None = None, cores: int | None = None) -> dict[str, str]:
    """The OpenMP variables edgestack sets for llama.cpp's threads (empty if the user set one).

    llama-cpp-python's ggml runs its threads with OpenMP, whose threads wait for each other at
    every barrier (hundreds per token). Sleeping at once (OMP_WAIT_POLICY=PASSIVE) halved
    generation speed on an idle machine (0.48x libgomp's default); a bounded spin matched the
    default there (1.00x). But beside other work, spinning threads burn the time slices the
    thread they wait for needs: beside a second llama.cpp process PASSIVE made 3x the tokens of
    the bounded spin. So the choice is made when llama.cpp loads, from how many other tasks
    want a CPU at that moment (``others``, ``cores``: for tests): at least
    :data:`BUSY_TASKS_PER_CORE` per usable core means PASSIVE. It lasts for the process
    (libgomp reads it once). benchmarks/thread_policy.py measures every policy idle, beside CPU
    hogs and beside a second llama.cpp process. The user's own OMP_WAIT_POLICY or
    GOMP_SPINCOUNT always wins.
    """
    if "OMP_WAIT_POLICY" in os.environ or "GOMP_SPINCOUNT" in os.environ:
        return {}
    others = other_runnable_tasks() if others is None else others
    cores = cpu_threads() if cores is None else cores
    if others is not None and others >= BUSY_TASKS_PER_CORE * cores:
        return dict(OPENMP_BUSY)
    return dict(OPENMP_DEFAULTS)


def quiet_openmp() -> None:
    """Apply :func:`openmp_policy`; must run before libgomp is loaded (before llama_cpp)."""
    os.environ.update(openmp_policy())
