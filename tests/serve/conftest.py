"""Servers on loopback ports with real stacks: the bundled one and a stack that never stops."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from stack_builders import write_stack

#: a stage that can only ever emit more "a"s: the grammar never reaches an end, so generation
#: runs to max_tokens (thousands of tokens) unless it is cancelled
ENDLESS = """
name = "endless"
version = 1
[[stages]]
name = "forever"
model = "base.gguf"
prompt = "Question: {question}\\nAnswer:"
max_tokens = 3000
n_ctx = 3200
grammar = 'root ::= "a" root'
"""


@pytest.fixture(scope="session")
def endless_stack(tmp_path_factory: pytest.TempPathFactory, tiny_gguf: Callable[..., Path]) -> Path:
    root = tmp_path_factory.mktemp("endless")
    return write_stack(root, ENDLESS, {"base.gguf": tiny_gguf("gptneox", "q8_0")})


@pytest.fixture(scope="session")
def served(endless_stack: Path) -> dict[str, object]:
    from edge_stack.serve import resolve_stacks

    return resolve_stacks(["word-problems", str(endless_stack)])


@pytest.fixture
def start_server(served: dict[str, object]) -> Iterator[Callable[..., object]]:
    """``start_server(**config)``: a started Server on a free port, stopped after the test."""
    from edge_stack.serve import ServeConfig, Server

    started: list[Server] = []

    def start(**overrides: object) -> Server:
        config = ServeConfig(
            stacks=overrides.pop("stacks", served),  # type: ignore[arg-type]
            port=0,
            default="word-problems",
            **overrides,  # type: ignore[arg-type]
        )
        server = Server(config).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture(scope="module")
def module_server(
    tmp_path_factory: pytest.TempPathFactory, endless_stack: Path
) -> Iterator[object]:
    """One server shared by a module's read-only tests (keep-alive forever)."""
    from edge_stack.serve import ServeConfig, Server, resolve_stacks

    config = ServeConfig(
        stacks=resolve_stacks(["word-problems", str(endless_stack)]),
        port=0,
        keep_alive=float("inf"),
        default="word-problems",
    )
    with Server(config) as server:
        yield server
