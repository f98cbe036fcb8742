"""parse_template's errors, exactly: the message quotes what was found (at most 20 characters,
up to the end of its line) and the error carries the position; the parsed template keeps its
source (edge_stack.formats._template)."""

from __future__ import annotations

import pytest

from edge_stack.formats._template import Field, TemplateSyntaxError, parse_template

OPEN = "'{{' at character {i} does not start a placeholder like {{question}} (found {shown!r}); write '{{{{' for a literal brace"


@pytest.mark.parametrize(
    ("source", "position", "shown"),
    [
        ("ab {x y} c", 3, "{x y} c"),
        ("{not closed", 0, "{not closed"),
        ("Q: {" + "a" * 30, 3, "{" + "a" * 19),  # 20 characters at most
        ("Q: {bad\nname}", 3, "{bad"),  # up to the end of its line
        ("{}", 0, "{}"),
        ("x{1abc}", 1, "{1abc}"),
    ],
)
def test_stray_open_brace(source: str, position: int, shown: str) -> None:
    with pytest.raises(TemplateSyntaxError) as info:
        parse_template(source)
    assert str(info.value) == OPEN.format(i=position, shown=shown)
    assert info.value.position == position


@pytest.mark.parametrize(("source", "position"), [("a } b", 2), ("}", 0), ("{q}}", 3)])
def test_stray_close_brace(source: str, position: int) -> None:
    with pytest.raises(TemplateSyntaxError) as info:
        parse_template(source)
    assert str(info.value) == (
        f"'}}' at character {position} closes no placeholder; write '}}}}' for a literal brace"
    )
    assert info.value.position == position


@pytest.mark.parametrize(
    ("source", "parts"),
    [
        ("Xmas {question} X", ("Xmas ", Field("question"), " X")),
        ("{{X}} {q}", ("{X} ", Field("q"))),
        ("plain XX text", ("plain XX text",)),
    ],
)
def test_parsed_template_keeps_its_source(source: str, parts: tuple[object, ...]) -> None:
    template = parse_template(source)
    assert template.source == source and template.parts == parts
