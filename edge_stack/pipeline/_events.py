"""What a stack call produces: per-stage traces, the answer, and the events of a stream."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class StageTrace:
    """One stage of one call: the prompt it saw (rendered) and the text it passed on."""

    name: str
    prompt: str
    output: str
    prompt_tokens: int
    completion_tokens: int
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        """The stage object of ``edgestack ask --json``."""
        return {
            "name": self.name,
            "prompt": self.prompt,
            "output": self.output,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "seconds": round(self.seconds, 6),
        }


@dataclass(frozen=True)
class Answer:
    """The result of :meth:`edge_stack.Stack.ask`: the last stage's output and every stage's trace."""

    text: str
    stages: tuple[StageTrace, ...]
    stack: str
    question: str
    seconds: float

    def __str__(self) -> str:
        return self.text

    def to_dict(self) -> dict[str, Any]:
        """The object ``edgestack ask --json`` prints."""
        return {
            "stack": self.stack,
            "question": self.question,
            "answer": self.text,
            "seconds": round(self.seconds, 6),
            "stages": [s.to_dict() for s in self.stages],
        }


@dataclass(frozen=True)
class StageStarted:
    """A stage's prompt is rendered and tokenized; generation starts now."""

    stage: str
    index: int
    prompt: str
    prompt_tokens: int


@dataclass(frozen=True)
class Token:
    """New output text of a stage, as it is generated.

    The texts of a stage's Token events join to exactly its (stripped) output: leading whitespace
    is dropped and trailing whitespace is held back until more text follows it.
    """

    stage: str
    index: int
    text: str


@dataclass(frozen=True)
class StageFinished:
    """A stage is done; its trace holds the output later prompts receive."""

    stage: str
    index: int
    trace: StageTrace


@dataclass(frozen=True)
class Done:
    """The call is complete."""

    answer: Answer


Event = StageStarted | Token | StageFinished | Done
