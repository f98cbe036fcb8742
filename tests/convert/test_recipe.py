"""Build recipes: parsing, validation errors (file, stage, key), and the stack.toml writer."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest

from edge_stack.builder._stack_toml import manifest_text, toml_string
from edge_stack.builder.recipe import GENERATION_KEYS, load_recipe, parse_recipe
from edge_stack.errors import ManifestError, ModelFileNotFound
from edge_stack.util._env import settings

WP_RECIPE = Path(__file__).resolve().parents[2] / "models" / "word-problems" / "recipe.toml"

GOOD = """\
name = "demo"
description = "a demo"
mode = "adapters"
quantization = "Q4_K_M"
adapter_type = "q8_0"

[defaults]
base = "hf/base"
temperature = 0.0
stop = ["\\n"]
lora_scale = 0.5

[[stages]]
name = "extract"
adapter = "./hf/extract"
prompt = "Question: {question}\\nExpression:"
max_tokens = 8

[[stages]]
name = "say"
base = "EleutherAI/pythia-160m@main"
prompt = "Q: {question} E: {extract}\\nA:"
"""


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    for name in ("hf/base", "hf/extract"):
        (tmp_path / name).mkdir(parents=True)
    return tmp_path


def write(folder: Path, text: str) -> Path:
    path = folder / "recipe.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_good_recipe(folder: Path) -> None:
    recipe = load_recipe(write(folder, GOOD))
    assert (recipe.name, recipe.description, recipe.mode) == ("demo", "a demo", "adapters")
    assert (recipe.quantization, recipe.adapter_type) == ("q4_k_m", "q8_0")
    extract, say = recipe.stages
    assert extract.base.path == (folder / "hf" / "base").resolve()  # relative to the recipe
    assert extract.adapter is not None and extract.adapter.path == (folder / "hf/extract").resolve()
    assert extract.settings == {"prompt": "Question: {question}\nExpression:", "max_tokens": 8}
    assert extract.lora_scale == 0.5  # from [defaults]
    assert say.base.is_hub and say.base.spec == "EleutherAI/pythia-160m@main"
    assert say.adapter is None
    assert dict(recipe.defaults) == {"temperature": 0.0, "stop": ("\n",), "lora_scale": 0.5}
    # the stack it describes, checked as stack.toml is checked
    assert [s.name for s in recipe.spec.stages] == ["extract", "say"]
    assert recipe.spec.stages[1].stop == ("\n",)


def test_defaults_when_omitted(folder: Path) -> None:
    text = 'mode = "merged"\nquantization = "f16"\n[[stages]]\nname = "a"\nbase = "hf/base"\nprompt = "{question}"\n'
    recipe = load_recipe(write(folder, text))
    assert recipe.name == folder.name and recipe.description == ""
    assert recipe.adapter_type == "f16" and recipe.stages[0].lora_scale == 1.0


def test_word_problems_recipe_is_valid() -> None:
    """The bundled stack's recipe (which train.py also reads) follows this schema."""
    recipe = load_recipe(WP_RECIPE, check_files=False)
    assert recipe.name == "word-problems" and recipe.mode == "adapters"
    assert [s.name for s in recipe.stages] == ["extract", "compute", "answer"]
    assert all(s.adapter is not None for s in recipe.stages)


def test_generation_keys_are_the_manifest_stage_keys() -> None:
    assert "prompt" in GENERATION_KEYS and "grammar" in GENERATION_KEYS
    assert not {"model", "lora", "sha256", "lora_sha256", "name"} & set(GENERATION_KEYS)


BAD: list[tuple[str, str, str, tuple[str, ...]]] = [
    # (id, text replaced, replacement, fragments the message must contain)
    ("unknown-top", 'name = "demo"', 'name = "demo"\ncolour = 1', ("key 'colour'", "known keys")),
    (
        "manifest-key-in-stage",
        'name = "extract"',
        'name = "extract"\nmodel = "x.gguf"',
        ("stage 'extract'", "key 'model'", "'base'"),
    ),
    (
        "unknown-stage-key",
        'name = "say"',
        'name = "say"\npromt = "x"',
        ("stage 'say'", "key 'promt'"),
    ),
    (
        "unknown-default",
        "[defaults]",
        "[defaults]\nlora = 'x'",
        ("key 'lora'", "[defaults]", "'adapter'"),
    ),
    ("bad-mode", 'mode = "adapters"', 'mode = "both"', ("key 'mode'", "merged", "'both'")),
    (
        "bad-quant",
        'quantization = "Q4_K_M"',
        'quantization = "q9_9"',
        ("key 'quantization'", "q9_9", "q4_k_m"),
    ),
    ("missing-quant", 'quantization = "Q4_K_M"', "", ("missing key 'quantization'",)),
    ("bad-adapter-type", 'adapter_type = "q8_0"', 'adapter_type = "q4_0"', ("'adapter_type'",)),
    (
        "adapter-type-merged",
        'mode = "adapters"',
        'mode = "merged"',
        ("key 'adapter_type'", '"adapters" only'),
    ),
    (
        "bad-value",
        "max_tokens = 8",
        "max_tokens = 0",
        ("stage 'extract'", "key 'max_tokens'", "at least 1"),
    ),
    ("bad-default", "temperature = 0.0", "temperature = 9", ("key 'defaults.temperature'",)),
    (
        "later-stage",
        '"Question: {question}\\nExpression:"',
        '"{say}"',
        ("stage 'extract'", "key 'prompt'", "{say}", "earlier stages"),
    ),
    (
        "bad-brace",
        '"Question: {question}\\nExpression:"',
        '"Question: {question"',
        ("stage 'extract'", "key 'prompt'"),
    ),
    ("bad-name", 'name = "say"', 'name = "Say!"', ("key 'name'", "[a-z]")),
    ("dup-name", 'name = "say"', 'name = "extract"', ("key 'name'", "unique")),
    (
        "missing-base",
        'base = "hf/base"\n',
        "",
        ("stage 'extract'", "key 'base'", "missing key"),
    ),
    (
        "bad-hub-id",
        "EleutherAI/pythia-160m@main",
        "Eleuther--AI/pythia",
        ("stage 'say'", "key 'base'", "Hub id"),
    ),
    (
        "scale-without-adapter",
        'name = "say"',
        'name = "say"\nlora_scale = 2.0',
        ("stage 'say'", "key 'lora_scale'", "no 'adapter'"),
    ),
    ("toml-syntax", "[defaults]", "[defaults", ("TOML syntax error",)),
]


@pytest.mark.parametrize(("old", "new", "fragments"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_recipes(folder: Path, old: str, new: str, fragments: tuple[str, ...]) -> None:
    assert old in GOOD
    path = write(folder, GOOD.replace(old, new, 1))
    with pytest.raises(ManifestError) as info:
        load_recipe(path)
    message = str(info.value)
    assert message.startswith(str(path)) and "\n" not in message
    for fragment in fragments:
        assert fragment in message


GGUF_BASE = """\
mode = "{mode}"
quantization = "q8_0"
[defaults]
{base}base_gguf = "base.gguf"
[[stages]]
name = "extract"
adapter = "./hf/extract"
prompt = "Question: {{question}}"
"""


@pytest.mark.parametrize(
    ("mode", "base", "key", "fragments"),
    [
        # merged stages are conversions of the checkpoint: name the mode that runs on a GGUF
        (
            "merged",
            True,
            "base_gguf",
            ('"adapters" only', "never from a GGUF", 'mode = "adapters"'),
        ),
        ("merged", False, "base_gguf", ('"adapters" only', "never from a GGUF")),
        # a GGUF alone gives nothing to verify the adapters against: name both ways out
        ("adapters", False, "base", ("missing key", "gguf_file=", "export-lora ADAPTER --base")),
    ],
    ids=["merged", "merged-gguf-only", "adapters-gguf-only"],
)
def test_gguf_base_needs_adapters_mode_and_the_checkpoint(
    folder: Path, mode: str, base: bool, key: str, fragments: tuple[str, ...]
) -> None:
    (folder / "base.gguf").write_bytes(b"GGUF")
    text = GGUF_BASE.format(mode=mode, base='base = "hf/base"\n' if base else "")
    path = write(folder, text)
    with pytest.raises(ManifestError) as info:
        load_recipe(path)
    message = str(info.value)
    assert message.startswith(f"{path}: stage 'extract', key '{key}': ") and "\n" not in message
    for fragment in fragments:
        assert fragment in message
    if base:  # the same recipe in mode "adapters" is valid
        stage = load_recipe(write(folder, text.replace("merged", "adapters"))).stages[0]
        assert stage.base_gguf == str((folder / "base.gguf").resolve())


@pytest.mark.parametrize(
    ("old", "new", "fragments"),
    [
        (
            'base = "hf/base"',
            'base = "hf/nothing"',
            ("stage 'extract'", "key 'base'", "hf/nothing"),
        ),
        (
            '"./hf/extract"',
            '"./hf/missing"',
            ("stage 'extract'", "key 'adapter'", "does not exist"),
        ),
        ('"./hf/extract"', '"recipe.toml"', ("key 'adapter'", "is a file")),
    ],
    ids=["base", "adapter", "adapter-is-file"],
)
def test_missing_folders(folder: Path, old: str, new: str, fragments: tuple[str, ...]) -> None:
    path = write(folder, GOOD.replace(old, new, 1))
    with pytest.raises(ModelFileNotFound) as info:
        load_recipe(path)
    for fragment in fragments:
        assert fragment in str(info.value)
    load_recipe(path, check_files=False)  # the folders are checked only when asked


def test_missing_recipe(tmp_path: Path) -> None:
    with pytest.raises(ModelFileNotFound, match="does not exist"):
        load_recipe(tmp_path / "nope.toml")


@pytest.mark.parametrize(
    "text",
    [
        "plain",
        "",
        "\n",
        "Question: {question}\nExpression:",
        'quotes " and """ and \\ backslash\nend"',
        'ends with a quote\n"',
        "tab\tand\x07bell\x7f and \r\n crlf",
        "unicode: déjà vu 東京 😀\nnext",
        "\n\nleading newlines",
        "trailing newline\n",
    ],
)
def test_toml_strings_round_trip(text: str) -> None:
    doc = f"a = {toml_string(text)}\nb = [{toml_string(text, multiline=False)}]\n"
    assert tomllib.loads(doc) == {"a": text, "b": [text]}


def test_manifest_text_round_trips() -> None:
    text = manifest_text(
        ["built", ""],
        {"name": "x", "version": 1},
        {"stop": ["\n", "END"], "temperature": 0.5},
        [{"name": "a", "prompt": "Q: {question}\nA:", "seed": 3, "top_p": 1.0}],
    )
    assert text.startswith("# built\n#\n")
    assert tomllib.loads(text) == {
        "name": "x",
        "version": 1,
        "defaults": {"stop": ["\n", "END"], "temperature": 0.5},
        "stages": [{"name": "a", "prompt": "Q: {question}\nA:", "seed": 3, "top_p": 1.0}],
    }


# --- exact behaviour, table by table (issue 19: mutation testing of builder/recipe.py) --------

DROP = object()  # a key to remove from the minimal recipe
TOP_KNOWN = "adapter_type, defaults, description, mode, name, quantization, stages"
DEFAULT_KNOWN = ", ".join(sorted({"base", "base_gguf", *GENERATION_KEYS}))
STAGE_KNOWN = ", ".join(sorted({"name", "base", "adapter", "base_gguf", *GENERATION_KEYS}))
MERGED_GGUF = (
    'applies to mode = "adapters" only: a merged stage is converted from the Hugging Face '
    "checkpoint 'base' with its adapter merged in, never from a GGUF; to run the stages on this "
    'GGUF set mode = "adapters" (the GGUF plus one exported adapter per stage), or remove '
    "'base_gguf'"
)
GGUF_VALUE = (
    "must be a GGUF file (relative to the recipe), pip://package/path/file.gguf or "
    "hf://owner/name/file.gguf, got "
)
SOURCE_VALUE = "must be a folder (relative to the recipe) or a Hub id owner/name, got "
MISSING_FIX = "; fix the path (it is relative to the recipe) or train/download it first"


def minimal(
    top: dict[str, Any] | None = None, stage: dict[str, Any] | None = None
) -> dict[str, Any]:
    """A valid one-stage recipe (as parsed TOML) with ``top``/``stage`` keys set or DROPped."""
    data: dict[str, Any] = {
        "mode": "adapters",
        "quantization": "q8_0",
        "stages": [
            {"name": "a", "base": "hf/base", "adapter": "./hf/extract", "prompt": "{question}"}
        ],
    }
    for table, changes in ((data, top or {}), (data["stages"][0], stage or {})):
        for key, value in changes.items():
            if value is DROP:
                table.pop(key, None)
            else:
                table[key] = value
    return data


# (id, top-level changes, stage changes, the whole message after "<recipe path>: ")
EXACT: list[tuple[str, dict[str, Any], dict[str, Any], str]] = [
    (
        "unknown-top",
        {"colour": 1},
        {},
        f"key 'colour': unknown key in the top level (known keys: {TOP_KNOWN})",
    ),
    (
        "manifest-top",
        {"version": 1},
        {},
        f"key 'version': unknown key in the top level (the build writes the manifest version; known keys: {TOP_KNOWN})",
    ),
    ("name-not-str", {"name": 5}, {}, "key 'name': must be a non-empty string, got 5"),
    ("name-blank", {"name": "  "}, {}, "key 'name': must be a non-empty string, got '  '"),
    ("description-not-str", {"description": 5}, {}, "key 'description': must be a string, got 5"),
    ("mode-missing", {"mode": DROP}, {}, "missing key 'mode'"),
    ("mode-not-str", {"mode": 5}, {}, "key 'mode': must be a string, got 5"),
    ("mode-blank", {"mode": " "}, {}, "key 'mode': must be a string, got ' '"),
    (
        "mode-unknown",
        {"mode": "Both"},
        {},
        'key \'mode\': must be "merged" (one GGUF per stage, adapter merged in) or "adapters" (one '
        "shared base GGUF + one GGUF LoRA adapter per stage), got 'both'",
    ),
    ("quant-missing", {"quantization": DROP}, {}, "missing key 'quantization'"),
    ("quant-not-str", {"quantization": 8}, {}, "key 'quantization': must be a string, got 8"),
    (
        "quant-unknown",
        {"quantization": "Q9_9"},
        {},
        "key 'quantization': unknown quantization 'q9_9'; choose a llama.cpp file type such as "
        "f32, f16, bf16, q8_0, q6_k, q5_k_m, q4_k_m",
    ),
    (
        "adapter-type-merged",
        {"mode": "merged", "adapter_type": "f16"},
        {},
        "key 'adapter_type': applies to mode = \"adapters\" only (merged stages use the quantization)",
    ),
    (
        "adapter-type-not-str",
        {"adapter_type": 16},
        {},
        "key 'adapter_type': must be a string, got 16",
    ),
    (
        "adapter-type-unknown",
        {"adapter_type": "q4_0"},
        {},
        "key 'adapter_type': must be one of f32, f16, q8_0, got 'q4_0'",
    ),
    ("defaults-not-table", {"defaults": 5}, {}, "key 'defaults': must be a table ([defaults])"),
    (
        "defaults-unknown",
        {"defaults": {"lora": "x"}},
        {},
        "key 'lora': unknown key in [defaults] (a recipe names the PEFT adapter folder as "
        f"'adapter'; known keys: {DEFAULT_KNOWN})",
    ),
    (
        "stages-missing",
        {"stages": DROP},
        {},
        "key 'stages': a recipe needs at least one [[stages]] table",
    ),
    (
        "stages-empty",
        {"stages": []},
        {},
        "key 'stages': a recipe needs at least one [[stages]] table",
    ),
    (
        "stages-not-list",
        {"stages": "ab"},
        {},
        "key 'stages': a recipe needs at least one [[stages]] table",
    ),
    ("stage-not-table", {"stages": [5]}, {}, "stage #1: must be a table ([[stages]])"),
    (
        "stage-unknown",
        {},
        {"sha256": "0" * 64},
        f"stage 'a', key 'sha256': unknown key in a stage (the build writes the pins; known keys: {STAGE_KNOWN})",
    ),
    (
        "stage-unnamed",  # the label is the stage's number while it has no usable name
        {},
        {"name": "", "promt": "x"},
        f"stage #1, key 'promt': unknown key in a stage (known keys: {STAGE_KNOWN})",
    ),
    (
        "base-missing",
        {},
        {"base": DROP},
        "stage 'a', key 'base': missing key (set it in the stage or in [defaults])",
    ),
    ("base-not-str", {}, {"base": 5}, f"stage 'a', key 'base': {SOURCE_VALUE}5"),
    ("base-blank", {}, {"base": " "}, f"stage 'a', key 'base': {SOURCE_VALUE}' '"),
    ("adapter-blank", {}, {"adapter": ""}, f"stage 'a', key 'adapter': {SOURCE_VALUE}''"),
    (
        "scale-without-adapter",
        {},
        {"adapter": DROP, "lora_scale": 2.0},
        "stage 'a', key 'lora_scale': the stage has no 'adapter' to scale",
    ),
    (
        "gguf-merged",
        {"mode": "merged"},
        {"base_gguf": "base.gguf"},
        f"stage 'a', key 'base_gguf': {MERGED_GGUF}",
    ),
    ("gguf-not-str", {}, {"base_gguf": 5}, f"stage 'a', key 'base_gguf': {GGUF_VALUE}5"),
    ("gguf-blank", {}, {"base_gguf": " "}, f"stage 'a', key 'base_gguf': {GGUF_VALUE}' '"),
    (
        "gguf-bad-pip",
        {},
        {"base_gguf": "pip://edgestack-models"},
        "stage 'a', key 'base_gguf': 'pip://edgestack-models' does not name a file of a Python "
        "package; write it as pip://distribution/path/in/it.gguf (the path as the package "
        "installs it)",
    ),
    (
        "gguf-bad-hf",
        {},
        {"base_gguf": "hf://owner/base.gguf"},
        "stage 'a', key 'base_gguf': 'hf://owner/base.gguf' does not name a file in a Hub "
        "repository (owner, name and a file path are needed); write it as "
        "hf://owner/name/path/in/repo.gguf or ...gguf@revision",
    ),
]


@pytest.mark.parametrize(
    ("top", "stage", "message"), [e[1:] for e in EXACT], ids=[e[0] for e in EXACT]
)
def test_exact_errors(
    folder: Path, top: dict[str, Any], stage: dict[str, Any], message: str
) -> None:
    path = folder / "recipe.toml"
    with pytest.raises(ManifestError) as info:
        parse_recipe(minimal(top, stage), path)
    assert str(info.value) == f"{path}: {message}"


# (id, stage changes, the message after "<recipe path>: " with {root} for the recipe's folder)
MISSING: list[tuple[str, dict[str, Any], str]] = [
    (
        "base",
        {"base": "hf/nothing"},  # under an existing folder: a path, not a Hub id
        "stage 'a', key 'base': Hugging Face checkpoint folder {root}/hf/nothing does not exist",
    ),
    (
        "base-is-file",
        {"base": "weights.bin"},
        "stage 'a', key 'base': Hugging Face checkpoint folder {root}/weights.bin is a file, not a folder",
    ),
    (
        "adapter",
        {"adapter": "./hf/missing"},
        "stage 'a', key 'adapter': PEFT adapter folder {root}/hf/missing does not exist",
    ),
    (
        "adapter-is-file",
        {"adapter": "weights.bin"},
        "stage 'a', key 'adapter': PEFT adapter folder {root}/weights.bin is a file, not a folder",
    ),
]


@pytest.mark.parametrize(
    ("stage", "message"), [m[1:] for m in MISSING], ids=[m[0] for m in MISSING]
)
def test_missing_folders_exact(folder: Path, stage: dict[str, Any], message: str) -> None:
    (folder / "weights.bin").write_bytes(b"")
    path = folder / "recipe.toml"
    with pytest.raises(ModelFileNotFound) as info:
        parse_recipe(minimal(stage=stage), path)  # checking the folders is the default
    assert str(info.value) == f"{path}: {message.format(root=folder.resolve())}{MISSING_FIX}"
    parse_recipe(minimal(stage=stage), path, check_files=False)


def test_missing_base_gguf(folder: Path) -> None:
    path = folder / "recipe.toml"
    data = minimal(stage={"base_gguf": "missing.gguf"})
    with pytest.raises(ModelFileNotFound) as info:
        parse_recipe(data, path)
    assert str(info.value) == (
        f"{path}: stage 'a', key 'base_gguf': GGUF file {folder.resolve() / 'missing.gguf'} does "
        "not exist; fix the path (it is relative to the recipe)"
    )
    stage = parse_recipe(data, path, check_files=False).stages[0]
    assert stage.base_gguf == str(folder.resolve() / "missing.gguf")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        # pip:// and hf:// references are kept as written (stack.toml names them so)
        (" pip://edgestack-models/word/base.gguf ", "pip://edgestack-models/word/base.gguf"),
        ("hf://owner/name/sub/base.gguf@v1", "hf://owner/name/sub/base.gguf@v1"),
        ("hf://owner/name/base.gguf", "hf://owner/name/base.gguf"),
    ],
)
def test_base_gguf_references(folder: Path, value: str, expected: str) -> None:
    recipe = parse_recipe(minimal(stage={"base_gguf": value}), folder / "recipe.toml")
    assert recipe.stages[0].base_gguf == expected


def test_stage_values_override_defaults(folder: Path) -> None:
    for name in ("a.gguf", "b.gguf"):
        (folder / name).write_bytes(b"GGUF")
    data = minimal(
        {"defaults": {"base_gguf": "a.gguf", "lora_scale": 0.5}},
        {"base_gguf": "b.gguf", "lora_scale": 2.0},
    )
    data["stages"].append(
        {"name": "b", "base": "hf/base", "adapter": "hf/extract", "prompt": "{a}"}
    )
    path = folder / "recipe.toml"
    recipe = parse_recipe(data, path)
    assert recipe.path == path and recipe.root == folder
    a, b = recipe.stages
    assert (a.base_gguf, a.lora_scale) == (str(folder.resolve() / "b.gguf"), 2.0)
    assert (b.base_gguf, b.lora_scale) == (str(folder.resolve() / "a.gguf"), 0.5)
    assert a.settings == {"prompt": "{question}", "lora_scale": 2.0}


@pytest.mark.parametrize("mode", ["merged", "adapters", " Merged ", "ADAPTERS"])
def test_mode_is_normalised(folder: Path, mode: str) -> None:
    recipe = parse_recipe(minimal({"mode": mode}), folder / "recipe.toml")
    assert recipe.mode == mode.strip().lower()
    assert recipe.adapter_type == "f16"  # the default, in either mode


@pytest.mark.parametrize(
    ("text", "local"),
    [
        # what can only be a folder: never sent to the Hub, whether or not it exists yet
        ("./ckpt", "ckpt"),
        ("../ckpt", "../ckpt"),
        ("/edgestack-no-such-folder", "/edgestack-no-such-folder"),
        ("~/ckpt", "~/ckpt"),
        ("ckpt", "ckpt"),
        (".", "."),
        ("..", ".."),
        ("runs/7/ckpt", "runs/7/ckpt"),
        ("owner\\name", "owner\\name"),
        ("own\\er/name", "own\\er/name"),
        (".\\ckpt", ".\\ckpt"),
        ("..\\ckpt", "..\\ckpt"),
        # owner/name[@revision]: a Hub id (a revision may hold '/' and '@')
        ("owner/name", None),
        (" owner/name ", None),
        ("owner/name@main", None),
        ("owner/name@refs/pr/1", None),
        ("owner/name@feature/x@2", None),
    ],
)
def test_hub_id_or_local_path(tmp_path: Path, text: str, local: str | None) -> None:
    """The decision depends on the text only (the recipe's folder need not exist)."""
    root = tmp_path / "not-yet"
    source = parse_recipe(minimal(stage={"base": text}), root / "recipe.toml", check_files=False)
    base = source.stages[0].base
    assert base.spec == text.strip()
    if local is None:
        assert base.is_hub and base.path is None and str(base) == text.strip()
    else:
        expected = (root / Path(local).expanduser()).resolve()
        assert not base.is_hub and base.path == expected and str(base) == str(expected)


@pytest.mark.parametrize(
    ("text", "hub"),
    [("artifacts/base", False), ("artifacts/base@v2/final", False), ("owner/name", True)],
)
def test_path_next_to_an_existing_folder(tmp_path: Path, text: str, hub: bool) -> None:
    """'artifacts/base' beside an 'artifacts' folder is a path even before base/ is trained."""
    (tmp_path / "artifacts").mkdir()
    recipe = parse_recipe(
        minimal(stage={"base": text}), tmp_path / "recipe.toml", check_files=False
    )
    base = recipe.stages[0].base
    assert base.is_hub == hub
    assert base.path == (None if hub else (tmp_path / text).resolve())


def test_grammar_file_outside_the_recipe_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Bases, adapters and grammar files usually live outside the recipe's folder: allowed
    without EDGESTACK_ALLOW_OUTSIDE_PATHS (stack.toml's own rule does not apply here)."""
    monkeypatch.delenv("EDGESTACK_ALLOW_OUTSIDE_PATHS", raising=False)
    settings.cache_clear()
    (tmp_path / "yes-no.gbnf").write_text('root ::= "yes" | "no"\n', encoding="utf-8")
    root = tmp_path / "recipes"
    root.mkdir()
    data = minimal(stage={"grammar": "../yes-no.gbnf"})
    recipe = parse_recipe(data, root / "recipe.toml", check_files=False)
    assert recipe.spec.stages[0].grammar == 'root ::= "yes" | "no"\n'
    assert recipe.stages[0].settings["grammar"] == "../yes-no.gbnf"  # as written


@pytest.mark.parametrize("is_dir", [False, True])
def test_recipe_path_errors(tmp_path: Path, is_dir: bool) -> None:
    path = tmp_path / "recipe.toml"
    if is_dir:
        path.mkdir()
    with pytest.raises(ModelFileNotFound) as info:
        load_recipe(path)
    what = "is a folder" if is_dir else "does not exist"
    assert str(info.value) == f"recipe {path.resolve()} {what}; pass a recipe .toml file"


def test_recipe_not_utf8(tmp_path: Path) -> None:
    path = write(tmp_path, 'name = "d\xe9mo"\n')
    path.write_bytes(path.read_text(encoding="utf-8").encode("latin-1"))
    with pytest.raises(ManifestError) as info:
        load_recipe(path)
    message = str(info.value)
    assert message.startswith(f"{path.resolve()}: not UTF-8 text (")
    assert message.endswith("); save the recipe as UTF-8")
