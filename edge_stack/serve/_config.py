"""What a server is started with: a frozen value, checked once before anything binds a port."""

from __future__ import annotations

import ipaddress
import logging
import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import BadArgument, EdgeStackError
from ..manifest import StackSpec, load_manifest

logger = logging.getLogger(__name__)

#: request bodies larger than this are refused with 413 (a question is at most 64 KiB)
MAX_BODY_BYTES = 1 << 20
DEFAULT_PORT = 8000
DEFAULT_KEEP_ALIVE_S = 300.0
DEFAULT_MAX_QUEUE = 64
DEFAULT_PARALLEL = 4


@dataclass(frozen=True)
class ServeConfig:
    """Settings of one server (see ``edgestack serve --help`` for each)."""

    #: model id -> validated manifest; ids are the only names a request can use
    stacks: dict[str, StackSpec]
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    api_key: str | None = None
    #: seconds a stack stays loaded after its last request (inf: forever, 0: unload at once)
    keep_alive: float = DEFAULT_KEEP_ALIVE_S
    max_queue: int = DEFAULT_MAX_QUEUE
    parallel: int = DEFAULT_PARALLEL
    cors_origins: tuple[str, ...] = ()
    max_body_bytes: int = MAX_BODY_BYTES
    threads: int | None = None
    no_log: bool = False
    #: the model used when a request names none (the first stack given)
    default: str | None = field(default=None)

    def __post_init__(self) -> None:
        if not self.stacks:
            raise BadArgument("no stack to serve; pass --stack NAME_OR_PATH")
        if not 0 <= self.port <= 65535:
            raise BadArgument(f"port must be from 0 to 65535, not {self.port}")
        if self.parallel < 1 or self.max_queue < 0:
            raise BadArgument("--parallel must be at least 1 and --max-queue at least 0")
        if self.api_key is not None and (len(self.api_key) < 8 or not self.api_key.isprintable()):
            raise BadArgument("the API key must be at least 8 printable characters")


def is_loopback(host: str) -> bool:
    """True when ``host`` only accepts connections from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_exposure(host: str, api_key: str | None, insecure: bool) -> None:
    """Binding beyond loopback needs an API key, or an explicit statement that none is wanted."""
    if is_loopback(host) or api_key or insecure:
        return
    raise BadArgument(
        f"--host {host} lets other machines call the server; give it an --api-key KEY "
        "(clients send 'Authorization: Bearer KEY'), or pass --insecure-no-api-key to serve "
        "without one"
    )


def resolve_stacks(given: Sequence[str | os.PathLike[str]]) -> dict[str, StackSpec]:
    """Model id -> manifest for each stack given: a name (a bundled stack, or one pulled into
    the store: ``edge_stack.store``) or a stack.toml or its folder, resolved as every command
    resolves ``--stack``.

    With nothing given, every stack this machine has by name (bundled and pulled; a damaged
    store entry is skipped with a warning). A stack given by name is served under that name
    (``word-problems``, ``owner/name``); one given by path under its manifest's ``name``. Two
    stacks with one id are an error (a request could not tell them apart).
    """
    from ..store import resolve_stack
    from ..util._paths import bundled_stacks, stored_names

    named: list[tuple[str | None, str]] = []
    if given:
        named = [(None, os.fspath(item)) for item in given]
    else:
        named = [(name, name) for name in [*bundled_stacks(), *stored_names()]]
    out: dict[str, StackSpec] = {}
    for fixed, text in named:
        try:
            path = resolve_stack(text, "--stack")
            # a bundled stack whose base is not installed (pip://) is skipped, not fatal
            spec = load_manifest(path)
        except EdgeStackError as exc:
            if fixed is None:
                raise
            logger.warning("not serving %s: %s", fixed, exc)
            continue
        model_id = spec.name if Path(text).expanduser().exists() else text
        if model_id in out and out[model_id].path != spec.path:
            raise BadArgument(
                f"two stacks are both named {model_id!r} ({out[model_id].path} and "
                f"{spec.path}); rename one in its stack.toml"
            )
        out[model_id] = spec
    return out


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on right now (tests and ``--port 0``)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])
