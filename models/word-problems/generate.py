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
# The lists are indexed: the first ones are for training, the last ones are held out.
# Training shapes are CROSSED: every sentence frame occurs with every operation, so only the verb
# (word problems) or the operator word (bare questions) decides the operation. With one template
# per operation the stack learned shapes instead ("How much is ...?" was always plus), and held-out
# shapes failed. Built once at import time; the lists are indexed (``Problem.template``).
# The held-out templates are written out below; crossed training shapes that equal one of them
# up to name/pronoun are dropped (``_near``), so training never contains a held-out shape.
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

# Word-problem frames: an opening with the verb clause {V} (present {vp} or past {vpast} form,
# then one of the operation's object phrases), and a question. Every frame and every question
# occur with both add and sub verbs; only "more" is add-only (it is an addition word itself).
_OPENINGS_PRESENT = (
    "{name} has {a_x}. {Pron} {V}.",
    "{name} has {a_x} and {V}.",
    "{name} starts with {a_x}. Then {pron} {V}.",
    "{name} has {a_x}, and then {pron} {V}.",
    "{name} has {a_x}, but then {pron} {V}.",
)
_OPENINGS_PAST = (
    "{name} had {a_x}. {Pron} {V}.",
    "{name} had {a_x} and {V}.",
    "{name} had {a_x}. Then {pron} {V}.",
    "{name} had {a_x}, and {pron} {V}.",
    "{name} had {a_x}, but then {pron} {V}.",
)
_QUESTIONS = (
    "How many {xs} does {name} have now?",
    "How many {xs} does {pron} have now?",
    "How many {xs} does {name} have left?",
    "How many {xs} does {pron} have left?",
    "How many {xs} does {name} have in all?",
    "How many {xs} does {pron} have?",
    "How many {xs} are left?",
    "How many {xs} are there now?",
)
_ADD_OBJECTS = ("{b} more", "{b} more {b_n}", "{b_x}", "{b}")
_SUB_OBJECTS = ("{b}", "{b_x}", "{b} of them")


def _cross_word(objects: tuple[str, ...], heldout: tuple[str, ...]) -> dict[Split, tuple[str, ...]]:
    out: list[str] = []
    for obj in objects:
        for openings, verb in ((_OPENINGS_PRESENT, "{vp}"), (_OPENINGS_PAST, "{vpast}")):
            clause = f"{verb} {obj}"
            for opening in openings:
                for question in _QUESTIONS:
                    out.append(opening.replace("{V}", clause) + " " + question)
            for question in _QUESTIONS[:6]:
                if verb == "{vp}":
                    tail = question.replace("How", "how", 1)
                    out.append(f"If {{name}} has {{a_x}} and {clause}, {tail}")
    return {"train": tuple(t for t in out if _near(t) not in _HELDOUT_NEAR), "heldout": heldout}


ADD_TEMPLATES: dict[Split, tuple[str, ...]] = _cross_word(_ADD_OBJECTS, _HELDOUT_ADD)
SUB_TEMPLATES: dict[Split, tuple[str, ...]] = _cross_word(_SUB_OBJECTS, _HELDOUT_SUB)

_MUL_BODIES = (
    "{name} has {a_cs} with {b_x} in each {c}.",
    "{name} buys {a_cs} of {xs}. Each {c} has {b_x}.",
    "{name} has {a_cs}. Each {c} holds {b_x}.",
    "{name} fills {a_cs} with {b_x} each.",
    "There are {b_x} in each {c}. {name} has {a_cs}.",
    "{name} has {a_cs}, each with {b_x}.",
)
MUL_TEMPLATES: dict[Split, tuple[str, ...]] = {
    "train": tuple(
        t
        for t in (f"{body} {q}" for body in _MUL_BODIES for q in _QUESTIONS if "left" not in q)
        if _near(t) not in _HELDOUT_NEAR
    ),
    "heldout": _HELDOUT_MUL,
}

# Bare questions: every frame with every operator phrase; the expression lists a first, "a op b".
_BARE_FRAMES = (
    "What is {p}?",
    "How much is {p}?",
    "Compute {p}.",
    "Calculate {p}.",
    "Tell me {p}.",
)
_BARE_PHRASES: tuple[tuple[str, Op], ...] = (
    ("{a} plus {b}", "+"),
    ("{a} + {b}", "+"),
    ("{b} added to {a}", "+"),
    ("the sum of {a} and {b}", "+"),
    ("{a} minus {b}", "-"),
    ("{a} - {b}", "-"),
    ("{b} subtracted from {a}", "-"),
    ("{a} take away {b}", "-"),
    ("{a} times {b}", "*"),
    ("{a} * {b}", "*"),
    ("{a} multiplied by {b}", "*"),
    ("the product of {a} and {b}", "*"),
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


def _capital(word: str) -> str:
    return word[:1].upper() + word[1:]


#: share of training word problems whose name and object are made-up words: the stack must read
#: names and objects it has never seen (measured: without them, held-out names broke extraction)
MADE_UP_SHARE = 0.5
_ONSETS = (*"bcdfghjklmnprstvwz", "br", "dr", "gr", "kr", "pl", "st", "tr", "sh", "ch")
_VOWELS = (*"aeiou", "ai", "ou", "ee")
_HELDOUT_WORDS = {p.name.lower() for p in PEOPLE["heldout"]} | {
    w for t in THINGS["heldout"] + CONTAINERS["heldout"] for w in (t.singular, t.plural)
}


def _made_up_word(rng: random.Random) -> str:
    """A pronounceable word of 2-3 syllables that is none of the held-out names or objects."""
    while True:
        word = "".join(rng.choice(_ONSETS) + rng.choice(_VOWELS) for _ in range(rng.randint(2, 3)))
        if word not in _HELDOUT_WORDS and word + "s" not in _HELDOUT_WORDS:
            return word


def _person_and_thing(rng: random.Random, split: Split) -> tuple[Person, Thing]:
    """From the split's pools; in training, sometimes made-up words instead."""
    if split == "train" and rng.random() < MADE_UP_SHARE:
        name, noun = _capital(_made_up_word(rng)), _made_up_word(rng)
        return Person(name, rng.choice(("he", "she"))), Thing(noun, noun + "s")
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
