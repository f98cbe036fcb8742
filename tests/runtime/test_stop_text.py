"""StopText (edge_stack.engines.llama._sampling): token bytes to text that is safe to emit, byte by
byte, without llama.cpp; the same pieces through a real model are in test_llama.py."""

from __future__ import annotations

import pytest

from edge_stack.engines.llama._sampling import StopText

CASES: list[tuple[list[bytes], tuple[str, ...], list[str], str]] = [
    # pieces, stop strings, what each feed returns, what flush returns at the end
    ([b"ab", b"cd"], (), ["ab", "cd"], ""),
    ([b"ab", b"cd"], ("",), ["ab", "cd"], ""),  # an empty stop string is no stop string
    ([b"ab", b"c<", b"/s", b">de"], ("</s>",), ["ab", "c", "", ""], ""),
    ([b"ab<"], ("</s>",), ["ab"], "<"),  # held back, released at the end
    ([b"x</s", b"y"], ("</s>",), ["x", "</sy"], ""),
    ([b"ab", b"c<", b"x"], ("</s>",), ["ab", "c", "<x"], ""),
    ([b"aXYb"], ("XY", "Yb"), ["a"], ""),  # the earliest stop wins
    ([b"aYbXY"], ("XY", "Yb"), ["a"], ""),
    ([b"abc"], ("bc", "abc"), [""], ""),
    ([b"a", b"bcd", b"e"], ("bcd",), ["a", "", ""], ""),  # nothing after a stop
    ([b"ab", b"cab"], ("cabx", "abz"), ["", "ab"], "cab"),  # the longest possible start is held
    ([b"12", b"3"], ("2345",), ["1", ""], "23"),
    ([b"\xe2", b"\x82", b"\xac!"], (), ["", "", "€!"], ""),
    ([b"\xe2\x82", b"\xac END"], (" END",), ["", "€"], ""),
    ([b"x\xff", b"y"], (), ["x\ufffd", "y"], ""),
    ([b"ok\xe2\x82"], (), ["ok"], ""),  # an unfinished character is dropped at the end
    ([b"ok\xe2\x82"], ("zz",), ["ok"], ""),
    ([b"a\xe2"], ("\u20ac",), ["a"], ""),
]


@pytest.mark.parametrize(("pieces", "stop", "fed", "tail"), CASES)
def test_feed_and_flush(
    pieces: list[bytes], stop: tuple[str, ...], fed: list[str], tail: str
) -> None:
    text = StopText(stop)
    assert [text.feed(p) for p in pieces] == fed
    assert text.flush() == tail
    assert text.flush() == ""  # flushed once


def test_stopped_stays_stopped() -> None:
    text = StopText(["END"])
    assert text.feed(b"abEND") == "ab" and text.stopped
    assert text.feed(b"more") == "" and text.flush() == "" and text.stopped


def test_flush_resets_a_half_character() -> None:
    text = StopText([])
    assert text.feed(b"\xe2\x82") == "" and text.flush() == ""
    assert text.feed(b"ok") == "ok"  # the dropped bytes do not spoil what follows


def test_first_stop_in_one_piece_wins() -> None:
    text = StopText(["END"])
    assert text.feed(b"aENDbEND") == "a"


# --- StopScanner (edge_stack.engines._backend): the same rules on text, for other backends -------


@pytest.mark.parametrize(
    ("pieces", "stop", "fed", "tail"),
    [
        (["aENDbEND"], ("END",), ["a"], ""),  # the first occurrence, not the last
        (["xy"], ("ab",), ["xy"], ""),  # nothing that could start a stop is held
        (["xa"], ("ab",), ["x"], "a"),
        (["x", "ab", "zz"], ("ab",), ["x", "", ""], ""),
        (["abc"], (), ["abc"], ""),
    ],
)
def test_stop_scanner(pieces: list[str], stop: tuple[str, ...], fed: list[str], tail: str) -> None:
    from edge_stack.engines._backend import StopScanner

    scanner = StopScanner(stop)
    assert [scanner.feed(p) for p in pieces] == fed
    assert scanner.flush() == tail


def test_stop_scanner_flush_leaves_nothing_behind() -> None:
    from edge_stack.engines._backend import StopScanner

    scanner = StopScanner(["abc"])
    assert scanner.feed("xab") == "x" and scanner.flush() == "ab"
    assert scanner.feed("z") == "z"  # nothing held from before the flush
