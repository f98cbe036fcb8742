"""A Hugging Face Hub of our own, for the store's tests: nothing leaves this machine.

:class:`FakeHub` serves repositories from memory on a loopback port, speaking the part of the
Hub's protocol huggingface_hub's ``hf_hub_download`` uses (``HEAD``/``GET
/{repo}/resolve/{revision}/{file}`` answered with ``X-Repo-Commit``, ``ETag``, ``Content-Length``,
and the Hub's ``X-Error-Code`` for an unknown repository, revision or file). It records every
file it sent, so a test can check that a pull fetched exactly the files it should.
:func:`add_to_cache` writes a repository into a huggingface_hub cache folder the way
huggingface_hub does (blobs, snapshot links, refs), for the offline tests.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote

import pytest


def commit_of(text: str) -> str:
    """A 40-hex commit id made from ``text`` (stable across runs)."""
    return hashlib.sha1(text.encode()).hexdigest()


@dataclass
class Repo:
    """One repository: revision name -> commit, commit -> {path: bytes}."""

    commits: dict[str, dict[str, bytes]] = field(default_factory=dict)
    refs: dict[str, str] = field(default_factory=dict)

    def add(self, files: dict[str, bytes], *, revision: str = "main") -> str:
        commit = commit_of(
            f"{revision}:{sorted((k, hashlib.sha256(v).hexdigest()) for k, v in files.items())}"
        )
        self.commits[commit] = dict(files)
        self.refs[revision] = commit
        return commit


class FakeHub:
    """Repositories served at ``self.endpoint`` (see the module)."""

    def __init__(self) -> None:
        self.repos: dict[str, Repo] = {}
        #: (repo_id, commit, path) of every file body sent (GET), in order
        self.sent: list[tuple[str, str, str]] = []
        self.endpoint = ""

    def add(self, repo_id: str, files: dict[str, bytes], *, revision: str = "main") -> str:
        """Publish ``files`` as ``revision`` of ``repo_id``; returns the commit."""
        return self.repos.setdefault(repo_id, Repo()).add(files, revision=revision)

    def sent_files(self, repo_id: str) -> list[str]:
        return [path for repo, _, path in self.sent if repo == repo_id]

    def _answer(self, handler: BaseHTTPRequestHandler, body: bool) -> None:
        parts = unquote(handler.path.split("?", 1)[0]).lstrip("/").split("/")
        if len(parts) < 5 or parts[2] != "resolve":
            handler.send_response(404)
            handler.send_header("X-Error-Code", "RepoNotFound")
            handler.end_headers()
            return
        repo_id, revision, path = "/".join(parts[:2]), parts[3], "/".join(parts[4:])
        repo = self.repos.get(repo_id)
        if repo is None:
            handler.send_response(401)  # the Hub's answer for a missing (or private) repository
            handler.send_header("X-Error-Code", "RepoNotFound")
            handler.send_header("Content-Length", "0")
            handler.end_headers()
            return
        commit = repo.refs.get(revision, revision)
        if commit not in repo.commits:
            handler.send_response(404)
            handler.send_header("X-Error-Code", "RevisionNotFound")
            handler.send_header("Content-Length", "0")
            handler.end_headers()
            return
        data = repo.commits[commit].get(path)
        if data is None:
            handler.send_response(404)
            handler.send_header("X-Error-Code", "EntryNotFound")
            handler.send_header("X-Repo-Commit", commit)
            handler.send_header("Content-Length", "0")
            handler.end_headers()
            return
        handler.send_response(200)
        handler.send_header("X-Repo-Commit", commit)
        handler.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
        handler.send_header("Content-Length", str(len(data)))
        handler.send_header("Content-Type", "application/octet-stream")
        handler.end_headers()
        if body:
            self.sent.append((repo_id, commit, path))
            handler.wfile.write(data)


@contextmanager
def serve_hub(hub: FakeHub) -> Iterator[FakeHub]:
    """Run ``hub`` on a free loopback port for the block."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_HEAD(self) -> None:
            hub._answer(self, body=False)

        def do_GET(self) -> None:
            hub._answer(self, body=True)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    hub.endpoint = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield hub
    finally:
        server.shutdown()
        server.server_close()


def add_to_cache(
    cache: Path,
    repo_id: str,
    files: dict[str, bytes],
    *,
    commit: str,
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
        (repo / "refs" / ref).write_text(commit)
    return snapshot


@dataclass
class HubEnv:
    """huggingface_hub pointed at an empty cache and at ``endpoint`` (in this process and, via
    :meth:`env`, in child processes)."""

    home: Path
    cache: Path
    endpoint: str
    monkeypatch: pytest.MonkeyPatch

    def offline(self, on: bool = True) -> None:
        import huggingface_hub.constants as constants

        if on:
            self.monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        else:
            self.monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        self.monkeypatch.setattr(constants, "HF_HUB_OFFLINE", on)

    def env(self) -> dict[str, str]:
        """The environment of a child process that sees the same cache, endpoint and data."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING"))}
        env.update(
            HF_HOME=str(self.home),
            HF_HUB_CACHE=str(self.cache),
            HF_ENDPOINT=self.endpoint,
            HF_HUB_DISABLE_TELEMETRY="1",
        )
        if os.environ.get("HF_HUB_OFFLINE"):
            env["HF_HUB_OFFLINE"] = os.environ["HF_HUB_OFFLINE"]
        return env


def point_hub_at(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, endpoint: str, *, offline: bool = False
) -> HubEnv:
    """Point huggingface_hub (already imported, so its constants too) at ``endpoint`` and at a
    new empty cache under ``tmp_path``."""
    import huggingface_hub.constants as constants

    home = tmp_path / "hf-home"
    cache = home / "hub"
    cache.mkdir(parents=True, exist_ok=True)
    for key in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.setattr(constants, "HF_HOME", str(home))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "ENDPOINT", endpoint)
    monkeypatch.setattr(
        constants,
        "HUGGINGFACE_CO_URL_TEMPLATE",
        endpoint + "/{repo_id}/resolve/{revision}/{filename}",
    )
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_TELEMETRY", True)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(home / "token"))
    env = HubEnv(home=home, cache=cache, endpoint=endpoint, monkeypatch=monkeypatch)
    env.offline(offline)
    return env
