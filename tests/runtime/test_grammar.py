"""GBNF grammars are checked in Python before llama.cpp sees them (edge_stack.formats.grammar._validate).

Invalid and hostile grammars are refused with a line and column and never reach llama.cpp;
valid ones, llama.cpp's own examples among them, are accepted by the check and by llama.cpp.
"""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from edge_stack.errors import GrammarError
from edge_stack.formats.grammar._validate import (
    MAX_ALTERNATIVES,
    MAX_CHAIN,
    MAX_ELEMENTS,
    MAX_GRAMMAR_BYTES,
    MAX_NESTING_DEPTH,
    MAX_REPETITIONS,
    MAX_RULES,
    MAX_STACK_ENTRIES,
    MAX_STACKS_PER_CHAR,
    validate_grammar,
)

if TYPE_CHECKING:
    from edge_stack.engines.llama import LlamaModel

# llama.cpp's grammars/json.gbnf (llama-cpp-python 0.3.36), verbatim.
JSON_GBNF = r"""root   ::= object
value  ::= object | array | string | number | ("true" | "false" | "null") ws

object ::=
  "{" ws (
            string ":" ws value
    ("," ws string ":" ws value)*
  )? "}" ws

array  ::=
  "[" ws (
            value
    ("," ws value)*
  )? "]" ws

string ::=
  "\"" (
    [^"\\\x7F\x00-\x1F] |
    "\\" (["\\bfnrt] | "u" [0-9a-fA-F]{4}) # escapes
  )* "\"" ws

number ::= ("-"? ([0-9] | [1-9] [0-9]{0,15})) ("." [0-9]+)? ([eE] [-+]? [0-9] [1-9]{0,15})? ws

# Optional space: by convention, applied in this grammar after literal chars when allowed
ws ::= | " " | "\n" [ \t]{0,20}
"""
# llama.cpp's grammars/arithmetic.gbnf and list.gbnf, verbatim.
ARITHMETIC_GBNF = """root  ::= (expr "=" ws term "\\n")+
expr  ::= term ([-+*/] term)*
term  ::= ident | num | "(" ws expr ")" ws
ident ::= [a-z] [a-z0-9_]* ws
num   ::= [0-9]+ ws
ws    ::= [ \\t\\n]*
"""
LIST_GBNF = """root ::= item+

# Excludes various line break characters
item ::= "- " [^\\r\\n\\x0b\\x0c\\x85\\u2028\\u2029]+ "\\n"
"""


def _chain(depth: int, alternatives: int) -> str:
    """``depth`` rules each starting with the next, the last with ``alternatives`` strings."""
    rules = ['root ::= r1 "x"', *(f'r{i} ::= r{i + 1} "x"' for i in range(1, depth))]
    ends = " | ".join(f'"a{i}"' for i in range(alternatives))
    return "\n".join([*rules, f"r{depth} ::= {ends}"]) + "\n"


def _two_way(levels: int) -> str:
    """2**levels parse stacks from a grammar of a few hundred bytes."""
    rules = [f'r{i} ::= r{i + 1} "x" | r{i + 1} "y"' for i in range(levels)]
    return "\n".join(rules).replace("r0 ", "root ", 1) + f'\nr{levels} ::= "z"\n'


def _optional_items(n: int, item: str = "[a-z]*") -> str:
    """``n`` items that can match nothing, one after another: each costs llama.cpp a parse
    stack per item after it at every generated character."""
    return "root ::= " + " ".join([item] * n)


def _tree(levels: int) -> str:
    """2**levels items [a-z ]* in a row, through a tree of rules (deeper parse stacks)."""
    rules = ["t0 ::= [a-z ]*", *(f"t{i} ::= t{i - 1} t{i - 1}" for i in range(1, levels + 1))]
    return f"root ::= t{levels}\n" + "\n".join(rules) + "\n"


def _words(n: int, repeated: bool = False) -> str:
    words = " | ".join(f'"{chr(97 + i % 26)}{i}"' for i in range(n))
    return f"root ::= ({words})*" if repeated else f"root ::= {words}"


VALID = [
    pytest.param(JSON_GBNF, id="json.gbnf"),
    pytest.param(ARITHMETIC_GBNF, id="arithmetic.gbnf"),
    pytest.param(LIST_GBNF, id="list.gbnf"),
    pytest.param('root ::= "yes" | "no"', id="alternatives"),
    pytest.param('root ::= [0-9]+ "." [0-9]*', id="classes"),
    pytest.param("root ::= [a-] [^\\]\\-] [\\x41-\\u00e9] [\\U0001F600]", id="class-escapes"),
    pytest.param('root ::= "\\x41\\u00e9\\U0001F600\\t\\r\\n\\\\\\"\\[\\]\\-"', id="escapes"),
    pytest.param('root ::= "é" "日本" .', id="utf8-and-any"),
    pytest.param('root ::= "a"{3} "b"{0,2} "c"{2,} "d"{0,0} "e"?', id="repetitions"),
    pytest.param('root ::= "a"{2,5000}', id="max-above-limit-is-open"),
    pytest.param('root ::= "a" |', id="empty-alternative"),
    pytest.param('root ::= "a"\r\nroot ::= "b"\r\n', id="crlf-and-redefinition"),
    pytest.param('# comment\nroot ::= ( # here too\n  "a"\n  | "b" )\n', id="comments-newlines"),
    pytest.param('root ::= x "!"\nx ::= "a" x | ""', id="right-recursion"),
    pytest.param("root ::= <[5]> !<[6]>", id="token-ids"),
    pytest.param(
        "root ::= " + "(" * MAX_NESTING_DEPTH + '"a"' + ")" * MAX_NESTING_DEPTH, id="deep"
    ),
    pytest.param(_chain(MAX_CHAIN - 1, 4), id="longest-chain"),
    pytest.param(_chain(63, MAX_ALTERNATIVES), id="widest-under-a-chain"),
    pytest.param(_two_way(10), id="1024-stacks"),
    # the largest of each shape MAX_STACKS_PER_CHAR lets through (benchmarks/grammar_cost.py)
    pytest.param(_optional_items(43), id="43-optional-items"),
    pytest.param(_optional_items(44, "[a-z]?"), id="44-optional-characters"),
    pytest.param(_tree(4), id="16-optional-items-in-a-tree"),
    pytest.param(_words(MAX_ALTERNATIVES), id="1024-words"),
    pytest.param(_words(MAX_ALTERNATIVES - 1, repeated=True), id="repeated-choice-of-1023-words"),
    pytest.param('root ::= "a" x\nx ::= "b" x "c" | ""', id="recursion-with-required-end"),
    pytest.param('root ::= [\\uD7FF\\uE000-\\uFFFF] "\\U0001F600"', id="next-to-surrogates"),
]


@pytest.mark.parametrize("grammar", VALID)
def test_valid_grammars_pass(grammar: str) -> None:
    info = validate_grammar(grammar)
    assert 1 <= info.alternatives <= MAX_ALTERNATIVES and info.rules >= 1


# (grammar, substrings of the one-line message); each message starts "GBNF grammar line L, column C"
INVALID: list[tuple[str | bytes, list[str]]] = [
    ('root ::= "a\x00"', ["line 1, column 12", "NUL"]),
    ('root ::= "a"\x00 junk', ["line 1, column 13", "NUL"]),
    ("root ::= [z-a]", ["line 1, column 11", "'z' to 'a'", "a-z"]),
    ("root ::= [0-9a-z9-0]", ["line 1, column 17", "'9' to '0'"]),
    ('x ::= "a"\nroot ::= x\n\ny ::= "b" [b-a]', ["line 4, column 12", "'b' to 'a'"]),
    ('root ::= "\\x00"', ["line 1, column 11", "\\x00"]),
    ("root ::= [\\x00]", ["line 1, column 10", "matches none"]),
    ("root ::= [^\\x00-\\U0010FFFF]", ["line 1, column 10", "matches none"]),
    ("root ::= [^\\x01-\\U0010FFFF]", ["matches none"]),
    ('root ::= "\\q"', ["line 1, column 11", "unknown escape", "'q'"]),
    ('root ::= "\\x4"', ["line 1, column 11", "2 hex digits"]),
    ('root ::= "\\u12G4"', ["4 hex digits"]),
    ('root ::= "\\U00110000"', ["\\U0010ffff"]),
    ('root ::= "\\', ["unknown escape", "the end"]),
    (b'root ::= "\xff"', ["line 1, column 11", "UTF-8", "0xff"]),
    (b'root ::= "a"\nx ::= "\xc3"', ["line 2, column 8", "UTF-8", "0xc3"]),
    ('root ::= "\udcff"', ["line 1, column 11", "UTF-8", "surrogate"]),
    ("root ::= foo", ["line 1, column 10", "rule 'foo'", "foo ::="]),
    ('root ::= "a" | b-c\n', ["line 1, column 16", "rule 'b-c'"]),
    ('start ::= "a"', ["line 1, column 1", "'root'"]),
    ("", ["'root'"]),
    ("# only a comment\n", ["'root'"]),
    ('root ::= root "a" | "b"', ["line 1, column 1", "left recursion", "'root'"]),
    ('root ::= x\nx ::= y "a"\ny ::= x | "b"', ["left recursion"]),
    ('root ::= ("b"? root) "a"', ["left recursion", "'root'"]),
    # llama.cpp misses this one (b can be empty only through another rule) and runs out of memory
    ('root ::= a root "x" | "y"\na ::= b\nb ::= ""', ["left recursion", "'root'"]),
    ('root ::= "a"{5,2}', ["line 1, column 13", "{5,2}", "{2,5}"]),
    (f'root ::= "a"{{{MAX_REPETITIONS + 1}}}', ["line 1, column 13", f"{MAX_REPETITIONS}"]),
    ('root ::= "a"{99999999999999999999999999999}', ["repetitions"]),
    ('root ::= ("a"{0,100}){0,100}', ["line 1, column 22", "nested repetitions"]),
    ('root ::= "a"{,3}', ["line 1, column 14", "a number"]),
    ('root ::= "a"{3', ["'}'"]),
    ("root ::= *", ["line 1, column 10", "before this repetition"]),
    ('root ::= "a" )', ["line 1, column 14", "end of the rule", "')'"]),
    ('root ::= ( "a"', ["line 1, column 15", "')'", "column 10"]),
    ('root ::= "abc', ["line 1, column 10", "closing this string"]),
    ("root ::= [abc", ["line 1, column 10", "closing this class"]),
    ("root ::= <abc", ["line 1, column 10", "'>'"]),
    ("root ::= !x", ["line 1, column 11", "'<'"]),
    ("root ::= <[99999999999]>", ["line 1, column 12", "2^32"]),
    ('root :: "a"', ["line 1, column 6", "'::='"]),
    ('my_rule ::= "a"', ["line 1, column 3", "'::='", "'_'"]),
    ('root ::= "a"\n"b"', ["line 2, column 1", "rule name"]),
    (
        "root ::= " + "(" * (MAX_NESTING_DEPTH + 1) + '"a"' + ")" * (MAX_NESTING_DEPTH + 1),
        ["nested"],
    ),
    ("root ::= " + '"x"? ' * MAX_RULES, [f"at most {MAX_RULES} rules"]),
    ('root ::= "' + "a" * 200 + '"{2000}', ["line 1, column 212", f"{MAX_ELEMENTS:,}"]),
    (
        "root ::= " + " | ".join(f'"a{i}"' for i in range(MAX_ALTERNATIVES + 1)),
        ["line 1, column 1", f"at most {MAX_ALTERNATIVES} alternatives", "'root'"],
    ),
    (_two_way(11), [f"at most {MAX_ALTERNATIVES} alternatives"]),
    (_chain(MAX_CHAIN + 1, 1), [f"at most {MAX_CHAIN} rules in a chain"]),
    (_chain(80, 1000), [f"at most {MAX_STACK_ENTRIES} parse-stack entries"]),
    # UTF-16 surrogates: no UTF-8 text holds one; llama.cpp matched invalid bytes to them
    ('root ::= "\\uD800"', ["line 1, column 11", "surrogate \\ud800", "UTF-8"]),
    ("root ::= [a-z\\uDFFF]", ["line 1, column 14", "surrogate \\udfff"]),
    ('root ::= "a" "\\U0000DC00"', ["line 1, column 15", "surrogate \\udc00"]),
    ("root ::= [\\uD800-\\uDBFF]", ["line 1, column 11", "surrogate \\ud800"]),
    # parse stacks per generated character (400 items: 25 s per token in llama.cpp)
    (_optional_items(44), [f"at most {MAX_STACKS_PER_CHAR:,} parse stacks", "'root'"]),
    (_optional_items(400), ["line 1, column 1", f"{MAX_STACKS_PER_CHAR:,} parse stacks"]),
    (_optional_items(64, "[a-z]?"), ["parse stacks"]),
    (_optional_items(64, '("x" [a-z ]*)?'), ["parse stacks"]),
    (_tree(6), ["parse stacks", "rule 'root'"]),
    (
        "root ::= " + " | ".join(f'({_optional_items(16)[9:]} "#{i}")' for i in range(7)),
        ["parse stacks"],
    ),
    (
        'root ::= "a" x\nx ::= ' + _optional_items(50, "[a-z]?")[9:],
        ["line 1, column 1", "parse stacks", "'root'"],
    ),
    ('root ::= x\nx ::= "a" x "b"? | ""', ["line 2, column 1", "recursion", "'x'"]),
    ('root ::= s\ns ::= [a-z]+ (" " s)? "."?', ["line 2, column 1", "recursion", "'s'"]),
]


@pytest.mark.parametrize(("grammar", "expected"), INVALID, ids=range(len(INVALID)))
def test_invalid_grammars_are_refused(grammar: str | bytes, expected: list[str]) -> None:
    with pytest.raises(GrammarError) as info:
        validate_grammar(grammar)
    message = str(info.value)
    assert message.startswith("GBNF grammar") and "\n" not in message and "; " in message
    for part in expected:
        assert part in message


@pytest.mark.parametrize(
    ("grammar", "expected"),
    [
        pytest.param(
            "root ::= " + "(" * 100_000 + '"a"' + ")" * 100_000, "bytes", id="nested-100000"
        ),
        pytest.param(
            "root ::= " + "(" * 60_000 + '"a"' + ")" * 60_000, "nested", id="nested-60000"
        ),
        pytest.param(
            "root ::= " + " | ".join(f'"a{i}"' for i in range(500_000)), "bytes", id="alts-500000"
        ),
        pytest.param(
            "root ::= " + " | ".join(f'"a{i}"' for i in range(12_000)),
            "alternatives",
            id="alts-12000",
        ),
        pytest.param(_two_way(40), "alternatives", id="two-way-2^40"),
        pytest.param(_optional_items(1000), "parse stacks", id="optional-items-1000"),
    ],
)
@pytest.mark.parametrize("as_bytes", [False, True], ids=["str", "bytes"])
def test_hostile_grammars_are_refused_fast(grammar: str, expected: str, as_bytes: bool) -> None:
    source: str | bytes = grammar.encode() if as_bytes else grammar
    start = time.perf_counter()
    with pytest.raises(GrammarError, match=expected):
        validate_grammar(source)
    assert time.perf_counter() - start < 1.0


def test_largest_grammar_is_checked_fast() -> None:
    grammar = 'root ::= "' + "ab" * ((MAX_GRAMMAR_BYTES - 12) // 2) + '"'
    start = time.perf_counter()
    assert validate_grammar(grammar).elements > MAX_GRAMMAR_BYTES - 20
    assert time.perf_counter() - start < 1.0
    with pytest.raises(GrammarError, match=f"at most {MAX_GRAMMAR_BYTES:,} bytes"):
        validate_grammar(grammar + " " * 20)


def test_message_never_quotes_the_grammar() -> None:
    secret = "hunter2-SECRET"
    for grammar in (
        f"root ::= {secret} [z-a]",  # an error after a long name
        f'root ::= "{secret}" )',
        f"root:x:0:0:{secret}:/root:/bin/bash\n",  # /etc/passwd
        f"{secret} ::= root",
    ):
        with pytest.raises(GrammarError) as info:
            validate_grammar(grammar)
        assert "hunter2" not in str(info.value) and "bash" not in str(info.value)


def test_token_ids_checked_against_the_vocabulary() -> None:
    validate_grammar("root ::= <[99]>", n_vocab=100)
    with pytest.raises(GrammarError, match=r"line 1, column 10: .*below 100.*found 100"):
        validate_grammar("root ::= <[100]>", n_vocab=100)


# --- with llama.cpp: what the check accepts, llama.cpp accepts ---------------------------------


@pytest.fixture(scope="module")
def neox(tiny_gguf: Callable[..., Path]) -> Iterator[LlamaModel]:
    from edge_stack.engines.llama import LlamaModel

    with LlamaModel.load(tiny_gguf("gptneox")) as model:
        yield model


@pytest.mark.llama
@pytest.mark.torch
@pytest.mark.parametrize("grammar", VALID)
def test_valid_grammars_load_into_llama_cpp(neox: LlamaModel, grammar: str) -> None:
    from edge_stack.engines.llama import _sampling as _llama_sampling

    _llama_sampling._parsed_grammars.discard(grammar)  # make llama.cpp parse it again
    neox.check_grammar(grammar)
    assert grammar in _llama_sampling._parsed_grammars  # llama.cpp built a sampler from it


# Grammars llama.cpp refuses by itself (without crashing): the check refuses the same ones.
LLAMA_REFUSES = [
    "root ::= (",
    'root ::= "\\q"',
    'root ::= "\\x4"',
    "root ::= foo",
    'start ::= "a"',
    'root ::= root "a" | "b"',
    'root ::= x\nx ::= y "a"\ny ::= x | "b"',
    'root ::= "a"{2001}',
    'root ::= ("a"{0,100}){0,100}',
    "root ::= *",
    'root ::= "a" )',
    'my_rule ::= "a"',
    "root ::= <abc",
]


@pytest.mark.llama
@pytest.mark.torch
@pytest.mark.parametrize("grammar", LLAMA_REFUSES)
def test_check_refuses_what_llama_cpp_refuses(neox: LlamaModel, grammar: str) -> None:
    from edge_stack.engines.llama._lib import lib, native_stderr

    with native_stderr():  # llama.cpp prints its parse error
        sampler = lib().llama_sampler_init_grammar(neox.vocab, grammar.encode(), b"root")
    assert not sampler
    with pytest.raises(GrammarError):
        validate_grammar(grammar)


@pytest.mark.llama
@pytest.mark.torch
def test_token_references_checked_against_the_model(neox: LlamaModel) -> None:
    from edge_stack.engines.llama._lib import lib

    eos = int(lib().llama_vocab_eos(neox.vocab))
    eos_text = neox.token_to_piece(eos, special=True).decode()
    neox.check_grammar(f'root ::= "a" | !<[{eos}]>')  # "any token but" is fine
    for grammar, expected in [
        (f"root ::= <[{neox.n_vocab}]>", f"below {neox.n_vocab}"),
        (f'root ::= "a" <[{eos}]>', "ends generation"),
        (f'root ::= "a" {eos_text}', "ends generation"),
        ("root ::= <this is not one token>", "one token of this model"),
    ]:
        with pytest.raises(GrammarError, match=expected) as info:
            neox.check_grammar(grammar)
        assert "line 1, column" in str(info.value)


# Grammars llama.cpp accepts but cannot run: it aborts the process at the first sampled token.
DEAD = ["root ::= [z-a]", 'root ::= "a" "\\x00"', "root ::= [^\\x00-\\U0010FFFF]"]


@pytest.mark.llama
@pytest.mark.torch
def test_refused_grammar_never_reaches_generation(tiny_gguf: Callable[..., Path]) -> None:
    # In a child: should a dead grammar reach llama.cpp, the abort must not kill the test run.
    code = textwrap.dedent(
        f"""
        from edge_stack.engines.llama import LlamaContext, LlamaModel
        from edge_stack.engines.llama._batch import BatchContext
        from edge_stack.errors import GrammarError
        m = LlamaModel.load({str(tiny_gguf("gptneox"))!r})
        ctx = LlamaContext(m, n_ctx=64, n_threads=1)
        batch = BatchContext(m, n_ctx=64, n_seq=2, n_threads=1)
        for grammar in {DEAD!r}:
            for run in (
                lambda: list(ctx.generate([1, 2], max_tokens=2, grammar=grammar)),
                lambda: batch.generate_batch([[1], [2]], max_tokens=2, grammar=grammar),
            ):
                try:
                    run()
                except GrammarError as exc:
                    print("refused:", exc)
        out = list(ctx.generate([1, 2], max_tokens=3, grammar="root ::= [a-z]+"))
        print("generated:", "".join(t.text for t in out))
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    assert sum(line.startswith("refused: GBNF grammar line 1") for line in lines) == 2 * len(DEAD)
    generated = lines[-1].removeprefix("generated: ")
    assert generated and generated.isalpha() and generated.islower()


def test_docs_state_the_limits() -> None:
    import edge_stack.formats.grammar._validate as grammar

    docs = (Path(__file__).resolve().parents[2] / "docs" / "stack-manifest.md").read_text()
    rows = re.findall(r"^\| `(MAX_[A-Z_]+)`:.*\| ([\d,]+)(?: bytes)? \|$", docs, re.MULTILINE)
    assert {name for name, _ in rows} == set(n for n in grammar.__all__ if n.startswith("MAX_"))
    for name, value in rows:
        assert getattr(grammar, name) == int(value.replace(",", "")), name
