"""Which stack a command uses: ``--stack``, then EDGESTACK_STACK, then the bundled default."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from ._env import settings
from .errors import ModelFileNotFound

DEFAULT_STACK = "word-problems"


def bundled_stack() -> Path | None:
    """The stack.toml of the default stack shipped inside the package, if it is there."""
    try:
        root = resources.files("edge_stack.models")
    except ModuleNotFoundError:
        return None
    candidate = root / DEFAULT_STACK / "stack.toml"
    # Installed packages are plain folders (setuptools, no zip), so the path is a real file.
    if not candidate.is_file():
        return None
    return Path(str(candidate))


def find_stack(explicit: str | Path | None = None) -> Path:
    """The stack.toml to use (not validated yet).

    A folder means its stack.toml. The bundled default is used only when neither ``--stack``
    nor EDGESTACK_STACK is set.
    """
    for given, source in ((explicit, "--stack"), (settings().stack, "EDGESTACK_STACK")):
        if given is None:
            continue
        path = Path(given).expanduser()
        if path.is_dir():
            path = path / "stack.toml"
        if not path.is_file():
            raise ModelFileNotFound(
                f"stack {path} (from {source}) does not exist; pass a stack.toml or a folder "
                "that holds one"
            )
        return path.resolve()
    bundled = bundled_stack()
    if bundled is None:
        raise ModelFileNotFound(
            f"no stack given and the bundled default stack ({DEFAULT_STACK}) is not installed; "
            "pass --stack PATH/stack.toml or set EDGESTACK_STACK"
        )
    return bundled
