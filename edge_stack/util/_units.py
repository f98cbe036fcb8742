"""How edgestack writes sizes and times for people: one format everywhere.

Sizes are decimal, as Ollama and most download tools print them (1 kB = 1000 bytes, 1 MB =
1000 kB, 1 GB = 1000 MB), with three significant digits: ``512 B``, ``19.5 kB``, ``1.62 MB``,
``43.1 MB``, ``274 MB``, ``4.70 GB``. Every command (ask, inspect, show, list, bench, logs,
doctor, pull, package) and every log line goes through :func:`format_bytes`; JSON output keeps
exact byte counts (keys ending in ``_bytes``) or says its unit in the key (``_mb``: 10^6 bytes).

Times say what they measure where they are shown (``wall 0.84 s``, ``generation 0.21 s``) and are
written by :func:`format_seconds`.
"""

from __future__ import annotations

__all__ = ["MB", "format_bytes", "format_seconds"]

#: one megabyte as edgestack counts it (decimal, as every size it prints)
MB = 1_000_000
_UNITS = ("B", "kB", "MB", "GB", "TB", "PB")


def format_bytes(n: float | int) -> str:
    """``n`` bytes for people, decimal units, three significant digits (``"1.62 MB"``)."""
    if n < 0:
        return "-" + format_bytes(-n)
    value = float(n)
    unit = 0
    while value >= 999.5 and unit < len(_UNITS) - 1:
        value /= 1000
        unit += 1
    if unit == 0:
        return f"{round(value)} B"
    if value >= 99.95:
        return f"{value:.0f} {_UNITS[unit]}"
    if value >= 9.995:
        return f"{value:.1f} {_UNITS[unit]}"
    return f"{value:.2f} {_UNITS[unit]}"


def format_seconds(seconds: float) -> str:
    """A duration for people: ``0.213 s`` below 10 s, ``12.4 s`` below a minute, ``3 min 5 s``."""
    if seconds < 10:
        return f"{seconds:.3f} s"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes} min {rest} s"
