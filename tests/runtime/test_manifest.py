"""stack.toml loading: the DESIGN.md example, defaults, and every kind of bad manifest."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_stack.errors import ManifestError, ModelFileNotFound
from edge_stack.manifest import StackSpec, load_manifest

from .conftest import MakeStack

GOOD = '''
name = "word-problems"
description = "Arithmetic word problems in three steps"
version = 1

[defaults]
temperature = 0.0
max_tokens = 64
n_ctx = 512

[[stages]]
name = "extract"
model = "base.Q8_0.gguf"
lora = "extract.lora.gguf"
lora_scale = 1.0
prompt = """Question: {question}
Equation:"""
stop = ["\\n"]
max_tokens = 24

[[stages]]
name = "answer"
model = "base.Q8_0.gguf"
lora = "answer.lora.gguf"
prompt = "Question: {question}\\nEquation: {extract}\\nAnswer:"
'''
GOOD_FILES = ("base.Q8_0.gguf", "extract.lora.gguf", "answer.lora.gguf")


def test_design_example_loads(make_stack: MakeStack) -> None:
    path = make_stack(GOOD, GOOD_FILES)
    spec = load_manifest(path)
    assert isinstance(spec, StackSpec)
    assert spec.name == "word-problems" and spec.version == 1
    assert [s.name for s in spec.stages] == ["extract", "answer"]
    extract, answer = spec.stages
    assert extract.model == path.parent / "base.Q8_0.gguf"
    assert extract.lora == path.parent / "extract.lora.gguf"
    assert extract.stop == ("\n",) and extract.max_tokens == 24 and extract.n_ctx == 512
    assert answer.max_tokens == 64  # from [defaults]
    assert answer.stop == ()
    assert answer.template.fields == ("question", "extract")
    assert extract.prompt == "Question: {question}\nEquation:"


def test_folder_and_file_both_load(make_stack: MakeStack) -> None:
    path = make_stack(GOOD, GOOD_FILES)
    assert load_manifest(path.parent) == load_manifest(path)


def test_every_stage_key_allowed_in_defaults(make_stack: MakeStack) -> None:
    path = make_stack(
        """
        version = 1
        [defaults]
        model = "base.gguf"
        lora = "a.gguf"
        lora_scale = 0.5
        sha256 = "AB"""
        + "ab" * 31
        + '''"
        lora_sha256 = "'''
        + "cd" * 32
        + """"
        prompt = "Q: {question}"
        stop = ["x"]
        max_tokens = 3
        temperature = 0.7
        top_k = 5
        top_p = 0.9
        min_p = 0.1
        repeat_penalty = 1.1
        seed = 7
        grammar = 'root ::= "a"'
        n_ctx = 64
        kv_cache_type = "Q8_0"
        [[stages]]
        name = "only"
        """,
        ("base.gguf", "a.gguf"),
    )
    (stage,) = load_manifest(path).stages
    assert stage.lora_scale == 0.5 and stage.sha256 == "ab" * 32 and stage.top_k == 5
    assert stage.seed == 7 and stage.grammar == 'root ::= "a"' and stage.n_ctx == 64
    assert stage.kv_cache_type == "q8_0"
    assert load_manifest(path).name == path.parent.name  # name defaults to the folder


def test_grammar_file_is_read(make_stack: MakeStack) -> None:
    path = make_stack(
        """
        version = 1
        [[stages]]
        name = "s"
        model = "base.gguf"
        prompt = "{question}"
        grammar = "digits.gbnf"
        """
    )
    (path.parent / "digits.gbnf").write_text("root ::= [0-9]+\n")
    assert load_manifest(path).stages[0].grammar == "root ::= [0-9]+\n"


def test_literal_braces(make_stack: MakeStack) -> None:
    path = make_stack(
        """
        version = 1
        [[stages]]
        name = "s"
        model = "base.gguf"
        prompt = "JSON {{\\"q\\": \\"{question}\\"}}"
        """
    )
    assert load_manifest(path).stages[0].template.fields == ("question",)


STAGE = 'name = "s"\nmodel = "base.gguf"\nprompt = "{question}"\n'

# (toml body, expected substrings of the message)
BAD = [
    ("version = 2\n[[stages]]\n" + STAGE, ["version 2", "'version'"]),
    ("[[stages]]\n" + STAGE, ["missing key 'version'"]),
    ('version = "1"\n[[stages]]\n' + STAGE, ["'version'"]),
    ("version = 1\ncolour = 3\n[[stages]]\n" + STAGE, ["key 'colour'", "unknown key"]),
    ("version = 1\n", ["at least one [[stages]]"]),
    ("version = 1\n[defaults]\nname = 'x'\n[[stages]]\n" + STAGE, ["defaults.name"]),
    ("version = 1\n[defaults]\nbogus = 1\n[[stages]]\n" + STAGE, ["[defaults]", "key 'bogus'"]),
    (
        "version = 1\n[defaults]\nmax_tokens = -1\n[[stages]]\n" + STAGE,
        ["defaults.max_tokens", "-1"],
    ),
    (
        "version = 1\n[[stages]]\n" + STAGE + "max_tokens = -3\n",
        ["stage 's'", "key 'max_tokens'", "-3"],
    ),
    ("version = 1\n[[stages]]\n" + STAGE + "max_tokens = 0\n", ["key 'max_tokens'"]),
    ("version = 1\n[[stages]]\n" + STAGE + "max_tokens = 2.5\n", ["key 'max_tokens'"]),
    ("version = 1\n[[stages]]\n" + STAGE + "temperature = 3.0\n", ["key 'temperature'", "3.0"]),
    ("version = 1\n[[stages]]\n" + STAGE + "temperature = -0.1\n", ["key 'temperature'"]),
    ("version = 1\n[[stages]]\n" + STAGE + "temperature = nan\n", ["key 'temperature'"]),
    ("version = 1\n[[stages]]\n" + STAGE + "temperature = true\n", ["key 'temperature'"]),
    ("version = 1\n[[stages]]\n" + STAGE + "top_p = 0.0\n", ["key 'top_p'"]),
    ("version = 1\n[[stages]]\n" + STAGE + "top_k = -1\n", ["key 'top_k'"]),
    ("version = 1\n[[stages]]\n" + STAGE + "min_p = 1.5\n", ["key 'min_p'"]),
    ("version = 1\n[[stages]]\n" + STAGE + "repeat_penalty = 0\n", ["key 'repeat_penalty'"]),
    ("version = 1\n[[stages]]\n" + STAGE + "seed = -1\n", ["key 'seed'"]),
    ("version = 1\n[[stages]]\n" + STAGE + "n_ctx = 4\n", ["key 'n_ctx'"]),
    (
        "version = 1\n[[stages]]\n" + STAGE + 'kv_cache_type = "q3_k"\n',
        ["key 'kv_cache_type'", "one of f16, f32"],
    ),
    (
        "version = 1\n[[stages]]\n" + STAGE + 'stop = "\\n"\n',
        ["key 'stop'", "list of non-empty strings"],
    ),
    ("version = 1\n[[stages]]\n" + STAGE + "stop = [1]\n", ["key 'stop'"]),
    ("version = 1\n[[stages]]\n" + STAGE + 'stop = [""]\n', ["key 'stop'"]),
    ("version = 1\n[[stages]]\n" + STAGE + 'sha256 = "abc"\n', ["key 'sha256'", "64 hexadecimal"]),
    (
        "version = 1\n[[stages]]\n" + STAGE + 'lora_sha256 = "' + "0" * 64 + '"\n',
        ["key 'lora_sha256'", "no 'lora'"],
    ),
    (
        "version = 1\n[[stages]]\n" + STAGE + "temprature = 0.1\n",
        ["stage 's'", "key 'temprature'", "unknown key"],
    ),
    (
        'version = 1\n[[stages]]\nmodel = "base.gguf"\nprompt = "{question}"\n',
        ["stage #1", "key 'name'"],
    ),
    (
        'version = 1\n[[stages]]\nname = "Bad-Name"\nmodel = "base.gguf"\nprompt = "{question}"\n',
        ["key 'name'", "[a-z]"],
    ),
    (
        'version = 1\n[[stages]]\nname = "question"\nmodel = "base.gguf"\nprompt = "{question}"\n',
        ["reserved"],
    ),
    ("version = 1\n[[stages]]\n" + STAGE + "[[stages]]\n" + STAGE, ["unique"]),
    ('version = 1\n[[stages]]\nname = "s"\nprompt = "{question}"\n', ["stage 's'", "key 'model'"]),
    ('version = 1\n[[stages]]\nname = "s"\nmodel = "base.gguf"\n', ["stage 's'", "key 'prompt'"]),
    (
        'version = 1\n[[stages]]\nname = "s"\nmodel = "base.gguf"\nprompt = "{later}"\n'
        '[[stages]]\nname = "later"\nmodel = "base.gguf"\nprompt = "{question}"\n',
        ["stage 's'", "key 'prompt'", "{later} runs later"],
    ),
    (
        'version = 1\n[[stages]]\nname = "s"\nmodel = "base.gguf"\nprompt = "{s}"\n',
        ["{s} runs later"],
    ),
    (
        'version = 1\n[[stages]]\nname = "s"\nmodel = "base.gguf"\nprompt = "{nope}"\n',
        ["{nope} is not a stage"],
    ),
    (
        'version = 1\n[[stages]]\nname = "s"\nmodel = "base.gguf"\nprompt = "a { b"\n',
        ["key 'prompt'", "'{{'"],
    ),
    (
        'version = 1\n[[stages]]\nname = "s"\nmodel = "base.gguf"\nprompt = "a } b"\n',
        ["key 'prompt'", "'}}'"],
    ),
    (
        'version = 1\n[[stages]]\nname = "s"\nmodel = "base.gguf"\nprompt = "{ question }"\n',
        ["key 'prompt'"],
    ),
    (
        'version = 1\n[[stages]]\nname = "s"\nmodel = "base.gguf"\nprompt = ""\n',
        ["key 'prompt'", "empty"],
    ),
    ("version = 1\nstages = 3\n", ["key 'stages'"]),
    ("version = 1\nstages = [1]\n", ["stage #1", "table"]),
]


@pytest.mark.parametrize(("body", "expected"), BAD)
def test_bad_manifest(make_stack: MakeStack, body: str, expected: list[str]) -> None:
    path = make_stack(body)
    with pytest.raises(ManifestError) as info:
        load_manifest(path)
    message = str(info.value)
    assert str(path) in message and "\n" not in message
    for part in expected:
        assert part in message


@pytest.mark.parametrize(
    ("body", "line"),
    [
        ("version = 1\nname = \n", "line 2"),
        ("version = 1\n[[stages]\n", "line 2"),
        ("version = 1\nx = [\n", "line"),
    ],
)
def test_toml_syntax_error_has_line(make_stack: MakeStack, body: str, line: str) -> None:
    path = make_stack(body)
    with pytest.raises(ManifestError, match="TOML syntax error") as info:
        load_manifest(path)
    assert line in str(info.value) and str(path) in str(info.value)


@pytest.mark.parametrize(
    ("extra", "key"),
    [
        ("", "model"),
        ('lora = "missing.lora.gguf"\n', "lora"),
        ('grammar = "missing.gbnf"\n', "grammar"),
    ],
)
def test_missing_files(make_stack: MakeStack, extra: str, key: str) -> None:
    path = make_stack(
        "version = 1\n[[stages]]\n" + STAGE + extra, files=() if key == "model" else ("base.gguf",)
    )
    with pytest.raises(ModelFileNotFound) as info:
        load_manifest(path)
    message = str(info.value)
    assert str(path) in message and "stage 's'" in message and f"key '{key}'" in message


def test_missing_files_skipped_for_inspect(make_stack: MakeStack) -> None:
    path = make_stack("version = 1\n[[stages]]\n" + STAGE, files=())
    assert load_manifest(path, check_files=False).stages[0].model.name == "base.gguf"


def test_missing_manifest(tmp_path: Path) -> None:
    with pytest.raises(ModelFileNotFound, match="does not exist"):
        load_manifest(tmp_path / "nope" / "stack.toml")
    with pytest.raises(ModelFileNotFound, match=r"stack\.toml"):
        load_manifest(tmp_path)


def test_not_utf8(tmp_path: Path) -> None:
    (tmp_path / "stack.toml").write_bytes(b'version = 1\nname = "\xff"\n')
    with pytest.raises(ManifestError, match="UTF-8"):
        load_manifest(tmp_path)
