"""Writing outputs so that nothing is ever half-written or overwritten by surprise."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from .errors import ModelFileNotFound, OutputExistsError


def check_output(path: Path, *, force: bool) -> None:
    """Refuse early (before any work) when ``path`` exists and ``force`` is off."""
    if path.is_dir():
        raise OutputExistsError(
            f"output {path} is a folder; give a file path such as {path / 'model.gguf'}"
        )
    if path.exists() and not force:
        raise OutputExistsError(f"output {path} already exists; pass --force to replace it")
    if not path.parent.is_dir():
        raise ModelFileNotFound(
            f"output folder {path.parent} does not exist; create it first (mkdir -p {path.parent})"
        )


def _umask() -> int:
    # /proc tells without changing it; os.umask() must set it to read it (racy with threads).
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike[str], *, force: bool) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it to ``path`` only if the block succeeds.

    An exception (or Ctrl-C) inside the block removes the temporary file, so the output path
    either holds a complete file or is left as it was.
    """
    target = Path(path)
    check_output(target, force=force)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        # Checked again: something may have appeared at the target while we worked.
        if target.exists() and not force:
            raise OutputExistsError(
                f"output {target} appeared while writing; pass --force to replace it"
            )
        # mkstemp creates 0600 files; give the output the mode any new file would have.
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
