"""Prompt templates: parsing, one-pass rendering, and tokenization that keeps inserted text plain.

A template is literal text with ``{name}`` placeholders; ``{{`` and ``}}`` stand for literal
braces. Rendering substitutes every placeholder once, left to right: braces that arrive inside a
value (the question, an earlier stage's output) are never looked at again.

The rendered prompt remembers which characters came from the template and which were inserted,
because special tokens (``<|endoftext|>``, chat markers) are parsed only where the template itself
writes them. Tokenization splits the prompt at those template-written special tokens and tokenizes
each maximal stretch of text between them as ONE text (template and inserted characters together),
so token boundaries are the ones a single tokenization of the whole text gives.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache

#: the names a placeholder may use (stage names are lowercase; see manifest.py)
_FIELD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class TemplateSyntaxError(ValueError):
    """A template has a brace that is neither a placeholder nor an escaped literal brace."""

    def __init__(self, message: str, position: int) -> None:
        super().__init__(message)
        self.position = position


@dataclass(frozen=True)
class Field:
    """A ``{name}`` placeholder."""

    name: str


Part = str | Field


@dataclass(frozen=True)
class Template:
    """A parsed template: literal text parts (braces already unescaped) and placeholders."""

    source: str
    parts: tuple[Part, ...]

    @property
    def fields(self) -> tuple[str, ...]:
        """The placeholder names in order of first appearance."""
        seen: dict[str, None] = {}
        for part in self.parts:
            if isinstance(part, Field):
                seen.setdefault(part.name, None)
        return tuple(seen)


def parse_template(source: str) -> Template:
    """Parse ``source``; raise :class:`TemplateSyntaxError` for a stray ``{`` or ``}``."""
    parts: list[Part] = []
    text: list[str] = []
    i, n = 0, len(source)
    while i < n:
        ch = source[i]
        if ch == "{":
            if source.startswith("{{", i):
                text.append("{")
                i += 2
                continue
            end = source.find("}", i + 1)
            name = source[i + 1 : end] if end != -1 else ""
            if end == -1 or not _FIELD.fullmatch(name):
                shown = source[i : min(n, i + 20)].split("\n")[0]
                raise TemplateSyntaxError(
                    f"'{{' at character {i} does not start a placeholder like {{question}} "
                    f"(found {shown!r}); write '{{{{' for a literal brace",
                    i,
                )
            if text:
                parts.append("".join(text))
                text = []
            parts.append(Field(name))
            i = end + 1
        elif ch == "}":
            if source.startswith("}}", i):
                text.append("}")
                i += 2
                continue
            raise TemplateSyntaxError(
                f"'}}' at character {i} closes no placeholder; write '}}}}' for a literal brace", i
            )
        else:
            # Copy the run of ordinary characters in one go.
            j = i
            while j < n and source[j] not in "{}":
                j += 1
            text.append(source[i:j])
            i = j
    if text:
        parts.append("".join(text))
    return Template(source=source, parts=tuple(parts))


@dataclass(frozen=True)
class Segment:
    """A run of rendered text; ``inserted`` is True for text that came from a value."""

    text: str
    inserted: bool


@dataclass(frozen=True)
class Rendered:
    """A rendered prompt: its segments, in order."""

    segments: tuple[Segment, ...]

    @property
    def text(self) -> str:
        """The prompt as one string."""
        return "".join(s.text for s in self.segments)


def render(template: Template, values: Mapping[str, str]) -> Rendered:
    """Substitute every placeholder once; a missing value is a ``KeyError`` (a bug upstream)."""
    segments = []
    for part in template.parts:
        if isinstance(part, Field):
            value = values[part.name]
            if value:
                segments.append(Segment(value, inserted=True))
        elif part:
            segments.append(Segment(part, inserted=False))
    return Rendered(tuple(segments))


@lru_cache(maxsize=64)
def _special_pattern(specials: tuple[str, ...]) -> re.Pattern[str] | None:
    if not specials:
        return None
    # Longest first, so a marker that contains a shorter one wins at the same position.
    ordered = sorted(specials, key=lambda s: (-len(s), s))
    return re.compile("|".join(re.escape(s) for s in ordered))


def split_special(rendered: Rendered, special_tokens: Mapping[str, int]) -> list[str | int]:
    """Split the prompt into text stretches and special-token ids.

    Only template segments are searched for special-token strings; inserted segments are always
    text. Adjacent text (template and inserted alike) is joined into one stretch.
    """
    pattern = _special_pattern(tuple(sorted(s for s in special_tokens if s)))
    pieces: list[str | int] = []
    buffer: list[str] = []

    def flush() -> None:
        if buffer:
            pieces.append("".join(buffer))
            buffer.clear()

    for segment in rendered.segments:
        if segment.inserted or pattern is None:
            buffer.append(segment.text)
            continue
        pos = 0
        for match in pattern.finditer(segment.text):
            buffer.append(segment.text[pos : match.start()])
            flush()
            pieces.append(special_tokens[match.group()])
            pos = match.end()
        buffer.append(segment.text[pos:])
    flush()
    return [p for p in pieces if p != ""]


def tokenize_rendered(
    rendered: Rendered,
    *,
    special_tokens: Mapping[str, int],
    tokenize_text: Callable[[str], list[int]],
    bos: Sequence[int] = (),
) -> list[int]:
    """Token ids for a rendered prompt.

    ``tokenize_text`` must tokenize plain text with special-token parsing OFF and without BOS;
    ``bos`` is prepended (empty when the model does not add one).
    """
    tokens = list(bos)
    for piece in split_special(rendered, special_tokens):
        if isinstance(piece, int):
            tokens.append(piece)
        else:
            tokens.extend(tokenize_text(piece))
    return tokens
