"""Score ``edgestack eval --json`` reports on the three held-out files, as the README reports them.

    edgestack eval --stack STACK --data eval.jsonl --json > generated.json
    edgestack eval --stack STACK --data eval-people.jsonl --json > people.json
    edgestack eval --stack STACK --data eval-offtopic.jsonl --match text --json > offtopic.json
    python models/smollm2-word-problems/score.py generated.json people.json offtopic.json

Per in-scope file: the number right (``edgestack eval``'s own accuracy), the whole answer
sentence exactly as expected, the names and objects of the question copied exactly into the
answer (``words`` of each line), and refusals (wrongly); for the out-of-scope file: refusals.
A refusal is an answer that says it can only answer arithmetic word problems. Pure Python.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REFUSAL = "I can only answer arithmetic word problems."


def is_refusal(answer: str) -> bool:
    """The stack's refusal sentence (or, for prompted models, one that says the same)."""
    text = " ".join(answer.lower().split())
    return "can only answer arithmetic" in text


def _rows(path: Path) -> dict[str, dict[str, Any]]:
    lines = path.read_text(encoding="utf-8").splitlines()
    return {row["question"]: row for row in map(json.loads, filter(str.strip, lines))}


def score(report: dict[str, Any], only: set[str] | None = None) -> dict[str, Any]:
    """The figures of one report, joined with its data file by question; ``only``: just the
    cases with these questions (a report on a whole file scored on a subset of it)."""
    data_path = Path(report["data"])
    if not data_path.is_file():
        data_path = HERE / data_path.name
    rows = _rows(data_path)
    cases = [c for c in report["cases"] if only is None or c["question"] in only]
    n = len(cases)
    refused = sum(is_refusal(c["answer"]) for c in cases)
    out: dict[str, Any] = {
        "data": data_path.name,
        "n": n,
        "seconds_per_question": sum(c["seconds"] for c in cases) / n,
        "peak_rss_mb": report.get("peak_rss_mb"),
        "refused": refused / n,
    }
    if all(isinstance(rows[c["question"]]["answer"], int | float) for c in cases):
        sentences = sum(c["answer"].strip() == rows[c["question"]]["sentence"] for c in cases)
        with_words = [c for c in cases if rows[c["question"]].get("words")]
        copied = sum(
            all(w in c["answer"] for w in rows[c["question"]]["words"]) for c in with_words
        )
        out.update(
            number=sum(c["correct"] for c in cases) / n,
            sentence=sentences / n,
            words=copied / len(with_words) if with_words else None,
            n_words=len(with_words),
        )
    return out


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("reports", nargs="+", type=Path, help="edgestack eval --json outputs")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument(
        "--only", type=Path, action="append", help="score only the questions of this file"
    )
    args = parser.parse_args(argv)
    only = {q for p in args.only for q in _rows(p)} if args.only else None
    results = [score(json.loads(p.read_text(encoding="utf-8")), only) for p in args.reports]
    if args.json:
        print(json.dumps(results, indent=1))
        return
    for r in results:
        if "number" in r:
            print(
                f"{r['data']}: number {_pct(r['number'])}, sentence {_pct(r['sentence'])}, "
                f"names/objects copied {_pct(r['words'])} (of {r['n_words']}), "
                f"refused {_pct(r['refused'])}, {r['seconds_per_question']:.2f} s/question, "
                f"peak {r['peak_rss_mb']:.0f} MB (n={r['n']})"
            )
        else:
            print(
                f"{r['data']}: refused {_pct(r['refused'])}, "
                f"{r['seconds_per_question']:.2f} s/question (n={r['n']})"
            )


if __name__ == "__main__":
    main()
