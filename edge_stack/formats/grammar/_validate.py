"""GBNF grammars checked in Python before llama.cpp parses them.

llama.cpp's grammar parser (``src/llama-grammar.cpp``) trusts its input. A grammar that can match
nothing at some point (``[z-a]``, ``"\\x00"``) aborts the process at the first token sampled
there; 100,000 nested parentheses overflow its recursive parser; ``"a"{5,2}`` and left recursion
through a rule that can be empty exhaust memory; a long chain of rules or many alternatives
make it build its parse stacks for seconds to minutes (measured: 20,000 alternatives 0.8 s,
16 levels of two-way rules 12 s). :func:`validate_grammar` parses a grammar exactly as llama.cpp
does and refuses, with a line and a column, what llama.cpp would refuse and what could hurt it:

- more than :data:`MAX_GRAMMAR_BYTES` of UTF-8, invalid UTF-8, a NUL character;
- groups nested deeper than :data:`MAX_NESTING_DEPTH`;
- more than :data:`MAX_RULES` rules or :data:`MAX_ELEMENTS` elements once groups and
  repetitions are expanded (``"ab"{3}`` is 6 elements);
- more than :data:`MAX_ALTERNATIVES` alternatives open at one point (counted through the rules
  they start with), more than :data:`MAX_STACK_ENTRIES` parse-stack entries built in one step, a
  chain of more than :data:`MAX_CHAIN` rules each starting with the next;
- more than :data:`MAX_STACKS_PER_CHAR` parse stacks built per generated character (the stacks
  open at one point, each going on past every following item that can match nothing:
  ``[a-z]* [a-z]* ...``), and recursion that leaves an optional item behind at each level
  (:mod:`edge_stack.formats.grammar._advance`);
- llama.cpp's own refusals: syntax, unknown escapes, undefined rules, no ``root``, left
  recursion, more than :data:`MAX_REPETITIONS` repetitions;
- what llama.cpp accepts but cannot run: a reversed range, a class or string only U+0000 could
  match, a repetition whose maximum is below its minimum, a UTF-16 surrogate (``\\uD800``: no
  UTF-8 text has one, so what matches it is invalid UTF-8).

The worst grammars these limits let through take llama.cpp at most 16 ms to parse and to build
its first parse stacks (measured: 1,024 alternatives under a 63-rule chain 16 ms, 240,000
elements from repetitions 12 ms, 128 KiB of text 8 ms, a 255-rule chain 1 ms). Each sampled
token then costs llama.cpp about (open alternatives) x (vocabulary size) character matches, plus
the parse stacks it builds per character: the worst grammars the limits let through cost 40 ms
per token on average (80 ms for the slowest) with the bundled stack (CPU time;
benchmarks/grammar_cost.py), where 400 x ``[a-z]*`` took 25 s.

The parser is :mod:`edge_stack.formats.grammar._parse`, the rule checks (undefined rules, ``root``, left
recursion, fan-out) :mod:`edge_stack.formats.grammar._graph`. Error messages name a line and column and at
most a rule name or one escaped character: never the grammar's text, which may come from any file.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from ...errors import GrammarError
from ._advance import check_per_char
from ._graph import Limits, check_rules
from ._parse import LLAMA_MAX_REPETITIONS, Parser, error_at, escaped, position

__all__ = [
    "MAX_ALTERNATIVES",
    "MAX_CHAIN",
    "MAX_ELEMENTS",
    "MAX_GRAMMAR_BYTES",
    "MAX_NESTING_DEPTH",
    "MAX_REPETITIONS",
    "MAX_RULES",
    "MAX_STACKS_PER_CHAR",
    "MAX_STACK_ENTRIES",
    "GrammarInfo",
    "TokenRef",
    "validate_grammar",
]

#: largest grammar accepted, in bytes of UTF-8 (llama.cpp's json.gbnf is 1 KB)
MAX_GRAMMAR_BYTES = 128 * 1024
#: deepest nesting of parentheses (llama.cpp parses groups recursively)
MAX_NESTING_DEPTH = 64
#: most rules after expansion: named ones, plus one per group and per optional repetition
MAX_RULES = 4096
#: most grammar elements after expansion (llama.cpp stores 8 bytes per element)
MAX_ELEMENTS = 256 * 1024
#: most alternatives llama.cpp may have to weigh at one point of the grammar
MAX_ALTERNATIVES = 1024
#: most entries in the parse stacks llama.cpp builds at one point (all stacks together)
MAX_STACK_ENTRIES = 64 * 1024
#: longest chain of rules each of which can start with the next (llama.cpp's time grows with
#: its square)
MAX_CHAIN = 256
#: llama.cpp's own limit on repetitions of one item (and of nested ones multiplied)
MAX_REPETITIONS = LLAMA_MAX_REPETITIONS
#: most parse stacks llama.cpp may build for one generated character: at any point of the
#: grammar, the stacks each stack open there makes when it moves past a character, summed
#: (:mod:`._advance`); 43 x ``[a-z]*`` in a row make 990, a list of 1,024 words 1,024
MAX_STACKS_PER_CHAR = 1024

_LIMITS = Limits(MAX_ALTERNATIVES, MAX_STACK_ENTRIES, MAX_CHAIN)


@dataclass(frozen=True)
class TokenRef:
    """A token terminal: ``<[id]>`` (``token_id``) or ``<text>`` (``text``, brackets included,
    which llama.cpp tokenizes with special tokens on); ``negated`` for ``!<...>``."""

    line: int
    column: int
    token_id: int | None
    text: str | None
    negated: bool


@dataclass(frozen=True)
class GrammarInfo:
    """What a valid grammar expands to in llama.cpp."""

    rules: int
    elements: int
    #: the most alternatives llama.cpp may weigh at one point
    alternatives: int
    tokens: tuple[TokenRef, ...]


def validate_grammar(
    grammar: str | bytes, *, n_vocab: int | None = None, name: str = "GBNF grammar"
) -> GrammarInfo:
    """Check ``grammar`` as llama.cpp will parse it; raise :class:`GrammarError` if it is not safe.

    ``bytes`` must be UTF-8. With ``n_vocab`` (the model's vocabulary size), ``<[id]>`` tokens
    must exist. ``name`` starts every message ("GBNF grammar", "GBNF grammar file x.gbnf").
    Limits: see the module docstring. Raises fast, before parsing, for a grammar too big.
    """
    if isinstance(grammar, bytes):
        if len(grammar) > MAX_GRAMMAR_BYTES:
            raise _too_big(name, len(grammar))
        try:
            text = grammar.decode("utf-8")
        except UnicodeDecodeError as exc:
            good = grammar[: exc.start].decode("utf-8")
            line, column = position(good, len(good))
            raise GrammarError(
                f"{name} line {line}, column {column}: expected UTF-8 text, found the byte "
                f"{grammar[exc.start]:#04x}; save the grammar as UTF-8"
            ) from None
    else:
        text = grammar
        if len(text) > MAX_GRAMMAR_BYTES:  # a character is at least one byte
            raise _too_big(name, len(text.encode("utf-8", "surrogatepass")))
    info = _validate(text, name)
    if n_vocab is not None:
        for tok in info.tokens:
            if tok.token_id is not None and tok.token_id >= n_vocab:
                raise GrammarError(
                    f"{name} line {tok.line}, column {tok.column}: expected a token id below "
                    f"{n_vocab} (the model's vocabulary), found {tok.token_id}; fix the id"
                )
    return info


def _too_big(name: str, size: int) -> GrammarError:
    return GrammarError(
        f"{name}: expected at most {MAX_GRAMMAR_BYTES:,} bytes, found {size:,}; "
        "make the grammar smaller (name shared parts as rules, or split the task across stages)"
    )


@lru_cache(maxsize=64)
def _validate(text: str, name: str) -> GrammarInfo:
    # Cached: each generation with a grammar checks it again, and validation is pure.
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError as exc:
        line, column = position(text, exc.start)
        raise GrammarError(
            f"{name} line {line}, column {column}: expected UTF-8 text, found a lone surrogate "
            f"{escaped(ord(text[exc.start]))}; pass valid Unicode text"
        ) from None
    if size > MAX_GRAMMAR_BYTES:
        raise _too_big(name, size)
    nul = text.find("\0")
    if nul >= 0:
        raise error_at(
            text, name, nul, "found a NUL character (U+0000)", "remove it (\\x00 in [...] is fine)"
        )
    parser = Parser(
        text,
        name,
        max_depth=MAX_NESTING_DEPTH,
        max_rules=MAX_RULES,
        max_elements=MAX_ELEMENTS,
    )
    parser.parse()
    names = list(parser.symbols)
    found = check_rules(
        parser.rules, names, parser.first_use, parser.defined, parser.fail, limits=_LIMITS
    )
    check_per_char(found, names, parser.defined, parser.fail, MAX_STACKS_PER_CHAR)
    elements = sum(len(rule) for rule in parser.rules if rule is not None)
    if elements > MAX_ELEMENTS:
        raise parser.fail(
            0,
            f"expected at most {MAX_ELEMENTS:,} grammar elements, found {elements:,}",
            "repeat less: repetitions are expanded",
        )
    tokens = tuple(
        TokenRef(*position(text, at), token_id, token_text, negated)
        for at, token_id, token_text, negated in parser.tokens
    )
    return GrammarInfo(len(parser.symbols), elements, found.widest, tokens)
