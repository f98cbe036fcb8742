"""Templates: parsing, one-pass rendering, and special tokens only where the template writes them."""

from __future__ import annotations

import pytest

from edge_stack.engines._backend import StopScanner
from edge_stack.formats._template import (
    Field,
    Segment,
    TemplateSyntaxError,
    parse_template,
    render,
    split_special,
    tokenize_rendered,
)

EOT = "<|endoftext|>"
SPECIALS = {EOT: 0, "<|im_start|>": 1, "<|im": 2}


@pytest.mark.parametrize(
    ("source", "parts"),
    [
        ("Q: {question}\nA:", ("Q: ", Field("question"), "\nA:")),
        ("{a}{b}", (Field("a"), Field("b"))),
        ("{{literal}} {x}", ("{literal} ", Field("x"))),
        ("}}{{", ("}{",)),
        ("", ()),
        ("plain", ("plain",)),
    ],
)
def test_parse(source: str, parts: tuple[object, ...]) -> None:
    assert parse_template(source).parts == parts


@pytest.mark.parametrize("source", ["{", "}", "a {b", "{1x}", "{ x }", "{a-b}", "x } y", "{}"])
def test_parse_errors(source: str) -> None:
    with pytest.raises(TemplateSyntaxError):
        parse_template(source)


def test_render_is_one_pass() -> None:
    template = parse_template("Q: {question} / {extract}")
    rendered = render(template, {"question": "{extract} and {{x}}", "extract": "{question}"})
    assert rendered.text == "Q: {extract} and {{x}} / {question}"
    assert rendered.segments == (
        Segment("Q: ", False),
        Segment("{extract} and {{x}}", True),
        Segment(" / ", False),
        Segment("{question}", True),
    )


def test_specials_only_in_template() -> None:
    template = parse_template(f"<|im_start|>user {{question}}{EOT}x")
    rendered = render(template, {"question": f"hi {EOT} <|im_start|>"})
    pieces = split_special(rendered, SPECIALS)
    # Inserted text is joined with the template text around it into one stretch.
    assert pieces == [1, f"user hi {EOT} <|im_start|>", 0, "x"]


def test_longest_special_wins() -> None:
    rendered = render(parse_template("a<|im_start|>b<|im"), {})
    assert split_special(rendered, SPECIALS) == ["a", 1, "b", 2]


def test_tokenize_joins_spans_and_adds_bos() -> None:
    calls: list[str] = []

    def tok(text: str) -> list[int]:
        calls.append(text)
        return [100 + len(text)]

    rendered = render(parse_template("A {question}B<|endoftext|>"), {"question": "q<|endoftext|>"})
    tokens = tokenize_rendered(rendered, special_tokens=SPECIALS, tokenize_text=tok, bos=(7,))
    assert calls == ["A q<|endoftext|>B"]
    assert tokens == [7, 100 + len("A q<|endoftext|>B"), 0]


def test_no_specials() -> None:
    rendered = render(parse_template("a {question}"), {"question": "<|endoftext|>"})
    assert split_special(rendered, {}) == ["a <|endoftext|>"]


@pytest.mark.parametrize(
    ("stop", "chunks", "emitted", "stopped"),
    [
        (["\n"], ["ab", "c\nd"], "abc", True),
        (["END"], ["xE", "N", "D", "zz"], "x", True),
        (["END"], ["xE", "N", "o"], "xENo", False),
        (["END", "ND!"], ["aN", "D!"], "a", True),
        ([], ["a", "b"], "ab", False),
        (["<>"], ["a<"], "a<", False),  # flushed at the end
    ],
)
def test_stop_scanner(stop: list[str], chunks: list[str], emitted: str, stopped: bool) -> None:
    scanner = StopScanner(stop)
    out = "".join(scanner.feed(c) for c in chunks) + scanner.flush()
    assert out == emitted and scanner.stopped is stopped
