"""Reading the TOML files edgestack takes (stack manifests, build recipes) with clear errors."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from .errors import ManifestError


def read_toml(path: Path, what: str) -> dict[str, Any]:
    """Parse ``path`` as UTF-8 TOML; ``what`` names the file in messages ("manifest", "recipe").

    Raises ManifestError with the file and, for syntax errors, the line (tomllib leaves it out
    of errors at the end of the file, so it is added there).
    """
    try:
        raw = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ManifestError(f"{path}: not UTF-8 text ({exc}); save the {what} as UTF-8") from None
    try:
        return tomllib.loads(raw)
    except tomllib.TOMLDecodeError as exc:
        msg = str(exc)
        if "line" not in msg:
            msg += f" (line {raw.count(chr(10)) + 1})"
        raise ManifestError(f"{path}: TOML syntax error: {msg}") from None
