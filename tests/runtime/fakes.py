"""A fake backend for unit tests of the pipeline: characters are tokens, replies are scripted.

Never the only test of a feature: tests/runtime/test_engine_llama.py runs the same paths on
real llama.cpp.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence

from edge_stack.engines._backend import Chunk, GenerationParams, StopScanner
from edge_stack.formats._template import Rendered, tokenize_rendered
from edge_stack.manifest import StackSpec

SPECIAL_BASE = 0x110000  # past every code point, so special ids never collide with characters
SPECIALS = {"<|endoftext|>": SPECIAL_BASE, "<|im_start|>": SPECIAL_BASE + 1}

Reply = Callable[[str, str, GenerationParams], str]


def echo_reply(stage: str, prompt: str, params: GenerationParams) -> str:
    """A default script: ' <stage>(<last line of prompt>) ' plus the rest of a long tail."""
    last = prompt.rsplit("\n", 1)[-1]
    return f" {stage}[{last}]  "


class FakeRunner:
    def __init__(self, backend: FakeBackend, stage: str, n_ctx: int) -> None:
        self.backend = backend
        self.stage = stage
        self._n_ctx = n_ctx
        self.active = 0
        self.max_active = 0
        self.calls: list[tuple[list[int], GenerationParams]] = []
        self._lock = threading.Lock()

    @property
    def n_ctx(self) -> int:
        return self._n_ctx

    def tokenize(self, prompt: Rendered) -> list[int]:
        return tokenize_rendered(
            prompt,
            special_tokens=self.backend.specials,
            tokenize_text=lambda text: [ord(c) for c in text],
            bos=self.backend.bos,
        )

    def detokenize(self, tokens: Sequence[int]) -> str:
        names = {v: k for k, v in self.backend.specials.items()}
        return "".join(names[t] if t >= SPECIAL_BASE else chr(t) for t in tokens)

    def generate(
        self, tokens: Sequence[int], params: GenerationParams, cancel: threading.Event
    ) -> Iterator[Chunk]:
        with self._lock:
            self.active += 1
            self.max_active = max(self.max_active, self.active)
            self.calls.append((list(tokens), params))
        try:
            body = [t for t in tokens if t not in self.backend.bos]
            reply = self.backend.reply(self.stage, self.detokenize(body), params)
            scanner = StopScanner(params.stop)
            for n, ch in enumerate(reply):
                if n >= params.max_tokens or cancel.is_set():
                    return
                if self.backend.delay:
                    time.sleep(self.backend.delay)
                self.backend.generated += 1
                text = scanner.feed(ch)
                yield Chunk(text)
                if scanner.stopped:
                    return
            tail = scanner.flush()
            if tail:
                yield Chunk(tail, 0)
        finally:
            with self._lock:
                self.active -= 1


class FakeBackend:
    """Scripted replies; records calls; ``closed`` after close()."""

    def __init__(
        self,
        spec: StackSpec,
        reply: Reply = echo_reply,
        *,
        n_ctx: int | None = None,
        delay: float = 0.0,
        specials: Mapping[str, int] = SPECIALS,
        bos: tuple[int, ...] = (),
    ) -> None:
        self.reply = reply
        self.delay = delay
        self.specials = dict(specials)
        self.bos = bos
        self.generated = 0
        self.closed = 0
        self.runners = {
            s.name: FakeRunner(self, s.name, n_ctx if n_ctx is not None else s.n_ctx)
            for s in spec.stages
        }

    def runner(self, stage: str) -> FakeRunner:
        return self.runners[stage]

    def close(self) -> None:
        self.closed += 1
