"""Measuring a stack on a data set: accuracy, per-stage timings, a JSON report.

The data is JSON Lines, one object per line with the question and the expected answer::

    {"question": "What is 15 plus 28?", "answer": 43}

Match "number" (the default) compares the last number in the stack's answer with the expected
number, as arithmetic answers end with it; match "text" compares the whole answer with the
expected text, ignoring case, surrounding whitespace and runs of whitespace.
"""

from __future__ import annotations

import json
import math
import re
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from ..errors import BadArgument, ModelFileNotFound
from ..util._units import MB, format_bytes

if TYPE_CHECKING:
    from ..pipeline._stack import Stack

__all__ = ["Case", "CaseResult", "EvalReport", "evaluate", "final_number", "load_cases"]

Match = Literal["number", "text"]
MATCHES: tuple[Match, ...] = ("number", "text")

# Thousands separators are accepted ("1,250"), a sentence's final period is not a decimal point,
# and a minus sign counts only when it does not join two words ("23-18" is 23 and 18).
_NUMBER = re.compile(r"(?:(?<!\w)-)?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?")


@dataclass(frozen=True)
class Case:
    """One line of the data: the question and its expected answer (number or text)."""

    line: int
    question: str
    answer: str | int | float


@dataclass(frozen=True)
class CaseResult:
    """What the stack answered for one case, and whether it matched."""

    line: int
    question: str
    expected: str | int | float
    answer: str
    correct: bool
    seconds: float
    stages: dict[str, str] = field(default_factory=dict)  # stage name -> output


@dataclass(frozen=True)
class EvalReport:
    """Accuracy and timings over every case (``cases`` holds each result)."""

    stack: str
    data: str
    match: Match
    n: int
    correct: int
    accuracy: float
    seconds: float
    seconds_per_question: float
    median_seconds_per_question: float
    #: stage name -> median seconds, median prompt tokens and median generated tokens
    stages: dict[str, dict[str, float]]
    cases: tuple[CaseResult, ...]
    #: peak resident memory of this process so far (MB, 10^6 bytes; None where the OS does not
    #: say)
    peak_rss_mb: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """Everything, for ``--json`` and ``--report``."""
        return asdict(self)

    def summary(self) -> str:
        """A few lines for people."""
        lines = [
            f"accuracy {self.accuracy:.1%} ({self.correct}/{self.n}, match {self.match})",
            f"seconds per question {self.seconds_per_question:.3f} "
            f"(median {self.median_seconds_per_question:.3f}, wall time in all {self.seconds:.1f})",
        ]
        if self.peak_rss_mb is not None:
            lines[-1] += f", peak memory {format_bytes(self.peak_rss_mb * MB)}"
        for name, t in self.stages.items():
            lines.append(
                f"  stage {name}: median {t['median_seconds']:.3f}s, "
                f"{t['median_prompt_tokens']:g} prompt + {t['median_completion_tokens']:g} "
                "generated tokens"
            )
        return "\n".join(lines)


def _peak_rss_mb() -> float | None:
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports KiB, macOS bytes.
    return peak * (1 if sys.platform == "darwin" else 1024) / MB


def final_number(text: str) -> float | None:
    """The last number in ``text`` (``"... is 41."`` -> 41.0), or None."""
    found = _NUMBER.findall(text)
    return float(found[-1].replace(",", "")) if found else None


def _normal_text(text: str) -> str:
    return " ".join(text.split()).casefold()


def matches(answer: str, expected: str | int | float, match: Match) -> bool:
    """Whether ``answer`` counts as ``expected`` under ``match``."""
    if match == "text":
        return _normal_text(answer) == _normal_text(str(expected))
    got = final_number(answer)
    want = expected if not isinstance(expected, str) else final_number(expected)
    return got is not None and want is not None and math.isclose(got, float(want), abs_tol=1e-9)


def load_cases(path: str | Path, *, match: Match = "number") -> list[Case]:
    """Read a JSON Lines data file; a bad line raises BadArgument naming the file and line."""
    p = Path(path).expanduser()
    if not p.is_file():
        what = "is a folder" if p.is_dir() else "does not exist"
        raise ModelFileNotFound(f"data file {p} {what}; give a .jsonl file")
    cases: list[Case] = []
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise BadArgument(f"{p}: not UTF-8 text ({exc}); save the data as UTF-8") from None
    fix = 'each line must be an object like {"question": "What is 2 plus 3?", "answer": 5}'
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{p}, line {number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise BadArgument(f"{where}: not valid JSON ({exc.msg}); {fix}") from None
        if not isinstance(row, dict):
            raise BadArgument(f"{where}: not a JSON object; {fix}")
        question, answer = row.get("question"), row.get("answer")
        if not isinstance(question, str) or not question.strip():
            raise BadArgument(f"{where}: 'question' must be a non-empty string; {fix}")
        if isinstance(answer, bool) or not isinstance(answer, str | int | float):
            raise BadArgument(f"{where}: 'answer' must be a number or a string; {fix}")
        if match == "number" and (
            (isinstance(answer, str) and final_number(answer) is None)
            or (isinstance(answer, float) and not math.isfinite(answer))
        ):
            raise BadArgument(
                f"{where}: 'answer' {answer!r} holds no number, but --match is number; "
                "give a number or use --match text"
            )
        cases.append(Case(number, question, answer))
    if not cases:
        raise BadArgument(f"{p} holds no questions; {fix}")
    return cases


def evaluate(
    stack: Stack,
    cases: Sequence[Case],
    *,
    match: Match = "number",
    data: str = "",
    progress: Callable[[int, int], None] | None = None,
) -> EvalReport:
    """Ask ``stack`` every question (greedy as the manifest says) and score the answers."""
    if match not in MATCHES:
        raise BadArgument(f"unknown match {match!r}; use one of {', '.join(MATCHES)}")
    results: list[CaseResult] = []
    per_stage: dict[str, list[tuple[float, int, int]]] = {s.name: [] for s in stack.spec.stages}
    started = time.perf_counter()
    for done, case in enumerate(cases, start=1):
        answer = stack.ask(case.question)
        for trace in answer.stages:
            per_stage[trace.name].append(
                (trace.seconds, trace.prompt_tokens, trace.completion_tokens)
            )
        results.append(
            CaseResult(
                line=case.line,
                question=case.question,
                expected=case.answer,
                answer=answer.text,
                correct=matches(answer.text, case.answer, match),
                seconds=answer.seconds,
                stages={t.name: t.output for t in answer.stages},
            )
        )
        if progress is not None:
            progress(done, len(cases))
    total = time.perf_counter() - started
    n = len(results)
    correct = sum(r.correct for r in results)
    stages = {
        name: {
            "median_seconds": statistics.median(v[0] for v in values),
            "median_prompt_tokens": statistics.median(v[1] for v in values),
            "median_completion_tokens": statistics.median(v[2] for v in values),
        }
        for name, values in per_stage.items()
        if values
    }
    return EvalReport(
        stack=stack.name,
        data=data,
        match=match,
        n=n,
        correct=correct,
        accuracy=correct / n if n else 0.0,
        seconds=total,
        seconds_per_question=total / n if n else 0.0,
        median_seconds_per_question=statistics.median(r.seconds for r in results) if n else 0.0,
        stages=stages,
        cases=tuple(results),
        peak_rss_mb=_peak_rss_mb(),
    )
