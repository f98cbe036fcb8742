"""`edgestack build` end to end on a tiny stack: a random GPT-NeoX base, PEFT adapters trained for
a few steps, both modes, real conversion, verification and llama.cpp; incremental rebuilds; bad
recipes fail before anything is written."""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from edge_stack import Stack, load_manifest
from edge_stack.builder.build import BuildEvent, build

from build_builders import STAGES, built_stack, lora_config, recipe_folder, write_recipe
from cli_support import run

# peft calls transformers' deprecated is_gradient_checkpointing (their business, not ours)
pytestmark = [
    pytest.mark.llama,
    pytest.mark.torch,
    pytest.mark.filterwarnings("ignore::FutureWarning"),
]

QUESTION = "Sam has 23 stamps and buys 18 more. How many stamps does Sam have?"


@pytest.fixture(scope="module")
def recipe_dir(tmp_path_factory: pytest.TempPathFactory, tiny_model: Callable[[str], Path]) -> Path:
    return recipe_folder(tmp_path_factory, tiny_model("gptneox"))


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("mode", ["adapters", "merged"])
def test_built_stack_loads_and_answers(
    mode: str, tmp_path_factory: pytest.TempPathFactory, tiny_model: Callable[[str], Path]
) -> None:
    path = built_stack(tmp_path_factory, tiny_model("gptneox"), mode)
    spec = load_manifest(path)
    assert [s.name for s in spec.stages] == list(STAGES)
    assert spec.name == "tiny-word-problems"
    for stage in spec.stages:
        assert stage.sha256 == _sha(stage.model)
        assert stage.stop == ("\n",) and stage.n_ctx == 128  # from the recipe's [defaults]
        if mode == "adapters":
            assert stage.model.name == "base.q8_0.gguf"
            assert stage.lora is not None and stage.lora.name == f"{stage.name}.lora.gguf"
            assert stage.lora_sha256 == _sha(stage.lora)
        else:
            assert stage.model.name == f"{stage.name}.q8_0.gguf" and stage.lora is None
    names = {p.name for p in path.parent.iterdir()}
    expected = {"stack.toml", ".edgestack-build.json"} | {
        f"{s}.lora.gguf" if mode == "adapters" else f"{s}.q8_0.gguf" for s in STAGES
    }
    if mode == "adapters":
        expected.add("base.q8_0.gguf")
    assert names == expected  # no scratch folder or temporary file left behind
    with Stack.load(path, threads=1) as stack:
        answer = stack.ask(QUESTION)
    assert [t.name for t in answer.stages] == list(STAGES)
    assert all(t.completion_tokens >= 1 for t in answer.stages)


def _events(recipe: Path, out: Path, **kw: bool) -> dict[str, BuildEvent]:
    seen: list[BuildEvent] = []
    build(recipe, out, progress=seen.append, threads=1, **kw)
    starts = [e for e in seen if e.status == "start"]
    finished = {e.output: e for e in seen if e.status != "start"}
    assert {e.output for e in starts} <= {n for n, e in finished.items() if e.status == "done"}
    return finished


def _status(events: dict[str, BuildEvent]) -> dict[str, str]:
    return {name: e.status for name, e in events.items()}


def _scale_adapter(folder: Path, factor: float) -> None:
    from safetensors.numpy import load_file, save_file

    path = folder / "adapter_model.safetensors"
    tensors = load_file(path)
    save_file({k: v * factor if "lora_B" in k else v for k, v in tensors.items()}, path)


@pytest.mark.parametrize("mode", ["adapters", "merged"])
def test_rebuild_redoes_only_what_changed(mode: str, recipe_dir: Path, tmp_path: Path) -> None:
    # The stack is built into the recipe's own folder, as models/word-problems/ is.
    root = tmp_path / "wp"
    shutil.copytree(recipe_dir, root)
    recipe = write_recipe(root, "base", mode=mode)
    user_files = {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}
    first = _events(recipe, root)
    assert set(_status(first).values()) == {"done"}
    assert all(e.detail.startswith("PASS") for n, e in first.items() if n != "stack.toml")
    assert {p: p.stat().st_mtime_ns for p in user_files} == user_files  # not touched
    changed = "compute.lora.gguf" if mode == "adapters" else "compute.q8_0.gguf"
    outputs = {n: (root / n).stat().st_mtime_ns for n in first}

    assert set(_status(_events(recipe, root)).values()) == {"skipped"}
    # touched but unchanged inputs are hashed again and still match
    os.utime(root / "adapters" / "compute" / "adapter_model.safetensors")
    assert set(_status(_events(recipe, root)).values()) == {"skipped"}
    assert {n: (root / n).stat().st_mtime_ns for n in first} == outputs

    pins = {s.name: (s.sha256, s.lora_sha256) for s in load_manifest(root).stages}
    _scale_adapter(root / "adapters" / "compute", 1.5)
    third = _events(recipe, root)
    redone = {n for n, s in _status(third).items() if s == "done"}
    assert redone == {changed, "stack.toml"}
    new_pins = {s.name: (s.sha256, s.lora_sha256) for s in load_manifest(root).stages}
    assert new_pins["extract"] == pins["extract"] and new_pins["answer"] == pins["answer"]
    assert new_pins["compute"] != pins["compute"]

    # a prompt change rewrites only stack.toml
    recipe.write_text(recipe.read_text().replace("Result:", "Value:"), encoding="utf-8")
    assert {n for n, s in _status(_events(recipe, root)).items() if s == "done"} == {"stack.toml"}
    assert "Value:" in load_manifest(root).stage("answer").prompt

    # a stage dropped from the recipe: its file (made by the build) goes, user files stay
    text = recipe.read_text()
    recipe.write_text(text[: text.rindex("[[stages]]")], encoding="utf-8")
    _events(recipe, root)
    assert [s.name for s in load_manifest(root).stages] == ["extract", "compute"]
    gone = "answer.lora.gguf" if mode == "adapters" else "answer.q8_0.gguf"
    assert not (root / gone).exists()
    assert all(p.exists() for p in user_files if p != recipe)


def test_build_cli_prints_files_and_respects_force(
    recipe_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "wp"
    shutil.copytree(recipe_dir, root)
    recipe = write_recipe(root, "base", mode="adapters")
    out = tmp_path / "stack"
    out.mkdir()
    (out / "stack.toml").write_text("# mine\n")
    code, stdout, err = run(["build", str(recipe), "-o", str(out)], capsys)
    assert code == 1 and err.count("\n") == 1
    assert "stack.toml exists" in err and "--force" in err
    assert (out / "stack.toml").read_text() == "# mine\n"
    assert {p.name for p in out.iterdir()} == {"stack.toml"}  # refused before any work

    code, stdout, err = run(
        ["build", str(recipe), "-o", str(out), "--force", "--threads", "1"], capsys
    )
    assert code == 0 and err == ""  # no progress lines: stderr is not a terminal
    lines = stdout.splitlines()
    assert lines[-1] == str(out / "stack.toml")
    assert [line.split("\t")[:2] for line in lines[:-1]] == [
        ["base.q8_0.gguf", "made"],
        *[[f"{s}.lora.gguf", "made"] for s in STAGES],
        ["stack.toml", "made"],
    ]
    # another recipe does not take over the folder
    other = write_recipe(root, "base", mode="merged", name="other.toml")
    code, stdout, err = run(["build", str(other), "-o", str(out)], capsys)
    assert code == 1 and "built from another recipe" in err and "recipe.toml" in err
    # a hand-edited stack.toml is not silently replaced
    (out / "stack.toml").write_text((out / "stack.toml").read_text() + "# edited\n")
    code, stdout, err = run(["build", str(recipe), "-o", str(out), "--json"], capsys)
    assert code == 1 and "changed since the last build" in err


def _foreign_adapter(out_dir: Path, arch: str) -> Path:
    """A real PEFT adapter trained for another base: GPT-NeoX of another width, or Llama."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, GPTNeoXConfig, LlamaConfig

    torch.manual_seed(0)
    if arch == "gptneox-32":
        cfg = GPTNeoXConfig(
            vocab_size=256,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=64,
        )
        config = lora_config()
    else:
        cfg = LlamaConfig(
            vocab_size=256,
            hidden_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            intermediate_size=128,
        )
        config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
    model = get_peft_model(AutoModelForCausalLM.from_config(cfg), config)
    model.save_pretrained(out_dir)
    return out_dir


def _recipe_with(root: Path, recipe_dir: Path, extract_adapter: Path | None = None) -> Path:
    (root / "adapters").mkdir(parents=True)
    os.symlink(recipe_dir / "base", root / "base")
    for stage in STAGES:
        source = (
            extract_adapter
            if stage == "extract" and extract_adapter
            else recipe_dir / "adapters" / stage
        )
        os.symlink(source, root / "adapters" / stage)
    return write_recipe(root, "base", mode="merged")


@pytest.mark.parametrize("arch", ["gptneox-32", "llama"])
def test_adapter_for_another_base_fails_before_writing(
    arch: str, recipe_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    foreign = _foreign_adapter(tmp_path / "foreign", arch)
    recipe = _recipe_with(tmp_path / "r", recipe_dir, foreign)
    out = tmp_path / "out"
    code, stdout, err = run(["build", str(recipe), "-o", str(out)], capsys)
    assert code == 1 and stdout == "" and err.count("\n") == 1
    assert err.startswith("edgestack: error: ")
    assert f"{recipe}: stage 'extract', key 'adapter'" in err
    assert ("does not fit" in err) if arch == "gptneox-32" else ("does not have" in err)
    assert not out.exists()


@pytest.mark.parametrize(
    ("edit", "fragments"),
    [
        (
            lambda t: t.replace('base = "base"', 'base = "missing"'),
            ("key 'base'", "does not exist"),
        ),
        (lambda t: t.replace('base = "base"', 'base = "someone/missing-model"'), ("key 'base'",)),
        (lambda t: "colour = 'red'\n" + t, ("key 'colour'", "unknown key")),
        (lambda t: t.replace("max_tokens = 8", "max_tokens = -1"), ("key 'max_tokens'",)),
    ],
    ids=["missing-base", "uncached-hub-base", "unknown-key", "bad-value"],
)
def test_bad_recipes_fail_before_writing(
    edit: Callable[[str], str],
    fragments: tuple[str, ...],
    recipe_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    recipe = _recipe_with(tmp_path / "r", recipe_dir)
    recipe.write_text(edit(recipe.read_text()), encoding="utf-8")
    out = tmp_path / "out"
    code, stdout, err = run(["build", str(recipe), "-o", str(out)], capsys)
    assert code == 1 and stdout == "" and err.count("\n") == 1
    assert str(recipe) in err
    for fragment in fragments:
        assert fragment in err
    assert not out.exists()


def _cache_repo(cache: Path, repo_id: str, folder: Path) -> None:
    """Store ``folder`` in a Hugging Face cache as huggingface_hub does (blobs + snapshot links)."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    commit = "0" * 40
    snapshot = repo / "snapshots" / commit
    (repo / "blobs").mkdir(parents=True)
    snapshot.mkdir(parents=True)
    for path in folder.iterdir():
        data = path.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        (snapshot / path.name).symlink_to(os.path.relpath(blob, snapshot))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)


def test_hub_ids_resolve_from_the_cache_offline(
    recipe_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import huggingface_hub.constants as constants

    cache = tmp_path / "hf" / "hub"
    _cache_repo(cache, "tiny/base", recipe_dir / "base")
    _cache_repo(cache, "tiny/extract-lora", recipe_dir / "adapters" / "extract")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(
        'mode = "adapters"\nquantization = "f16"\n[[stages]]\nname = "extract"\n'
        'base = "tiny/base"\nadapter = "tiny/extract-lora@main"\n'
        'prompt = "Question: {question}\\nExpression:"\nmax_tokens = 4\n',
        encoding="utf-8",
    )
    out = tmp_path / "out"
    events = _events(recipe, out)
    assert _status(events) == {
        "base.f16.gguf": "done",  # named after the repository, not the snapshot's commit
        "extract.lora.gguf": "done",
        "stack.toml": "done",
    }
    assert set(_status(_events(recipe, out)).values()) == {"skipped"}
    with Stack.load(out, threads=1) as stack:
        assert stack.ask(QUESTION).stages[0].name == "extract"
