"""The bounds on what a caller may ask for, in one place.

Each limit keeps one run's time and memory bounded whatever the input, and each is enforced with
a one-line error where the value enters (command line, environment, stack.toml, Python API):

- threads: 1 to :data:`MAX_THREADS` (llama.cpp's own maximum); more than the cores this process
  may use is allowed but logged as a warning (the threads then wait for each other);
- a question: at most :data:`MAX_QUESTION_BYTES` of UTF-8, checked before tokenizing;
- ``n_ctx`` (and so ``max_tokens``): at most :data:`MAX_N_CTX`;
- ``ask --batch``: at most :data:`MAX_BATCH_BYTES` and :data:`MAX_BATCH_LINES`, read with that
  bound (an endless input such as /dev/zero is refused after reading the bound, not read whole).
"""

from __future__ import annotations

import logging
import os
import re

from ..errors import BadArgument

__all__ = [
    "MAX_BATCH_BYTES",
    "MAX_BATCH_LINES",
    "MAX_N_CTX",
    "MAX_QUESTION_BYTES",
    "MAX_THREADS",
    "check_threads",
    "cpu_threads",
    "parse_threads",
]

logger = logging.getLogger(__name__)

#: llama.cpp's GGML_MAX_N_THREADS (ggml/include/ggml.h in llama-cpp-python 0.3.36): its thread
#: pool and CPU masks are fixed arrays of this size; far below it, threads already cost more in
#: synchronisation than they compute (4096 took 48 s per ask, 100000 crashed in libgomp)
MAX_THREADS = 512
#: the longest question, in bytes of UTF-8 (64 KiB): far more than any stage's context holds
MAX_QUESTION_BYTES = 64 * 1024
#: the largest context a stage may ask for, in tokens (2^20)
MAX_N_CTX = 1 << 20
#: the largest ``ask --batch`` input, in bytes (16 MiB)
MAX_BATCH_BYTES = 16 * 1024 * 1024
#: the most lines an ``ask --batch`` input may have (blank lines count)
MAX_BATCH_LINES = 10_000

_DIGITS = re.compile(r"[0-9]{1,6}")
_warned: set[int] = set()


def cpu_threads() -> int:
    """The CPUs this process may run on (its affinity mask), at most :data:`MAX_THREADS`."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        cores = os.cpu_count() or 1
    return max(1, min(cores, MAX_THREADS))


def check_threads(value: object, source: str) -> int:
    """``value`` as a thread count for llama.cpp (1 to :data:`MAX_THREADS`).

    ``source`` names where the value came from (``--threads``, ``Stack.load(threads=)``, ...).
    Raises BadArgument otherwise; logs a warning (once per value) above the machine's cores.
    """
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_THREADS:
        raise _bad_threads(source, value)
    cores = cpu_threads()
    if value > cores and value not in _warned:
        _warned.add(value)
        logger.warning(
            "%s is %d but this process may use %d cores: the extra threads only wait for each "
            "other; use at most %d",
            source,
            value,
            cores,
            cores,
        )
    return value


def parse_threads(text: str, source: str) -> int:
    """A thread count written as text (an environment variable): digits only, then
    :func:`check_threads`."""
    stripped = text.strip()
    if not _DIGITS.fullmatch(stripped):
        raise _bad_threads(source, stripped if len(stripped) <= 20 else stripped[:20] + "...")
    return check_threads(int(stripped), source)


def _bad_threads(source: str, value: object) -> BadArgument:
    return BadArgument(
        f"{source} must be a whole number from 1 to {MAX_THREADS} (llama.cpp's limit), got "
        f"{value!r}; this machine has {cpu_threads()} cores, use at most that many"
    )


#: most tokens prompt-lookup drafting may check per step (a stage's `draft` key)
MAX_DRAFT = 16
