"""What a parsed GBNF grammar's rules do: undefined rules, ``root``, left recursion, fan-out.

Rules are in llama.cpp's encoding (``llama_grammar_element``): a list of ``(type, value)``
elements per rule id, alternatives separated by ``ALT``, the last one ended by ``END``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import NamedTuple

from ...errors import GrammarError

# llama.cpp's enum llama_gretype, in its order.
END, ALT, RULE_REF, CHAR, CHAR_NOT, CHAR_RNG_UPPER, CHAR_ALT, CHAR_ANY, TOKEN, TOKEN_NOT = range(10)

Element = tuple[int, int]
#: builds the error for (index in the text, what was found, what to do)
Fail = Callable[[int, str, str], GrammarError]

_SHOWN_NAME = 40  # longest rule name quoted in a message


class Limits(NamedTuple):
    """Bounds on what llama.cpp builds when it steps through the grammar."""

    #: parse stacks made in one step (building them takes time quadratic in their number)
    alternatives: int
    #: entries of those stacks together
    entries: int
    #: rules in a chain where each starts with the next (llama.cpp copies its stack at each)
    chain: int


class Analysis(NamedTuple):
    """What :func:`check_rules` found, for the per-character check (:mod:`._advance`)."""

    #: the most alternatives open at one point
    widest: int
    #: each rule's alternatives, without ALT/END
    alts: list[list[list[Element]]]
    #: whether each rule can match nothing
    nullable: list[bool]
    #: the stacks llama.cpp makes at a reference to each rule
    stacks: list[int]
    #: rules, each after the rules it can start with
    order: list[int]


def rule_name(name: str) -> str:
    """The user's name of a rule (a group's or repetition's rule is named after its rule)."""
    base = name.split("_", 1)[0]  # user names cannot contain '_'; generated ones are "<rule>_<id>"
    return base if len(base) <= _SHOWN_NAME else base[:_SHOWN_NAME] + "..."


def check_rules(
    rules: Sequence[list[Element] | None],
    names: Sequence[str],
    first_use: dict[int, int],
    defined: dict[int, int],
    fail: Fail,
    *,
    limits: Limits,
) -> Analysis:
    """Check the rules llama.cpp will run; return what the per-character check needs.

    ``names[id]`` is each rule's name, ``first_use``/``defined`` where it is first named and
    where its definition starts (indexes into the text, for messages).
    """
    undefined = [i for i in range(len(names)) if i >= len(rules) or rules[i] is None]
    if undefined:
        sid = min(undefined, key=lambda i: first_use.get(i, 0))
        name = rule_name(names[sid])
        raise fail(
            first_use.get(sid, 0),
            f"expected a definition of rule '{name}', found none",
            f"add a line `{name} ::= ...`",
        )
    if "root" not in names:
        raise fail(
            0, "expected a rule named 'root', found none", "add `root ::= ...`: output starts there"
        )
    alts = [_alternatives(rule or []) for rule in rules]
    nullable = _nullable(alts)
    order = _leftmost_order(alts, nullable, names, defined, fail)
    _check_chains(alts, nullable, order, names, defined, fail, limits.chain)
    open_, stacks = _fan_out(alts, nullable, order, names, defined, fail, limits)
    return Analysis(open_, alts, nullable, stacks, order)


def _alternatives(rule: list[Element]) -> list[list[Element]]:
    alts: list[list[Element]] = [[]]
    for element in rule:
        if element[0] == ALT:
            alts.append([])
        elif element[0] != END:
            alts[-1].append(element)
    return alts


def _nullable(alts: list[list[list[Element]]]) -> list[bool]:
    """Which rules can match the empty string (through other rules too)."""
    nullable = [False] * len(alts)
    waiting: dict[int, list[int]] = {}  # rule -> alternatives (by number) that name it
    missing: list[int] = []  # per alternative: refs not yet known to be nullable
    owner: list[int] = []
    ready: list[int] = []
    for sid, rule_alts in enumerate(alts):
        for alt in rule_alts:
            if any(kind != RULE_REF for kind, _ in alt):
                continue  # a terminal always consumes a character
            if not alt:
                ready.append(sid)
            for _, ref in alt:
                waiting.setdefault(ref, []).append(len(missing))
            missing.append(len(alt))
            owner.append(sid)
    while ready:
        sid = ready.pop()
        if nullable[sid]:
            continue
        nullable[sid] = True
        for alt_no in waiting.get(sid, ()):
            missing[alt_no] -= 1
            if missing[alt_no] == 0:
                ready.append(owner[alt_no])
    return nullable


def _leftmost(alts: list[list[Element]], nullable: list[bool]) -> Iterator[int]:
    """Rules a rule can start with: each alternative's first ref, and the next while nullable."""
    for alt in alts:
        for kind, value in alt:
            if kind != RULE_REF:
                break
            yield value
            if not nullable[value]:
                break


def _leftmost_order(
    alts: list[list[list[Element]]],
    nullable: list[bool],
    names: Sequence[str],
    defined: dict[int, int],
    fail: Fail,
) -> list[int]:
    """Rules in an order where each comes after the rules it starts with; refuse left recursion.

    llama.cpp refuses a rule that can reach itself before matching a character, but it only
    follows a rule that can be empty when that rule has a literally empty alternative: through
    ``a ::= b``, ``b ::= ""`` it misses the loop and its parse stacks then grow without end.
    Here every rule that can match the empty string is followed.
    """
    state = [0] * len(alts)  # 0: not seen, 1: on the current path, 2: done
    order: list[int] = []
    for top in range(len(alts)):
        if state[top]:
            continue
        state[top] = 1
        path = [(top, _leftmost(alts[top], nullable))]
        while path:
            sid, successors = path[-1]
            nxt = next(successors, None)
            if nxt is None:
                state[sid] = 2
                order.append(sid)
                path.pop()
            elif state[nxt] == 1:
                name = rule_name(names[nxt])
                raise fail(
                    defined.get(nxt, 0),
                    f"expected no left recursion, found rule '{name}' reaching itself before "
                    "any character",
                    'rewrite it with repetition, e.g. `x ::= x "a" | "b"` as `x ::= "b" "a"*`',
                )
            elif state[nxt] == 0:
                state[nxt] = 1
                path.append((nxt, _leftmost(alts[nxt], nullable)))
    return order


def _check_chains(
    alts: list[list[list[Element]]],
    nullable: list[bool],
    order: list[int],
    names: Sequence[str],
    defined: dict[int, int],
    fail: Fail,
    limit: int,
) -> None:
    """Refuse a chain of more than ``limit`` rules where each can start with the next."""
    chain = [0] * len(alts)
    for sid in order:  # each rule after the rules it starts with
        chain[sid] = 1 + max((chain[nxt] for nxt in _leftmost(alts[sid], nullable)), default=0)
        if chain[sid] > limit:
            raise fail(
                defined.get(sid, 0),
                f"expected at most {limit} rules in a chain where each starts with the next, "
                f"found more from rule '{rule_name(names[sid])}'",
                "make the chain shorter: start some of these rules with a string or a class",
            )


def _fan_out(
    alts: list[list[list[Element]]],
    nullable: list[bool],
    order: list[int],
    names: Sequence[str],
    defined: dict[int, int],
    fail: Fail,
    limits: Limits,
) -> tuple[int, list[int]]:
    """The most parse stacks llama.cpp makes in one step, and those it makes at a reference to
    each rule (``stacks[rule]``); refuse more than ``limits``.

    At a reference to rule R llama.cpp makes one stack per way of reaching a character through
    R's alternatives and the rules they start with (``stacks[R]``), each holding one entry per
    rule it went through that has more to match after it (``entries[R]``, all stacks summed).
    Both are upper bounds (identical stacks are merged). Building them takes time linear in
    ``entries`` and quadratic in ``stacks``: ``limits`` bounds both.
    """
    max_stacks, max_entries = limits.alternatives, limits.entries
    stacks, entries = [0] * len(alts), [0] * len(alts)
    for sid in order:  # each rule after the rules it starts with
        n = size = 0
        for alt in alts[sid]:
            for i, (kind, value) in enumerate(alt):
                if kind != RULE_REF:
                    n, size = n + 1, size + 1
                    break
                more = i + 1 < len(alt)
                n, size = n + stacks[value], size + entries[value] + more * stacks[value]
                if not nullable[value]:
                    break
        stacks[sid], entries[sid] = min(n, max_stacks + 1), min(size, max_entries + 1)
    most_stacks, most_entries = (0, 0), (0, 0)  # (count, rule)
    for sid, rule_alts in enumerate(alts):
        most_stacks = max(most_stacks, (stacks[sid], sid))
        most_entries = max(most_entries, (entries[sid], sid))
        for alt in rule_alts:
            n = size = 0  # from the element after this one
            for i in range(len(alt) - 1, -1, -1):
                kind, value = alt[i]
                if kind != RULE_REF:
                    n = size = 1
                    continue
                more = i + 1 < len(alt)
                empty = nullable[value]
                n = min(stacks[value] + empty * n, max_stacks + 1)
                size = min(entries[value] + more * stacks[value] + empty * size, max_entries + 1)
                most_stacks = max(most_stacks, (n, sid))
                most_entries = max(most_entries, (size, sid))
    n, sid = most_stacks
    if n > max_stacks:
        raise fail(
            defined.get(sid, 0),
            f"expected at most {max_stacks} alternatives open at one point, found more in "
            f"rule '{rule_name(names[sid])}'",
            "factor the alternatives' common starts into shared rules, or split the choice",
        )
    size, sid = most_entries
    if size > max_entries:
        raise fail(
            defined.get(sid, 0),
            f"expected at most {max_entries} parse-stack entries at one point, found more in "
            f"rule '{rule_name(names[sid])}' (a chain of rules each starting with the next, "
            "times the alternatives at its end)",
            "shorten the chain of rules or reduce the alternatives at its end",
        )
    return n, stacks
