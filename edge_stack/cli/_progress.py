"""Progress bars for long commands: on a terminal only, fed (done, total) counts."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

ProgressFn = Callable[[int, int], None]


@contextmanager
def progress_bar(
    label: str, *, unit: str = "B", unit_scale: bool = True
) -> Iterator[ProgressFn | None]:
    """Yield an update(done, total) callback drawing a bar on stderr, or None when stderr is not
    a terminal (pipes, CI and log files get no bar at all)."""
    if not sys.stderr.isatty():
        yield None
        return
    from tqdm import tqdm

    bar = tqdm(desc=label, unit=unit, unit_scale=unit_scale, file=sys.stderr, leave=False)

    def update(done: int, total: int) -> None:
        bar.total = total
        bar.n = done
        bar.refresh()

    try:
        yield update
    finally:
        bar.close()
