"""What every export writes: an output folder made atomically, the model files it serves, the
client's stack.toml (checked before it is written), the launch script and a README.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import tomllib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from .._version import __version__
from ..errors import BadArgument, ManifestError, OutputExistsError
from ..manifest import StackSpec, StageSpec, parse_manifest
from ..util._atomic import temp_dir, temp_name

#: the generation settings a client stage carries over from the built stage
_CARRIED = (
    "stop",
    "max_tokens",
    "temperature",
    "top_k",
    "top_p",
    "min_p",
    "repeat_penalty",
    "seed",
    "n_ctx",
)


@dataclass
class Bundle:
    """An export being assembled: files to copy, texts to write, the client's stages."""

    spec: StackSpec
    engine: str
    #: path in the output folder -> source file or folder
    copies: dict[str, Path] = field(default_factory=dict)
    #: path in the output folder -> text (scripts are made executable)
    texts: dict[str, str] = field(default_factory=dict)
    client_stages: list[dict[str, Any]] = field(default_factory=list)
    client_defaults: dict[str, Any] = field(default_factory=dict)

    def add_file(self, source: Path, folder: str = "models") -> str:
        """Copy ``source`` into ``folder`` (once); its path in the output folder."""
        for name, known in self.copies.items():
            if known == source:
                return name
        stem, n = source.name, 1
        name = f"{folder}/{stem}"
        while name in self.copies:
            n += 1
            name = f"{folder}/{n}-{stem}"
        self.copies[name] = source
        return name

    def client_stage(self, stage: StageSpec, **remote: Any) -> dict[str, Any]:
        """The client's stage: the built stage's prompt and settings, plus ``remote`` keys."""
        entry: dict[str, Any] = {"name": stage.name, "prompt": stage.prompt}
        for key in _CARRIED:
            value = getattr(stage, key)
            if key == "seed" and value is None:
                continue
            if key == "n_ctx" and stage.n_ctx_auto:
                continue  # the server's context (the export sizes it from stage.n_ctx)
            if key == "stop" and not value:
                continue
            entry[key] = list(value) if isinstance(value, tuple) else value
        if stage.grammar is not None:
            entry["grammar"] = stage.grammar
        entry.update({k: v for k, v in remote.items() if v is not None})
        self.client_stages.append(entry)
        return entry


def local_stages(spec: StackSpec) -> list[StageSpec]:
    """Every stage, all of them local (a stage already on a server cannot be exported)."""
    for stage in spec.stages:
        if stage.remote is not None or stage.model is None:
            where = stage.remote.engine if stage.remote else "a server"
            raise BadArgument(
                f"{spec.path}: stage {stage.name} already runs on {where}; export a stack "
                "built with `edgestack build` (every stage local)"
            )
    return list(spec.stages)


def with_port(url: str, offset: int) -> str:
    """``url`` with its port raised by ``offset`` (one server per base model)."""
    if offset == 0:
        return url
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    host = parts.hostname or "127.0.0.1"
    shown = f"[{host}]" if ":" in host else host
    return urlunsplit((parts.scheme, f"{shown}:{port + offset}", parts.path, "", ""))


def port_of(url: str) -> int:
    parts = urlsplit(url)
    return parts.port or (443 if parts.scheme == "https" else 80)


def client_manifest(bundle: Bundle, header: Sequence[str]) -> str:
    """The client's stack.toml text."""
    from edge_stack.builder._stack_toml import manifest_text

    spec = bundle.spec
    top = {"name": spec.name, "description": spec.description, "version": spec.version}
    # A value every stage shares goes to [defaults] once (the server's url, the vocabulary...).
    defaults = dict(bundle.client_defaults)
    stages = [dict(s) for s in bundle.client_stages]
    for key in list(stages[0]) if stages else []:
        if key in ("name", "prompt") or key in defaults:
            continue
        values = [s.get(key, _MISSING) for s in stages]
        if all(v == values[0] and v is not _MISSING for v in values):
            defaults[key] = values[0]
            for stage in stages:
                del stage[key]
    return str(manifest_text(header, top, defaults, stages))


_MISSING = object()


def check_client(bundle: Bundle, text: str, path: Path) -> StackSpec:
    """Parse and validate the client's stack.toml as Stack.load will, over the copied files, and
    check that the engine can carry every stage's settings."""
    from ..engines._backend import stage_params
    from ..engines.remote._dialects import DIALECTS, unsupported

    client = parse_manifest(tomllib.loads(text), path, check_files=True)
    for stage in client.stages:
        assert stage.remote is not None
        problem = unsupported(
            DIALECTS[stage.remote.engine], stage_params(stage), lora_scale=stage.lora_scale
        )
        if problem is not None:
            key, why = problem
            raise ManifestError(
                f"{bundle.spec.path}: stage '{stage.name}', key '{key}': cannot export to "
                f"{bundle.engine}: {why}"
            )
    return client


def _copy(source: Path, target: Path) -> None:
    """A hard link when the file system allows (same bytes, no space), else a copy."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if source.is_dir():
        shutil.copytree(source, target, copy_function=_link_or_copy)
    else:
        _link_or_copy(str(source), str(target))


def _link_or_copy(source: str, target: str) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


@contextlib.contextmanager
def output_folder(out: Path, *, force: bool) -> Iterator[Path]:
    """A temporary folder that becomes ``out`` if the block succeeds (an existing ``out`` is
    replaced only with ``force``, and only once the new one is complete)."""
    out = out.expanduser().absolute()
    if out.exists() or out.is_symlink():
        if not out.is_dir() or out.is_symlink():
            raise OutputExistsError(f"output {out} exists and is not a folder; give a new folder")
        if any(out.iterdir()) and not force:
            raise OutputExistsError(f"output folder {out} is not empty; pass --force to replace it")
    if not out.parent.is_dir():
        raise OutputExistsError(
            f"the folder {out.parent} does not exist; create it first (mkdir -p {out.parent})"
        )
    with temp_dir(out.parent, out.name) as tmp:
        yield tmp
        os.chmod(tmp, 0o755)
        old = None
        if out.exists():
            old = out.parent / temp_name(out.name + "-old")
            os.replace(out, old)
        os.replace(tmp, out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def write_bundle(bundle: Bundle, folder: Path, manifest: str) -> None:
    """Copy the files and write the texts into ``folder`` (then the client's stack.toml)."""
    for name, source in bundle.copies.items():
        _copy(source, folder / name)
    for name, text in bundle.texts.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        if name.endswith(".sh"):
            path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    (folder / "stack.toml").write_text(manifest, encoding="utf-8")


def header_lines(bundle: Bundle, command: str) -> list[str]:
    return [
        f"Written by edgestack {__version__}: {command}",
        f"from {bundle.spec.path}: every stage runs on {bundle.engine} (see README.md here).",
        "Ask with: edgestack ask --stack <this folder> QUESTION",
    ]


def shell_quote(text: str) -> str:
    import shlex

    return shlex.quote(text)


def lines_of(command: Sequence[str]) -> str:
    """A command line over several lines, one option (and its values) per line."""
    out: list[str] = []
    for part in command:
        if part.startswith("-") and out:
            out.append(" \\\n  " + part)
        else:
            out.append((" " if out else "") + part)
    return "".join(out)
