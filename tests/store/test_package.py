"""`edgestack package`: an upload-ready folder (pinned stack.toml, files, model card) that
`edgestack pull` takes as it is; and the TOML it writes, read back exactly."""

from __future__ import annotations

import hashlib
import json
import tomllib
from pathlib import Path
from typing import Any

import pytest

from edge_stack.errors import BadArgument, ModelFileNotFound, OutputExistsError
from edge_stack.manifest import load_manifest
from edge_stack.store import package_stack
from edge_stack.store._toml_out import dumps_toml
from edge_stack.util._paths import bundled_stacks

from stack_builders import write_stack

FILES = {"base.gguf": b"GGUF base " * 50, "a.lora.gguf": b"GGUF adapter " * 20}
UNPINNED = """
name = "mine"
description = "two stages, nothing pinned"
version = 1
[defaults]
model = "base.gguf"
n_ctx = 64
[[stages]]
name = "first"
lora = "a.lora.gguf"
prompt = \"\"\"Question: {question}
Step:\"\"\"
stop = ["\\n"]
[[stages]]
name = "second"
prompt = "Q: {question} S: {first} A:"
grammar = "root ::= [0-9]+"
"""


@pytest.fixture
def unpinned(tmp_path: Path) -> Path:
    sources = {}
    for name, data in FILES.items():
        (tmp_path / "src" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "src" / name).write_bytes(data)
        sources[name] = tmp_path / "src" / name
    return write_stack(tmp_path / "mine", UNPINNED, sources)


def test_package_pins_every_file_and_writes_a_card(unpinned: Path, tmp_path: Path) -> None:
    report = tmp_path / "report.json"
    report.write_text(
        json.dumps(
            {
                "n": 200,
                "correct": 199,
                "accuracy": 0.995,
                "match": "number",
                "seconds_per_question": 0.21,
                "data": "eval.jsonl",
            }
        )
    )
    result = package_stack(unpinned, tmp_path / "out", repo="me/mine", eval_report=report)
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == [
        "README.md",
        "a.lora.gguf",
        "base.gguf",
        "stack.toml",
    ]
    spec = load_manifest(out)
    digest = {k: hashlib.sha256(v).hexdigest() for k, v in FILES.items()}
    assert [s.sha256 for s in spec.stages] == [digest["base.gguf"]] * 2
    assert spec.stages[0].lora_sha256 == digest["a.lora.gguf"]
    assert sorted(result.pinned_now) == ["first.lora", "first.model", "second.model"]
    # Everything else reads back as it was written.
    before, after = (
        tomllib.loads(unpinned.read_text()),
        tomllib.loads((out / "stack.toml").read_text()),
    )
    for stage in after["stages"]:
        stage.pop("sha256", None)
        stage.pop("lora_sha256", None)
    assert after == before
    card = (out / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: edgestack\n")
    for needed in (
        "edgestack pull me/mine",
        "| 1 | first | `base.gguf` | `a.lora.gguf` | 64 |",
        "Question: {question}\nStep:",
        digest["base.gguf"],
        "Accuracy 99.5% (199 of 200 questions, match number)",
        "500 B",
    ):
        assert needed in card, needed


def test_package_of_the_bundled_stack_is_an_editable_copy(tmp_path: Path) -> None:
    bundled = bundled_stacks().get("word-problems")
    if bundled is None:
        pytest.skip("the bundled stack is not built")
    package_stack(bundled, tmp_path / "copy")
    copy = load_manifest(tmp_path / "copy")
    original = load_manifest(bundled)
    assert [s.sha256 for s in copy.stages] == [s.sha256 for s in original.stages]
    assert (tmp_path / "copy" / "eval.jsonl").read_bytes() == (
        bundled.parent / "eval.jsonl"
    ).read_bytes()
    assert "Not measured yet" in (tmp_path / "copy" / "README.md").read_text()


@pytest.mark.parametrize(
    ("case", "error", "match"),
    [
        ("exists", OutputExistsError, "pass --force"),
        ("into itself", BadArgument, "holds the stack itself"),
        ("no report", ModelFileNotFound, "eval report"),
        ("bad report", BadArgument, "lacks n, correct, accuracy"),
    ],
)
def test_package_refuses(
    unpinned: Path, tmp_path: Path, case: str, error: type[Exception], match: str
) -> None:
    out, report = tmp_path / "out", None
    if case == "exists":
        out.mkdir()
        (out / "keep.txt").write_text("mine")
    elif case == "into itself":
        out = unpinned.parent
    elif case == "no report":
        report = tmp_path / "nope.json"
    else:
        report = tmp_path / "bad.json"
        report.write_text('{"accuracy": 1}')
    with pytest.raises(error, match=match):
        package_stack(unpinned, out, eval_report=report)
    if case == "exists":
        assert (out / "keep.txt").read_text() == "mine"
        package_stack(unpinned, out, force=True)
        assert not (out / "keep.txt").exists() and (out / "stack.toml").is_file()
    assert not [p for p in tmp_path.iterdir() if "edgestack-tmp" in p.name]


@pytest.mark.parametrize(
    "data",
    [
        {"name": "x", "version": 1},
        {"s": 'quote " and \\ backslash', "t": "tab\there", "u": "ünïcödé ✓", "c": "\x01\x7f"},
        {"p": "two\nlines", "q": "ends with newline\n", "r": '"""triple"""\nquotes', "e": ""},
        {"f": 0.1, "g": -2.5e-7, "i": -3, "b": True, "l": ["\n", "a", ""], "n": []},
        {"defaults": {"temperature": 0.0}, "stages": [{"name": "a"}, {"name": "b", "stop": ["."]}]},
        {"odd key": 1, "nested": {"deeper": {"x": 1}, "arr": [{"k": "v"}]}},
    ],
)
def test_toml_written_reads_back_exactly(data: dict[str, Any]) -> None:
    text = dumps_toml(data, ["a header", ""])
    assert text.startswith("# a header\n#\n") and tomllib.loads(text) == data


def test_toml_refuses_what_it_cannot_write() -> None:
    with pytest.raises(ValueError):
        dumps_toml({"x": float("nan")})
    with pytest.raises(TypeError):
        dumps_toml({"x": object()})
