"""A stage's ``draft`` key holds for every way of running it: ``Stack.ask`` and the server's
direct stage calls (``model = "STACK/STAGE"``) hand the engine the same drafting setting."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from edge_stack import Stack
from edge_stack.engines.llama._context import LlamaContext

from stack_builders import write_stack

pytestmark = pytest.mark.llama

DRAFTING = """
name = "drafting"
version = 1
[[stages]]
name = "copy"
model = "base.gguf"
prompt = "Question: {{question}}\\nAnswer:"
max_tokens = 6
n_ctx = 128
draft = {draft}
"""


@pytest.mark.parametrize("way", ["ask", "stage call"])
@pytest.mark.parametrize("draft", [0, 5])
def test_the_engine_drafts_as_the_stage_says(
    tmp_path: Path,
    tiny_gguf: Callable[..., Path],
    monkeypatch: pytest.MonkeyPatch,
    way: str,
    draft: int,
) -> None:
    seen: list[int] = []
    generate = LlamaContext.generate

    def spy(self: LlamaContext, *args: Any, **kwargs: Any) -> Any:
        seen.append(kwargs.get("draft", 0))
        return generate(self, *args, **kwargs)

    monkeypatch.setattr(LlamaContext, "generate", spy)
    toml = write_stack(
        tmp_path, DRAFTING.format(draft=draft), {"base.gguf": tiny_gguf("gptneox", "q8_0")}
    )
    if way == "ask":
        with Stack.load(toml, threads=1) as stack:
            stack.ask("one two one two one")
    else:
        from edge_stack.serve import ServeConfig, Server, resolve_stacks

        config = ServeConfig(stacks=resolve_stacks([str(toml)]), port=0, threads=1)
        with Server(config) as server:
            reply = httpx.post(
                server.url + "/v1/completions",
                json={"model": "drafting/copy", "prompt": "Question: one two one\nAnswer:"},
                timeout=60,
            )
        assert reply.status_code == 200, reply.text
    assert seen == [draft]
