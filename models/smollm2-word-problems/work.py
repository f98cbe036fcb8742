"""The compute stage's written work: column arithmetic a 135M model can follow digit by digit.

A small language model cannot add two three-digit numbers in one step reliably, but it can write
out one digit fact at a time (the way a pupil does) and copy the digits together at the end::

    345 + 278  ->  5+8=13; 4+7+1=12; 3+2+1=6; so 623
    345 - 278  ->  15-8=7; 14-7-1=6; 3-2-1=0; so 67
    7 * 125    ->  7*5=35; 7*2+3=17; 7*1+1=8; so 875
    875 / 7    ->  8/7=1 r1; 17/7=2 r3; 35/7=5 r0; so 125

Addition, subtraction and multiplication go from the right (ones first), each step naming the
digits, the carry or borrow it takes in (``+1``, ``-1``) and the full result of the step (a
leading ``1`` on a subtraction's top digit is the borrow it takes from the next column).
Division goes from the left with the running remainder. The answer is after ``so``. Pure Python.
"""

from __future__ import annotations

NONE = "none"
OPS = ("+", "-", "*", "/")


def evaluate(expression: str) -> int:
    """The value of ``"a op b"``; ``ValueError`` for anything else (or an inexact division)."""
    left, op, right = expression.split()
    a, b = int(left), int(right)
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    if op == "*":
        return a * b
    if op == "/":
        if b == 0 or a % b:
            raise ValueError(f"{expression!r} is not a whole division")
        return a // b
    raise ValueError(f"unknown operator {op!r} in {expression!r}")


def _digits(n: int) -> list[int]:
    """Digits from the right: 345 -> [5, 4, 3]."""
    return [int(c) for c in reversed(str(n))]


def _add(a: int, b: int) -> str:
    da, db = _digits(a), _digits(b)
    steps, carry = [], 0
    for i in range(max(len(da), len(db))):
        x, y = (da[i] if i < len(da) else 0), (db[i] if i < len(db) else 0)
        r = x + y + carry
        steps.append(f"{x}+{y}" + ("+1" if carry else "") + f"={r}")
        carry = r // 10
    return "; ".join(steps) + f"; so {a + b}"


def _sub(a: int, b: int) -> str:
    if b > a:
        raise ValueError(f"{a} - {b} is below zero")
    da, db = _digits(a), _digits(b)
    steps, borrow = [], 0
    for i in range(len(da)):
        x, y = da[i], (db[i] if i < len(db) else 0)
        r = x - y - borrow
        top = f"1{x}" if r < 0 else f"{x}"
        steps.append(f"{top}-{y}" + ("-1" if borrow else "") + f"={r % 10}")
        borrow = 1 if r < 0 else 0
    return "; ".join(steps) + f"; so {a - b}"


def _mul(a: int, b: int) -> str:
    m, n = (a, b) if a < 10 else (b, a)
    if m >= 10:
        raise ValueError(f"{a} * {b}: one factor must have one digit")
    steps, carry = [], 0
    for d in _digits(n):
        r = m * d + carry
        steps.append(f"{m}*{d}" + (f"+{carry}" if carry else "") + f"={r}")
        carry = r // 10
    return "; ".join(steps) + f"; so {a * b}"


def _div(a: int, b: int) -> str:
    if not 1 < b < 10 or a % b:
        raise ValueError(f"{a} / {b}: the divisor must have one digit and divide exactly")
    steps, rest = [], 0
    for c in str(a):
        part = rest * 10 + int(c)
        steps.append(f"{part}/{b}={part // b} r{part % b}")
        rest = part % b
    return "; ".join(steps) + f"; so {a // b}"


def work(expression: str) -> str:
    """The compute stage's output for an extract stage's output (``"none"`` stays ``"none"``)."""
    if expression.strip() == NONE:
        return NONE
    left, op, right = expression.split()
    a, b = int(left), int(right)
    return {"+": _add, "-": _sub, "*": _mul, "/": _div}[op](a, b)


def operator_of(work_text: str) -> str:
    """The operator of the arithmetic a work text writes out (its first digit fact shows it)."""
    for ch in work_text:
        if ch in OPS:
            return ch
    raise ValueError(f"no operator in {work_text!r}")


def result_of(text: str) -> int | None:
    """The number after the last ``so`` in a compute output (None if there is none)."""
    _, sep, tail = text.rpartition("so ")
    tail = tail.strip()
    return int(tail) if sep and tail.isdigit() else None
