"""The parse stacks llama.cpp builds for each generated character, estimated from the rules.

After a character matches, llama.cpp's ``llama_grammar_advance_stack`` (src/llama-grammar.cpp)
replaces the stack by one stack per way the grammar can go on: into each alternative of the next
item and, when that item can match nothing, past it to the item after, and so on, up through the
rules the stack is inside while what is left of them can match nothing. Each new stack is
compared with the others (a linear search). Every stack alive does this for every character of
every candidate token that fits so far, at every sampled token. In ``[a-z]* [a-z]* ...`` (N
items) all N stacks stay alive and each makes up to N stacks, about N^2 / 2 per character
(benchmarks/grammar_cost.py measures what that costs per token).

:func:`check_per_char` estimates that work, at every point of the grammar, as the sum over the
stacks open there of the stacks each makes when it moves past a character, and refuses more
than its limit at any point. ``[a-z]*`` is one item; ``("a" | "b" | ...)*`` many alternatives,
but after a character only the one that matched goes on, so it costs little. A rule that can be
reached again from itself while leaving an optional item behind (``r ::= "a" r "b"? | ""``) makes
one more stack per level of nesting, without bound: it counts as over any limit.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from ._graph import CHAR_ALT, CHAR_RNG_UPPER, RULE_REF, Analysis, Element, Fail, rule_name

__all__ = ["check_per_char", "per_char_work"]

_CLASS_PARTS = (CHAR_ALT, CHAR_RNG_UPPER)
# per rule: (rule it references, gain) for each reference whose rest of alternative can be empty
_Edges = list[list[tuple[int, int]]]


def check_per_char(
    found: Analysis, names: Sequence[str], defined: dict[int, int], fail: Fail, limit: int
) -> None:
    """Refuse a grammar that may make llama.cpp build more than ``limit`` stacks per character."""
    work, sid, grows = per_char_work(found, list(names).index("root"), limit + 1)
    if work <= limit:
        return
    if grows is not None:
        raise fail(
            defined.get(grows, 0),
            f"expected recursion that leaves nothing optional behind, found rule "
            f"'{rule_name(names[grows])}' reaching itself with an item that can match nothing "
            "after it, so llama.cpp's parse stacks grow with every level of the output",
            'make that item required or move it before the recursion (write r ::= "a" r "b"? '
            '| "" as r ::= "a" "b"? r | "")',
        )
    raise fail(
        defined.get(sid, 0),
        f"expected at most {limit:,} parse stacks built per generated character, found more "
        f"in rule '{rule_name(names[sid])}' (each alternative open at once goes on past every "
        "following item that can match nothing, like each [a-z]* in [a-z]* [a-z]*)",
        "make fewer items optional one after another (write [a-z]* [a-z]* as [a-z]*) "
        "or offer fewer alternatives at once",
    )


def per_char_work(found: Analysis, root: int, cap: int) -> tuple[int, int, int | None]:
    """(stacks built for one character at the worst point, capped at ``cap``; its rule; a rule
    whose recursion makes that grow without bound, or None)."""
    alts, nullable = found.alts, found.nullable
    stacks = [min(s, cap) for s in found.stacks]
    # 1. width[t]: the stacks made when a stack moves past terminal t, one per way to go on.
    counts = _follow(alts, nullable, stacks, None, root, cap)
    cont, grows = _longest(counts.base, counts.edges, cap)
    width = [min(after + (cont[sid] if empty else 0), cap) for sid, after, empty in counts.after]
    # 2. The same sums with each stack weighted by its width: what all the stacks open at a
    # point make when each moves past a character.
    starts = [0] * len(alts)  # like stacks[rule], weighted
    for sid in found.order:  # each rule after the rules it can start with
        total = 0
        for a, alt in enumerate(alts[sid]):
            for e, (kind, value) in enumerate(alt):
                if kind != RULE_REF:
                    total += width[counts.numbers[sid, a, e]]
                    break
                total += starts[value]
                if not nullable[value]:
                    break
        starts[sid] = min(total, cap)
    work = _follow(alts, nullable, starts, width, root, cap)
    cont_work, _ = _longest(work.base, work.edges, cap)
    best, best_rule = min(starts[root] + (cont_work[root] if nullable[root] else 0), cap), root
    for sid, after, empty in work.after:
        total = min(after + (cont_work[sid] if empty else 0), cap)
        if total > best:  # the first worst point, for the message
            best, best_rule = total, sid
    return best, best_rule, grows


class _Follow(NamedTuple):
    """What can follow each point of the grammar, summed (see :func:`_follow`)."""

    #: per rule: the most that follows a reference to it inside the referencing alternative
    base: list[int]
    #: per rule: (rule it references, what follows there) where all that follows can be empty,
    #: so the referenced rule goes on where the referencing one does
    edges: _Edges
    #: per terminal (numbered as in ``numbers``): (its rule, what follows it, all of it can be empty)
    after: list[tuple[int, int, bool]]
    #: (rule, alternative, element) -> terminal number
    numbers: dict[tuple[int, int, int], int]


def _follow(
    alts: Sequence[Sequence[Sequence[Element]]],
    nullable: Sequence[bool],
    per_rule: Sequence[int],
    per_terminal: Sequence[int] | None,
    root: int,
    cap: int,
) -> _Follow:
    """Sums over what can follow each point: ``per_rule[r]`` for a reference to rule r (and what
    follows it too when r can be empty), ``per_terminal[t]`` (default 1) for terminal t; after
    root, the empty stack (1). Sums are capped at ``cap``."""
    base = [0] * len(alts)
    base[root] = 1
    edges: _Edges = [[] for _ in alts]
    after_terminal: list[tuple[int, int, bool]] = []
    index: dict[tuple[int, int, int], int] = {}
    for sid, rule_alts in enumerate(alts):
        for a, alt in enumerate(rule_alts):
            after, empty = 0, True  # from the end of the alternative backwards
            for e in range(len(alt) - 1, -1, -1):
                kind, value = alt[e]
                if kind in _CLASS_PARTS:
                    continue  # the rest of a [...] class: one terminal with its start
                if kind == RULE_REF:
                    if empty:
                        edges[sid].append((value, after))
                    else:
                        base[value] = max(base[value], after)
                    after = min(per_rule[value] + (after if nullable[value] else 0), cap)
                    empty = empty and nullable[value]
                    continue
                t = index[sid, a, e] = len(after_terminal)
                after_terminal.append((sid, after, empty))
                after, empty = (1 if per_terminal is None else per_terminal[t]), False
    return _Follow(base, edges, after_terminal, index)


def _longest(base: list[int], edges: _Edges, cap: int) -> tuple[list[int], int | None]:
    """cont[v] = max(base[v], cont[u] + gain for each edge u -> v), capped at ``cap``; and a
    rule on a cycle with gain, or None.

    Rules that reach each other are solved together (Tarjan's strongly connected components,
    without recursion): around a cycle with any gain the value grows without bound (``cap``);
    otherwise every rule of the cycle gets the same value.
    """
    n = len(base)
    index, low = [-1] * n, [0] * n
    on_stack = [False] * n
    stack: list[int] = []
    components: list[list[int]] = []  # each after every component it has edges to
    counter = 0
    for top in range(n):
        if index[top] >= 0:
            continue
        work = [(top, 0)]
        while work:
            v, i = work.pop()
            if i == 0:
                index[v] = low[v] = counter
                counter += 1
                stack.append(v)
                on_stack[v] = True
            if i < len(edges[v]):
                work.append((v, i + 1))
                w = edges[v][i][0]
                if index[w] < 0:
                    work.append((w, 0))
                elif on_stack[w]:
                    low[v] = min(low[v], index[w])
                continue
            for w, _ in edges[v]:
                if on_stack[w] and index[w] > index[v]:  # w is in v's subtree
                    low[v] = min(low[v], low[w])
            if low[v] == index[v]:
                component = []
                while True:
                    w = stack.pop()
                    on_stack[w] = False
                    component.append(w)
                    if w == v:
                        break
                components.append(component)
    cont = list(base)
    growing: int | None = None
    for component in reversed(components):  # each rule after the rules that reference it
        members = set(component)
        grows = any(w in members and gain > 0 for v in component for w, gain in edges[v])
        if grows and growing is None:
            growing = min(component)
        value = cap if grows else min(max(cont[v] for v in component), cap)
        for v in component:
            cont[v] = value
            for w, gain in edges[v]:
                if w not in members:
                    cont[w] = max(cont[w], min(value + gain, cap))
    return cont, growing
