"""Build recipes: parsing, validation errors (file, stage, key), and the stack.toml writer."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from edge_stack.builder._stack_toml import manifest_text, toml_string
from edge_stack.builder.recipe import GENERATION_KEYS, load_recipe
from edge_stack.errors import ManifestError, ModelFileNotFound

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
