"""Synthetic arithmetic word problems for the default ``word-problems`` stack.

Pure Python (standard library only), so tests and the eval-data writer need no torch.

Every problem carries the text of each stage of the stack:

* ``extract``: the question read into an expression, ``"23 + 18"`` (operators ``+ - *``);
* ``compute``: the value of that expression, ``"41"``;
* ``answer``: a sentence that ends with the number,
  ``"The number of stamps Sam has now is 41"`` or ``"15 plus 28 is 43"``.

Names, objects, containers and question templates come in two disjoint pools: ``"train"`` and
``"heldout"``. Held-out questions use names, objects and sentence shapes the training data never
contains verbatim (they recombine the same verbs and question words in new orders), which shows
whether the stack reads questions rather than recalls them.

Numbers: word problems and bare questions use operands of one or two digits. Addition: both
operands 1..99. Subtraction: 1..99, never below zero. Multiplication: one factor 2..9 (bags,
boxes) and the other 2..20, so products stay below 200.

Run ``python generate.py --eval-jsonl models/word-problems/eval.jsonl`` to write held-out eval data.
"""

from __future__ import annotations

import argparse
import json
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

Split = Literal["train", "heldout"]
Op = Literal["+", "-", "*"]

OP_WORDS: dict[str, str] = {"+": "plus", "-": "minus", "*": "times"}


@dataclass(frozen=True)
class Person:
    """A name and the pronoun the templates use for it."""

    name: str
    pronoun: str  # "he" or "she"


@dataclass(frozen=True)
class Thing:
    """A countable object with its singular and plural forms."""

    singular: str
    plural: str
    food: bool = False

    def count(self, n: int) -> str:
        """``"1 apple"``, ``"3 apples"``."""
        return f"{n} {self.singular if n == 1 else self.plural}"


@dataclass(frozen=True)
class Problem:
    """One generated question with the expected text of every stage."""

    question: str
    expression: str
    value: int
    sentence: str
    kind: str  # "add", "sub", "mul", "bare"
    template: int

    @property
    def stage_outputs(self) -> dict[str, str]:
        """Stage name -> the text that stage should produce."""
        return {"extract": self.expression, "compute": str(self.value), "answer": self.sentence}


def _people(spec: str) -> tuple[Person, ...]:
    """``"Sam:he Mia:she"`` -> people."""
    return tuple(Person(*item.split(":")) for item in spec.split())


def _things(spec: str, *, food: bool = False) -> tuple[Thing, ...]:
    """``"apple/apples box/boxes"`` -> things."""
    pairs = (item.split("/") for item in spec.split())
    return tuple(Thing(singular, plural, food) for singular, plural in pairs)


PEOPLE: dict[Split, tuple[Person, ...]] = {
    "train": _people(
        "Sam:he Mia:she Tom:he Anna:she Ben:he Lily:she Jack:he Emma:she Leo:he Zoe:she "
        "Max:he Nora:she Omar:he Ella:she Ravi:he Lucy:she Noah:he Ava:she Liam:he Ruby:she "
        "Adam:he Sara:she Ivan:he Hana:she Carlos:he Maya:she Dan:he Grace:she Eli:he Chloe:she "
        "Hugo:he Iris:she Kofi:he Nina:she Paul:he Rosa:she Yuki:she Finn:he Amir:he Lena:she "
        "Ali:he Beth:she Cody:he Dina:she Erik:he Faye:she Gus:he Holly:she Ian:he Jade:she "
        "Kurt:he Lara:she Milo:he Nell:she Otto:he Pia:she Raj:he Sofia:she Theo:he Uma:she "
        "Vince:he Willa:she Xavier:he Yara:she Zack:he Asha:she Boris:he Cora:she Dev:he Elsa:she "
        "Felix:he Gina:she Hank:he Ines:she Jonas:he Kira:she Luca:he Mina:she Nico:he Olga:she"
    ),
    "heldout": _people(
        "Oscar:he Julia:she Pedro:he Fatima:she Victor:he Clara:she Tariq:he Wendy:she "
        "Bruno:he Alice:she George:he Priya:she"
    ),
}

THINGS: dict[Split, tuple[Thing, ...]] = {
    "train": _things(
        "stamp/stamps marble/marbles pencil/pencils sticker/stickers card/cards book/books "
        "coin/coins balloon/balloons toy/toys shell/shells crayon/crayons ribbon/ribbons "
        "button/buttons rock/rocks key/keys ball/balls flower/flowers puzzle/puzzles "
        "box/boxes brush/brushes"
    )
    + _things(
        "apple/apples cookie/cookies orange/oranges candy/candies cupcake/cupcakes "
        "grape/grapes cherry/cherries peach/peaches muffin/muffins sandwich/sandwiches",
        food=True,
    ),
    "heldout": _things("feather/feathers leaf/leaves ticket/tickets bottle/bottles")
    + _things("banana/bananas strawberry/strawberries pie/pies", food=True),
}

CONTAINERS: dict[Split, tuple[Thing, ...]] = {
    "train": _things("bag/bags box/boxes basket/baskets jar/jars pack/packs"),
    "heldout": _things("bucket/buckets crate/crates"),
}

# (present, past) forms; food-only verbs are used with food objects only.
ADD_VERBS = (
    ("buys", "bought"),
    ("finds", "found"),
    ("gets", "got"),
    ("wins", "won"),
    ("receives", "received"),
    ("collects", "collected"),
    ("picks up", "picked up"),
)
SUB_VERBS = (
    ("gives away", "gave away"),
    ("loses", "lost"),
    ("sells", "sold"),
    ("drops", "dropped"),
)
SUB_FOOD_VERBS = (("eats", "ate"),)

# Word-problem templates. Fields: {name} {pron} {Pron} {vp} {vpast} {a_x} ("23 stamps"),
# {b_x}, {b}, {b_n} (the noun alone, in the number b needs), {xs} (plural), and for
# multiplication {a_cs} ("4 bags") and {c} ("bag").
# Each pool has a "train" and a "heldout" list of shapes, indexed by ``Problem.template``. The
# held-out templates are written out here; the training shapes are built from parts below.
_HELDOUT_ADD = (
    "{name} has {a_x}, and then {pron} {vp} {b} more {b_n}. How many {xs} does {pron} have now?",
    "{name} had {a_x}. {Pron} {vpast} {b} more of them. How many {xs} does {name} have in all now?",
)
_HELDOUT_SUB = (
    "{name} had {a_x}, but then {pron} {vpast} {b} of them. How many {xs} are left now?",
    "{name} has {a_x}. {Pron} {vp} {b_x}. How many {xs} does {pron} have now?",
)
_HELDOUT_MUL = (
    "{name} has {a_cs}, and each {c} has {b_x} in it. How many {xs} does {pron} have in all?",
    "{name} buys {a_cs}. There are {b_x} in each {c}. How many {xs} does {name} have now?",
)
_HELDOUT_BARE: tuple[tuple[str, Op], ...] = (
    ("How much is {a} times {b}?", "*"),
    ("How much is {a} minus {b}?", "-"),
    ("Compute {a} times {b}.", "*"),
    ("What is {a} and {b} added together?", "+"),
)


def _near(template: str) -> str:
    """A template with name and pronoun fields merged: held-out shapes are compared this way."""
    return template.replace("{Pron}", "{name}").replace("{pron}", "{name}")


_HELDOUT_NEAR = {_near(t) for t in _HELDOUT_ADD + _HELDOUT_SUB + _HELDOUT_MUL} | {
    t for t, _ in _HELDOUT_BARE
}

# Training shapes are built from parts (v4), and every part occurs with every operation it can:
#
# * an opening clause "{name} has/starts with/buys {A}" (present) or "had/started with/bought"
#   (past), where {A} is the first amount ({a_x}, or {a_cs} containers for multiplication);
# * a join and a second clause: ". {S}.", ", and {S}.", " and {S}.", ". Then {S}.",
#   ", and then {S}.", ", but then {S}.", ". Later {S}." with {S} = "{pron} {verb} {object}", or
#   " and {verb} {object}." (no subject). Add and sub verbs take the SAME object phrases
#   ("{b}", "{b_x}", "{b} more", "{b} more {b_n}", "{b} of them", "{b} more of them"), so only the
#   verb decides + or -. Multiplication's second clause says how many are in EACH container
#   ("each {c} has {b_x}", "there are {b_x} in each {c}", "{pron} puts {b_x} in each {c}", ...)
#   in the same openings and joins, so "each" (not the sentence shape) decides *;
# * a question; "left" questions occur with add verbs too.
#
# With one template per operation (v2) the stack learned shapes, and with add/sub crossed but
# multiplication in 30 shapes of its own (v3 and after) it read "..., and each crate has 8 pies in
# it" as a subtraction. Held-out shapes recombine these parts in combinations training never
# has: any built shape equal to a held-out template (names and pronouns merged) is dropped.
_FIRST = {
    "present": ("{name} has {A}", "{name} starts with {A}", "{name} buys {A}"),
    "past": ("{name} had {A}", "{name} started with {A}", "{name} bought {A}"),
}
_JOINS = (
    ". {S}.",
    ", and {S}.",
    " and {S}.",
    ". Then {S}.",
    ", and then {S}.",
    ", but then {S}.",
    ". Later {S}.",
)
_QUESTIONS = (
    "How many {xs} does {name} have now?",
    "How many {xs} does {pron} have now?",
    "How many {xs} does {name} have left?",
    "How many {xs} does {pron} have left?",
    "How many {xs} does {name} have in all?",
    "How many {xs} does {pron} have in total?",
    "How many {xs} does {pron} have?",
    "How many {xs} are left?",
    "How many {xs} are there now?",
    "How many {xs} are there in all?",
)
_MUL_QUESTIONS = tuple(q for q in _QUESTIONS if "left" not in q)
_OBJECTS = ("{b}", "{b_x}", "{b} more", "{b} more {b_n}", "{b} of them", "{b} more of them")
_VERB = {"present": "{vp}", "past": "{vpast}"}
# multiplication's second clause, (present, past); {pron}-led ones also go after "Then"
_MUL_CLAUSES = (
    ("each {c} has {b_x}", "each {c} had {b_x}"),
    ("each {c} has {b_x} in it", "each {c} had {b_x} in it"),
    ("each {c} holds {b_x}", "each {c} held {b_x}"),
    ("every {c} has {b_x}", "every {c} had {b_x}"),
    ("there are {b_x} in each {c}", "there were {b_x} in each {c}"),
    ("{pron} puts {b_x} in each {c}", "{pron} put {b_x} in each {c}"),
)
_MUL_WITH = (
    "{name} has {a_cs} with {b_x} in each {c}.",
    "{name} buys {a_cs} of {xs}. Each {c} has {b_x}.",
    "{name} fills {a_cs} with {b_x} each.",
    "{name} has {a_cs}, each with {b_x}.",
    "{name} had {a_cs} with {b_x} in each.",
)


def _sentence(text: str) -> str:
    """Capitalize the first letter (and a leading ``{pron}``)."""
    if text.startswith("{pron}"):
        return "{Pron}" + text[len("{pron}") :]
    return text[:1].upper() + text[1:]


def _join(first: str, join: str, clause: str) -> str:
    """First clause + join with {S} = ``clause`` (capitalized after a full stop)."""
    return first + join.replace("{S}", _sentence(clause) if join.startswith(". {S}") else clause)


def _if_form(first: str, rest: str, question: str) -> str:
    """``"If Sam has 3 stamps and buys 2 more, how many stamps does he have?"``."""
    return f"If {first} and {rest}, {question[:1].lower()}{question[1:]}"


def _add_sub_shapes() -> tuple[str, ...]:
    out: list[str] = []
    for tense, firsts in _FIRST.items():
        for first in (f.replace("{A}", "{a_x}") for f in firsts):
            for obj in _OBJECTS:
                verb_phrase = f"{_VERB[tense]} {obj}"
                openings = [_join(first, j, "{pron} " + verb_phrase) for j in _JOINS]
                openings.append(f"{first} and {verb_phrase}.")
                out += [f"{o} {q}" for o in openings for q in _QUESTIONS]
                if tense == "present":
                    out += [_if_form(first, verb_phrase, q) for q in _QUESTIONS[:7]]
    return tuple(out)


def _mul_shapes() -> tuple[str, ...]:
    out: list[str] = []
    for tense, firsts in _FIRST.items():
        t = 0 if tense == "present" else 1
        for first in (f.replace("{A}", "{a_cs}") for f in firsts):
            openings: list[str] = []
            for forms in _MUL_CLAUSES:
                clause = forms[t]
                joins = _JOINS if clause.startswith("{pron}") else _JOINS[:3]
                openings += [_join(first, j, clause) for j in joins if "but" not in j]
                if clause.startswith("{pron}"):
                    openings.append(f"{first} and {clause.split(' ', 1)[1]}.")
                    continue
                # the other order: "There are 5 stamps in each bag. Sam has 4 bags."
                openings.append(f"{_sentence(clause)}. {first}.")
                if tense == "present":
                    out += [_if_form(first, clause, q) for q in _MUL_QUESTIONS]
            out += [f"{o} {q}" for o in openings for q in _MUL_QUESTIONS]
    out += [f"{body} {q}" for body in _MUL_WITH for q in _MUL_QUESTIONS]
    return tuple(out)


def _train_only(shapes: tuple[str, ...]) -> tuple[str, ...]:
    """Distinct shapes, in order, none of them a held-out template."""
    return tuple(t for t in dict.fromkeys(shapes) if _near(t) not in _HELDOUT_NEAR)


_ADD_SUB = _train_only(_add_sub_shapes())
ADD_TEMPLATES: dict[Split, tuple[str, ...]] = {"train": _ADD_SUB, "heldout": _HELDOUT_ADD}
SUB_TEMPLATES: dict[Split, tuple[str, ...]] = {"train": _ADD_SUB, "heldout": _HELDOUT_SUB}
MUL_TEMPLATES: dict[Split, tuple[str, ...]] = {
    "train": _train_only(_mul_shapes()),
    "heldout": _HELDOUT_MUL,
}

# Bare questions: every frame with every operator phrase; the expression lists a first, "a op b".
# Each operation has a word form, a symbol, a reversed form ("{b} added to {a}": a + b), a "the
# ... of {a} and {b}" form and forms built with "and" ("{a} and {b} multiplied together").
_BARE_FRAMES = (
    "What is {p}?",
    "How much is {p}?",
    "Compute {p}.",
    "Calculate {p}.",
    "Tell me {p}.",
    "Find {p}.",
    "Work out {p}.",
    "What's {p}?",
)
_BARE_PHRASES: tuple[tuple[str, Op], ...] = (
    ("{a} plus {b}", "+"),
    ("{a} + {b}", "+"),
    ("{b} added to {a}", "+"),
    ("the sum of {a} and {b}", "+"),
    ("{a} and {b} added", "+"),
    ("{a} and {b} added together", "+"),
    ("{a} and {b} summed", "+"),
    ("{a} and {b} together", "+"),
    ("{a} minus {b}", "-"),
    ("{a} - {b}", "-"),
    ("{b} subtracted from {a}", "-"),
    ("{a} take away {b}", "-"),
    ("the difference between {a} and {b}", "-"),
    ("{b} less than {a}", "-"),
    ("{a} less {b}", "-"),
    ("{b} taken away from {a}", "-"),
    ("{a} times {b}", "*"),
    ("{a} * {b}", "*"),
    ("{a} multiplied by {b}", "*"),
    ("the product of {a} and {b}", "*"),
    ("{a} and {b} multiplied", "*"),
    ("{a} and {b} multiplied together", "*"),
    ("{a} groups of {b}", "*"),
)
BARE_TEMPLATES: dict[Split, tuple[tuple[str, Op], ...]] = {
    "train": tuple(
        (frame.replace("{p}", phrase), op)
        for frame in _BARE_FRAMES
        for phrase, op in _BARE_PHRASES
        if frame.replace("{p}", phrase) not in _HELDOUT_NEAR
    ),
    "heldout": _HELDOUT_BARE,
}

KIND_WEIGHTS: dict[str, float] = {"add": 0.25, "sub": 0.25, "mul": 0.2, "bare": 0.3}

ANSWER_FORMS: dict[str, str] = {
    "add": "The number of {xs} {name} has now is {n}",
    "sub": "The number of {xs} {name} has left is {n}",
    "mul": "The number of {xs} {name} has in all is {n}",
}


def _operands(rng: random.Random, op: str) -> tuple[int, int]:
    """Operands for ``op`` within the task's number range (see module docstring)."""
    if op == "+":
        return rng.randint(1, 99), rng.randint(1, 99)
    if op == "-":
        a = rng.randint(2, 99)
        return a, rng.randint(1, a)
    small, large = rng.randint(2, 9), rng.randint(2, 20)
    return small, large


def evaluate_expression(expression: str) -> int:
    """Value of ``"a op b"`` as the generator writes it; ``ValueError`` on anything else."""
    left, op, right = expression.split()
    a, b = int(left), int(right)
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    if op == "*":
        return a * b
    raise ValueError(f"unknown operator {op!r} in {expression!r}")


def all_expressions() -> list[str]:
    """Every expression a problem of either split can have, once each (14 990): the compute
    stage's whole task. Products come in both orders (bare questions swap the factors)."""
    out = [f"{a} + {b}" for a in range(1, 100) for b in range(1, 100)]
    out += [f"{a} - {b}" for a in range(2, 100) for b in range(1, a + 1)]
    products = {(s, n) for s in range(2, 10) for n in range(2, 21)}
    out += [f"{a} * {b}" for a, b in sorted(products | {(n, s) for s, n in products})]
    return out


def _capital(word: str) -> str:
    return word[:1].upper() + word[1:]


#: share of training word problems whose name and object are made-up words: the stack must read
#: names and objects it has never seen (measured: without them, held-out names broke extraction)
MADE_UP_SHARE = 0.5
# Syllables "onset vowel coda" over every letter of the alphabet, with common English clusters:
# the answer stage copies names and objects it has never seen, which only works for words made of
# tokens it has learned to copy (with open syllables of a few letters only, v4c copied made-up
# words but not "Tariq" or "tickets": their letter pieces never occurred in training).
_ONSETS = (
    *("", "", ""),
    *"bcdfghjklmnpqrstvwxyz",
    *("bl", "br", "ch", "cl", "cr", "dr", "fl", "fr", "gl", "gr", "kr", "ph", "pl", "pr"),
    *("qu", "sc", "sh", "sk", "sl", "sm", "sn", "sp", "st", "sw", "th", "tr", "wh"),
)
_VOWELS = (*"aeiouy", *"aeiou", "ai", "au", "ea", "ee", "ie", "oa", "oo", "ou")
_CODAS = (
    *("", "", "", "", "", ""),
    *"bcdfgklmnprstvxz",
    *("ck", "ct", "ft", "lk", "ll", "mp", "nd", "ng", "nk", "nt", "rd", "rk", "rt", "sh", "ss"),
    *("st", "th", "tt"),
)
_HELDOUT_WORDS = {p.name.lower() for p in PEOPLE["heldout"]} | {
    w for t in THINGS["heldout"] + CONTAINERS["heldout"] for w in (t.singular, t.plural)
}


def _plural(word: str) -> str:
    """English plural of a made-up noun: ``box`` -> ``boxes``, ``pony`` -> ``ponies``."""
    if word.endswith(("s", "x", "z", "sh", "ch")):
        return word + "es"
    if word.endswith("y") and word[-2:-1] not in tuple("aeiou"):
        return word[:-1] + "ies"
    return word + "s"


def _made_up_word(rng: random.Random) -> str:
    """A pronounceable word of 1-3 syllables, 3-10 letters, none of the held-out names or
    objects (nor their plurals)."""
    while True:
        word = "".join(
            rng.choice(_ONSETS) + rng.choice(_VOWELS) + rng.choice(_CODAS)
            for _ in range(rng.randint(1, 3))
        )
        if 3 <= len(word) <= 10 and not {word, _plural(word)} & _HELDOUT_WORDS:
            return word


def _person_and_thing(rng: random.Random, split: Split) -> tuple[Person, Thing]:
    """From the split's pools; in training, sometimes made-up words instead."""
    if split == "train" and rng.random() < MADE_UP_SHARE:
        name, noun = _capital(_made_up_word(rng)), _made_up_word(rng)
        # half of them food, so that "eats" also meets objects it has never seen
        thing = Thing(noun, _plural(noun), food=rng.random() < 0.5)
        return Person(name, rng.choice(("he", "she"))), thing
    return rng.choice(PEOPLE[split]), rng.choice(THINGS[split])


def _word_problem(rng: random.Random, split: Split, kind: str) -> Problem:
    """An add, sub or mul word problem about one person and one kind of thing."""
    person, thing = _person_and_thing(rng, split)
    op: Op = {"add": "+", "sub": "-", "mul": "*"}[kind]  # type: ignore[assignment]
    a, b = _operands(rng, op)
    fields = {
        "name": person.name,
        "pron": person.pronoun,
        "Pron": _capital(person.pronoun),
        "a_x": thing.count(a),
        "b_x": thing.count(b),
        "b_n": thing.count(b).split(" ", 1)[1],
        "xs": thing.plural,
        "a": str(a),
        "b": str(b),
    }
    if kind == "add":
        templates = ADD_TEMPLATES[split]
        fields["vp"], fields["vpast"] = rng.choice(ADD_VERBS)
    elif kind == "sub":
        templates = SUB_TEMPLATES[split]
        verbs = SUB_VERBS + (SUB_FOOD_VERBS if thing.food else ())
        fields["vp"], fields["vpast"] = rng.choice(verbs)
    else:
        templates = MUL_TEMPLATES[split]
        container = rng.choice(CONTAINERS[split])
        if split == "train" and rng.random() < MADE_UP_SHARE:  # held-out containers are new too
            word = _made_up_word(rng)
            container = Thing(word, _plural(word))
        fields["a_cs"], fields["c"] = container.count(a), container.singular
    index = rng.randrange(len(templates))
    value = evaluate_expression(f"{a} {op} {b}")
    sentence = ANSWER_FORMS[kind].format(xs=thing.plural, name=person.name, n=value)
    question = templates[index].format(**fields)
    return Problem(question, f"{a} {op} {b}", value, sentence, kind, index)


def _bare_problem(rng: random.Random, split: Split) -> Problem:
    """A bare question such as ``"What is 15 plus 28?"``."""
    templates = BARE_TEMPLATES[split]
    index = rng.randrange(len(templates))
    template, op = templates[index]
    a, b = _operands(rng, op)
    if op == "*" and rng.random() < 0.5:
        a, b = b, a
    expression = f"{a} {op} {b}"
    value = evaluate_expression(expression)
    sentence = f"{a} {OP_WORDS[op]} {b} is {value}"
    question = template.format(a=a, b=b)
    return Problem(question, expression, value, sentence, "bare", index)


def make_problem(rng: random.Random, split: Split = "train") -> Problem:
    """One random problem from ``split``'s names, objects and templates."""
    kind = rng.choices(list(KIND_WEIGHTS), weights=list(KIND_WEIGHTS.values()))[0]
    if kind == "bare":
        return _bare_problem(rng, split)
    return _word_problem(rng, split, kind)


def problems(seed: int, n: int, split: Split = "train") -> list[Problem]:
    """``n`` problems, reproducible from ``seed``."""
    rng = random.Random(f"{split}:{seed}")
    return [make_problem(rng, split) for _ in range(n)]


def unique_problems(seed: int, n: int, split: Split, exclude: Sequence[str] = ()) -> list[Problem]:
    """``n`` problems with distinct questions, none of them in ``exclude``."""
    seen = set(exclude)
    out: list[Problem] = []
    for problem in _stream(seed, split):
        if problem.question not in seen:
            seen.add(problem.question)
            out.append(problem)
            if len(out) == n:
                break
    return out


def _stream(seed: int, split: Split) -> Iterator[Problem]:
    rng = random.Random(f"{split}:{seed}")
    while True:
        yield make_problem(rng, split)


def write_eval_jsonl(path: Path, *, n: int = 200, seed: int = 1234) -> Path:
    """Write ``n`` held-out questions as JSONL ``{"question": ..., "answer": <number>}``."""
    lines = [
        json.dumps({"question": p.question, "answer": p.value})
        for p in unique_problems(seed, n, "heldout")
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def main(argv: Sequence[str] | None = None) -> None:
    """Print a few problems, or write held-out eval data with ``--eval-jsonl``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--eval-jsonl", type=Path, help="write held-out eval data here")
    parser.add_argument("-n", type=int, default=200)
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--split", choices=["train", "heldout"], default="train")
    args = parser.parse_args(argv)
    if args.eval_jsonl:
        write_eval_jsonl(args.eval_jsonl, n=args.n, seed=args.seed)
        return
    for problem in problems(args.seed, args.n, args.split):
        print(problem.question, "|", *problem.stage_outputs.values(), sep=" ")


if __name__ == "__main__":
    main()
