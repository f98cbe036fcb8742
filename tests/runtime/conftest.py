"""Fixtures for runtime tests: stack folders written in tmp dirs, and a real tiny stack."""

from __future__ import annotations

import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from edge_stack import Stack

MakeStack = Callable[..., Path]


@pytest.fixture
def make_stack(tmp_path: Path) -> MakeStack:
    """Write ``stack.toml`` (dedented) into a fresh folder, plus empty placeholder files."""
    counter = iter(range(1000))

    def make(toml: str, files: tuple[str, ...] = ("base.gguf",)) -> Path:
        root = tmp_path / f"stack{next(counter)}"
        root.mkdir()
        for name in files:
            (root / name).write_bytes(b"")
        path = root / "stack.toml"
        path.write_text(textwrap.dedent(toml), encoding="utf-8")
        return path

    return make


# A real three-stage stack (two LoRA stages and a plain one over one tiny Q8_0 base), once per
# test module that asks for it.
@pytest.fixture(scope="module")
def base_gguf(tiny_gguf: Callable[..., Path]) -> Path:
    return tiny_gguf("gptneox", "q8_0")


@pytest.fixture(scope="module")
def stack_path(
    tmp_path_factory: pytest.TempPathFactory, tiny_model: Callable[[str], Path], base_gguf: Path
) -> Path:
    from stack_builders import three_stage_stack

    return three_stage_stack(tmp_path_factory, tiny_model("gptneox"), base_gguf)


@pytest.fixture(scope="module")
def stack(stack_path: Path) -> Iterator[Stack]:
    from edge_stack import Stack

    with Stack.load(stack_path, threads=1) as loaded:
        yield loaded
