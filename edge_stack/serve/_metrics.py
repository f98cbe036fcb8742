"""Counters for ``GET /metrics``, in Prometheus' text exposition format (version 0.0.4)."""

from __future__ import annotations

import threading
from collections import defaultdict

from ..pipeline._events import Answer

PREFIX = "edgestack"


def _labels(**labels: str) -> str:
    def esc(v: str) -> str:
        return v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")

    return "{" + ",".join(f'{k}="{esc(v)}"' for k, v in sorted(labels.items())) + "}"


class Metrics:
    """Request, token and stage-time counters; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: defaultdict[tuple[str, int], int] = defaultdict(int)
        self.tokens: defaultdict[tuple[str, str, str], int] = defaultdict(int)
        self.stage_seconds: defaultdict[tuple[str, str], float] = defaultdict(float)
        self.stage_calls: defaultdict[tuple[str, str], int] = defaultdict(int)

    def request(self, endpoint: str, status: int) -> None:
        with self._lock:
            self.requests[endpoint, status] += 1

    def answered(self, model: str, answer: Answer) -> None:
        with self._lock:
            for s in answer.stages:
                self.tokens[model, s.name, "prompt"] += s.prompt_tokens
                self.tokens[model, s.name, "completion"] += s.completion_tokens
                self.stage_seconds[model, s.name] += s.seconds
                self.stage_calls[model, s.name] += 1

    def render(self, *, running: int, waiting: int, loaded: list[str], served: list[str]) -> str:
        out: list[str] = []

        def metric(name: str, kind: str, doc: str, rows: list[tuple[str, float]]) -> None:
            out.append(f"# HELP {PREFIX}_{name} {doc}")
            out.append(f"# TYPE {PREFIX}_{name} {kind}")
            out.extend(f"{PREFIX}_{name}{labels} {value:g}" for labels, value in rows)

        with self._lock:
            metric(
                "requests_total",
                "counter",
                "HTTP requests answered, by endpoint and status code.",
                [
                    (_labels(endpoint=e, code=str(c)), n)
                    for (e, c), n in sorted(self.requests.items())
                ],
            )
            metric(
                "tokens_total",
                "counter",
                "Tokens evaluated (prompt) and generated (completion), by stack and stage.",
                [
                    (_labels(model=m, stage=s, kind=k), n)
                    for (m, s, k), n in sorted(self.tokens.items())
                ],
            )
            metric(
                "stage_seconds_total",
                "counter",
                "Seconds spent in each stage (prompt and generation).",
                [
                    (_labels(model=m, stage=s), v)
                    for (m, s), v in sorted(self.stage_seconds.items())
                ],
            )
            metric(
                "stage_calls_total",
                "counter",
                "Stage runs completed.",
                [(_labels(model=m, stage=s), v) for (m, s), v in sorted(self.stage_calls.items())],
            )
        metric("requests_running", "gauge", "Requests generating now.", [("", running)])
        metric("queue_depth", "gauge", "Requests waiting for a turn.", [("", waiting)])
        metric(
            "model_loaded",
            "gauge",
            "1 for each served stack that is loaded now, 0 otherwise.",
            [(_labels(model=m), 1 if m in loaded else 0) for m in served],
        )
        return "\n".join(out) + "\n"
