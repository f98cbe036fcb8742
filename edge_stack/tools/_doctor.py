"""``edgestack doctor``: what a user pastes into a bug report, gathered without crashing.

Every check that runs llama.cpp on a model runs it in a child process (the kernel probe, the
bundled stack's answer), so a machine where llama.cpp faults still gets a full report.
"""

from __future__ import annotations

import os
import platform
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

from ..util._env import openmp_policy, settings

#: CPU features that decide which llama.cpp kernels can run (as /proc/cpuinfo spells them)
CPU_FEATURES = (
    "avx",
    "avx2",
    "fma",
    "f16c",
    "avx512f",
    "avx512bw",
    "avx512_vnni",
    "avx512_bf16",
    "avx_vnni",
    "amx_tile",
    "amx_int8",
    "amx_bf16",
    # ARM (the "Features" line)
    "asimd",
    "asimddp",
    "i8mm",
    "sve",
)
#: how long the bundled stack may take to answer before the check counts it as hung
ASK_TIMEOUT_S = 120.0
_QUESTION = "Sam has 23 stamps and buys 18 more. How many stamps does Sam have?"


def _cpu() -> dict[str, Any]:
    model: str = platform.processor() or platform.machine()
    flags: set[str] = set()
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            name, _, value = line.partition(":")
            name = name.strip()
            if name in ("model name", "CPU part") and model in ("", platform.machine()):
                model = value.strip()
            elif name in ("flags", "Features") and not flags:
                flags = set(value.split())
    except OSError:
        pass
    return {
        "model": model,
        "machine": platform.machine(),
        "cores": os.cpu_count(),
        "features": [f for f in CPU_FEATURES if f in flags],
    }


def _build() -> dict[str, Any]:
    """llama-cpp-python's version and what its llama.cpp was compiled to use."""
    try:
        from ..engines.llama._lib import lib

        mod = lib()
        import llama_cpp

        info = mod.llama_print_system_info().decode(errors="replace").strip()
        return {"llama_cpp_python": llama_cpp.__version__, "system_info": info}
    except Exception as exc:  # a broken install is exactly what doctor must report
        return {"error": f"{type(exc).__name__}: {exc}"}


def _kernels() -> dict[str, Any]:
    from ..engines.llama._kernels import REINSTALL, verdict

    mode = settings().kernels
    out: dict[str, Any] = {"mode": mode}
    if mode != "auto":
        return out
    try:
        found = verdict()
    except Exception as exc:
        return {**out, "error": f"{type(exc).__name__}: {exc}"}
    out.update(
        faulty=list(found.faulty),
        broken=list(found.broken),
        how=found.how,
        probe_seconds=found.seconds,
    )
    if found.faulty:
        out["fix"] = REINSTALL
    return out


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else 0


def _run_log(path: Path) -> dict[str, Any]:
    out: dict[str, Any] = {"path": str(path), "bytes": _size(path)}
    if not path.is_file():
        out["status"] = "none yet"
        return out
    try:
        uri = f"file:{path}?mode=ro"
        with sqlite3.connect(uri, uri=True, timeout=2.0) as db:
            result = db.execute("PRAGMA quick_check").fetchone()
            out["status"] = "ok" if result and result[0] == "ok" else f"damaged: {result[0]}"
            out["runs"] = db.execute("SELECT count(*) FROM runs").fetchone()[0]
    except sqlite3.Error as exc:
        out["status"] = f"damaged or locked: {exc}"
    return out


def _prompt_cache(folder: Path) -> dict[str, Any]:
    files = sorted(folder.glob("*.kv")) if folder.is_dir() else []
    return {"path": str(folder), "files": len(files), "bytes": sum(_size(f) for f in files)}


def _leftovers(folders: list[Path]) -> list[str]:
    try:
        from ..util._atomic import find_leftovers
    except ImportError:  # pragma: no cover - older _atomic
        return []
    found: list[str] = []
    for folder in folders:
        if folder.is_dir():
            found += [str(p) for p in find_leftovers(folder)]
    return found


def _bundled_ask() -> dict[str, Any]:
    """Ask the bundled stack in a child process: a crash there is a finding, not our crash."""
    from ..util._paths import bundled_stack

    stack = bundled_stack()
    if stack is None:
        return {"status": "not installed"}
    cmd = [sys.executable, "-m", "edge_stack", "ask", _QUESTION, "--stack", str(stack), "--no-log"]
    try:
        proc = subprocess.run(
            cmd, capture_output=True, text=True, timeout=ASK_TIMEOUT_S, stdin=subprocess.DEVNULL
        )
    except subprocess.TimeoutExpired:
        return {"status": f"no answer within {ASK_TIMEOUT_S:.0f} s"}
    if proc.returncode == 0:
        return {"status": "ok", "answer": proc.stdout.strip()}
    last = (proc.stderr.strip().splitlines() or [""])[-1]
    how = f"signal {-proc.returncode}" if proc.returncode < 0 else f"exit {proc.returncode}"
    return {"status": f"failed ({how})", "error": last}


def _stacks() -> dict[str, Any]:
    """How many stacks this machine has by name (edgestack list shows them)."""
    from ..util._paths import bundled_stacks, store_dir, stored_names

    return {
        "bundled": len(bundled_stacks()),
        "pulled": len(stored_names()),
        "store": str(store_dir()),
    }


def data_folders() -> list[Path]:
    """Folders edgestack writes into on its own (where leftovers may sit)."""
    data = settings().data_dir
    from ..util._paths import store_dir

    return [data, data / "prompt-cache", data / "kernels", store_dir()]


def report(*, ask: bool = True) -> dict[str, Any]:
    """Everything doctor shows, as plain JSON-ready values."""
    from .._version import __version__

    data = settings().data_dir
    out: dict[str, Any] = {
        "edgestack": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": _cpu(),
        "llama_cpp": _build(),
        "kernels": _kernels(),
        "threads": {
            "default": settings().threads or os.cpu_count() or 1,
            "openmp": openmp_policy()
            or {k: os.environ[k] for k in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT") if k in os.environ},
        },
        "data_dir": str(data),
        "run_log": _run_log(data / "runs.sqlite3"),
        "prompt_cache": _prompt_cache(data / "prompt-cache"),
        "stacks": _stacks(),
        "leftover_temp_files": _leftovers(data_folders()),
    }
    if ask:
        out["bundled_stack"] = _bundled_ask()
    return out


def fix() -> list[str]:
    """Remove what doctor can safely remove (leftover temp files); returns what was removed."""
    try:
        from ..util._atomic import remove_leftovers
    except ImportError:  # pragma: no cover - older _atomic
        return []
    removed: list[str] = []
    for folder in data_folders():
        if folder.is_dir():
            removed += [str(p) for p in remove_leftovers(folder)]
    return removed
