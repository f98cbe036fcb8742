"""The devices ``edgestack plan`` knows: memory a stack may use and memory bandwidth.

Token generation on a CPU reads every weight once per token, so its speed is bounded by the
memory bandwidth: tokens/s <= bandwidth / bytes read per token. The figures are public
measurements of memory copy bandwidth (STREAM "Copy", tinymembench/sbc-bench memcpy); llama.cpp
runs below the bound by however much compute its kernels need on that CPU, so the plan prints a
bound, not a promise. Reference points from the same sources: TinyLlama 1.1B at Q8_0 (1.17 GB
read per token) runs at about 9 tokens/s on a Raspberry Pi 5 and 3 on a Pi 4 with llama.cpp.

"Usable" memory is what is left for edgestack once the operating system (and, for a laptop, the
desktop and the application embedding edgestack) took theirs: Raspberry Pi OS Lite 64-bit uses
about 250 MB with the GPU's reserved memory, a desktop laptop is assumed to leave half its
memory to the app.

This machine's figures are measured: its available memory (MemAvailable) and its read bandwidth
(numpy sums over a 256 MB array on every core, best of 4; about 0.3 s).
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import BadArgument

__all__ = ["DEVICES", "Device", "measure_bandwidth", "parse_device", "this_machine"]

GB = 1_000_000_000
GIB = 1 << 30


@dataclass(frozen=True)
class Device:
    """A device a stack may run on."""

    name: str
    #: physical memory, bytes (0: unknown)
    total_bytes: int
    #: what edgestack may use, bytes
    usable_bytes: int
    #: memory bandwidth for the tokens/s bound, bytes/s
    bandwidth: float
    #: where the figures come from
    source: str


#: Raspberry Pi OS Lite 64-bit at idle plus the GPU's CMA reserve (measured figures vary
#: from about 180 to 300 MB)
PI_OS_BYTES = 250_000_000
_PI5_BW = 5.9e9
_PI4_BW = 2.8e9
_PI5_SOURCE = (
    "Raspberry Pi 5 (LPDDR4X-4267): memory copy 5.5 to 6.3 GB/s in public STREAM/tinymembench "
    "runs (e.g. STREAM Copy 5.5 GB/s, sci-pi.org.uk/bench/stream.html); OS ~250 MB"
)
_PI4_SOURCE = (
    "Raspberry Pi 4 (LPDDR4-3200): memory copy about 2.8 GB/s in public tinymembench/sbc-bench "
    "runs; OS ~250 MB"
)

DEVICES: dict[str, Device] = {
    "pi4-1gb": Device("pi4-1gb", GIB, GIB - PI_OS_BYTES, _PI4_BW, _PI4_SOURCE),
    "pi4-2gb": Device("pi4-2gb", 2 * GIB, 2 * GIB - PI_OS_BYTES, _PI4_BW, _PI4_SOURCE),
    "pi5-4gb": Device("pi5-4gb", 4 * GIB, 4 * GIB - PI_OS_BYTES, _PI5_BW, _PI5_SOURCE),
    "pi5-8gb": Device("pi5-8gb", 8 * GIB, 8 * GIB - PI_OS_BYTES, _PI5_BW, _PI5_SOURCE),
    "laptop-8gb": Device(
        "laptop-8gb",
        8 * GIB,
        4 * GIB,
        15e9,
        "a dual-channel DDR4 laptop: memory copy about 15 GB/s (conservative for DDR4-2666 "
        "and up); half its memory left to the desktop and the app embedding edgestack",
    ),
}

_SIZE = re.compile(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([kmgt]i?b?|b)?\s*", re.IGNORECASE)
_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "m": 1000**2,
    "mb": 1000**2,
    "g": 1000**3,
    "gb": 1000**3,
    "t": 1000**4,
    "tb": 1000**4,
    "ki": 1 << 10,
    "kib": 1 << 10,
    "mi": 1 << 20,
    "mib": 1 << 20,
    "gi": 1 << 30,
    "gib": 1 << 30,
    "ti": 1 << 40,
    "tib": 1 << 40,
}
#: the smallest and largest MEMORY a plan takes
MIN_DEVICE_BYTES = 16 * 1000**2
MAX_DEVICE_BYTES = 1 << 50


def measure_bandwidth(threads: int | None = None, mb: int = 256, repeat: int = 4) -> float:
    """This machine's read bandwidth in bytes/s: numpy sums of an ``mb`` MB array split over
    ``threads`` threads (default: every core this process may use), best of ``repeat``."""
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np

    from ..util._limits import cpu_threads

    threads = threads or cpu_threads()
    data = np.ones(mb * 1000**2 // 8, dtype=np.float64)
    parts = np.array_split(data, threads)
    best = 0.0
    with ThreadPoolExecutor(threads) as pool:
        for _ in range(repeat):
            started = time.perf_counter()
            list(pool.map(np.sum, parts))
            best = max(best, data.nbytes / (time.perf_counter() - started))
    return best


def _meminfo() -> dict[str, int]:
    found: dict[str, int] = {}
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            key, _, rest = line.partition(":")
            parts = rest.split()
            if parts and parts[0].isdigit():
                found[key] = int(parts[0]) * 1024  # the kernel's "kB" is KiB
    except OSError:
        pass
    return found


def this_machine(bandwidth: float | None = None) -> Device:
    """This machine: its memory available now and its measured read bandwidth."""
    info = _meminfo()
    total = info.get("MemTotal", 0)
    if not total and hasattr(os, "sysconf"):
        try:
            total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (ValueError, OSError):
            total = 0
    usable = info.get("MemAvailable", total)
    measured = measure_bandwidth() if bandwidth is None else bandwidth
    return Device(
        "this-machine",
        total,
        usable,
        measured,
        "this machine: memory available now (MemAvailable), read bandwidth measured by numpy",
    )


def parse_device(text: str | None, *, bandwidth: float | None = None) -> Device:
    """A device by name (:data:`DEVICES`, "this-machine"), or a memory size such as "1GB",
    "1.5GiB" or "512M" (decimal units unless "iB"), with this machine's bandwidth; None is this
    machine. ``bandwidth`` skips measuring it (tests, repeated plans)."""
    if text is None or text.strip().lower() in ("this-machine", "this", "here"):
        return this_machine(bandwidth)
    key = text.strip().lower()
    if key in DEVICES:
        return DEVICES[key]
    match = _SIZE.fullmatch(key)
    unit = (match.group(2) or "").lower() if match else ""
    if match is None or unit not in _UNITS:
        raise BadArgument(
            f"--device must be one of {', '.join(DEVICES)}, this-machine, or a memory size "
            f"such as 1GB or 1.5GiB; got {text!r}"
        )
    size = int(float(match.group(1)) * _UNITS[unit])
    if not MIN_DEVICE_BYTES <= size <= MAX_DEVICE_BYTES:
        raise BadArgument(
            f"--device {text}: expected a memory size from {MIN_DEVICE_BYTES // 1000**2} MB to "
            f"{MAX_DEVICE_BYTES // 1000**5} PB, got {size:,} bytes"
        )
    measured = measure_bandwidth() if bandwidth is None else bandwidth
    return Device(
        text.strip(),
        size,
        size,
        measured,
        "the memory given (all of it usable), this machine's measured read bandwidth",
    )
