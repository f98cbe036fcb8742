"""TOML limits: deep nesting and oversized files are one-line ManifestErrors naming the file."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from edge_stack.builder.recipe import load_recipe
from edge_stack.errors import ManifestError
from edge_stack.manifest import load_manifest
from edge_stack.util._toml import MAX_BYTES, MAX_DEPTH, _scan_nesting, read_toml

DEEP = 100_000  # brackets: far past Python's recursion limit
# Dotted keys: tomllib takes quadratic time for table headers and quadratic memory for keys
# (100 000 parts exhausted the memory); 5 000 keeps this test harmless if the scan is broken.
KEYS = 5_000

TOO_DEEP = {
    "arrays": "a = " + "[" * DEEP + "]" * DEEP,
    "inline tables": "a = " + "{b = " * DEEP + "1" + "}" * DEEP,
    "dotted key": ".".join(["a"] * KEYS) + " = 1",
    "quoted dotted key": " . ".join(['"a"'] * KEYS) + " = 1",
    "table header": "[" + ".".join(["a"] * KEYS) + "]\nx = 1",
    "array of tables header": "[[" + ".".join(["a"] * KEYS) + "]]\nx = 1",
    "one level too many": "a = " + "[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1),
    "header and key together": "[" + ".".join(["a"] * 10) + "]\n" + ".".join(["b"] * 10) + " = 1",
}

ALLOWED = {
    "deepest allowed": "a = " + "[" * MAX_DEPTH + "]" * MAX_DEPTH,
    "brackets and dots in strings": (
        'p = """' + "[{a.b.c." * 5000 + '"""\n' + "q = '" + "[[[...]" * 5000 + "'\n"
    ),
    "brackets in comments": "# " + "[" * 5000 + "\nx = 1\n",
    "floats": "x = [" + ", ".join(f"{i}.5" for i in range(5000)) + "]\n",
    "quotes closing a multi-line string": "p = \"\"\"a\"b\"\"\"\"\nq = '''c'd'''''\nr = [[1]]\n",
}


@pytest.mark.parametrize("text", TOO_DEEP.values(), ids=list(TOO_DEEP))
def test_too_deep(tmp_path: Path, text: str) -> None:
    path = tmp_path / "stack.toml"
    path.write_text(text)
    started = time.monotonic()
    with pytest.raises(ManifestError) as info:
        read_toml(path, "manifest")
    assert time.monotonic() - started < 5  # refused before tomllib's quadratic work
    msg = str(info.value)
    assert msg.startswith(f"{path}: TOML nested deeper than {MAX_DEPTH} levels")
    assert "flatten" in msg and "\n" not in msg and len(msg) < 400  # nothing of the file echoed


@pytest.mark.parametrize("text", ALLOWED.values(), ids=list(ALLOWED))
def test_allowed(tmp_path: Path, text: str) -> None:
    path = tmp_path / "stack.toml"
    path.write_text(text)
    assert read_toml(path, "manifest")
    assert _scan_nesting(text) is None


# The scan before tomllib, on its own (the check after parsing would also refuse most of these,
# but only after tomllib did its slow or recursive work).
@pytest.mark.parametrize(
    ("text", "line"),
    [
        (TOO_DEEP["arrays"], 1),
        (TOO_DEEP["inline tables"], 1),
        (TOO_DEEP["dotted key"], 1),
        (TOO_DEEP["quoted dotted key"], 1),
        ("x = 1\n\n" + TOO_DEEP["table header"], 3),
        ("# [[[\n" + TOO_DEEP["array of tables header"], 2),
        ("a = [\n" + "[" * MAX_DEPTH + "]" * MAX_DEPTH + "\n]", 2),
    ],
    ids=["arrays", "inline", "dotted", "quoted", "header", "array header", "multi-line"],
)
def test_scan_finds_the_line(text: str, line: int) -> None:
    assert _scan_nesting(text) == line


def test_too_large(tmp_path: Path) -> None:
    path = tmp_path / "recipe.toml"
    path.write_text("# padding\n" * (MAX_BYTES // 10 + 1))
    with pytest.raises(ManifestError, match=rf"^{path}: more than the {MAX_BYTES} bytes a recipe"):
        read_toml(path, "recipe")


@pytest.mark.parametrize("load", [load_manifest, load_recipe], ids=["manifest", "recipe"])
def test_loaders_name_the_file(tmp_path: Path, load: Callable[[Path], object]) -> None:
    path = tmp_path / "file.toml"
    path.write_text('name = "x"\n' + "a = " + "[" * DEEP + "]" * DEEP)
    with pytest.raises(ManifestError, match=rf"^{path}: TOML nested deeper"):
        load(path)
