"""Prompt-lookup drafting: guess the next tokens from where the recent ones occurred before.

Stages in a stack copy a lot: names and numbers from the question, whole phrases from an
earlier stage's output. When the last few generated tokens also occur earlier in the prompt
(or in the text generated so far), the tokens that followed them there are a good guess for
what comes next. The guess costs no model: :class:`Drafter` proposes them, the context checks
all of them in one llama.cpp batch and keeps the longest prefix that its own sampler agrees
with (see :meth:`edge_stack.engines.llama.LlamaContext.generate`).

The draft length adapts, as in llama.cpp's lookup decoding: it grows while drafts are
accepted whole and shrinks when they are rejected, down to zero, so a stage that copies
nothing pays (almost) nothing; after :data:`COOLDOWN` steps without drafting it tries again.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from ...util._limits import MAX_DRAFT

__all__ = ["DRAFT_MAX", "MAX_DRAFT", "Drafter", "find_draft"]

#: longest and shortest n-gram matched against the history (longest first: more specific)
NGRAM_MAX, NGRAM_MIN = 3, 1
#: most tokens drafted at once by default (a stage's `draft` key sets it, up to MAX_DRAFT)
DRAFT_MAX = 8
#: steps without drafting after the draft length fell to zero, before trying again
COOLDOWN = 16
#: how far back to search (tokens): bounds the cost of a lookup on long prompts
WINDOW = 4096


def find_draft(history: Sequence[int], limit: int) -> list[int]:
    """Up to ``limit`` tokens that followed the most recent earlier occurrence of the history's
    last n-gram (n from :data:`NGRAM_MAX` down to :data:`NGRAM_MIN`); empty if none occurs."""
    if limit <= 0:
        return []
    h = list(history[-WINDOW:])
    size = len(h)
    if size < 2:
        return []
    # Where the last token occurred before (list.index searches in C): an earlier n-gram equal
    # to the tail ends at one of them, and is followed by at least one token.
    last, ends, at = h[-1], [], -1
    try:
        while True:
            at = h.index(last, at + 1, size - 1)
            ends.append(at)
    except ValueError:
        pass
    for n in range(NGRAM_MAX, NGRAM_MIN - 1, -1):
        tail = h[size - n :]
        for end in reversed(ends):  # the most recent first
            if end >= n - 1 and h[end - n + 1 : end + 1] == tail:
                return h[end + 1 : end + 1 + limit]
    return []


@dataclass
class Drafter:
    """Adaptive prompt-lookup drafting for one generation."""

    max_len: int = DRAFT_MAX
    length: int = 2
    cooldown: int = 0
    #: drafted and accepted token counts (for stats and tests)
    drafted: int = 0
    accepted: int = 0
    steps: list[tuple[int, int]] = field(default_factory=list)

    def draft(self, history: Sequence[int], room: int) -> list[int]:
        """Tokens to check after ``history`` now (at most ``room``: what max_tokens leaves)."""
        if self.max_len <= 0:
            return []
        if self.cooldown:
            self.cooldown -= 1
            return []
        limit = min(self.length or 1, self.max_len, room)
        return find_draft(history, limit)

    def record(self, drafted: int, accepted: int) -> None:
        """Adapt the draft length to how much of a draft of ``drafted`` tokens was kept."""
        self.drafted += drafted
        self.accepted += accepted
        self.steps.append((drafted, accepted))
        if drafted == 0:
            return
        if accepted == drafted:
            self.length = min(self.max_len, max(self.length, 1) * 2)
        elif accepted == 0:
            self.length //= 2
            if self.length == 0:
                self.cooldown = COOLDOWN
        else:
            self.length = max(1, accepted + 1)
