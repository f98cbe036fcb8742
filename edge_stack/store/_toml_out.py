"""Writing a parsed stack.toml back as TOML text (for ``edgestack package``).

Handles what a manifest holds: strings (multi-line when they hold a newline), booleans,
integers, finite floats, arrays of those, tables and arrays of tables, nested. The text is
parsed back and compared with the data before it is used, so a value spelled wrongly here can
never reach a file.
"""

from __future__ import annotations

import json
import math
import re
import tomllib
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["dumps_toml"]

# Characters TOML does not allow raw in basic strings: controls except tab (and \n in multi-line).
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def _escape_control(text: str) -> str:
    return _CONTROL.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def _string(text: str, *, multiline: bool) -> str:
    if multiline and "\n" in text.strip("\n") and not text.endswith("\n"):
        body = text.replace("\\", "\\\\").replace('"', '\\"')
        # TOML drops a newline right after the opening quotes; the one we write is that newline.
        return '"""\n' + _escape_control(body) + '"""'
    # A JSON string is a TOML basic string once the characters TOML forbids raw are escaped.
    return _escape_control(json.dumps(text, ensure_ascii=False))


def _key(key: str) -> str:
    return key if _BARE_KEY.fullmatch(key) else _string(key, multiline=False)


def _value(value: Any, *, multiline: bool = True) -> str:
    if isinstance(value, str):
        return _string(value, multiline=multiline)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"cannot write {value!r} in a manifest")
        return repr(value)
    if isinstance(value, Mapping):
        inner = ", ".join(f"{_key(k)} = {_value(v, multiline=False)}" for k, v in value.items())
        return "{" + inner + "}"
    if isinstance(value, Sequence):
        return "[" + ", ".join(_value(v, multiline=False) for v in value) + "]"
    raise TypeError(f"cannot write a {type(value).__name__} in a manifest")


def _is_table_array(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, Mapping) for v in value)


def _table(data: Mapping[str, Any], prefix: str, lines: list[str]) -> None:
    scalars = {
        k: v for k, v in data.items() if not isinstance(v, Mapping) and not _is_table_array(v)
    }
    lines += [f"{_key(k)} = {_value(v)}" for k, v in scalars.items()]
    for key, value in data.items():
        name = f"{prefix}{_key(key)}"
        if isinstance(value, Mapping):
            lines += ["", f"[{name}]"]
            _table(value, f"{name}.", lines)
        elif _is_table_array(value):
            for item in value:
                lines += ["", f"[[{name}]]"]
                _table(item, f"{name}.", lines)


def dumps_toml(data: Mapping[str, Any], header: Sequence[str] = ()) -> str:
    """``data`` as TOML text, after ``header`` comment lines; checked by parsing it back."""
    lines = [f"# {line}" if line else "#" for line in header]
    _table(data, "", lines)
    text = "\n".join(lines).strip("\n") + "\n"
    if tomllib.loads(text) != data:
        raise ValueError("the TOML written does not read back as the manifest's data")
    return text
