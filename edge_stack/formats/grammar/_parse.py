"""llama.cpp's GBNF parser (``llama_grammar_parser`` in src/llama-grammar.cpp), in Python.

:class:`Parser` reads a grammar as llama.cpp 0.3.36 does, rule for rule: the same syntax, the same
rules made for groups and repetitions, in llama.cpp's encoding (:mod:`edge_stack.formats.grammar._graph`).
Where llama.cpp would throw (and refuse the grammar) it raises :class:`GrammarError`; it also
refuses what llama.cpp accepts but cannot run: a reversed range, a class or string that only
U+0000 could match, a repetition whose maximum is below its minimum (llama.cpp loops without end
on it), and anything past the limits it is given.
"""

from __future__ import annotations

import re

from ...errors import GrammarError
from ._graph import (
    ALT,
    CHAR,
    CHAR_ALT,
    CHAR_ANY,
    CHAR_NOT,
    CHAR_RNG_UPPER,
    END,
    RULE_REF,
    TOKEN,
    TOKEN_NOT,
    Element,
)

__all__ = ["LLAMA_MAX_REPETITIONS", "Parser", "error_at", "escaped", "position"]

#: llama.cpp's MAX_REPETITION_THRESHOLD: most repetitions of one item, and of nested ones together
LLAMA_MAX_REPETITIONS = 2000
_MAX_TOKEN_ID = 0xFFFFFFFF  # llama.cpp refuses <[id]> above uint32
_MAX_CODE_POINT = 0x10FFFF
_SURROGATES = (0xD800, 0xDFFF)  # UTF-16 halves: code points no UTF-8 text holds
_SPACE = re.compile(r"(?:[ \t]+|#[^\r\n]*)*")
_SPACE_NL = re.compile(r"(?:[ \t\r\n]+|#[^\r\n]*)*")
_NAME = re.compile(r"[a-zA-Z0-9-]+")
_DIGITS = re.compile(r"[0-9]+")
_PLAIN = re.compile(r'[^"\\]+')
_HEX = re.compile(r"[0-9a-fA-F]*")
_HEX_ESCAPES = {"x": 2, "u": 4, "U": 8}
_ESCAPES = {"t": 9, "r": 13, "n": 10, "\\": 92, '"': 34, "[": 91, "]": 93, "-": 45}
_ESCAPE_LIST = r"\x.. \u.... \U........ \t \r \n \\ \" \[ \] \-"


def escaped(cp: int) -> str:
    """One character as a short quoted token that is safe in a one-line message."""
    if cp == 0x27:
        return "'\\''"
    if 0x20 <= cp < 0x7F:
        return f"'{chr(cp)}'"
    if cp <= 0xFF:
        return f"'\\x{cp:02x}'"
    return f"'\\u{cp:04x}'" if cp <= 0xFFFF else f"'\\U{cp:08x}'"


def position(text: str, index: int) -> tuple[int, int]:
    """1-based (line, column) of ``text[index]``, counting characters."""
    line = text.count("\n", 0, index) + 1
    return line, index - (text.rfind("\n", 0, index) + 1) + 1


def error_at(text: str, name: str, index: int, what: str, fix: str) -> GrammarError:
    """The one-line error for ``text[index]``: "<name> line L, column C: <what>; <fix>"."""
    line, column = position(text, index)
    return GrammarError(f"{name} line {line}, column {column}: {what}; {fix}")


class Parser:
    """llama.cpp's ``llama_grammar_parser``, rule for rule, over the text's characters.

    (llama.cpp works on UTF-8 bytes; every character of the syntax is ASCII, so on valid UTF-8
    that is the same as working on characters.)
    """

    def __init__(
        self, text: str, name: str, *, max_depth: int, max_rules: int, max_elements: int
    ) -> None:
        self.text = text
        self.name = name
        self.max_depth, self.max_rules, self.max_elements = max_depth, max_rules, max_elements
        #: rule name -> id, in llama.cpp's order (generated names are "<rule>_<id>")
        self.symbols: dict[str, int] = {}
        self.rules: list[list[Element] | None] = []
        self.first_use: dict[int, int] = {}
        self.defined: dict[int, int] = {}
        self.elements = 0
        self.depth = 0
        #: (index, <[id]>, <text>, negated) of each token terminal
        self.tokens: list[tuple[int, int | None, str | None, bool]] = []

    def fail(self, index: int, what: str, fix: str) -> GrammarError:
        return error_at(self.text, self.name, index, what, fix)

    def _found(self, index: int) -> str:
        return (
            f"found {escaped(ord(self.text[index]))}" if index < len(self.text) else "found the end"
        )

    def _peek(self, index: int) -> str:
        return self.text[index] if index < len(self.text) else ""

    def _space(self, index: int, newline_ok: bool) -> int:
        match = (_SPACE_NL if newline_ok else _SPACE).match(self.text, index)
        return match.end() if match else index

    def _symbol(self, name: str, index: int) -> int:
        sid = self.symbols.setdefault(name, len(self.symbols))
        self.first_use.setdefault(sid, index)
        self._count_rules(index)
        return sid

    def _generate(self, base: str, index: int) -> int:
        sid = len(self.symbols)
        self.symbols[f"{base}_{sid}"] = sid
        self.defined[sid] = index
        self._count_rules(index)
        return sid

    def _count_rules(self, index: int) -> None:
        if len(self.symbols) > self.max_rules:
            raise self.fail(
                index,
                f"expected at most {self.max_rules} rules once groups and repetitions are "
                "expanded, found more",
                "simplify the grammar: each group and each optional repetition adds rules",
            )

    def _add_rule(self, sid: int, rule: list[Element]) -> None:
        if len(self.rules) <= sid:
            self.rules.extend([None] * (sid + 1 - len(self.rules)))
        old = self.rules[sid]
        self.elements += len(rule) - (len(old) if old else 0)
        self.rules[sid] = rule  # a rule defined twice keeps its last definition, as in llama.cpp

    def parse(self) -> None:
        index = self._space(0, True)
        while index < len(self.text):
            index = self._rule(index)

    def _rule(self, start: int) -> int:
        match = _NAME.match(self.text, start)
        if not match:
            raise self.fail(
                start,
                f"expected a rule name, {self._found(start)}",
                "start each rule with `name ::=` (letters, digits and '-')",
            )
        index = self._space(match.end(), False)
        sid = self._symbol(match.group(), start)
        if not self.text.startswith("::=", index):
            raise self.fail(
                index, f"expected '::=' after a rule name, {self._found(index)}", _RULE_FIX
            )
        self.defined[sid] = start
        index = self._alternates(self._space(index + 3, True), match.group(), sid, nested=False)
        char = self._peek(index)
        if char == "\r":
            index += 2 if self._peek(index + 1) == "\n" else 1
        elif char == "\n":
            index += 1
        elif char:
            raise self.fail(index, f"expected the end of the rule, {self._found(index)}", _END_FIX)
        return self._space(index, True)

    def _alternates(self, index: int, rule_name: str, sid: int, *, nested: bool) -> int:
        rule: list[Element] = []
        index = self._sequence(index, rule_name, rule, nested)
        while self._peek(index) == "|":
            rule.append((ALT, 0))
            index = self._sequence(self._space(index + 1, True), rule_name, rule, nested)
        rule.append((END, 0))
        self._add_rule(sid, rule)
        return index

    def _sequence(self, index: int, rule_name: str, rule: list[Element], nested: bool) -> int:
        text = self.text
        last = len(rule)  # where the item a repetition applies to starts
        n_prev_rules = 1
        while index < len(text):
            char = text[index]
            start = index
            if char == '"':
                last, n_prev_rules = len(rule), 1
                index = self._literal(index + 1, rule)
                index = self._space(index + 1, nested)
            elif char == "[":
                last, n_prev_rules = len(rule), 1
                index = self._space(self._char_class(index, rule) + 1, nested)
            elif char in "<!":
                last, n_prev_rules = len(rule), 1
                index = self._space(self._token(index, rule), nested)
            elif _NAME.match(char):
                match = _NAME.match(text, index)
                assert match is not None
                last, n_prev_rules = len(rule), 1
                rule.append((RULE_REF, self._symbol(match.group(), index)))
                index = self._space(match.end(), nested)
            elif char == "(":
                self.depth += 1
                if self.depth > self.max_depth:
                    raise self.fail(
                        index,
                        f"expected groups nested at most {self.max_depth} deep, found deeper",
                        "name inner groups as rules of their own",
                    )
                before = len(self.symbols)
                sub = self._generate(rule_name, index)
                index = self._alternates(self._space(index + 1, True), rule_name, sub, nested=True)
                self.depth -= 1
                n_prev_rules = max(1, len(self.symbols) - before)
                last = len(rule)
                rule.append((RULE_REF, sub))
                if self._peek(index) != ")":
                    line, column = position(text, start)
                    raise self.fail(
                        index,
                        f"expected ')' closing the group at line {line}, column {column}, "
                        + self._found(index),
                        "close the group",
                    )
                index = self._space(index + 1, nested)
            elif char == ".":
                last, n_prev_rules = len(rule), 1
                rule.append((CHAR_ANY, 0))
                index = self._space(index + 1, nested)
            elif char in "*+?":
                index = self._space(index + 1, nested)
                low, high = {"*": (0, None), "+": (1, None), "?": (0, 1)}[char]
                n_prev_rules = self._repeat(start, rule_name, rule, last, n_prev_rules, low, high)
            elif char == "{":
                index, low, high = self._bounds(index, nested)
                n_prev_rules = self._repeat(start, rule_name, rule, last, n_prev_rules, low, high)
            else:
                break
        return index

    def _char(self, index: int) -> tuple[int, int]:
        """llama.cpp's parse_char: one character or escape at ``index``; (code point, next)."""
        text = self.text
        if text[index] != "\\":
            return ord(text[index]), index + 1
        kind = self._peek(index + 1)
        if kind in _HEX_ESCAPES:
            size = _HEX_ESCAPES[kind]
            match = _HEX.match(text, index + 2, index + 2 + size)
            if match is None or match.end() - match.start() != size:
                raise self.fail(
                    index,
                    f"expected {size} hex digits after \\{kind}",
                    f"write e.g. \\{kind}{'0' * (size - 2)}41",
                )
            cp = int(match.group(), 16)
            if cp > _MAX_CODE_POINT:
                raise self.fail(
                    index,
                    f"expected a character up to \\U0010ffff, found \\U{cp:08x}",
                    "use a Unicode code point",
                )
            if _SURROGATES[0] <= cp <= _SURROGATES[1]:
                # No valid UTF-8 encodes one: llama.cpp would match (and generate) invalid bytes.
                raise self.fail(
                    index,
                    f"expected a Unicode character, found the UTF-16 surrogate \\u{cp:04x}, "
                    "which is not one and has no valid UTF-8",
                    "write the character itself or its code point, e.g. \\U0001f600, not the "
                    "pair \\ud83d\\ude00",
                )
            return cp, index + 2 + size
        if kind in _ESCAPES:
            return _ESCAPES[kind], index + 2
        what = escaped(ord(kind)) if kind else "the end"
        raise self.fail(
            index, f"unknown escape: backslash then {what}", f"the escapes are {_ESCAPE_LIST}"
        )

    def _literal(self, index: int, rule: list[Element]) -> int:
        """A "..." literal from ``index`` (after the quote); returns the closing quote's index."""
        text, start = self.text, index - 1
        while True:
            plain = _PLAIN.match(text, index)
            if plain:
                rule.extend((CHAR, ord(c)) for c in plain.group())
                index = plain.end()
            if index >= len(text):
                raise self.fail(
                    start, "expected '\"' closing this string, found the end", 'add the closing "'
                )
            if text[index] == '"':
                return index
            cp, after = self._char(index)
            if cp == 0:
                raise self.fail(
                    index, "found \\x00 in a string: no token ever produces it", "remove it"
                )
            rule.append((CHAR, cp))
            index = after

    def _char_class(self, start: int, rule: list[Element]) -> int:
        """A [...] class from ``start`` (its '['); returns the closing ']' index."""
        index = start + 1
        negated = self._peek(index) == "^"
        index += negated
        first = len(rule)
        ranges: list[tuple[int, int]] = []
        while True:
            if index >= len(self.text):
                raise self.fail(
                    start, "expected ']' closing this class, found the end", "add the ]"
                )
            if self.text[index] == "]":
                break
            item = index
            low, index = self._char(index)
            kind = CHAR_ALT if len(rule) > first else (CHAR_NOT if negated else CHAR)
            rule.append((kind, low))
            high = low
            if self._peek(index) == "-" and self._peek(index + 1) != "]":
                if index + 1 >= len(self.text):
                    raise self.fail(
                        start, "expected ']' closing this class, found the end", "add the ]"
                    )
                high, index = self._char(index + 1)
                rule.append((CHAR_RNG_UPPER, high))
                if high < low:
                    raise self.fail(
                        item,
                        f"expected a range from low to high, found {escaped(low)} to {escaped(high)}",
                        f"write it as {escaped(high)[1:-1]}-{escaped(low)[1:-1]}",
                    )
            ranges.append((low, high))
        if ranges and _matches_nothing(ranges, negated):
            raise self.fail(
                start,
                "expected a class that matches some character, found one that matches none "
                "(no token produces U+0000)",
                "widen the class or remove it",
            )
        return index

    def _token(self, start: int, rule: list[Element]) -> int:
        """``<[id]>``, ``<text>`` or ``!`` then either; returns the index after it."""
        text = self.text
        negated = text[start] == "!"
        index = start + negated
        if self._peek(index) != "<":
            raise self.fail(index, f"expected '<' after '!', {self._found(index)}", "write !<[id]>")
        index += 1
        token_id: int | None = None
        token_text: str | None = None
        if self._peek(index) == "[":
            digits = _DIGITS.match(text, index + 1)
            if not digits:
                raise self.fail(
                    index + 1, f"expected a token id, {self._found(index + 1)}", "write <[123]>"
                )
            token_id = _number(digits.group())
            if token_id > _MAX_TOKEN_ID:
                raise self.fail(
                    index + 1, "expected a token id below 2^32, found a larger one", "fix the id"
                )
            index = digits.end()
            for want in "]>":
                if self._peek(index) != want:
                    raise self.fail(
                        index, f"expected '{want}', {self._found(index)}", "write <[123]>"
                    )
                index += 1
        else:
            end = text.find(">", index)
            if end < 0:
                raise self.fail(
                    start, "expected '>' closing this token, found the end", "add the >"
                )
            token_text, index = text[start + negated : end + 1], end + 1
        rule.append((TOKEN_NOT if negated else TOKEN, token_id or 0))
        self.tokens.append((start, token_id, token_text, negated))
        return index

    def _bounds(self, start: int, nested: bool) -> tuple[int, int, int | None]:
        """``{m}``, ``{m,}`` or ``{m,n}`` from ``start`` (its '{'): (next index, m, n or None)."""
        index = self._space(start + 1, nested)
        digits = _DIGITS.match(self.text, index)
        if not digits:
            raise self.fail(
                index, f"expected a number after '{{', {self._found(index)}", _BOUNDS_FIX
            )
        low, high = _number(digits.group()), None
        index = self._space(digits.end(), nested)
        if self._peek(index) == "}":
            high = low
        elif self._peek(index) == ",":
            index = self._space(index + 1, nested)
            digits = _DIGITS.match(self.text, index)
            if digits:
                high = _number(digits.group())
                index = self._space(digits.end(), nested)
            if self._peek(index) != "}":
                raise self.fail(index, f"expected '}}', {self._found(index)}", _BOUNDS_FIX)
        else:
            raise self.fail(index, f"expected ',' or '}}', {self._found(index)}", _BOUNDS_FIX)
        if low > LLAMA_MAX_REPETITIONS:
            raise self.fail(
                start,
                f"expected at most {LLAMA_MAX_REPETITIONS} repetitions, found {low:,}",
                _REPEAT_FIX,
            )
        if high is not None and high > LLAMA_MAX_REPETITIONS:
            high = None  # llama.cpp reads {m,n} with n above its limit as {m,}
        if high is not None and high < low:
            raise self.fail(
                start,
                f"expected a maximum of repetitions at least the minimum, found {{{low},{high}}}",
                f"write {{{high},{low}}}",
            )
        return self._space(index + 1, nested), low, high

    def _repeat(
        self,
        at: int,
        rule_name: str,
        rule: list[Element],
        last: int,
        n_prev_rules: int,
        low: int,
        high: int | None,
    ) -> int:
        """llama.cpp's handle_repetitions: rewrite ``rule[last:]`` repeated low..high times.

        S{m,n} becomes S (m times) then a chain of n-m optional S rules; S{m,} becomes S (m
        times) then one rule ``S' ::= S S' |``. Returns the new ``n_prev_rules``.
        """
        if last == len(rule):
            raise self.fail(
                at,
                "expected an item before this repetition, found none",
                "put *, +, ? and {...} after a string, class, rule name or group",
            )
        prev = rule[last:]
        total = high if high else (low or 1)
        if n_prev_rules * total > LLAMA_MAX_REPETITIONS:
            raise self.fail(
                at,
                f"expected at most {LLAMA_MAX_REPETITIONS} rules from nested repetitions, found more",
                _REPEAT_FIX,
            )
        n_opt = 1 if high is None else high - low
        growth = max(low - 1, 0) * len(prev) + n_opt * (len(prev) + 3) + 1
        if self.elements + len(rule) + growth > self.max_elements:
            raise self.fail(
                at,
                f"expected at most {self.max_elements:,} grammar elements, found more",
                "repeat less: repetitions are expanded",
            )
        if low == 0:
            del rule[last:]
        else:
            rule.extend(prev * (low - 1))
        last_rec = 0
        for i in range(n_opt):
            sid = self._generate(rule_name, at)
            rec = list(prev)
            if i > 0 or high is None:
                rec.append((RULE_REF, sid if high is None else last_rec))
            rec += [(ALT, 0), (END, 0)]  # ends with an empty alternative
            self._add_rule(sid, rec)
            last_rec = sid
        if n_opt > 0:
            rule.append((RULE_REF, last_rec))
        return n_prev_rules * total


def _number(digits: str) -> int:
    # Beyond 20 digits a number is above every limit; int() of thousands of digits is refused.
    return int(digits) if len(digits) <= 20 else 10**20


def _matches_nothing(ranges: list[tuple[int, int]], negated: bool) -> bool:
    """Whether a class can match no character a token produces (U+0001..U+10FFFF)."""
    if not negated:
        return all(high < 1 for _, high in ranges)
    covered = 1  # everything below this code point is excluded by the class
    for low, high in sorted(ranges):
        if low > covered:
            return False
        covered = max(covered, high + 1)
    return covered > _MAX_CODE_POINT


_RULE_FIX = "write rules as `name ::= ...`, one per line (names: letters, digits and '-')"
_END_FIX = "a rule ends at the end of its line: check the quotes and brackets before this point"
_BOUNDS_FIX = "write {m}, {m,} or {m,n}"
_REPEAT_FIX = "repeat fewer times (llama.cpp's limit)"
