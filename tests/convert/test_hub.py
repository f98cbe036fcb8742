"""resolve_model_dir: local folders, and Hub ids through a huggingface_hub cache built here.

Nothing here touches the network: every test points huggingface_hub at a refused loopback port
(HF_ENDPOINT=http://127.0.0.1:9) and at a cache folder the test fills itself, laid out exactly as
huggingface_hub writes it (models--owner--name/{blobs,snapshots/<commit>,refs/<branch>}).
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from safetensors.numpy import save_file

from edge_stack.convert import hub
from edge_stack.convert.hub import ALLOW_PATTERNS, HubSpec, parse_hub_id, resolve_model_dir
from edge_stack.errors import (
    AdapterError,
    CheckpointError,
    EdgeStackError,
    HubError,
    ModelFileNotFound,
)

REFUSED_ENDPOINT = "http://127.0.0.1:9"  # discard port: connections are refused at once
COMMIT_MAIN = "1" * 40
COMMIT_DEV = "2" * 40


# --- a huggingface_hub cache, built by hand -----------------------------------------------------


def _model_files(tmp: Path) -> dict[str, bytes]:
    weights = tmp / "w.safetensors"
    save_file({"embed.weight": np.arange(12, dtype=np.float32).reshape(3, 4)}, str(weights))
    return {
        "config.json": json.dumps({"architectures": ["GPTNeoXForCausalLM"]}).encode(),
        "model.safetensors": weights.read_bytes(),
        "tokenizer.json": b'{"model": {"type": "BPE"}}',
        "README.md": b"not needed by edgestack",
    }


def _adapter_files(tmp: Path) -> dict[str, bytes]:
    weights = tmp / "a.safetensors"
    save_file({"lora_A.weight": np.zeros((2, 4), dtype=np.float32)}, str(weights))
    return {
        "adapter_config.json": json.dumps({"peft_type": "LORA", "r": 2}).encode(),
        "adapter_model.safetensors": weights.read_bytes(),
    }


def add_to_cache(
    cache: Path,
    repo_id: str,
    files: dict[str, bytes],
    *,
    commit: str = COMMIT_MAIN,
    refs: tuple[str, ...] = ("main",),
) -> Path:
    """Store ``files`` as huggingface_hub does: content-addressed blobs, symlinked snapshots."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / commit
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    snapshot.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        link = snapshot / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    for ref in refs:
        (repo / "refs" / ref).parent.mkdir(parents=True, exist_ok=True)
        (repo / "refs" / ref).write_text(commit)  # huggingface_hub writes no newline
    return snapshot


@dataclass
class HubEnv:
    cache: Path
    home: Path
    monkeypatch: pytest.MonkeyPatch

    def offline(self, on: bool = True) -> None:
        import huggingface_hub.constants as constants

        if on:
            self.monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        else:
            self.monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        self.monkeypatch.setattr(constants, "HF_HUB_OFFLINE", on)

    def env(self, **extra: str) -> dict[str, str]:
        """The environment for a subprocess that sees the same cache and no network."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING"))}
        env.update(
            HF_HOME=str(self.home),
            HF_HUB_CACHE=str(self.cache),
            HF_ENDPOINT=REFUSED_ENDPOINT,
            HF_HUB_DISABLE_TELEMETRY="1",
        )
        env.update(extra)
        return env


@pytest.fixture
def hub_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[HubEnv]:
    """huggingface_hub pointed at an empty cache in tmp_path and at a refused endpoint.

    huggingface_hub reads its environment into ``huggingface_hub.constants`` at import, so the
    in-process tests patch those values as well as the environment (for subprocesses).
    """
    import huggingface_hub.constants as constants

    home = tmp_path / "hf-home"
    cache = home / "hub"
    cache.mkdir(parents=True)
    for key in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_ENDPOINT", REFUSED_ENDPOINT)
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.setattr(constants, "HF_HOME", str(home))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "ENDPOINT", REFUSED_ENDPOINT)
    monkeypatch.setattr(
        constants,
        "HUGGINGFACE_CO_URL_TEMPLATE",
        REFUSED_ENDPOINT + "/{repo_id}/resolve/{revision}/{filename}",
    )
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_TELEMETRY", True)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(home / "token"))
    yield HubEnv(cache=cache, home=home, monkeypatch=monkeypatch)


@pytest.fixture(autouse=True)
def _loopback_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail any in-process connection attempt that would leave this machine."""
    real_connect = socket.socket.connect

    def connect(self: socket.socket, address: Any) -> Any:
        host = address[0] if isinstance(address, tuple) else str(address)
        assert host in {"127.0.0.1", "::1", "localhost"} or self.family == socket.AF_UNIX, (
            f"test tried to connect to {address}"
        )
        return real_connect(self, address)

    monkeypatch.setattr(socket.socket, "connect", connect)


def _one_line(exc: BaseException) -> str:
    text = str(exc)
    assert "\n" not in text, text
    return text


# --- Hub ids ------------------------------------------------------------------------------------


@pytest.mark.parametrize("offline", [True, False], ids=["HF_HUB_OFFLINE", "no-network"])
def test_cached_model_resolves_to_snapshot(hub_env: HubEnv, tmp_path: Path, offline: bool) -> None:
    snapshot = add_to_cache(hub_env.cache, "owner/tiny-model", _model_files(tmp_path))
    hub_env.offline(offline)
    folder = resolve_model_dir("owner/tiny-model")
    assert folder == snapshot
    assert folder.name == COMMIT_MAIN
    assert json.loads((folder / "config.json").read_text())["architectures"]


@pytest.mark.parametrize("offline", [True, False], ids=["HF_HUB_OFFLINE", "no-network"])
def test_uncached_model_is_one_clear_line(hub_env: HubEnv, offline: bool) -> None:
    hub_env.offline(offline)
    with pytest.raises(HubError) as info:
        resolve_model_dir("owner/not-cached@dev")
    message = _one_line(info.value)
    assert "'owner/not-cached' (revision dev)" in message
    assert f"not in the Hugging Face cache at {hub_env.cache}" in message
    assert ("HF_HUB_OFFLINE=1" in message) == offline
    assert ("could not be reached" in message) == (not offline)
    assert "hf download owner/not-cached" in message
    assert "local folder" in message


def test_revision_branch_and_commit(hub_env: HubEnv, tmp_path: Path) -> None:
    files = _model_files(tmp_path)
    main = add_to_cache(hub_env.cache, "owner/m", files, commit=COMMIT_MAIN, refs=("main",))
    dev = add_to_cache(hub_env.cache, "owner/m", files, commit=COMMIT_DEV, refs=("dev",))
    hub_env.offline()
    assert resolve_model_dir("owner/m") == main
    assert resolve_model_dir("owner/m@dev") == dev
    assert resolve_model_dir(f"owner/m@{COMMIT_DEV}") == dev
    with pytest.raises(HubError, match=r"revision v9"):
        resolve_model_dir("owner/m@v9")


def test_local_folder_wins_over_hub_id(
    hub_env: HubEnv, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    add_to_cache(hub_env.cache, "owner/name", _model_files(tmp_path))
    hub_env.offline()
    work = tmp_path / "work"
    (work / "owner" / "name").mkdir(parents=True)
    monkeypatch.chdir(work)
    assert resolve_model_dir("owner/name") == (work / "owner" / "name").resolve()
    assert resolve_model_dir(work / "owner" / "name") == (work / "owner" / "name").resolve()


def test_home_relative_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "ckpt").mkdir()
    assert resolve_model_dir("~/ckpt") == (tmp_path / "ckpt").resolve()


@pytest.mark.parametrize(
    "spec",
    [
        "./missing",
        "../missing",
        "/definitely/not/here",
        "~/not-here-either",
        "a/b/c",
        "owner/model.safetensors",
        "config.json",
        "just-a-name",
        Path("owner/name"),
    ],
)
def test_missing_local_path_is_model_file_not_found(hub_env: HubEnv, spec: str | Path) -> None:
    with pytest.raises(ModelFileNotFound) as info:
        resolve_model_dir(spec)
    message = _one_line(info.value)
    assert "does not exist" in message
    assert Path(str(spec)).name in message


@pytest.mark.parametrize(("kind", "error"), [("model", CheckpointError), ("adapter", AdapterError)])
def test_a_file_where_a_folder_is_expected(
    tmp_path: Path, kind: hub.Kind, error: type[EdgeStackError]
) -> None:
    file = tmp_path / "model.safetensors"
    file.write_bytes(b"x")
    with pytest.raises(error, match="is a file"):
        resolve_model_dir(file, kind=kind)


@pytest.mark.parametrize(
    "spec",
    ["owner/na me", "own--er/name", "owner/-name", "owner/name.", "owner/name@", "ow$ner/name"],
)
def test_invalid_hub_id(hub_env: HubEnv, spec: str) -> None:
    with pytest.raises(HubError) as info:
        resolve_model_dir(spec)
    assert spec.split("@")[0] in _one_line(info.value)


def test_parse_hub_id() -> None:
    assert parse_hub_id("EleutherAI/pythia-160m") == HubSpec("EleutherAI/pythia-160m", None)
    assert parse_hub_id("Qwen/Qwen2.5-0.5B@refs/pr/1") == HubSpec("Qwen/Qwen2.5-0.5B", "refs/pr/1")
    assert str(HubSpec("a/b", "dev")) == "a/b@dev"


class _Spy:
    """Calls the real snapshot_download and records its keyword arguments."""

    def __init__(self) -> None:
        import huggingface_hub

        self.real = huggingface_hub.snapshot_download
        self.calls: list[dict[str, Any]] = []

    def __call__(self, **kwargs: Any) -> str:
        self.calls.append(kwargs)
        return str(self.real(**kwargs))


@pytest.mark.parametrize("kind", ["model", "adapter"])
def test_only_the_files_a_kind_needs_are_requested(
    hub_env: HubEnv, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: hub.Kind
) -> None:
    import huggingface_hub

    files = _adapter_files(tmp_path) if kind == "adapter" else _model_files(tmp_path)
    snapshot = add_to_cache(hub_env.cache, "owner/thing", files)
    hub_env.offline()
    spy = _Spy()
    monkeypatch.setattr(huggingface_hub, "snapshot_download", spy)
    assert resolve_model_dir("owner/thing", kind=kind) == snapshot
    (call,) = spy.calls
    assert call["repo_id"] == "owner/thing"
    assert call["revision"] is None
    assert call["allow_patterns"] == list(ALLOW_PATTERNS[kind])
    if kind == "adapter":
        assert set(call["allow_patterns"]) == {"adapter_config.json", "adapter_model.safetensors"}
    else:
        assert "*.safetensors" in call["allow_patterns"]
        assert "tokenizer.json" in call["allow_patterns"]
    # pytest captures stderr, so it is no terminal: huggingface_hub's bar must be switched off
    bar = call["tqdm_class"](total=1)
    assert bar.disable
    bar.close()


def test_cached_snapshot_of_the_wrong_kind(hub_env: HubEnv, tmp_path: Path) -> None:
    add_to_cache(hub_env.cache, "owner/base-model", _model_files(tmp_path))
    hub_env.offline()
    with pytest.raises(HubError, match=r"has no adapter_config\.json.*PEFT"):
        resolve_model_dir("owner/base-model", kind="adapter")


def test_snapshot_without_safetensors(hub_env: HubEnv) -> None:
    add_to_cache(hub_env.cache, "owner/bin-only", {"config.json": b"{}"})
    hub_env.offline()
    with pytest.raises(HubError, match=r"no safetensors weights.*save_pretrained"):
        resolve_model_dir("owner/bin-only")


def test_snapshot_use_is_logged(
    hub_env: HubEnv, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    snapshot = add_to_cache(hub_env.cache, "owner/logged", _model_files(tmp_path))
    hub_env.offline()
    with caplog.at_level("INFO", logger="edge_stack.convert.hub"):
        resolve_model_dir("owner/logged")
    assert str(snapshot) in caplog.text


# --- the real environment path, in a fresh interpreter -------------------------------------------

_RESOLVE = textwrap.dedent(
    """
    import sys
    from edge_stack.convert.hub import resolve_model_dir
    from edge_stack.errors import EdgeStackError
    try:
        print(resolve_model_dir(sys.argv[1], kind=sys.argv[2]))
    except EdgeStackError as exc:
        print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
        sys.exit(3)
    """
)


@pytest.mark.parametrize("offline", ["1", ""], ids=["HF_HUB_OFFLINE", "no-network"])
def test_subprocess_reads_hf_environment(hub_env: HubEnv, tmp_path: Path, offline: str) -> None:
    snapshot = add_to_cache(hub_env.cache, "owner/lora", _adapter_files(tmp_path))
    env = hub_env.env(HF_HUB_OFFLINE=offline)
    run = subprocess.run(
        [sys.executable, "-c", _RESOLVE, "owner/lora", "adapter"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == str(snapshot)

    run = subprocess.run(
        [sys.executable, "-c", _RESOLVE, "owner/absent", "model"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 3
    assert run.stderr.startswith("HubError: ")
    assert len(run.stderr.strip().splitlines()) == 1
    assert str(hub_env.cache) in run.stderr


def test_cli_convert_of_uncached_hub_id_is_one_line(hub_env: HubEnv, tmp_path: Path) -> None:
    out = tmp_path / "out.gguf"
    run = subprocess.run(
        [sys.executable, "-m", "edge_stack", "convert", "owner/absent", "-o", str(out)],
        env=hub_env.env(HF_HUB_OFFLINE="1"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode != 0
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1, run.stderr
    assert "owner/absent" in lines[0]
    assert "not in the Hugging Face cache" in lines[0]
    assert not out.exists()


@pytest.mark.torch
@pytest.mark.llama
def test_cli_converts_a_cached_hub_checkpoint_offline(hub_env: HubEnv, tmp_path: Path) -> None:
    """The whole path: Hub id -> cached snapshot (offline) -> GGUF that passes check_gguf."""
    from edge_stack.formats.gguf._check import check_gguf

    from model_builders import build_model

    ckpt = build_model("gptneox", tmp_path / "ckpt")
    files = {p.name: p.read_bytes() for p in ckpt.iterdir() if p.is_file()}
    snapshot = add_to_cache(
        hub_env.cache, "owner/tiny-neox", files, commit=COMMIT_DEV, refs=("v1",)
    )
    out = tmp_path / "tiny.gguf"
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "edge_stack",
            "convert",
            "owner/tiny-neox@v1",
            "-o",
            str(out),
            "--outtype",
            "f32",
        ],
        env=hub_env.env(HF_HUB_OFFLINE="1"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    summary = check_gguf(out)
    assert summary.arch == "gptneox"
    assert summary.file_type == "F32"
    assert snapshot.is_dir()
