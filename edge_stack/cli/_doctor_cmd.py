"""`edgestack doctor`."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from ._app import app


def _line(label: str, value: object) -> None:
    typer.echo(f"{label:22s} {value}")


def _mb(n: int) -> str:
    from ..util._units import format_bytes

    return format_bytes(n)


def _print(rep: dict[str, Any]) -> None:
    cpu, build, kernels = rep["cpu"], rep["llama_cpp"], rep["kernels"]
    _line("edgestack", rep["edgestack"])
    _line("python", f"{rep['python']} on {rep['platform']}")
    _line("cpu", f"{cpu['model']} ({cpu['machine']}, {cpu['cores']} cores)")
    _line("cpu features", " ".join(cpu["features"]) or "-")
    if "error" in build:
        _line("llama-cpp-python", f"cannot load: {build['error']}")
    else:
        _line("llama-cpp-python", build["llama_cpp_python"])
        _line("llama.cpp build", build["system_info"])
    if kernels["mode"] != "auto":
        _line("kernels", f"EDGESTACK_KERNELS={kernels['mode']} (no probe)")
    elif "error" in kernels:
        _line("kernels", f"probe failed: {kernels['error']}")
    elif kernels["faulty"]:
        faulty = ", ".join(f"{t} ({kernels['how'][t]})" for t in kernels["faulty"])
        _line("kernels", f"fast kernels crash for {faulty}; those models use safe kernels")
        if kernels["broken"]:
            _line("", f"even safe kernels crash for {', '.join(kernels['broken'])}")
        _line("fix", kernels["fix"])
    else:
        _line("kernels", f"all fast kernels work (probed in {kernels['probe_seconds']} s)")
    threads = rep["threads"]
    policy = " ".join(f"{k}={v}" for k, v in threads["openmp"].items()) or "libgomp default"
    _line("threads", f"{threads['default']} by default; OpenMP {policy}")
    _line("data folder", rep["data_dir"])
    log = rep["run_log"]
    runs = f", {log['runs']} runs" if "runs" in log else ""
    _line("run log", f"{log['status']} ({_mb(log['bytes'])}{runs})")
    cache = rep["prompt_cache"]
    _line("prompt cache", f"{cache['files']} files, {_mb(cache['bytes'])}")
    if "stacks" in rep:
        st = rep["stacks"]
        _line("stacks", f"{st['bundled']} bundled, {st['pulled']} pulled (store: {st['store']})")
    left = rep["leftover_temp_files"]
    _line(
        "leftover temp files", f"{len(left)} (edgestack doctor --fix removes them)" if left else 0
    )
    if "bundled_stack" in rep:
        ask = rep["bundled_stack"]
        detail = ask.get("answer") or ask.get("error") or ""
        _line("bundled stack", f"{ask['status']}{': ' + detail if detail else ''}")


@app.command()
def doctor(
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    fix: Annotated[
        bool, typer.Option("--fix", help="Remove leftover temp files from interrupted runs.")
    ] = False,
    no_ask: Annotated[
        bool, typer.Option("--no-ask", help="Skip asking the bundled stack (faster).")
    ] = False,
) -> None:
    """Check this machine and installation: versions, CPU kernels, data folder, a test ask.

    What to paste into a bug report. Anything that runs llama.cpp runs in a child process, so
    doctor reports a crashing kernel instead of crashing.

    Examples:

      edgestack doctor

      edgestack doctor --json > doctor.json

      edgestack doctor --fix
    """
    from ..tools._doctor import fix as do_fix
    from ..tools._doctor import report

    removed = do_fix() if fix else []
    rep = report(ask=not no_ask)
    if fix:
        rep["removed"] = removed
    if as_json:
        typer.echo(json.dumps(rep, indent=2))
        return
    _print(rep)
    if fix:
        _line("removed", len(removed))
