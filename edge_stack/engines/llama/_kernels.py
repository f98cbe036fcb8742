"""Which llama.cpp CPU kernels are safe on this machine: a probe in a child process, cached.

llama.cpp picks, per weight tensor, an "extra" CPU buffer type when one accepts it: AMX tiles
on Intel Sapphire Rapids and later, weight repacking (Q4_0, IQ4_NL, k-quants, Q8_0 interleaved
for AVX2/AVX-512, ARM NEON/i8mm, ...), KleidiAI on ARM. They are much of llama.cpp's speed on
small devices, and on some machines they fault: llama-cpp-python 0.3.36 built natively on a
Xeon with AMX under a VM dies in ``ggml_backend_amx_mul_mat`` (SIGILL/SIGSEGV) on every Q8_0,
Q4_0 and Q4_1 model, whichever program loads it.

A signal cannot be caught and survived in-process, so the only safe test is a child process.
Once per (llama.cpp build, CPU) pair, :func:`verdict` runs :mod:`edge_stack.engines.llama._kernel_probe` over
a tiny model of each type those buffer types handle, with them on; a type whose child dies by a
signal (or hangs) is *faulty*. Models are then loaded with the extra buffer types off only when
they hold a faulty type (``use_extra_bufts = False``, the same switch as llama.cpp's
``--no-repack``), so every other model keeps every fast kernel. The fallback is checked by the
probe too; if even that faults, loading refuses with one line instead of crashing.

Why not turn off only the faulting buffer type (AMX) and keep repacking for those models?
llama.cpp's API switches all extra buffer types together; its per-tensor overrides would
need our own copy of repack's shape rules, and a wrong copy is a crash. The portable build
named in :data:`REINSTALL` keeps repacking and leaves AMX out, for users who want both.

The verdict is a JSON file under ``kernels/`` in the data folder, named by a hash of the
llama.cpp libraries (path, size, modification time), the CPU (model name and feature flags)
and :data:`PROBE_VERSION`. A verdict file that is not a regular file (a FIFO would block every
ask), is larger than :data:`MAX_VERDICT_BYTES` or does not parse (nested too deeply, wrong
types) is damaged: it is removed and the probe runs again. ``EDGESTACK_KERNELS=full`` skips the
probe (llama.cpp's default), ``safe`` turns the extra buffer types off for every model.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ...errors import EdgeStackError, EngineError
from ...util._datafile import UnusableFile, private_folder, read_regular
from ...util._env import quiet_openmp, settings

log = logging.getLogger(__name__)

#: bump when the probe changes what it tests, so old verdicts are not trusted
PROBE_VERSION = 1
#: the weight types some extra CPU buffer type of llama.cpp handles (AMX: Q4_0, Q4_1, Q8_0,
#: k-quants, IQ4_XS, F16; repack: Q4_0, Q8_0, Q2_K..Q6_K, IQ4_NL; KleidiAI: Q4_0, Q8_0).
#: Other types never reach those kernels, so a model made only of them is never held back.
PROBED_TYPES = ("f16", "q8_0", "q4_0", "q4_1", "q4_k", "q5_k", "q6_k", "q2_k", "iq4_nl", "iq4_xs")
#: the largest verdict file read (one is a few hundred bytes); a larger one is damaged
MAX_VERDICT_BYTES = 64 * 1024
#: a child that has used this much CPU time is counted as hung (the whole probe takes ~2 s).
#: CPU time, not wall time: on a machine busy with other work a child can wait minutes for a
#: core without being hung, and a wall-clock limit would then cache a false verdict.
CHILD_CPU_LIMIT_S = 60.0
#: a child that has not finished after this long is counted as hung whatever its CPU time
#: (a kernel stuck without spinning)
CHILD_WALL_LIMIT_S = 1800.0
#: the command that gives a build whose kernels all work (no AMX, repacking kept)
REINSTALL = (
    'CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON '
    '-DGGML_AVX512=ON -DGGML_AVX512_VNNI=ON" '
    "pip install --force-reinstall --no-cache-dir --no-deps llama-cpp-python==0.3.36"
)
MODES = ("auto", "full", "safe")


@dataclass(frozen=True)
class Verdict:
    """What the probe found for one llama.cpp build on one CPU."""

    #: types whose extra-buffer kernels killed the probe (empty on a healthy machine)
    faulty: tuple[str, ...] = ()
    #: types that faulted even with the extra buffer types off (such models cannot be loaded)
    broken: tuple[str, ...] = ()
    #: how each faulty type died ("SIGSEGV", "timeout", ...)
    how: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    key: str = ""


def _cpu_identity() -> str:
    model, flags = "", ""
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            name, _, value = line.partition(":")
            name = name.strip()
            if name in ("model name", "CPU part") and not model:
                model = value.strip()
            elif name in ("flags", "Features") and not flags:
                flags = " ".join(sorted(value.split()))
    except OSError:
        pass
    return f"{platform.machine()}|{model or platform.processor()}|{flags}"


def _llama_cpp() -> Any:
    # Our OpenMP policy must be in the environment before libgomp loads with llama_cpp.
    quiet_openmp()
    import llama_cpp

    return llama_cpp


def _library_files() -> list[Path]:
    llama_cpp = _llama_cpp()
    lib_dir = Path(llama_cpp.__file__).parent / "lib"
    if not lib_dir.is_dir():
        return []
    return sorted(p for p in lib_dir.iterdir() if p.is_file())


def probe_key() -> str:
    """A hash naming this llama.cpp build on this CPU."""
    llama_cpp = _llama_cpp()
    # A test's simulated faults make a verdict of their own, never this machine's.
    parts: list[object] = [PROBE_VERSION, llama_cpp.__version__, _cpu_identity()]
    if settings().probe_fault:
        parts.append(["fault", settings().probe_fault])
    for path in _library_files():
        st = path.stat()
        parts.append([str(path), st.st_size, st.st_mtime_ns])
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:24]


def _signal_name(code: int) -> str:
    try:
        return signal.Signals(-code).name
    except ValueError:
        return f"signal {-code}"


def _cpu_seconds(pid: int) -> float | None:
    """CPU time (user + system, all threads) a live child has used; None where unknown."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def _run_child(cmd: list[str]) -> tuple[str, int | None, str]:
    """Run a probe child; (stdout, return code or None if it was killed as hung, stderr)."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, stdin=subprocess.DEVNULL, text=True)
        started = time.monotonic()
        code: int | None = None
        while True:
            try:
                code = proc.wait(timeout=0.2)
                break
            except subprocess.TimeoutExpired:
                cpu = _cpu_seconds(proc.pid)
                waited = time.monotonic() - started
                # Where CPU time cannot be read, wall time stands in for it.
                if (cpu if cpu is not None else waited) > CHILD_CPU_LIMIT_S or (
                    waited > CHILD_WALL_LIMIT_S
                ):
                    proc.kill()
                    proc.wait()
                    break
        out.seek(0)
        err.seek(0)
        return out.read(), code, err.read()


def _probe(folder: Path, types: Iterable[str], *, safe: bool, fault: str) -> dict[str, str]:
    """Run the child over ``types`` (restarting after each death); return {type: how it died}."""
    pending = list(types)
    died: dict[str, str] = {}
    while pending:
        cmd = [sys.executable, "-m", "edge_stack.engines.llama._kernel_probe", str(folder)]
        cmd += ["--types", ",".join(pending)] + (["--safe"] if safe else [])
        if fault:
            cmd += ["--fault", fault]
        out, code, stderr = _run_child(cmd)
        if code is None:
            code, how, err = -1, "timeout", []
        else:
            how = _signal_name(code) if code < 0 else f"exit {code}"
            err = stderr.strip().splitlines()[-1:]
        done = {line.split()[1] for line in out.splitlines() if line.startswith("ok ")}
        started = [line.split()[1] for line in out.splitlines() if line.startswith("start ")]
        if code == 0:
            break
        # The type that was running when the child died; if none started, the child itself
        # failed (an import error, a broken installation): not a kernel verdict.
        culprit = started[-1] if started and started[-1] not in done else None
        if culprit is None:
            raise EngineError(
                f"the llama.cpp kernel probe could not run ({how}: {' '.join(err) or 'no output'}); "
                "check that llama-cpp-python imports (python -c 'import llama_cpp'), or set "
                "EDGESTACK_KERNELS=full to skip the probe"
            )
        died[culprit] = how
        pending = [t for t in pending if t not in done and t != culprit]
    return died


def run_probe(*, fault: str = "") -> Verdict:
    """Probe this machine now (no cache): each type with extra buffer types on, then off."""
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="edgestack-probe-") as tmp:
        died = _probe(Path(tmp), PROBED_TYPES, safe=False, fault=fault)
        broken: dict[str, str] = {}
        if died:
            # Fault injection (tests) applies to the full kernels only: the fallback is real.
            broken = _probe(Path(tmp), sorted(died), safe=True, fault="")
    return Verdict(
        faulty=tuple(sorted(died)),
        broken=tuple(sorted(broken)),
        how=died,
        seconds=round(time.perf_counter() - start, 2),
    )


def _verdict_path(key: str) -> Path:
    return settings().data_dir / "kernels" / f"{key}.json"


def _parse_verdict(raw: bytes | bytearray) -> Verdict:
    """A verdict file's contents; ValueError (or TypeError, ...) saying what is wrong."""
    data = json.loads(raw.decode("utf-8"))
    if not isinstance(data, dict):
        raise ValueError(f"a JSON {type(data).__name__}, not an object")
    faulty, broken, how = data["faulty"], data["broken"], data.get("how", {})
    seconds, key = data.get("seconds", 0.0), data["key"]
    if not all(
        isinstance(v, list) and all(isinstance(t, str) for t in v) for v in (faulty, broken)
    ):
        raise ValueError("faulty and broken must be lists of type names")
    if not isinstance(how, dict) or not all(isinstance(v, str) for v in how.values()):
        raise ValueError("how must map type names to text")
    if (
        isinstance(seconds, bool)
        or not isinstance(seconds, int | float)
        or not isinstance(key, str)
    ):
        raise ValueError("seconds must be a number and key a string")
    return Verdict(
        faulty=tuple(faulty),
        broken=tuple(broken),
        how={str(k): v for k, v in how.items()},
        seconds=float(seconds),
        key=key,
    )


def _load_cached(path: Path) -> Verdict | None:
    """The verdict kept at ``path``; None when there is none or it is damaged (then removed, so
    the probe runs again and its new verdict can take its place)."""
    try:
        found = _parse_verdict(read_regular(path, MAX_VERDICT_BYTES))
    except FileNotFoundError:
        return None
    except RecursionError:  # json recurses once per nested array or object
        why = "nested too deeply"
    except (OSError, ValueError, KeyError, TypeError, AttributeError, OverflowError) as exc:
        why = exc.reason if isinstance(exc, UnusableFile) else f"{type(exc).__name__}: {exc}"
    else:
        return found
    log.info("kernel verdict %s is damaged (%s); probing again", path, why[:200])
    try:
        if not path.is_dir():
            path.unlink(missing_ok=True)
    except OSError as exc:
        log.debug("could not remove %s: %s", path, exc)
    return None


def _save(path: Path, verdict: Verdict) -> None:
    from ...util._atomic import atomic_output

    try:
        private_folder(path.parent)
        with atomic_output(path, force=True) as tmp:
            tmp.write_text(json.dumps(asdict(verdict), indent=1))
    except (OSError, EdgeStackError) as exc:  # read-only, or a folder in the way: probe again
        log.info("could not keep the kernel probe's verdict in %s: %s", path, exc)


_lock = threading.Lock()
_memo: dict[tuple[str, Path], Verdict] = {}


def verdict(*, refresh: bool = False) -> Verdict:
    """This machine's verdict: from memory, else the data folder, else a new probe (~2 s)."""
    key = probe_key()
    path = _verdict_path(key)
    with _lock:
        if not refresh and (key, path) in _memo:
            return _memo[key, path]
        found = None if refresh else _load_cached(path)
        if found is None or found.key != key:
            log.info("probing llama.cpp's CPU kernels on this machine (once per build and CPU)")
            found = run_probe(fault=settings().probe_fault)
            found = Verdict(found.faulty, found.broken, found.how, found.seconds, key)
            _save(path, found)
            if found.faulty:
                log.warning(
                    "llama.cpp's fast CPU kernels crash on this machine for %s (%s, tested in a "
                    "child process); models holding those types load with them off, which is "
                    "slower. To fix it for good, reinstall llama.cpp portably: %s",
                    ", ".join(t.upper() for t in found.faulty),
                    ", ".join(sorted(set(found.how.values()))),
                    REINSTALL,
                )
        _memo[key, path] = found
        return found


def use_extra_bufts(model_types: Iterable[str], path: Path) -> bool:
    """Whether a model whose weights have ``model_types`` may use the extra CPU buffer types.

    Raises :class:`EngineError` when the model holds a type that faults even without them.
    """
    mode = settings().kernels
    if mode not in MODES:
        raise EngineError(
            f"EDGESTACK_KERNELS is {mode!r}; use one of {', '.join(MODES)} (auto is the default)"
        )
    if mode == "full":
        return True
    if mode == "safe":
        return False
    types = {t.lower() for t in model_types}
    if not types & set(PROBED_TYPES):
        return True  # nothing in this model reaches those kernels: no probe needed
    found = verdict()
    if broken := sorted(types & set(found.broken)):
        raise EngineError(
            f"{path.name} holds {', '.join(t.upper() for t in broken)} weights, and llama.cpp's "
            f"kernels for them crash on this machine even in safe mode; reinstall llama.cpp "
            f"portably ({REINSTALL}) or convert the model to another type (edgestack quantize)"
        )
    return not types & set(found.faulty)


def clear_memo() -> None:
    """Forget verdicts held in memory (tests)."""
    with _lock:
        _memo.clear()
