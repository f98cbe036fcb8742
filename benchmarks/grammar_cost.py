"""What the largest grammars edgestack accepts cost llama.cpp per generated token.

    nice -n 19 python benchmarks/grammar_cost.py [--tokens 16] [--refused] [--json]

llama.cpp applies a GBNF grammar to every candidate token at every step, and its cost depends on
the grammar's shape far more than on its size: ``[a-z]* [a-z]* ...`` with 400 items (2.8 KB) took
25 s per token with the bundled stack. edgestack's check bounds it with
``MAX_STACKS_PER_CHAR`` (edge_stack/formats/grammar/_validate.py; the estimate it bounds is in
``_advance.py`` beside it). For each family of grammars
below this script finds the largest size the check accepts, then generates ``--tokens`` tokens
greedily with the bundled stack's base model (models/word-problems, through llama-cpp-python's
own sampler chain: grammar, then greedy, as edgestack builds it) and times each
``llama_sampler_sample`` call in CPU time of the calling thread (the grammar runs there; CPU
time does not count waiting for the other engineers' processes on a shared machine, wall time
does). The anchor is the same sampling without a grammar, in the same run. ``--refused`` also
times the smallest size refused (capped at 10 s per family). Goal: the worst accepted grammar
costs under 50 ms per token.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

from _common import arg_parser, machine

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "models" / "word-problems" / "base.q8_0.gguf"
PROMPT = b"Question: Tom has 12 apples and buys 7 more. How many apples does he have?\nExpression:"
GOAL_MS = 50.0
REFUSED_BUDGET_S = 10.0


def _tree(n: int) -> str:
    """n items [a-z ]* one after another through a balanced tree of rules (deep stacks)."""
    rules: list[str] = []

    def build(k: int) -> str:
        name = f"t{len(rules)}"
        rules.append("")
        index = len(rules) - 1
        rules[index] = (
            f"{name} ::= [a-z ]*" if k == 1 else f"{name} ::= {build(k // 2)} {build(k - k // 2)}"
        )
        return name

    return f"root ::= {build(n)}\n" + "\n".join(rules) + "\n"


def _left(n: int) -> str:
    rules = ["l1 ::= [a-z ]*", *(f"l{i} ::= l{i - 1} [a-z ]*" for i in range(2, n + 1))]
    return f"root ::= l{n}\n" + "\n".join(rules) + "\n"


def _alternatives_of(m: int) -> Callable[[int], str]:
    def grammar(k: int) -> str:
        items = " ".join(["[a-z ]*"] * m)
        return "root ::= " + " | ".join(f'({items} "#{i}")' for i in range(k))

    return grammar


#: family -> grammar of size n
FAMILIES: dict[str, Callable[[int], str]] = {
    "[a-z]* x n": lambda n: "root ::= " + " ".join(["[a-z]*"] * n),
    "[a-z ]* x n": lambda n: "root ::= " + " ".join(["[a-z ]*"] * n),
    "[a-z]? x n": lambda n: "root ::= " + " ".join(["[a-z]?"] * n),
    '("x" [a-z ]*)? x n': lambda n: "root ::= " + " ".join(['("x" [a-z ]*)?'] * n),
    "n x [a-z ]* in a tree of rules": _tree,
    "n x [a-z ]* in left-nested rules": _left,
    "n alternatives of 4 x [a-z ]*": _alternatives_of(4),
    "n alternatives of 16 x [a-z ]*": _alternatives_of(16),
    "n alternatives [a-z ]+ then a tag": lambda n: (
        "root ::= " + " | ".join(f'[a-z ]+ "#{i}"' for i in range(n))
    ),
    "n words": lambda n: "root ::= " + " | ".join(f'"w{i}"' for i in range(n)),
    "(n words)*": lambda n: (
        "root ::= (" + " | ".join(f'"{chr(97 + i % 26)}{i}"' for i in range(n)) + ")*"
    ),
}


def _accepted(grammar: str) -> bool:
    from edge_stack.errors import GrammarError
    from edge_stack.formats.grammar._validate import validate_grammar

    try:
        validate_grammar(grammar)
    except GrammarError:
        return False
    return True


def largest_accepted(family: Callable[[int], str], top: int = 4096) -> int:
    """The largest n whose grammar the check accepts (accepted sizes are contiguous)."""
    low, high = 1, 2
    while high <= top and _accepted(family(high)):
        low, high = high, high * 2
    high = min(high, top + 1)
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (mid, high) if _accepted(family(mid)) else (low, mid)
    return low


class Generator:
    """The bundled base model and one context, generating greedily with a grammar."""

    def __init__(self) -> None:
        from edge_stack.engines.llama._lib import lib

        self.lib = lib()
        self.model = self.lib.llama_model_load_from_file(
            str(MODEL).encode(), self.lib.llama_model_default_params()
        )
        assert self.model, MODEL
        self.vocab = self.lib.llama_model_get_vocab(self.model)
        params = self.lib.llama_context_default_params()
        params.n_ctx = params.n_batch = 256
        params.n_threads = params.n_threads_batch = 1
        self.ctx = self.lib.llama_init_from_model(self.model, params)
        tokens = (self.lib.llama_token * 256)()
        self.n_prompt = self.lib.llama_tokenize(
            self.vocab, PROMPT, len(PROMPT), tokens, 256, False, True
        )
        self.prompt = tokens

    def run(self, grammar: str | None, n_tokens: int, budget_s: float = 60.0) -> list[float]:
        """CPU seconds of each llama_sampler_sample call, for up to ``n_tokens`` tokens."""
        lib = self.lib
        lib.llama_memory_clear(lib.llama_get_memory(self.ctx), True)
        lib.llama_decode(self.ctx, lib.llama_batch_get_one(self.prompt, self.n_prompt))
        chain = lib.llama_sampler_chain_init(lib.llama_sampler_chain_default_params())
        if grammar is not None:
            smpl = lib.llama_sampler_init_grammar(self.vocab, grammar.encode(), b"root")
            assert smpl, "llama.cpp refused a grammar the check accepted"
            lib.llama_sampler_chain_add(chain, smpl)
        lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_greedy())
        times: list[float] = []
        one = (lib.llama_token * 1)()
        try:
            for _ in range(n_tokens):
                start = time.thread_time()
                token = lib.llama_sampler_sample(chain, self.ctx, -1)
                times.append(time.thread_time() - start)
                if lib.llama_vocab_is_eog(self.vocab, token) or sum(times) > budget_s:
                    break
                one[0] = token
                lib.llama_decode(self.ctx, lib.llama_batch_get_one(one, 1))
        finally:
            lib.llama_sampler_free(chain)
        return times


def _row(name: str, n: int, times: list[float]) -> dict[str, object]:
    ms = [t * 1000 for t in times]
    return {
        "family": name,
        "n": n,
        "tokens": len(ms),
        "mean_ms": round(statistics.fmean(ms), 3),
        "max_ms": round(max(ms), 3),
    }


def main() -> None:
    parser = arg_parser(__doc__)
    parser.add_argument("--tokens", type=int, default=16)
    parser.add_argument("--refused", action="store_true", help="also time the smallest refused")
    args = parser.parse_args()
    gen = Generator()
    baseline = gen.run(None, args.tokens)
    rows = []
    for name, family in FAMILIES.items():
        n = largest_accepted(family)
        rows.append(_row(name, n, gen.run(family(n), args.tokens)))
        if args.refused:
            over = _row(name, n + 1, gen.run(family(n + 1), args.tokens, REFUSED_BUDGET_S))
            rows.append({**over, "refused": True})
    accepted = [r for r in rows if not r.get("refused")]
    worst = max(accepted, key=lambda r: float(str(r["mean_ms"])))
    base_ms = statistics.fmean(baseline) * 1000
    result = {
        "machine": machine(),
        "no_grammar_ms": round(base_ms, 4),
        "rows": rows,
        "worst": worst,
        "goal_ms": GOAL_MS,
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"sampling without a grammar: {base_ms:.3f} ms per token (CPU)")
    for r in rows:
        tag = "refused" if r.get("refused") else "largest accepted"
        print(
            f"{r['family']:38} n={r['n']:<5} ({tag}): {r['mean_ms']:8.2f} ms per token "
            f"(max {r['max_ms']:.2f}, {r['tokens']} tokens)"
        )
    mean = float(str(worst["mean_ms"]))
    verdict = "pass" if mean < GOAL_MS else "miss"
    print(
        f"worst accepted: {worst['family']} n={worst['n']}: {mean:.2f} ms per token, "
        f"{mean / base_ms:.0f}x sampling without a grammar (goal < {GOAL_MS:.0f} ms): {verdict}"
    )


if __name__ == "__main__":
    main()
