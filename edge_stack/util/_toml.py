"""Reading the TOML files edgestack takes (stack manifests, build recipes) with clear errors.

Limits: a file may hold at most :data:`MAX_BYTES` and nest at most :data:`MAX_DEPTH` levels
(tables, arrays, inline tables and dotted keys all count). A manifest needs three levels; the
limits exist because tomllib recurses once per nested array or inline table (a deep one raises
RecursionError) and handles a long dotted key in quadratic time and memory (a 100 000-part key
in one line exhausts the memory), so both are refused before tomllib sees the text.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

from ..errors import ManifestError

#: largest TOML file read (a manifest with long few-shot prompts is a few tens of KiB)
MAX_BYTES = 1024 * 1024
#: deepest nesting of tables, arrays, inline tables and dotted keys below the top level
#: (``a = 1`` is level 0, ``a = [1]`` and ``[a]`` level 1)
MAX_DEPTH = 16

# Everything the nesting scan must tell apart. Strings and comments are skipped whole, so the
# brackets and dots in prompt text do not count. A dotted key is a run of key characters,
# quoted keys, blanks and dots; any other character ends it ("=", ",", newline, brackets).
_TOKENS = re.compile(
    r"""
      (?P<string>\"\"\"(?:\\.|[^\\])*?\"\"\"\"{0,2}
        | '''[\s\S]*?''''{0,2}
        | "(?:\\.|[^"\\\n])*"
        | '[^'\n]*')
    | (?P<comment>\#[^\n]*)
    | (?P<open>[\[{])
    | (?P<close>[\]}])
    | (?P<dot>\.)
    | (?P<key>[A-Za-z0-9_\- \t]+)
    | (?P<other>[\s\S])
    """,
    re.VERBOSE,
)


def _line(raw: str, pos: int) -> int:
    return raw.count("\n", 0, pos) + 1


def _scan_nesting(raw: str) -> int | None:
    """The line where brackets or a dotted key first go deeper than MAX_DEPTH, else None."""
    depth = dots = 0
    for m in _TOKENS.finditer(raw):
        kind = m.lastgroup
        if kind == "open":
            depth += 1
            dots = 0
            if depth > MAX_DEPTH:
                return _line(raw, m.start())
        elif kind == "close":
            depth = max(depth - 1, 0)
            dots = 0
        elif kind == "dot":
            dots += 1
            if dots > MAX_DEPTH:
                return _line(raw, m.start())
        elif kind in ("comment", "other"):
            dots = 0
    return None


def _depth(data: Any) -> int:
    """How deeply ``data`` nests (a scalar is 0); iterative, so any depth is safe."""
    deepest = 0
    todo: list[tuple[Any, int]] = [(data, 0)]
    while todo:
        item, level = todo.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        deepest = max(deepest, level + 1)
        todo.extend((child, level + 1) for child in children)
    return deepest


def read_toml(path: Path, what: str) -> dict[str, Any]:
    """Parse ``path`` as UTF-8 TOML; ``what`` names the file in messages ("manifest", "recipe").

    Raises ManifestError with the file and, for syntax errors, the line (tomllib leaves it out
    of errors at the end of the file, so it is added there). Files over :data:`MAX_BYTES` or
    nested deeper than :data:`MAX_DEPTH` levels are refused with a ManifestError as well.
    """
    with path.open("rb") as fh:  # never more than the limit, whatever the file's size
        data = fh.read(MAX_BYTES + 1)
    if len(data) > MAX_BYTES:
        raise ManifestError(
            f"{path}: more than the {MAX_BYTES} bytes a {what} may have; "
            f"check that this is the {what} you meant"
        )
    try:
        raw = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ManifestError(f"{path}: not UTF-8 text ({exc}); save the {what} as UTF-8") from None
    too_deep = f"{path}: TOML nested deeper than {MAX_DEPTH} levels (tables, arrays, dotted keys)"
    advice = f"a {what} needs only a few levels: flatten the tables, arrays or keys there"
    line = _scan_nesting(raw)
    if line is not None:
        raise ManifestError(f"{too_deep} at line {line}; {advice}")
    try:
        parsed = tomllib.loads(raw)
    except tomllib.TOMLDecodeError as exc:
        msg = str(exc)
        if "line" not in msg:
            msg += f" (line {raw.count(chr(10)) + 1})"
        raise ManifestError(f"{path}: TOML syntax error: {msg}") from None
    except RecursionError:  # the scan missed a construct: still one line, never a traceback
        raise ManifestError(f"{too_deep}; {advice}") from None
    if max(map(_depth, parsed.values()), default=0) > MAX_DEPTH:
        raise ManifestError(f"{too_deep}; {advice}")
    return parsed
