"""The small interface the pipeline talks to, so the engine behind it can be swapped.

The real backend (``_engine.Engine``) runs llama.cpp; unit tests drive the pipeline with a fake.
The pipeline owns ordering, rendering, locking, events and stripping; a backend only turns a
rendered prompt into tokens and tokens into generated text.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from ..formats._template import Rendered

if TYPE_CHECKING:
    from ..manifest import StageSpec


@dataclass(frozen=True)
class GenerationParams:
    """Sampling and stopping settings for one stage call (manifest values plus overrides)."""

    max_tokens: int
    temperature: float
    top_k: int
    top_p: float
    min_p: float
    repeat_penalty: float
    seed: int | None
    stop: tuple[str, ...]
    grammar: str | None
    #: most tokens prompt-lookup drafting may check per step (0: off); local engines only
    draft: int = 0


def stage_params(stage: StageSpec) -> GenerationParams:
    """A stage's own sampling, stopping and drafting settings from its manifest (no overrides).

    Every caller that runs a stage starts here (``Stack.ask``, the server's ``STACK/STAGE``
    calls), so they all draft as the stage's ``draft`` key says (always 0 on a remote stage).
    """
    return GenerationParams(
        max_tokens=stage.max_tokens,
        temperature=stage.temperature,
        top_k=stage.top_k,
        top_p=stage.top_p,
        min_p=stage.min_p,
        repeat_penalty=stage.repeat_penalty,
        seed=stage.seed,
        stop=stage.stop,
        grammar=stage.grammar,
        draft=stage.draft,
    )


@dataclass(frozen=True)
class Chunk:
    """Generated text for ``n_tokens`` new tokens (text may be empty while a stop string or a
    UTF-8 character is still incomplete). A stage's raw output is the concatenation of its chunks;
    stop strings and everything after them are never part of it."""

    text: str
    n_tokens: int = 1
    #: batched generation only: seconds this prompt's whole output took (None: not measured)
    seconds: float | None = None


class StageRunner(Protocol):
    """One stage's model and context. Calls are serialized by the pipeline (one lock per stage)."""

    @property
    def n_ctx(self) -> int:
        """The context size: prompt tokens plus max_tokens must fit in it."""
        ...

    def tokenize(self, prompt: Rendered) -> list[int]:
        """Tokens for a rendered prompt (BOS if the model wants one; template specials only)."""
        ...

    def generate(
        self, tokens: Sequence[int], params: GenerationParams, cancel: threading.Event
    ) -> Iterator[Chunk]:
        """Generate until max_tokens, a stop string or end-of-generation; stop early (just
        return) once ``cancel`` is set, checking it between tokens."""
        ...


class Backend(Protocol):
    """Everything loaded for one stack."""

    def runner(self, stage: str) -> StageRunner:
        """The runner for stage ``stage``."""
        ...

    def close(self) -> None:
        """Free every native object; idempotent."""
        ...


class StopScanner:
    """Finds stop strings in streamed text, holding back only what could still start one.

    ``feed`` returns the text that is safe to emit; after a stop string is seen, ``stopped`` is
    True and nothing from the stop string on is ever emitted. ``flush`` returns the held-back
    tail when generation ends without a stop.
    """

    def __init__(self, stop: Sequence[str]) -> None:
        self.stop = tuple(s for s in stop if s)
        self.held = ""
        self.stopped = False

    def feed(self, text: str) -> str:
        if self.stopped:
            return ""
        if not self.stop:
            return text
        buf = self.held + text
        cut = min((i for i in (buf.find(s) for s in self.stop) if i != -1), default=-1)
        if cut != -1:
            self.stopped = True
            self.held = ""
            return buf[:cut]
        # Keep the longest tail that is a proper prefix of some stop string.
        keep = 0
        for s in self.stop:
            for n in range(min(len(s) - 1, len(buf)), keep, -1):
                if s.startswith(buf[-n:]):
                    keep = n
                    break
        self.held = buf[len(buf) - keep :] if keep else ""
        return buf[: len(buf) - keep]

    def flush(self) -> str:
        out, self.held = ("" if self.stopped else self.held), ""
        return out
