"""The Hub download path for real: huggingface_hub (through HF_ENDPOINT) against a local loopback
server that answers the endpoints it uses (repository info, file tree, file HEAD and GET with
ranges), including a connection that breaks in the middle of a file.

Each resolution runs in a fresh interpreter, so huggingface_hub reads HF_ENDPOINT and
HF_HUB_CACHE from its environment as it does for a user. Nothing leaves 127.0.0.1.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse

import numpy as np
import pytest
from safetensors.numpy import save_file

REPO = "owner/tiny-model"
COMMIT = "3" * 40

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


def _files(tmp: Path) -> dict[str, bytes]:
    weights = tmp / "w.safetensors"
    rng = np.random.default_rng(0)
    save_file({"embed.weight": rng.normal(size=(64, 256)).astype(np.float32)}, str(weights))
    return {
        "config.json": json.dumps({"architectures": ["GPTNeoXForCausalLM"]}).encode(),
        "model.safetensors": weights.read_bytes(),  # 64 KiB: large enough to break in the middle
        "tokenizer.json": b'{"model": {"type": "BPE"}}',
        "README.md": b"not requested by edgestack",
    }


class FakeHub:
    """What huggingface_hub asks of the Hub, for one repository, served from memory."""

    def __init__(self, files: dict[str, bytes]) -> None:
        self.files = files
        self.requests: list[str] = []
        #: GET requests of this file are cut after half of it, this many times
        self.break_file: str | None = None
        self.breaks_left = 0
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_HEAD(self) -> None:
                hub.handle(self, head=True)

            def do_GET(self) -> None:
                hub.handle(self, head=False)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _json(self, req: BaseHTTPRequestHandler, body: object, head: bool) -> None:
        data = json.dumps(body).encode()
        req.send_response(200)
        req.send_header("Content-Type", "application/json")
        req.send_header("Content-Length", str(len(data)))
        req.end_headers()
        if not head:
            req.wfile.write(data)

    def handle(self, req: BaseHTTPRequestHandler, *, head: bool) -> None:
        path = unquote(urlparse(req.path).path)
        self.requests.append(f"{'HEAD' if head else 'GET'} {path}")
        api = f"/api/models/{REPO}"
        if path.startswith(f"{api}/revision/"):
            siblings = [{"rfilename": name} for name in self.files]
            return self._json(req, {"id": REPO, "sha": COMMIT, "siblings": siblings}, head)
        if path.startswith(f"{api}/tree/"):
            tree = []
            for name, data in self.files.items():
                entry = {
                    "type": "file",
                    "path": name,
                    "size": len(data),
                    "oid": hashlib.sha1(data).hexdigest(),
                }
                tree.append(entry)
            return self._json(req, tree, head)
        prefix = f"/{REPO}/resolve/"
        if path.startswith(prefix):
            _, _, name = path[len(prefix) :].partition("/")
            if name in self.files:
                return self._file(req, name, head)
        req.send_response(404)
        req.send_header("Content-Length", "0")
        req.send_header("X-Error-Code", "EntryNotFound")
        req.end_headers()

    def _file(self, req: BaseHTTPRequestHandler, name: str, head: bool) -> None:
        data = self.files[name]
        start = 0
        rng = req.headers.get("Range")
        if rng and rng.startswith("bytes="):
            start = int(rng[6:].split("-")[0] or 0)
        body = data[start:]
        req.send_response(206 if start else 200)
        req.send_header("Content-Length", str(len(body)))
        req.send_header("ETag", f'"{hashlib.sha1(data).hexdigest()}"')
        req.send_header("X-Repo-Commit", COMMIT)
        req.send_header("Accept-Ranges", "bytes")
        if start:
            req.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        req.end_headers()
        if head:
            return
        if name == self.break_file and self.breaks_left > 0:
            self.breaks_left -= 1
            req.wfile.write(body[: len(body) // 2])
            req.wfile.flush()
            req.close_connection = True
            req.connection.shutdown(2)
            return
        req.wfile.write(body)


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[FakeHub]:
    server = FakeHub(_files(tmp_path))
    try:
        yield server
    finally:
        server.close()


def _resolve(tmp_path: Path, endpoint: str, **extra: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING"))}
    env.update(
        HF_HOME=str(tmp_path / "hf-home"),
        HF_HUB_CACHE=str(tmp_path / "hf-home" / "hub"),
        HF_ENDPOINT=endpoint,
        HF_HUB_DISABLE_TELEMETRY="1",
        HF_HUB_DISABLE_XET="1",
        HF_HUB_ETAG_TIMEOUT="5",
        HF_HUB_DOWNLOAD_TIMEOUT="5",
        NO_PROXY="127.0.0.1,localhost",
    )
    env.update(extra)
    return subprocess.run(
        [sys.executable, "-c", _RESOLVE, REPO, "model"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_download_fetches_only_what_the_converter_reads(hub: FakeHub, tmp_path: Path) -> None:
    proc = _resolve(tmp_path, hub.url)
    assert proc.returncode == 0, proc.stderr[-3000:]
    folder = Path(proc.stdout.strip())
    assert folder.name == COMMIT and folder.is_dir()
    got = {p.name: p.read_bytes() for p in folder.iterdir()}
    want = {k: v for k, v in hub.files.items() if k != "README.md"}
    assert got == want  # byte for byte, and README.md was never requested
    assert not any("README.md" in r for r in hub.requests)
    # Offline afterwards, the same snapshot comes from the cache.
    again = _resolve(tmp_path, "http://127.0.0.1:9", HF_HUB_OFFLINE="1")
    assert again.returncode == 0 and again.stdout == proc.stdout


def test_connection_broken_mid_download(hub: FakeHub, tmp_path: Path) -> None:
    hub.break_file, hub.breaks_left = "model.safetensors", 1000
    proc = _resolve(tmp_path, hub.url)
    assert proc.returncode == 3, proc.stdout + proc.stderr[-3000:]
    # huggingface_hub logs each retry itself; edgestack's own error is one line, no traceback.
    last = proc.stderr.strip().splitlines()[-1]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert last.startswith(f"HubError: the download of '{REPO}' (revision main) into ")
    assert "broke off" in last and "run again to resume it" in last
    # No complete-looking snapshot is left: offline, the cache says it is incomplete or absent.
    offline = _resolve(tmp_path, "http://127.0.0.1:9", HF_HUB_OFFLINE="1")
    assert offline.returncode == 3 and offline.stderr.startswith("HubError: ")
    # The server recovers: the next run finishes the download, the same bytes as served.
    hub.breaks_left = 0
    proc = _resolve(tmp_path, hub.url)
    assert proc.returncode == 0, proc.stderr[-3000:]
    folder = Path(proc.stdout.strip())
    assert (folder / "model.safetensors").read_bytes() == hub.files["model.safetensors"]


def test_one_broken_connection_is_resumed(hub: FakeHub, tmp_path: Path) -> None:
    hub.break_file, hub.breaks_left = "model.safetensors", 1
    proc = _resolve(tmp_path, hub.url)
    if proc.returncode != 0:
        # huggingface_hub gave up on the first break; then the second run must finish it.
        assert "Traceback" not in proc.stderr and "HubError: " in proc.stderr
        proc = _resolve(tmp_path, hub.url)
    assert proc.returncode == 0, proc.stderr[-3000:]
    folder = Path(proc.stdout.strip())
    assert (folder / "model.safetensors").read_bytes() == hub.files["model.safetensors"]
