"""Writing stack.toml text: the few TOML value kinds a manifest uses, readable and exact.

Prompts with newlines become multi-line strings, so the written manifest reads like the recipe.
The build parses the text back (tomllib) and validates it before it is written, so a value this
module spells wrongly can never reach a file.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

# Characters TOML does not allow raw in basic strings: controls except tab (and \n in multi-line).
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def _escape_control(text: str) -> str:
    return _CONTROL.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def toml_string(text: str, *, multiline: bool = True) -> str:
    """A TOML string: multi-line when ``text`` has a newline between other characters (and
    ``multiline``), else a one-line basic string."""
    if multiline and "\n" in text.strip():
        body = text.replace("\\", "\\\\").replace('"', '\\"')
        # TOML drops a newline right after the opening quotes; the one we write is that newline.
        return '"""\n' + _escape_control(body) + '"""'
    # A JSON string is a TOML basic string once the characters TOML forbids raw are escaped.
    return _escape_control(json.dumps(text, ensure_ascii=False))


def toml_value(value: Any, *, multiline: bool = True) -> str:
    """A TOML value for a manifest field (str, bool, int, float or a list of those)."""
    if isinstance(value, str):
        return toml_string(value, multiline=multiline)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"cannot write {value!r} in a manifest")
        return repr(value)
    if isinstance(value, Sequence):
        return "[" + ", ".join(toml_value(v, multiline=False) for v in value) + "]"
    raise TypeError(f"cannot write a {type(value).__name__} in a manifest")


def _table(values: Mapping[str, Any]) -> list[str]:
    return [f"{key} = {toml_value(value)}" for key, value in values.items()]


def manifest_text(
    header: Sequence[str],
    top: Mapping[str, Any],
    defaults: Mapping[str, Any],
    stages: Sequence[Mapping[str, Any]],
) -> str:
    """The whole stack.toml: comment lines, top-level keys, [defaults], then [[stages]]."""
    lines = [f"# {line}" if line else "#" for line in header]
    lines += _table(top)
    if defaults:
        lines += ["", "[defaults]", *_table(defaults)]
    for stage in stages:
        lines += ["", "[[stages]]", *_table(stage)]
    return "\n".join(lines) + "\n"
