"""find_draft (edge_stack.engines.llama._draft) equals the plain n-gram search it speeds up."""

from __future__ import annotations

import random
from collections.abc import Sequence

import pytest

from edge_stack.engines.llama._draft import NGRAM_MAX, NGRAM_MIN, WINDOW, find_draft


def reference(history: Sequence[int], limit: int) -> list[int]:
    """The definition: for n from NGRAM_MAX down, the tokens after the most recent earlier
    occurrence of the last n tokens (within WINDOW)."""
    if limit <= 0:
        return []
    h = list(history[-WINDOW:])
    size = len(h)
    for n in range(min(NGRAM_MAX, size - 1), NGRAM_MIN - 1, -1):
        tail = h[size - n :]
        for start in range(size - n - 1, -1, -1):
            if h[start : start + n] == tail:
                follow = h[start + n : start + n + limit]
                if follow:
                    return follow
    return []


@pytest.mark.parametrize(
    ("alphabet", "longest", "limits"),
    [
        (2, 12, (1, 3, 8)),  # many repeats: long matches everywhere
        (5, 60, (1, 2, 8, 16)),
        (40, 200, (4, 8)),  # few repeats: mostly 1-gram matches or none
        (3, WINDOW + 50, (8,)),  # past the window
    ],
)
def test_find_draft_equals_the_plain_search(
    alphabet: int, longest: int, limits: tuple[int, ...]
) -> None:
    rng = random.Random(alphabet * 1000 + longest)
    for _ in range(300 if longest < WINDOW else 20):
        history = [rng.randrange(alphabet) for _ in range(rng.randrange(longest + 1))]
        for limit in (0, *limits):
            assert find_draft(history, limit) == reference(history, limit), (history, limit)
