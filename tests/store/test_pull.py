"""`edgestack pull` and the store's index: a Hub of our own on a loopback port, a cache each
test fills itself; nothing is downloaded from anywhere else.

The stacks here hold small stand-in files (the store checks names, pins and sizes; loading the
files is the engine's business, tested with a real stack in test_store_cli.py).
"""

from __future__ import annotations

import hashlib
import json
import re
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edge_stack.errors import (
    ChecksumMismatch,
    EdgeStackError,
    HubError,
    ManifestError,
    ModelFileNotFound,
    StoreError,
)
from edge_stack.store import list_stacks, pull_stack, remove_stack, resolve_stack
from edge_stack.util._paths import entry_path

from hub_builders import FakeHub, HubEnv, add_to_cache, commit_of, point_hub_at, serve_hub

BASE = b"GGUF stand-in base model " * 100
EXTRACT = b"GGUF stand-in adapter one " * 10
ANSWER = b"GGUF stand-in adapter two " * 10


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def manifest(*, pin: bool = True, base: str = "base.gguf", base_data: bytes = BASE) -> bytes:
    pins = pin and f'sha256 = "{sha(base_data)}"\n'
    text = f"""
name = "tiny-pulled"
version = 1
[defaults]
model = "{base}"
{pins or ""}n_ctx = 64
[[stages]]
name = "extract"
lora = "extract.lora.gguf"
{f'lora_sha256 = "{sha(EXTRACT)}"' if pin else ""}
prompt = "Q: {{question}}\\nE:"
[[stages]]
name = "answer"
lora = "adapters/answer.lora.gguf"
{f'lora_sha256 = "{sha(ANSWER)}"' if pin else ""}
prompt = "Q: {{question}}\\nE: {{extract}}\\nA:"
"""
    return text.encode()


def stack_files(**kwargs: Any) -> dict[str, bytes]:
    return {
        "stack.toml": manifest(**kwargs),
        "base.gguf": BASE,
        "extract.lora.gguf": EXTRACT,
        "adapters/answer.lora.gguf": ANSWER,
        "eval.jsonl": b'{"question": "What is 2 plus 3?", "answer": 5}\n',
        "unrelated-big-file.bin": b"never downloaded" * 1000,
    }


@pytest.fixture(autouse=True)
def _loopback_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail any connection attempt that would leave this machine."""
    real_connect = socket.socket.connect

    def connect(self: socket.socket, address: Any) -> Any:
        host = address[0] if isinstance(address, tuple) else str(address)
        assert host in {"127.0.0.1", "::1", "localhost"} or self.family == socket.AF_UNIX, address
        return real_connect(self, address)

    monkeypatch.setattr(socket.socket, "connect", connect)


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[tuple[FakeHub, HubEnv]]:
    with serve_hub(FakeHub()) as server:
        yield server, point_hub_at(monkeypatch, tmp_path, server.endpoint)


def test_pull_fetches_exactly_the_named_files_and_registers_the_stack(
    hub: tuple[FakeHub, HubEnv],
) -> None:
    server, env = hub
    commit = server.add("owner/tiny", stack_files())
    lines: list[str] = []
    result = pull_stack("owner/tiny", report=lines.append)
    assert result.name == "owner/tiny" and result.commit == commit
    sent = server.sent_files("owner/tiny")
    assert sorted(sent) == sorted(
        ["stack.toml", "base.gguf", "extract.lora.gguf", "adapters/answer.lora.gguf", "eval.jsonl"]
    )
    assert result.manifest.parent == env.cache / "models--owner--tiny" / "snapshots" / commit
    assert resolve_stack("owner/tiny", "--stack") == result.manifest
    # progress: one line per file, with its size and whether its pin held
    assert any("base.gguf" in line and "2.50 kB" in line and "sha256 ok" in line for line in lines)
    (row,) = [r for r in list_stacks() if r.name == "owner/tiny"]
    assert row.source == f"owner/tiny@{commit[:12]}" and row.stages == 2 and row.problem is None
    assert (
        row.size_bytes
        == result.size_bytes
        == sum(len(v) for k, v in stack_files().items() if k != "unrelated-big-file.bin")
    )
    entry = json.loads(entry_path("owner/tiny").read_text())
    assert entry["commit"] == commit and entry["repo"] == "owner/tiny"


def test_pull_a_revision_is_its_own_name(hub: tuple[FakeHub, HubEnv]) -> None:
    server, _ = hub
    server.add("owner/tiny", stack_files())
    v1 = server.add("owner/tiny", stack_files(), revision="v1")
    result = pull_stack("owner/tiny@v1")
    assert result.name == "owner/tiny@v1" and result.commit == v1
    assert [r.name for r in list_stacks() if "/" in r.name] == ["owner/tiny@v1"]
    with pytest.raises(ModelFileNotFound, match="edgestack pull owner/tiny"):
        resolve_stack("owner/tiny", "--stack")


def test_hub_files_of_other_repositories_are_fetched_and_pinned(
    hub: tuple[FakeHub, HubEnv],
) -> None:
    server, env = hub
    base_commit = server.add("org/shared-base", {"base.q8_0.gguf": BASE, "other.gguf": b"no"})
    ref = f"hf://org/shared-base/base.q8_0.gguf@{base_commit}"
    files = stack_files(base=ref)
    del files["base.gguf"]
    server.add("owner/tiny", files)
    result = pull_stack("owner/tiny")
    assert server.sent_files("org/shared-base") == ["base.q8_0.gguf"]
    assert any(f.name == ref and f.sha256 == sha(BASE) for f in result.files)
    from edge_stack.manifest import load_manifest

    spec = load_manifest(result.manifest)
    assert spec.stages[0].model is not None and spec.stages[0].model.read_bytes() == BASE
    assert spec.stages[0].model.is_relative_to(env.cache / "models--org--shared-base")


@pytest.mark.parametrize(
    ("given", "error", "match"),
    [
        ("nobody/nothing", HubError, "does not exist or is private"),
        ("owner/tiny@nosuchbranch", HubError, "has no revision 'nosuchbranch'"),
        ("owner/not-a-stack", StoreError, "has no stack.toml, so it is not an edgestack stack"),
        ("owner/unpinned", StoreError, "has no sha256 pin and 2 more"),
        ("owner/bad-pin", ChecksumMismatch, "has sha256 "),
        ("owner/missing-file", HubError, "has no file adapters/answer.lora.gguf"),
        ("owner/outside", ManifestError, "outside the stack's repository"),
        ("not a repo id", HubError, "does not name a Hub repository"),
        ("owner/name@", HubError, "malformed revision"),
    ],
)
def test_bad_pulls_are_one_line_and_register_nothing(
    hub: tuple[FakeHub, HubEnv], given: str, error: type[Exception], match: str
) -> None:
    server, _ = hub
    server.add("owner/tiny", stack_files())
    server.add("owner/not-a-stack", {"config.json": b"{}", "model.safetensors": b"x"})
    server.add("owner/unpinned", stack_files(pin=False))
    bad = stack_files()
    bad["base.gguf"] = BASE + b"tampered"
    server.add("owner/bad-pin", bad)
    missing = stack_files()
    del missing["adapters/answer.lora.gguf"]
    server.add("owner/missing-file", missing)
    server.add("owner/outside", stack_files(base="../elsewhere/base.gguf"))
    with pytest.raises(error, match=match) as info:
        pull_stack(given)
    assert isinstance(info.value, EdgeStackError) and "\n" not in str(info.value)
    assert [r.name for r in list_stacks() if "/" in r.name] == []


def test_a_file_failing_its_pin_is_not_left_in_the_cache(hub: tuple[FakeHub, HubEnv]) -> None:
    server, env = hub
    bad = stack_files()
    bad["base.gguf"] = BASE + b"tampered"
    server.add("owner/bad-pin", bad)
    with pytest.raises(ChecksumMismatch):
        pull_stack("owner/bad-pin")
    assert not list(env.cache.rglob("base.gguf"))
    assert not (env.cache / "models--owner--bad-pin" / "blobs" / sha(BASE + b"tampered")).exists()


def test_trust_unpinned_pulls_and_says_what_was_not_verified(hub: tuple[FakeHub, HubEnv]) -> None:
    server, _ = hub
    server.add("owner/unpinned", stack_files(pin=False))
    lines: list[str] = []
    result = pull_stack("owner/unpinned", trust_unpinned=True, report=lines.append)
    assert sorted(result.unpinned) == sorted(
        ["base.gguf", "extract.lora.gguf", "adapters/answer.lora.gguf"]
    )
    assert sum("not pinned" in line for line in lines) == 3


def test_offline_pull_uses_the_cache_and_fails_clearly_without_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    env = point_hub_at(monkeypatch, tmp_path, "http://127.0.0.1:9", offline=True)
    with pytest.raises(
        HubError, match="neither in the store nor in the Hugging Face cache"
    ) as info:
        pull_stack("owner/tiny")
    assert "HF_HUB_OFFLINE=1 is set" in str(info.value)
    commit = commit_of("cached")
    files = stack_files()
    del files["unrelated-big-file.bin"]
    add_to_cache(env.cache, "owner/tiny", files, commit=commit)
    result = pull_stack("owner/tiny")
    assert result.commit == commit and resolve_stack("owner/tiny", "--stack") == result.manifest
    # No network at all (not even offline mode): the cache is used too, without waiting.
    env.offline(False)
    assert pull_stack("owner/tiny").commit == commit
    with pytest.raises(HubError, match="and the Hub cannot be reached"):
        pull_stack("owner/other")


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (b"{not json", "is damaged (not JSON"),
        (b"[1, 2]", "is damaged (not a JSON object)"),
        (b'{"format": 1}', "key 'name' is missing or malformed"),
        (b"\xff\xfe", "is damaged (not JSON"),
    ],
)
def test_a_damaged_store_entry_is_named_listed_and_removable(
    hub: tuple[FakeHub, HubEnv], content: bytes, match: str
) -> None:
    server, _ = hub
    server.add("owner/tiny", stack_files())
    pull_stack("owner/tiny")
    entry_path("owner/tiny").write_bytes(content)
    with pytest.raises(StoreError, match=re.escape(match)) as info:
        resolve_stack("owner/tiny", "--stack")
    assert "edgestack rm" in str(info.value) and "\n" not in str(info.value)
    (row,) = [r for r in list_stacks() if r.name == "owner/tiny"]
    assert row.problem is not None and match.split("(")[0].strip() in row.problem
    remove_stack("owner/tiny")
    assert not entry_path("owner/tiny").exists()


def test_an_entry_whose_files_are_gone_says_to_pull_again(hub: tuple[FakeHub, HubEnv]) -> None:
    import shutil

    server, env = hub
    server.add("owner/tiny", stack_files())
    pull_stack("owner/tiny")
    shutil.rmtree(env.cache / "models--owner--tiny")
    with pytest.raises(StoreError, match="edgestack pull owner/tiny"):
        resolve_stack("owner/tiny", "--stack")


def test_rm_frees_the_files_but_keeps_what_another_stack_uses(
    hub: tuple[FakeHub, HubEnv],
) -> None:
    server, env = hub
    base_commit = server.add("org/shared-base", {"base.q8_0.gguf": BASE})
    ref = f"hf://org/shared-base/base.q8_0.gguf@{base_commit}"
    for name in ("owner/one", "owner/two"):
        files = stack_files(base=ref)
        del files["base.gguf"]
        server.add(name, files)
        pull_stack(name)
    base_blob = env.cache / "models--org--shared-base" / "blobs" / sha(BASE)
    _, freed = remove_stack("owner/one")
    assert freed == sum(len(v) for v in (manifest(base=ref), EXTRACT, ANSWER)) + len(
        stack_files()["eval.jsonl"]
    )
    assert base_blob.is_file() and not list((env.cache / "models--owner--one").rglob("*.gguf"))
    _, freed = remove_stack("owner/two")
    assert not base_blob.exists() and freed > len(BASE)
    assert [r.name for r in list_stacks() if "/" in r.name] == []


@pytest.mark.parametrize(
    ("name", "error", "match"),
    [
        ("word-problems", StoreError, "is a bundled stack"),
        ("owner/never-pulled", ModelFileNotFound, "no pulled stack named 'owner/never-pulled'"),
    ],
)
def test_rm_refuses_what_it_cannot_remove(name: str, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        remove_stack(name)


def test_rm_never_deletes_outside_the_hugging_face_cache(
    hub: tuple[FakeHub, HubEnv], tmp_path: Path
) -> None:
    server, _ = hub
    server.add("owner/tiny", stack_files())
    pull_stack("owner/tiny")
    precious = tmp_path / "precious.txt"
    precious.write_text("keep me")
    entry = json.loads(entry_path("owner/tiny").read_text())
    entry["files"].append({"name": "x", "path": str(precious), "size": 7, "sha256": None})
    entry_path("owner/tiny").write_text(json.dumps(entry))
    remove_stack("owner/tiny")
    assert precious.read_text() == "keep me"
