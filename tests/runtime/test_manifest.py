"""stack.toml loading: the documented example (docs/stack-manifest.md), defaults, and every kind of bad manifest."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from edge_stack.errors import ManifestError, ModelFileNotFound
from edge_stack.formats.grammar._validate import MAX_GRAMMAR_BYTES
from edge_stack.manifest import MAX_STAGES, StackSpec, load_manifest

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


def _stages(n: int) -> str:
    """A stack of ``n`` stages, each reading the question."""
    one = '[[stages]]\nname = "s{i}"\nmodel = "base.gguf"\nprompt = "{{question}}"\n'
    return "version = 1\n" + "".join(one.format(i=i) for i in range(n))


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
    # more stages than MAX_STAGES (2,002 made llama.cpp abort on a failed allocation)
    (_stages(MAX_STAGES + 1), ["key 'stages'", f"at most {MAX_STAGES} [[stages]]", "found 65"]),
    (_stages(2002), ["key 'stages'", "found 2,002", "split the pipeline"]),
]


def test_most_stages_allowed(make_stack: MakeStack) -> None:
    spec = load_manifest(make_stack(_stages(MAX_STAGES)), check_files=False)
    assert len(spec.stages) == MAX_STAGES == 64


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


# --- grammars: checked at load time, errors name the file, the stage and the position ----------

GRAMMAR_STAGE = 'version = 1\n[[stages]]\nname = "s"\nmodel = "base.gguf"\nprompt = "{question}"\n'


@pytest.mark.parametrize(
    ("grammar_key", "file_data", "expected"),
    [
        ("grammar = 'root ::= [z-a]'", None, ["GBNF grammar line 1, column 11", "'z' to 'a'"]),
        ("grammar = 'root ::= foo'", None, ["line 1, column 10", "rule 'foo'"]),
        ("grammar = 'root ::= root \"a\"'", None, ["line 1, column 1", "left recursion"]),
        ('grammar = "root ::= \\"a\\u0000\\""', None, ["line 1, column 12", "NUL"]),
        (
            'grammar = "g.gbnf"',
            b'root ::= "a" x\n\nx ::= ("b"\n',
            [
                "GBNF grammar file",
                "g.gbnf line 4, column 1",
                "')' closing the group at line 3, column 7",
            ],
        ),
        ('grammar = "g.gbnf"', b'root ::= "a"\nx ::= "\xff"\n', ["line 2, column 8", "UTF-8"]),
        ('grammar = "g.gbnf"', b"root ::= " + b"(" * 200_000, ["131,072 bytes", "200,009"]),
        ('grammar = "g.gbnf"', b'root ::= "' + b"a" * 5_000_000, ["131,072 bytes", "5,000,010"]),
        ('grammar = "g.gbnf"', b"", ["line 1, column 1", "'root'"]),
    ],
)
@pytest.mark.parametrize("check_files", [True, False], ids=["load", "inspect"])
def test_grammar_errors_at_load(
    make_stack: MakeStack,
    grammar_key: str,
    file_data: bytes | None,
    expected: list[str],
    check_files: bool,
) -> None:
    path = make_stack(GRAMMAR_STAGE + grammar_key + "\n")
    if file_data is not None:
        (path.parent / "g.gbnf").write_bytes(file_data)
    with pytest.raises(ManifestError) as info:
        load_manifest(path, check_files=check_files)
    message = str(info.value)
    assert message.startswith(f"{path}: stage 's', key 'grammar': ") and "\n" not in message
    for part in expected:
        assert part in message


def test_grammar_in_defaults_checked_for_every_stage(make_stack: MakeStack) -> None:
    path = make_stack(
        "version = 1\n[defaults]\ngrammar = 'root ::= [9-0]'\n[[stages]]\n"
        'name = "s"\nmodel = "base.gguf"\nprompt = "{question}"\n'
    )
    with pytest.raises(ManifestError, match=r"stage 's', key 'grammar': .*column 11"):
        load_manifest(path)


def test_inspect_refuses_a_bad_grammar(
    make_stack: MakeStack, capsys: pytest.CaptureFixture[str]
) -> None:
    from cli_support import run

    path = make_stack(GRAMMAR_STAGE + "grammar = 'root ::= (((\"a\"'\n", files=())
    code, _, err = run(["inspect", str(path)], capsys)
    assert code == 1 and err.count("\n") == 1
    assert "stage 's', key 'grammar'" in err and "line 1, column 16" in err


SECRET = "root:x:0:0:hunter2-secret:/root:/bin/bash\nsvc:x:1:1:tok3n:/home/svc:/bin/sh\n"


def _no_secret(message: str) -> bool:
    return not any(word in message for word in ("hunter2", "tok3n", "bash", "/home/svc"))


# --- files stay inside the stack's folder ------------------------------------------------------


@pytest.fixture(autouse=True)
def _outside_paths_not_allowed(monkeypatch: pytest.MonkeyPatch) -> None:
    """Whatever the developer's shell says: tests that allow outside paths do it themselves."""
    from edge_stack.util._env import settings

    monkeypatch.delenv("EDGESTACK_ALLOW_OUTSIDE_PATHS", raising=False)
    settings.cache_clear()


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A folder beside the stacks with a model, an adapter and a passwd-like 'grammar'."""
    folder = tmp_path / "outside"
    folder.mkdir()
    for name in ("m.gguf", "a.gguf"):
        (folder / name).write_bytes(b"")
    (folder / "passwd").write_text(SECRET)
    return folder


# (stage lines, links to make in the stack folder: name -> target under `outside`)
OUTSIDE = [
    pytest.param('model = "../outside/m.gguf"', {}, "model", id="model-dotdot"),
    pytest.param('model = "sub/../../outside/m.gguf"', {}, "model", id="model-sub-dotdot"),
    pytest.param('model = "{outside}/m.gguf"', {}, "model", id="model-absolute"),
    pytest.param('model = "link.gguf"', {"link.gguf": "m.gguf"}, "model", id="model-symlink"),
    pytest.param(
        'model = "dir/m.gguf"', {"dir": "."}, "model", id="model-through-symlinked-folder"
    ),
    pytest.param('model = "base.gguf"\nlora = "../outside/a.gguf"', {}, "lora", id="lora"),
    pytest.param(
        'model = "base.gguf"\ngrammar = "../outside/passwd"', {}, "grammar", id="grammar-dotdot"
    ),
    pytest.param(
        'model = "base.gguf"\ngrammar = "../../../../../../../../../../{outside}/passwd"',
        {},
        "grammar",
        id="grammar-climbing",
    ),
    pytest.param(
        'model = "base.gguf"\ngrammar = "g.gbnf"',
        {"g.gbnf": "passwd"},
        "grammar",
        id="grammar-symlink",
    ),
]


def _stack_with(make_stack: MakeStack, outside: Path, lines: str, links: dict[str, str]) -> Path:
    path = make_stack(
        'version = 1\n[[stages]]\nname = "s"\nprompt = "{question}"\n'
        + lines.replace("{outside}", str(outside).lstrip("/") if "../" in lines else str(outside))
        + "\n"
    )
    for name, target in links.items():
        (path.parent / name).symlink_to(outside / target)
    return path


@pytest.mark.parametrize(("lines", "links", "key"), OUTSIDE)
@pytest.mark.parametrize("check_files", [True, False], ids=["load", "inspect"])
def test_files_outside_the_stack_are_refused(
    make_stack: MakeStack,
    outside: Path,
    lines: str,
    links: dict[str, str],
    key: str,
    check_files: bool,
) -> None:
    path = _stack_with(make_stack, outside, lines, links)
    with pytest.raises(ManifestError) as info:
        load_manifest(path, check_files=check_files)
    message = str(info.value)
    assert message.startswith(f"{path}: stage 's', key '{key}': expected a file inside the stack")
    assert str(outside) in message and "EDGESTACK_ALLOW_OUTSIDE_PATHS=1" in message
    assert "\n" not in message and _no_secret(message)


@pytest.mark.parametrize(("lines", "links", "key"), OUTSIDE)
@pytest.mark.parametrize("how", ["argument", "environment"])
def test_outside_paths_allowed_by_the_caller(
    make_stack: MakeStack,
    outside: Path,
    monkeypatch: pytest.MonkeyPatch,
    lines: str,
    links: dict[str, str],
    key: str,
    how: str,
) -> None:
    from edge_stack.util._env import settings

    path = _stack_with(make_stack, outside, lines, links)
    if how == "environment":
        monkeypatch.setenv("EDGESTACK_ALLOW_OUTSIDE_PATHS", "1")
        settings.cache_clear()
    allow = True if how == "argument" else None
    if key != "grammar":
        stage = load_manifest(path, allow_outside_paths=allow).stages[0]
        assert getattr(stage, key) == outside / ("m.gguf" if key == "model" else "a.gguf")
        return
    # Allowed, the passwd file is read as a grammar: refused with a position, never its text.
    with pytest.raises(ManifestError) as info:
        load_manifest(path, allow_outside_paths=allow)
    message = str(info.value)
    assert "key 'grammar': GBNF grammar file" in message and "line 1, column 5" in message
    assert _no_secret(message)


def test_stack_toml_cannot_allow_outside_paths(make_stack: MakeStack, outside: Path) -> None:
    path = _stack_with(make_stack, outside, 'model = "../outside/m.gguf"', {})
    path.write_text("allow_outside_paths = true\n" + path.read_text())
    with pytest.raises(ManifestError, match="unknown key"):
        load_manifest(path)


@pytest.mark.parametrize(
    ("lines", "links"),
    [
        pytest.param('model = "sub/m.gguf"', {}, id="subfolder"),
        pytest.param('model = "sub/../sub/./m.gguf"', {}, id="dotdot-staying-inside"),
        pytest.param('model = "{root}/sub/m.gguf"', {}, id="absolute-inside"),
        pytest.param('model = "link.gguf"', {"link.gguf": "sub/m.gguf"}, id="symlink-inside"),
    ],
)
def test_files_inside_the_stack_are_fine(
    make_stack: MakeStack, lines: str, links: dict[str, str]
) -> None:
    path = make_stack("version = 1\n", files=())
    (path.parent / "sub").mkdir()
    (path.parent / "sub" / "m.gguf").write_bytes(b"")
    path.write_text(
        'version = 1\n[[stages]]\nname = "s"\nprompt = "{question}"\n'
        + lines.replace("{root}", str(path.parent))
        + "\n"
    )
    for name, target in links.items():
        (path.parent / name).symlink_to(path.parent / target)
    assert load_manifest(path).stages[0].model == path.parent / "sub" / "m.gguf"


def test_bundled_stack_stays_inside_its_folder() -> None:
    bundled = Path(__file__).resolve().parents[2] / "models" / "word-problems" / "stack.toml"
    spec = load_manifest(bundled, check_files=False, allow_outside_paths=False)
    for stage in spec.stages:
        assert stage.model.is_relative_to(bundled.parent.resolve())
        assert stage.lora is None or stage.lora.is_relative_to(bundled.parent.resolve())


# --- every refusal of a stage's file, whole message (issue 19: mutation testing) ---------------


def _symlink_loop(root: Path) -> None:
    (root / "loop.gguf").symlink_to(root / "loop.gguf")


def _fifo(root: Path) -> None:
    os.mkfifo(root / "fifo.gguf")


def _folder(root: Path) -> None:
    (root / "dir.gguf").mkdir()


# case -> (the stage's model line, what to make in the stack folder, error type, the message
# after "<stack.toml>: ", with {root} for the stack folder)
FILE_ERRORS: dict[str, tuple[str, Callable[[Path], None] | None, type[Exception], str]] = {
    "NUL in the path": (
        'model = "a\\u0000b.gguf"',
        None,
        ManifestError,
        "stage 's', key 'model': expected a file path, found a NUL character in it",
    ),
    "symlink loop": (
        'model = "loop.gguf"',
        _symlink_loop,
        ManifestError,
        "stage 's', key 'model': cannot resolve 'loop.gguf' (RuntimeError); fix the path or the "
        "links",
    ),
    "outside the folder": (
        'model = "../elsewhere.gguf"',
        None,
        ManifestError,
        "stage 's', key 'model': expected a file inside the stack folder {root}, found "
        "{root}/../elsewhere.gguf (symlinks resolved); move the file into the folder, or set "
        "EDGESTACK_ALLOW_OUTSIDE_PATHS=1 if you trust this stack.toml",
    ),
    "a folder": (
        'model = "dir.gguf"',
        _folder,
        ModelFileNotFound,
        "stage 's', key 'model': {root}/dir.gguf is a folder, not a file; fix the path (it is "
        "relative to stack.toml)",
    ),
    "a FIFO": (
        'model = "fifo.gguf"',
        _fifo,
        ModelFileNotFound,
        "stage 's', key 'model': {root}/fifo.gguf is not a regular file; fix the path (it is "
        "relative to stack.toml)",
    ),
    "missing": (
        'model = "none.gguf"',
        None,
        ModelFileNotFound,
        "stage 's', key 'model': {root}/none.gguf does not exist; fix the path (it is relative "
        "to stack.toml)",
    ),
    "bad pip:// value": (
        'model = "pip://x"',
        None,
        ManifestError,
        "stage 's', key 'model': 'pip://x' does not name a file of a Python package; write it as "
        "pip://distribution/path/in/it.gguf (the path as the package installs it)",
    ),
    "bad hf:// value": (
        'model = "hf://x/y"',
        None,
        ManifestError,
        "stage 's', key 'model': 'hf://x/y' does not name a file in a Hub repository (owner, "
        "name and a file path are needed); write it as hf://owner/name/path/in/repo.gguf or "
        "...gguf@revision",
    ),
}


@pytest.mark.parametrize("case", list(FILE_ERRORS))
def test_file_errors_name_the_stage_and_key(make_stack: MakeStack, case: str) -> None:
    line, make, error, expected = FILE_ERRORS[case]
    path = make_stack('version = 1\n[[stages]]\nname = "s"\nprompt = "{question}"\n' + line)
    if make is not None:
        make(path.parent)
    with pytest.raises(error) as info:
        load_manifest(path)
    root = str(path.parent.resolve())
    expected = expected.replace("{root}/../", str(path.parent.parent.resolve()) + "/")
    assert str(info.value) == f"{path}: " + expected.replace("{root}", root)


def test_unreadable_grammar_file(make_stack: MakeStack, monkeypatch: pytest.MonkeyPatch) -> None:
    """A grammar file that cannot be opened (root reads anything: the open is made to fail)."""
    path = make_stack("version = 1\n[[stages]]\n" + STAGE + 'grammar = "g.gbnf"\n')
    (path.parent / "g.gbnf").write_text('root ::= "a"\n')
    real_open = Path.open

    def refuse(self: Path, *args: Any, **kwargs: Any) -> Any:
        if self.name == "g.gbnf":
            raise PermissionError(13, "Permission denied")
        return real_open(self, *args, **kwargs)

    monkeypatch.setattr(Path, "open", refuse)
    with pytest.raises(ManifestError) as info:
        load_manifest(path)
    grammar = path.parent.resolve() / "g.gbnf"
    assert str(info.value) == (
        f"{path}: stage 's', key 'grammar': cannot read {grammar}: Permission denied; check the "
        "file and its permissions"
    )


def test_grammar_file_read_as_utf8(make_stack: MakeStack) -> None:
    path = make_stack("version = 1\n[[stages]]\n" + STAGE + 'grammar = "g.gbnf"\n')
    (path.parent / "g.gbnf").write_text('root ::= "é"\n', encoding="utf-8")
    assert load_manifest(path).stages[0].grammar == 'root ::= "é"\n'


# --- hf:// files: looked up in huggingface_hub's cache, never downloaded here -------------------

_COMMIT_ID = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """huggingface_hub's cache in tmp_path, holding org/repo's m.gguf at main."""
    from huggingface_hub import constants

    cache = tmp_path / "hub"
    repo = cache / "models--org--repo"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(_COMMIT_ID)
    (repo / "snapshots" / _COMMIT_ID).mkdir(parents=True)
    (repo / "snapshots" / _COMMIT_ID / "m.gguf").write_bytes(b"gguf")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    return cache


@pytest.mark.parametrize("key", ["model", "lora"])
def test_hub_files_come_from_the_cache(make_stack: MakeStack, hub_cache: Path, key: str) -> None:
    stage = 'name = "s"\nprompt = "{question}"\n'
    stage += 'model = "base.gguf"\n' if key == "lora" else ""
    cached = f'{key} = "hf://org/repo/m.gguf"\n'
    missing = f'{key} = "hf://org/repo/other.gguf"\n'
    path = make_stack("version = 1\n[[stages]]\n" + stage + cached)
    spec = load_manifest(path)
    assert getattr(spec.stages[0], key) == hub_cache / "models--org--repo" / "snapshots" / (
        _COMMIT_ID + "/m.gguf"
    )

    path = make_stack("version = 1\n[[stages]]\n" + stage + missing)
    with pytest.raises(ModelFileNotFound) as info:
        load_manifest(path)
    assert str(info.value) == (
        f"{path}: stage 's', key '{key}': hf://org/repo/other.gguf is not in the Hugging Face "
        f"cache ({hub_cache}); download it with `edgestack pull` (for a pulled stack: pull it "
        "again), or connect once"
    )
    # inspect: a path that says it is not cached (and does not exist)
    spec = load_manifest(path, check_files=False)
    assert getattr(spec.stages[0], key) == hub_cache / "not-cached" / "org/repo" / "other.gguf"


def test_stage_by_name(make_stack: MakeStack) -> None:
    spec = load_manifest(make_stack(GOOD, GOOD_FILES))
    assert spec.stage("answer") is spec.stages[1] and spec.stage("extract") is spec.stages[0]
    with pytest.raises(KeyError, match="nope"):
        spec.stage("nope")


@pytest.mark.parametrize("extra", [0, 1])
def test_grammar_file_size_limit(make_stack: MakeStack, extra: int) -> None:
    """A grammar file of exactly MAX_GRAMMAR_BYTES loads; one byte more is refused unread."""
    path = make_stack("version = 1\n[[stages]]\n" + STAGE + 'grammar = "g.gbnf"\n')
    head = 'root ::= "a"\n#'
    text = head + "x" * (MAX_GRAMMAR_BYTES + extra - len(head) - 1) + "\n"
    (path.parent / "g.gbnf").write_text(text)
    if not extra:
        assert load_manifest(path).stages[0].grammar == text
        return
    with pytest.raises(ManifestError) as info:
        load_manifest(path)
    grammar = path.parent.resolve() / "g.gbnf"
    assert str(info.value) == (
        f"{path}: stage 's', key 'grammar': GBNF grammar file {grammar}: expected at most "
        f"{MAX_GRAMMAR_BYTES:,} bytes, found {MAX_GRAMMAR_BYTES + 1:,}; make the grammar smaller"
    )


def test_grammar_file_is_read_only_up_to_the_limit(
    make_stack: MakeStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A huge grammar file (here a sparse 1 GiB one) is refused after reading one byte past the
    limit: no more than that is ever asked of the file."""
    path = make_stack("version = 1\n[[stages]]\n" + STAGE + 'grammar = "g.gbnf"\n')
    grammar = path.parent / "g.gbnf"
    with grammar.open("wb") as f:
        f.truncate(1 << 30)
    asked: list[int | None] = []
    real_open = Path.open

    def recording_open(self: Path, *args: Any, **kwargs: Any) -> Any:
        file = real_open(self, *args, **kwargs)
        if self.name == "g.gbnf":
            read = file.read

            def bounded_read(n: int | None = -1) -> Any:
                asked.append(n)
                return read(n)

            file.read = bounded_read
        return file

    monkeypatch.setattr(Path, "open", recording_open)
    with pytest.raises(ManifestError, match=f"found {1 << 30:,}; make the grammar smaller"):
        load_manifest(path)
    assert asked == [MAX_GRAMMAR_BYTES + 1]
