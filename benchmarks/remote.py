"""Remote stages: a stack whose every stage runs on a server on loopback, against the same stack
run locally, in one run; and many clients against one llama-server.

    python benchmarks/remote.py [--stack bench|bundled] [--questions 16] [--rounds 2]
        [--llama-server PATH] [--clients 8] [--slots 4] [--json]

1. Seconds per question, every stage remote / the same stack local (``Stack.ask`` in this
   process), asked alternately question by question so both sides see the same machine. The
   remote side is ``edgestack serve`` (single stages, ``engine = "edgestack"``) and, when a
   llama-server binary is given (--llama-server, $EDGESTACK_TEST_LLAMA_SERVER or on the PATH),
   llama-server started from ``edgestack export --to llama-server`` (``engine =
   "llama-server"``, adapters picked per request). Each server runs in its own process with
   the same thread count as the local side. Goal: at most 1.15.
2. Throughput with --clients threads each asking its share of the questions through the
   all-remote stack, against one llama-server with --slots parallel slots, compared with one
   client asking them one after the other through the same server (questions per second).

The stack is the four-stage Pythia-160M-shaped Q8_0 benchmark stack (``bench``, 200-token
prompts, 16 tokens a stage) or the small bundled stack (``bundled``: ~0.05 s a question, where
per-request costs show most).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import _common as c

ENV = {"EDGESTACK_NO_PROMPT_CACHE": "1", "EDGESTACK_NO_LOG": "1"}


def _wait(url: str, proc: subprocess.Popen[bytes]) -> None:
    import httpx

    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server for {url} exited with {proc.returncode}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up in 180 s")


@contextmanager
def _server(argv: list[str], health: str, env: dict[str, str]) -> Iterator[None]:
    proc = subprocess.Popen(
        argv, env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        _wait(health, proc)
        yield
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _edgestack_client(toml: Path, url: str, out: Path) -> Path:
    """``toml``'s stack with every stage on the edgestack server at ``url``, written in ``out``
    (under benchmarks/out/) with a link to (or copy of) its model file for the vocabulary."""
    from edge_stack.manifest import load_manifest

    spec = load_manifest(toml)
    out.mkdir(parents=True, exist_ok=True)
    for stage in spec.stages:
        assert stage.model is not None
        vocab = out / stage.model.name
        if not vocab.exists():
            try:
                os.link(stage.model, vocab)
            except OSError:
                shutil.copyfile(stage.model, vocab)
    lines = [f'name = "{spec.name}-remote"', "version = 1", "[defaults]"]
    lines += ['engine = "edgestack"', f'url = "{url}"', 'api_key_env = "BENCH_KEY"']
    for stage in spec.stages:
        assert stage.model is not None
        lines += ["[[stages]]", f'name = "{stage.name}"', f"prompt = {json.dumps(stage.prompt)}"]
        lines += [f'remote_model = "{spec.name}/{stage.name}"', f'model = "{stage.model.name}"']
        lines += [f"max_tokens = {stage.max_tokens}", f"n_ctx = {stage.n_ctx}"]
        lines += [f"temperature = {stage.temperature}"]
        if stage.stop:
            lines.append(f"stop = {json.dumps(list(stage.stop))}")
    path = out / "stack.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def _alternate(local: Any, remote: Any, questions: list[str], rounds: int) -> dict[str, Any]:
    local.ask(questions[0])  # warm-up: first touch, server-side loads
    remote.ask(questions[0])
    local_s: list[float] = []
    remote_s: list[float] = []
    same = 0
    for _ in range(rounds):
        for q in questions:
            t0 = time.perf_counter()
            a = local.ask(q)
            t1 = time.perf_counter()
            b = remote.ask(q)
            t2 = time.perf_counter()
            same += a.text == b.text
            local_s.append(t1 - t0)
            remote_s.append(t2 - t1)
    return {
        "local_s": statistics.median(local_s),
        "remote_s": statistics.median(remote_s),
        "ratio": round(sum(remote_s) / sum(local_s), 3),
        "identical_answers": f"{same}/{len(local_s)}",
    }


def _throughput(toml: Path, threads: int, questions: list[str], clients: int) -> dict[str, Any]:
    """One client, then ``clients`` clients at once, each its own Stack (as separate devices
    or processes are: a Stack runs one call per stage at a time)."""
    from edge_stack import Stack

    stacks = [Stack.load(toml, threads=threads) for _ in range(clients)]
    t0 = time.perf_counter()
    for q in questions:
        stacks[0].ask(q)
    serial_qps = len(questions) / (time.perf_counter() - t0)
    shares = [questions[i::clients] for i in range(clients)]
    errors: list[BaseException] = []

    def client(n: int) -> None:
        for q in shares[n]:
            try:
                stacks[n].ask(q)
            except BaseException as exc:
                errors.append(exc)

    workers = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
    t0 = time.perf_counter()
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    concurrent_qps = len(questions) / (time.perf_counter() - t0)
    for stack in stacks:
        stack.close()
    if errors:
        raise RuntimeError(f"{len(errors)} questions failed: {errors[0]}")
    return {
        "clients": clients,
        "one_client_qps": round(serial_qps, 3),
        "concurrent_qps": round(concurrent_qps, 3),
        "ratio": round(concurrent_qps / serial_qps, 3),
    }


def _binary(given: str | None) -> str | None:
    for candidate in (given, os.environ.get("EDGESTACK_TEST_LLAMA_SERVER")):
        if candidate and Path(candidate).is_file():
            return candidate
    return shutil.which("llama-server")


def measure(
    stack: str,
    n_questions: int,
    rounds: int,
    threads: int,
    binary: str | None,
    clients: int,
    slots: int,
) -> dict[str, Any]:
    from edge_stack import Stack
    from edge_stack.deploy import export_stack
    from edge_stack.serve._config import free_port
    from edge_stack.util._paths import bundled_stacks

    os.environ.update(ENV)
    os.environ["BENCH_KEY"] = "bench-key-0123456789"
    toml = c.stack_160m() if stack == "bench" else bundled_stacks()["word-problems"]
    questions = (c.QUESTIONS * (n_questions // len(c.QUESTIONS) + 1))[:n_questions]
    report: dict[str, Any] = {"machine": c.machine(), "stack": stack, "threads": threads}
    local = Stack.load(toml, threads=threads)
    try:
        port = free_port()
        argv = [sys.executable, "-m", "edge_stack", "serve", "--stack", str(toml)]
        argv += ["--port", str(port), "--threads", str(threads), "--keep-alive", "-1"]
        argv += ["--no-log", "--api-key", os.environ["BENCH_KEY"]]
        with _server(argv, f"http://127.0.0.1:{port}/health", ENV):
            client = _edgestack_client(
                toml, f"http://127.0.0.1:{port}/v1", c.OUT / f"remote-edgestack-{stack}"
            )
            with Stack.load(client, threads=threads) as remote:
                report["edgestack"] = _alternate(local, remote, questions, rounds)
        if binary is None:
            report["llama_server"] = "skipped: no llama-server binary"
        else:
            port = free_port()
            out = c.OUT / f"remote-llama-server-{stack}"
            url = f"http://127.0.0.1:{port}/v1"
            export_stack(toml, "llama-server", out, url=url, parallel=slots, force=True)
            argv = [str(out / "llama-server.sh"), "--threads", str(threads)]
            argv += ["--threads-batch", str(threads)]
            with _server(argv, f"http://127.0.0.1:{port}/health", {"LLAMA_SERVER": binary}):
                with Stack.load(out, threads=threads) as remote:
                    report["llama_server"] = _alternate(local, remote, questions, rounds)
                local.close()
                report["throughput"] = _throughput(out, threads, questions, clients)
                report["throughput"]["slots"] = slots
    finally:
        local.close()
    report["load_avg_after"] = round(os.getloadavg()[0], 2)
    return report


def main() -> None:
    parser = c.arg_parser(__doc__)
    parser.add_argument("--stack", choices=("bench", "bundled"), default="bench")
    parser.add_argument("--questions", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--llama-server", default=None, help="path of a llama-server binary")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--slots", type=int, default=4)
    args = parser.parse_args()
    binary = _binary(args.llama_server)
    r = measure(
        args.stack, args.questions, args.rounds, args.threads, binary, args.clients, args.slots
    )
    if args.json:
        print(json.dumps(r, indent=1))
        return
    print(f"machine: {r['machine']}  stack: {r['stack']}  threads: {r['threads']}")
    for side in ("edgestack", "llama_server"):
        v = r[side]
        if isinstance(v, str):
            print(f"{side}: {v}")
            continue
        print(
            f"seconds/question: local {v['local_s']:.3f}, every stage on {side} "
            f"{v['remote_s']:.3f}; identical answers {v['identical_answers']}"
        )
        print(
            c.ratio_line(f"remote on {side} / local, seconds per question", v["ratio"], "<= 1.15")
        )
    t = r.get("throughput")
    if t:
        print(
            f"throughput, {t['clients']} clients / one client, one llama-server with {t['slots']} "
            f"slots: {t['ratio']:.2f} ({t['concurrent_qps']:.2f} vs {t['one_client_qps']:.2f} "
            "questions/s)"
        )
    print(f"load average after: {r['load_avg_after']}")


if __name__ == "__main__":
    main()
