"""Server overhead: `edgestack serve` over HTTP against `Stack.ask` in-process, in one run.

    python benchmarks/serve_overhead.py [--questions 16] [--clients 8] [--stack bench|bundled] [--json]

- one client: seconds per question through ``POST /v1/completions`` to a server in its own
  process (``edgestack serve``, loopback), against ``Stack.ask`` on the same stack in this
  process, asked alternately question by question so both see the same machine. Goal: at most
  1.05 (at most 5% more seconds per question).
- eight clients: questions per second with --clients threads each sending its share of the
  questions at once, against asking them one by one in-process. Goal: at least 1.0.

The stack is the four-stage Pythia-160M-shaped Q8_0 benchmark stack (``bench``, the default)
or the small bundled stack (``bundled``, where a question takes ~0.05 s and fixed costs show).
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time

import _common as c


def _wait_up(url: str, proc: subprocess.Popen[bytes]) -> None:
    import httpx

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("edgestack serve exited before it listened")
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise RuntimeError("edgestack serve did not start in 120 s")


def main() -> None:
    parser = c.arg_parser(__doc__)
    parser.add_argument("--questions", type=int, default=16)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--stack", choices=("bench", "bundled"), default="bench")
    args = parser.parse_args()

    import httpx

    from edge_stack import Stack
    from edge_stack.serve._config import free_port
    from edge_stack.util._paths import bundled_stacks

    toml = c.stack_160m() if args.stack == "bench" else bundled_stacks()["word-problems"]
    questions = (c.QUESTIONS * ((args.questions // len(c.QUESTIONS)) + 1))[: args.questions]
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "EDGESTACK_NO_PROMPT_CACHE": "1", "EDGESTACK_NO_LOG": "1"}
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "edge_stack",
            "serve",
            "--stack",
            str(toml),
            "--port",
            str(port),
            "--threads",
            str(args.threads),
            "--keep-alive",
            "-1",
            "--no-log",
        ],
        env=env,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_up(url, server)
        os.environ.update({"EDGESTACK_NO_PROMPT_CACHE": "1"})
        stack = Stack.load(toml, threads=args.threads)
        model = stack.name
        http = httpx.Client(timeout=600)

        def over_http(q: str) -> str:
            r = http.post(url + "/v1/completions", json={"model": model, "prompt": q})
            r.raise_for_status()
            return str(r.json()["choices"][0]["text"])

        # warm-up: load and first-touch on both sides
        over_http(questions[0])
        stack.ask(questions[0])
        local_s, http_s = [], []
        for q in questions:
            t0 = time.perf_counter()
            a = stack.ask(q).text
            t1 = time.perf_counter()
            b = over_http(q)
            t2 = time.perf_counter()
            assert a == b, (q, a, b)  # same stack, temperature 0: same answers
            local_s.append(t1 - t0)
            http_s.append(t2 - t1)
        one_client = sum(http_s) / sum(local_s)

        # throughput: one by one in-process, then --clients threads over HTTP
        t0 = time.perf_counter()
        for q in questions:
            stack.ask(q)
        serial_qps = len(questions) / (time.perf_counter() - t0)
        stack.close()
        shares = [questions[i :: args.clients] for i in range(args.clients)]
        errors: list[BaseException] = []

        def client(share: list[str]) -> None:
            with httpx.Client(timeout=600) as h:
                for q in share:
                    try:
                        r = h.post(url + "/v1/completions", json={"model": model, "prompt": q})
                        r.raise_for_status()
                    except BaseException as exc:
                        errors.append(exc)

        threads = [threading.Thread(target=client, args=(s,)) for s in shares]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        concurrent_qps = len(questions) / (time.perf_counter() - t0)
        if errors:
            raise RuntimeError(f"{len(errors)} requests failed: {errors[0]}")
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(60)

    report = {
        "machine": c.machine(),
        "stack": args.stack,
        "questions": len(questions),
        "seconds_per_question": {
            "in_process": statistics.median(local_s),
            "http": statistics.median(http_s),
        },
        "one_client_ratio": round(one_client, 3),
        "serial_qps": round(serial_qps, 3),
        "concurrent_qps": round(concurrent_qps, 3),
        "clients": args.clients,
        "concurrent_vs_serial": round(concurrent_qps / serial_qps, 3),
    }
    if args.json:
        print(json.dumps(report, indent=1))
        return
    print(f"machine: {report['machine']}  stack: {args.stack}  questions: {len(questions)}")
    print(
        f"seconds/question: in-process {statistics.median(local_s):.3f}, "
        f"HTTP {statistics.median(http_s):.3f}"
    )
    print(
        c.ratio_line("server / in-process, one client, seconds per question", one_client, "<= 1.05")
    )
    print(
        c.ratio_line(
            f"{args.clients} clients over HTTP / one by one in-process, questions per second",
            concurrent_qps / serial_qps,
            ">= 1.0",
        )
    )


if __name__ == "__main__":
    main()
