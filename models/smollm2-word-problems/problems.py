"""Arithmetic word problems for the SmolLM2 stack: the default stack's generator, widened.

It reuses the names, objects, containers, verbs and made-up words of
``models/word-problems/generate.py`` and widens the questions where a real language model
needs it: free word order (the question first, "17 of her 45 pencils"), pronouns, several
sentences, distractor numbers ("She is 9 years old."), numbers up to three digits, division
with whole results, people and roles ("The baker"), bare questions in many phrasings, and
questions that are not arithmetic word problems at all (``offtopic.py``), which get a short
refusal instead of a number.

Every problem carries each stage's text: ``extract`` (``"45 - 17"``, or ``"none"``),
``compute`` (the written work of :mod:`work`) and ``answer``, a sentence that reuses the
question's own name and object (``"Maria has 28 pencils left."``). Answer forms depend on the
operation only: add -> "... now.", sub -> "... left.", mul -> "... in all.", div -> "Each box
has ...", bare -> "45 minus 17 is 28.".

Two splits: ``"train"`` and ``"heldout"``. Held-out problems use names, objects, containers,
roles and some phrasings that training never has, so none of them can occur in training.
Pure Python (standard library).
"""

from __future__ import annotations

import json
import random
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "word-problems"))
import generate as wp  # noqa: E402  (the default stack's generator: names, objects, verbs)
import offtopic  # noqa: E402
import work  # noqa: E402

Split = Literal["train", "heldout"]
REFUSAL = "I can only answer arithmetic word problems."
OP_WORDS = {"+": "plus", "-": "minus", "*": "times", "/": "divided by"}
KIND_WEIGHTS = {"add": 0.17, "sub": 0.17, "mul": 0.14, "div": 0.12, "bare": 0.2, "refuse": 0.2}
#: share of training problems with a made-up name and object (see generate.MADE_UP_SHARE)
MADE_UP_SHARE = 0.3
#: share of word problems with a distractor sentence holding another number
DISTRACTOR_SHARE = 0.3


@dataclass(frozen=True)
class Problem:
    """One question with the text of every stage; ``words`` must appear in the answer."""

    question: str
    expression: str  # "45 - 17", or "none" for a refusal
    value: int | None
    sentence: str
    kind: str  # add, sub, mul, div, bare, refuse
    words: tuple[str, ...] = ()

    @property
    def stage_outputs(self) -> dict[str, str]:
        """Stage name -> the text that stage should produce."""
        return {
            "extract": self.expression,
            "compute": work.work(self.expression),
            "answer": self.sentence,
        }


def _split(
    train: tuple[str, ...], heldout: tuple[str, ...], train_only: tuple[str, ...] = ()
) -> dict[str, tuple[str, ...]]:
    """Phrasings of the training split, of the held-out split, and ``train_only`` ones that the
    held-out split never mixes in (added later: the held-out file stays what it was)."""
    return {"train": train, "heldout": heldout, "train_only": train_only}


RELATIVES = _split(
    ("brother", "sister", "friend", "mom", "dad", "cousin", "neighbor", "aunt"),
    ("grandmother", "uncle"),
)
ROLES = _split(
    ("baker", "farmer", "teacher", "librarian", "shopkeeper", "gardener", "coach"),
    ("chef", "zookeeper"),
)
GROUPS = _split(("friends", "children", "students", "kids"), ("classmates", "players"))
EXTRA_CONTAINERS = _split(("bag/bags", "box/boxes", "row/rows", "shelf/shelves"), ("tray/trays",))

# Parts of a word problem, train and held-out phrasings. Fields: {N} name (or "the baker"),
# {Nc} the same capitalised, {P}/{Pc} pronoun, {pos}/{Pos} his/her, {obj} him/her, {a}, {b},
# {a_x}/{b_x} number + object, {xs} plural, {vp}/{vpast} verb, {rel} relative.
OPEN = _split(
    (
        "{Nc} has {a_x}.",
        "{Nc} had {a_x}.",
        "{Nc} started with {a_x}.",
        "{Nc} owns {a_x}.",
        "At first, {N} had {a_x}.",
        "{Nc} keeps {a_x} in a box.",
        "{Nc} collected {a_x} last week.",
    ),
    ("In the morning {N} had {a_x}.", "{Nc} had {a_x} at the start of the day."),
)
ADD_EVENT = _split(
    (
        "{Pc} {vp} {b} more.",
        "{Pc} {vpast} {b} more {b_n}.",
        "Then {P} {vpast} {b} more.",
        "Later {P} {vp} {b_x}.",
        "{Pos} {rel} gives {obj} {b} more.",
        "{Pos} {rel} gave {obj} {b_x}.",
        "{Pc} {vpast} another {b}.",
    ),
    ("After that, {P} {vpast} {b} more {b_n}.", "{Pc} was given {b} more by {pos} {rel}."),
)
SUB_EVENT = _split(
    (
        "{Pc} {vp} {b} of them.",
        "{Pc} {vpast} {b_x}.",
        "Then {P} {vpast} {b}.",
        "{Pc} gives {b} to {pos} {rel}.",
        "{Pc} gave {b_x} to {pos} {rel}.",
        "{Pos} {rel} took {b} of them.",
        "Later {P} {vpast} {b} of them.",
    ),
    ("{Pc} handed {b} of them to {pos} {rel}.", "By noon {P} {vpast} {b} of them."),
)
ADD_ONE = _split(
    (
        "{Nc} had {a_x} and {vpast} {b} more.",
        "{Nc} has {a_x} and {vp} {b} more.",
        "{Nc} had {a_x}, and {pos} {rel} gave {obj} {b} more.",
    ),
    ("{Nc} had {a_x}, then {vpast} {b} more.",),
)
SUB_ONE = _split(
    (
        "{Nc} had {a_x} and {vpast} {b}.",
        "{Nc} had {a_x} but {vpast} {b} of them.",
        "{Nc} had {a_x} and gave {b} to {pos} {rel}.",
        "{Nc} {vpast} {b} of {pos} {a_x}.",
    ),
    ("{Nc} has {a_x}, but {P} {vp} {b} of them.",),
)
ADD_Q = _split(
    (
        "How many {xs} does {N} have now?",
        "How many {xs} does {P} have now?",
        "How many {xs} does {P} have in total?",
        "How many {xs} does {N} have altogether?",
        "What is the total number of {xs} {N} has now?",
    ),
    ("How many {xs} does {N} have at the end?",),
)
SUB_Q = _split(
    (
        "How many {xs} does {N} have left?",
        "How many {xs} does {P} have left?",
        "How many {xs} are left?",
        "How many {xs} does {P} have now?",
        "How many {xs} remain?",
        "How many {xs} does {N} still have?",
    ),
    ("How many {xs} does {P} have after that?",),
)
ADD_FIRST = _split(
    (
        "How many {xs} does {N} have now if {P} had {a} and {vpast} {b} more?",
        "If {N} has {a_x} and {vp} {b} more, how many {xs} does {P} have?",
    ),
    ("What is the number of {xs} {N} has after {P} {vpast} {b} more and had {a} before?",),
    # the second number before the first (session 6, as for division)
    ("How many {xs} does {N} have if {P} {vpast} {b} more, having had {a} before?",),
)
SUB_FIRST = _split(
    (
        "How many {xs} are left if {N} had {a_x} and {vpast} {b} of them?",
        "If {N} has {a_x} and {vp} {b}, how many {xs} does {P} have left?",
    ),
    ("How many {xs} remain after {N} {vpast} {b} of {pos} {a_x}?",),
)
# multiplication: {a_cs} containers, {c} one container, {b_x} in each
MUL_BODY = _split(
    (
        "{Nc} has {a_cs}. Each {c} has {b_x}.",
        "{Nc} buys {a_cs} of {xs}. There are {b} in each {c}.",
        "{Nc} has {a_cs} with {b_x} in each {c}.",
        "Each {c} holds {b_x}. {Nc} has {a_cs}.",
        "{Nc} fills {a_cs}. {Pc} puts {b_x} in each {c}.",
        "{Nc} has {a_cs}, and every {c} has {b_x} in it.",
    ),
    ("{Nc} packs {a_cs}, with {b_x} going into each one.",),
)
MUL_THERE = _split(
    ("There are {a_cs} with {b_x} in each {c}.", "There are {a_cs}. Each {c} has {b_x}."),
    ("You see {a_cs}, and each {c} contains {b_x}.",),
)
MUL_Q = _split(
    (
        "How many {xs} does {N} have in all?",
        "How many {xs} does {P} have altogether?",
        "How many {xs} are there in total?",
    ),
    ("What is the total number of {xs}?",),
)
MUL_THERE_Q = _split(
    ("How many {xs} are there?", "How many {xs} are there in all?"), ("How many {xs} in total?",)
)
# division: {a_x} shared by {b}; containers {b_cs}, or a group of people {g}
DIV_BOXES = _split(
    (
        "{Nc} has {a_x} and puts them equally into {b_cs}. How many {xs} are in each {c}?",
        "{Nc} packs {a_x} into {b_cs}, the same number in each. How many {xs} go in each {c}?",
        "{a_x_c} are put equally into {b_cs}. How many {xs} are in each {c}?",
    ),
    ("{Nc} splits {a_x} evenly between {b_cs}. How many {xs} does each {c} get?",),
    # The divisor first (session 6: the extract stage read the held-out "{b} {g} share {a_x}
    # equally" as {b} / {a}: no training phrasing had put the divisor before the amount).
    ("There are {b_cs}, and {N} puts {a_x} equally into them. How many {xs} are in each {c}?",),
)
DIV_GROUP = _split(
    (
        "{Nc} shares {a_x} equally among {b} {g}. How many {xs} does each one get?",
        "{Nc} has {a_x} to share equally with {b} {g}. How many {xs} does each get?",
        "{a_x_c} are shared equally by {b} {g}. How many {xs} does each one get?",
    ),
    ("{b} {g} share {a_x} equally. How many {xs} does each one get?",),
    (
        "There are {b} {g}, and they get {a_x} to split equally. How many {xs} does each get?",
        "Among {b} {g}, {N} shares {a_x} equally. How many {xs} does each one get?",
    ),
)
DISTRACTORS = _split(
    (
        "{Nc} is {d} years old.",
        "{Pos} {rel} has {d_other}.",
        "{Pc} also has {d_other}.",
        "It took {obj} {d} minutes.",
        "{Pos} {rel} is {d} years old.",
    ),
    ("{Pos} house is number {d}.",),
)
FILLERS = _split(
    ("It was a sunny day.", "{Pc} was very happy.", "{Pc} likes them a lot."),
    ("Everyone was excited.",),
)
BARE_FRAMES = _split(
    (
        "What is {p}?",
        "How much is {p}?",
        "Calculate {p}.",
        "Compute {p}.",
        "What's {p}?",
        "Work out {p}.",
        "Please tell me {p}.",
        "Find {p}.",
        "what is {p}",
    ),
    ("Solve {p}.", "Quick question: what is {p}?"),
)
BARE_PHRASES: dict[str, tuple[str, ...]] = {
    "+": ("{a} plus {b}", "{a} + {b}", "{b} added to {a}", "the sum of {a} and {b}"),
    "-": ("{a} minus {b}", "{a} - {b}", "{b} subtracted from {a}", "{a} take away {b}"),
    "*": ("{a} times {b}", "{a} * {b}", "{a} x {b}", "{a} multiplied by {b}"),
    "/": ("{a} divided by {b}", "{a} / {b}", "{a} shared equally by {b}"),
}


def _pick(rng: random.Random, parts: dict[str, tuple[str, ...]], split: Split) -> str:
    """A training phrasing (train-only ones included for the training split), or for the
    held-out split a held-out one half of the time."""
    if split == "heldout":
        return rng.choice(parts["heldout"] if rng.random() < 0.5 else parts["train"])
    return rng.choice(parts["train"] + parts["train_only"])


def _number(rng: random.Random, lo: int = 1) -> int:
    """1 to 3 digits, each length as likely (more two-digit numbers, as people write them)."""
    digits = rng.choices((1, 2, 3), weights=(0.2, 0.45, 0.35))[0]
    return rng.randint(max(lo, 10 ** (digits - 1)), 10**digits - 1)


def _thing(rng: random.Random, split: Split, made_up: bool) -> wp.Thing:
    if made_up:
        noun = wp._made_up_word(rng)
        return wp.Thing(noun, wp._plural(noun), food=rng.random() < 0.5)
    return rng.choice(wp.THINGS[split])


def _container(rng: random.Random, split: Split, made_up: bool) -> wp.Thing:
    if made_up:
        word = wp._made_up_word(rng)
        return wp.Thing(word, wp._plural(word))
    pool = wp.CONTAINERS[split] + wp._things(" ".join(EXTRA_CONTAINERS[split]))
    return rng.choice(pool)


def _count(thing: wp.Thing, n: int) -> str:
    return f"{n} {thing.singular if n == 1 else thing.plural}"


def _subject(rng: random.Random, split: Split, made_up: bool) -> dict[str, str]:
    """A person (most of the time) or a role such as "the baker", with pronouns."""
    if rng.random() < 0.2:
        role = "the " + rng.choice(ROLES[split])
        pron = rng.choice(("he", "she"))
        name, word = role, role.split()[1]
    else:
        person = (
            wp.Person(wp._capital(wp._made_up_word(rng)), rng.choice(("he", "she")))
            if made_up
            else rng.choice(wp.PEOPLE[split])
        )
        name, pron, word = person.name, person.pronoun, person.name
    pos, obj = ("his", "him") if pron == "he" else ("her", "her")
    return {
        "N": name,
        "Nc": name[:1].upper() + name[1:],
        "P": pron,
        "Pc": pron.capitalize(),
        "pos": pos,
        "Pos": pos.capitalize(),
        "obj": obj,
        "word": word,
        "rel": rng.choice(RELATIVES[split]),
    }


def _sentences(*parts: str) -> str:
    return " ".join(p for p in parts if p)


def _with_extras(rng: random.Random, split: Split, body: list[str]) -> list[str]:
    """Insert a distractor (another number) or a filler sentence somewhere before the end."""
    if rng.random() < DISTRACTOR_SHARE:
        body.insert(rng.randint(1, len(body)), _pick(rng, DISTRACTORS, split))
    if rng.random() < 0.15:
        body.insert(rng.randint(1, len(body)), _pick(rng, FILLERS, split))
    return body


def _fill(text: str, fields: dict[str, str]) -> str:
    return text.format(**fields)


def _add_sub(rng: random.Random, split: Split, kind: str, made_up: bool) -> Problem:
    who = _subject(rng, split, made_up)
    thing = _thing(rng, split, made_up)
    other = _thing(rng, split, made_up)
    while other.plural == thing.plural:
        other = _thing(rng, split, made_up)
    if kind == "add":
        a, b = _number(rng), _number(rng)
        vp, vpast = rng.choice(wp.ADD_VERBS)
    else:
        a = _number(rng, lo=2)
        b = rng.randint(1, a - 1)
        vp, vpast = rng.choice(wp.SUB_VERBS + (wp.SUB_FOOD_VERBS if thing.food else ()))
    fields = {
        **who,
        "a": str(a),
        "b": str(b),
        "a_x": _count(thing, a),
        "b_x": _count(thing, b),
        "b_n": thing.singular if b == 1 else thing.plural,
        "xs": thing.plural,
        "vp": vp,
        "vpast": vpast,
        "d": str(rng.randint(2, 99)),
    }
    fields["d_other"] = _count(other, int(fields["d"]))
    add = kind == "add"
    shape = rng.random()
    if shape < 0.15:  # the question first
        question = _pick(rng, ADD_FIRST if add else SUB_FIRST, split)
        body = [question]
    else:
        if shape < 0.45:
            body = [_pick(rng, ADD_ONE if add else SUB_ONE, split)]
        else:
            body = [_pick(rng, OPEN, split), _pick(rng, ADD_EVENT if add else SUB_EVENT, split)]
        body = [*_with_extras(rng, split, body), _pick(rng, ADD_Q if add else SUB_Q, split)]
    question = _fill(_sentences(*body), fields)
    value = a + b if add else a - b
    when = "now" if add else "left"
    sentence = f"{who['Nc']} has {_count(thing, value)} {when}."
    noun = thing.singular if value == 1 else thing.plural
    expression = f"{a} {'+' if add else '-'} {b}"
    return Problem(question, expression, value, sentence, kind, (who["word"], noun))


def _factors(rng: random.Random) -> tuple[int, int]:
    """Containers and things in each: one of them has one digit, the product at most 3."""
    if rng.random() < 0.7:
        return rng.randint(2, 9), rng.randint(2, 99)
    return rng.randint(10, 99), rng.randint(2, 9)


def _mul(rng: random.Random, split: Split, made_up: bool) -> Problem:
    who = _subject(rng, split, made_up)
    thing = _thing(rng, split, made_up)
    box = _container(rng, split, made_up and rng.random() < 0.5)
    a, b = _factors(rng)
    fields = {
        **who,
        "a_cs": _count(box, a),
        "c": box.singular,
        "b": str(b),
        "b_x": _count(thing, b),
        "xs": thing.plural,
        "d": str(rng.randint(2, 99)),
        "d_other": _count(thing, 1),
    }
    value = a * b
    if rng.random() < 0.25:
        body = [_pick(rng, MUL_THERE, split), _pick(rng, MUL_THERE_Q, split)]
        sentence = f"There are {value} {thing.plural} in all."
        words: tuple[str, ...] = (thing.plural,)
    else:
        body = [_pick(rng, MUL_BODY, split), _pick(rng, MUL_Q, split)]
        if rng.random() < DISTRACTOR_SHARE:
            body.insert(1, _fill("{Nc} is {d} years old.", fields))
        sentence = f"{who['Nc']} has {value} {thing.plural} in all."
        words = (who["word"], thing.plural)
    template = _sentences(*body)
    question = _fill(template, fields)
    # The order the numbers are written in: "Each bag holds 5. Sam has 4 bags." is 5 * 4.
    at_b = min(template.find(f) for f in ("{b_x}", "{b}") if f in template)
    expression = f"{b} * {a}" if at_b < template.index("{a_cs}") else f"{a} * {b}"
    return Problem(question, expression, value, sentence, "mul", words)


def _div(rng: random.Random, split: Split, made_up: bool) -> Problem:
    who = _subject(rng, split, made_up)
    thing = _thing(rng, split, made_up)
    b, value = rng.randint(2, 9), rng.randint(2, 99)
    a = b * value
    box = _container(rng, split, made_up and rng.random() < 0.5)
    group = rng.choice(GROUPS[split])
    fields = {
        **who,
        "a_x": _count(thing, a),
        "a_x_c": _count(thing, a).capitalize(),
        "b": str(b),
        "b_cs": _count(box, b),
        "c": box.singular,
        "g": group,
        "xs": thing.plural,
    }
    if rng.random() < 0.5:
        text = _pick(rng, DIV_BOXES, split)
        sentence = f"Each {box.singular} has {_count(thing, value)}."
        words: tuple[str, ...] = (box.singular, thing.plural if value != 1 else thing.singular)
    else:
        text = _pick(rng, DIV_GROUP, split)
        sentence = f"Each one gets {_count(thing, value)}."
        words = (thing.plural if value != 1 else thing.singular,)
    if text.startswith("{b} "):
        text = text[0].upper() + text[1:]
    question = _fill(text, fields)
    question = question[:1].upper() + question[1:]
    return Problem(question, f"{a} / {b}", value, sentence, "div", words)


def _bare(rng: random.Random, split: Split) -> Problem:
    op = rng.choice("+-*/")
    if op == "+":
        a, b = _number(rng), _number(rng)
    elif op == "-":
        a = _number(rng, lo=2)
        b = rng.randint(1, a - 1)
    elif op == "*":
        a, b = _factors(rng)
    else:
        b, q = rng.randint(2, 9), rng.randint(2, 99)
        a = b * q
    phrase = rng.choice(BARE_PHRASES[op]).format(a=a, b=b)
    question = _pick(rng, BARE_FRAMES, split).format(p=phrase)
    question = question[:1].upper() + question[1:] if not question.startswith("what") else question
    value = work.evaluate(f"{a} {op} {b}")
    sentence = f"{a} {OP_WORDS[op]} {b} is {value}."
    return Problem(question, f"{a} {op} {b}", value, sentence, "bare")


def _refusal(rng: random.Random, split: Split) -> Problem:
    who = _subject(rng, split, False)
    thing = _thing(rng, split, False)
    question = offtopic.question(rng, split, who, _count(thing, _number(rng)))
    return Problem(question, work.NONE, None, REFUSAL, "refuse")


def make_problem(rng: random.Random, split: Split = "train") -> Problem:
    """One random problem of ``split``."""
    kind = rng.choices(list(KIND_WEIGHTS), weights=list(KIND_WEIGHTS.values()))[0]
    made_up = split == "train" and rng.random() < MADE_UP_SHARE
    if kind in ("add", "sub"):
        return _add_sub(rng, split, kind, made_up)
    if kind == "mul":
        return _mul(rng, split, made_up)
    if kind == "div":
        return _div(rng, split, made_up)
    if kind == "bare":
        return _bare(rng, split)
    return _refusal(rng, split)


def problems(seed: int, n: int, split: Split = "train") -> list[Problem]:
    """``n`` problems, reproducible from ``seed``."""
    rng = random.Random(f"smollm2:{split}:{seed}")
    return [make_problem(rng, split) for _ in range(n)]


def unique_problems(seed: int, n: int, split: Split) -> list[Problem]:
    """``n`` problems with distinct questions."""
    rng = random.Random(f"smollm2:{split}:{seed}")
    seen: set[str] = set()
    out: list[Problem] = []
    while len(out) < n:
        problem = make_problem(rng, split)
        if problem.question not in seen:
            seen.add(problem.question)
            out.append(problem)
    return out


def write_heldout(path: Path, *, n: int = 200, seed: int = 1234) -> Path:
    """``n`` held-out in-scope questions as JSON Lines for ``edgestack eval`` (``answer`` is the
    number; ``sentence``, ``words`` and ``kind`` are for score.py)."""
    rows = []
    for p in unique_problems(seed, n * 2, "heldout"):
        if p.kind != "refuse" and len(rows) < n:
            row = {"question": p.question, "answer": p.value, "expression": p.expression,
                   "sentence": p.sentence, "words": list(p.words), "kind": p.kind}  # fmt: skip
            rows.append(json.dumps(row, ensure_ascii=False))
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="print problems, or write held-out eval data")
    parser.add_argument("--write-heldout", type=Path, help="write held-out questions here")
    parser.add_argument("-n", type=int, default=200)
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--split", choices=["train", "heldout"], default="train")
    args = parser.parse_args()
    if args.write_heldout:
        write_heldout(args.write_heldout, n=args.n, seed=args.seed)
    else:
        for p in problems(args.seed, args.n, args.split):
            print(p.question, "|", *p.stage_outputs.values(), sep=" ")
