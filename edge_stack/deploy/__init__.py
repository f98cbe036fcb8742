"""Deployments of a built stack on other engines: ``edgestack export``.

:func:`export_stack` writes a folder with what a server needs to serve the stack (model files,
the command line or Modelfiles, a README with the exact commands) and ``stack.toml``, the same
stack with every stage pointing at that server (docs/remote-engines.md). Targets:
``llama-server`` (one server, every adapter, per-request adapter ids), ``vllm`` (``vllm serve``
with ``--lora-modules``, from the recipe's Hugging Face base and PEFT adapters) and ``ollama``
(one Modelfile per stage). See docs/architecture.md for what may import what.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import BadArgument
from ..manifest import load_manifest
from ..util._paths import resolve_stack
from ._bundle import Bundle, check_client, client_manifest, header_lines, output_folder

__all__ = ["EXPORT_TARGETS", "ExportResult", "export_stack"]

logger = logging.getLogger(__name__)

EXPORT_TARGETS = ("llama-server", "vllm", "ollama")


@dataclass(frozen=True)
class ExportResult:
    """What an export wrote."""

    folder: Path
    target: str
    #: the client's stack.toml
    stack: Path
    #: the script that starts the server(s) or creates the models
    script: Path
    #: the command lines, as the script runs them
    commands: tuple[str, ...]


def export_stack(
    stack: str | os.PathLike[str],
    to: str,
    out: str | os.PathLike[str],
    *,
    url: str | None = None,
    recipe: str | os.PathLike[str] | None = None,
    parallel: int | None = None,
    api_key_env: str | None = None,
    force: bool = False,
) -> ExportResult:
    """Write the deployment of the built stack at ``stack`` on ``to`` into the folder ``out``.

    ``url`` is where the clients will reach the server (default: the engine's usual port on
    127.0.0.1); a stack with several base models gets one server per base, on consecutive
    ports. ``recipe`` (vLLM only) is the recipe the stack was built from (default: the one the
    build recorded, or recipe.toml beside stack.toml). ``parallel`` is llama-server's request
    slots. ``api_key_env`` names the environment variable holding the server's key on both
    sides. Nothing is left behind on an error; an existing non-empty ``out`` is replaced only
    with ``force``.
    """
    from . import _llama_server, _ollama, _vllm

    if to not in EXPORT_TARGETS:
        raise BadArgument(f"--to must be one of {', '.join(EXPORT_TARGETS)}, not {to!r}")
    if recipe is not None and to != "vllm":
        raise BadArgument("--recipe is for --to vllm only (the other engines serve the GGUF files)")
    if parallel is not None and to != "llama-server":
        raise BadArgument("--parallel is for --to llama-server only")
    spec = load_manifest(resolve_stack(stack, "edgestack export"))
    bundle = Bundle(spec, to)
    defaults = {
        "llama-server": _llama_server.DEFAULT_URL,
        "vllm": _vllm.DEFAULT_URL,
        "ollama": _ollama.DEFAULT_URL,
    }
    base_url = _check("url", url or defaults[to])
    if api_key_env is not None:
        api_key_env = _check("api_key_env", api_key_env)
    if to == "llama-server":
        slots = _llama_server.DEFAULT_PARALLEL if parallel is None else parallel
        if not 1 <= slots <= 256:
            raise BadArgument(f"--parallel must be from 1 to 256, not {slots}")
        commands = [
            " ".join(c)
            for c in _llama_server.plan(
                spec, bundle, url=base_url, parallel=slots, api_key_env=api_key_env
            )
        ]
        script = "llama-server.sh"
    elif to == "vllm":
        found = _vllm.find_recipe(spec, Path(recipe) if recipe is not None else None)
        commands = [
            " ".join(c)
            for c in _vllm.plan(
                spec, bundle, url=base_url, recipe_path=found, api_key_env=api_key_env
            )
        ]
        script = "vllm-serve.sh"
    else:
        commands = _ollama.plan(spec, bundle, url=base_url, api_key_env=api_key_env)
        script = "ollama-create.sh"
    command = f"edgestack export {spec.path} --to {to} -o <this folder>"
    manifest = client_manifest(bundle, header_lines(bundle, command))
    target = Path(out).expanduser().absolute()
    with output_folder(target, force=force) as tmp:
        from ._bundle import write_bundle

        write_bundle(bundle, tmp, manifest)
        check_client(bundle, manifest, tmp / "stack.toml")
    logger.info("exported %s to %s in %s", spec.name, to, target)
    return ExportResult(
        folder=target,
        target=to,
        stack=target / "stack.toml",
        script=target / script,
        commands=tuple(commands),
    )


def _check(key: str, value: str) -> str:
    """An option checked as the stack.toml key it becomes."""
    from ..manifest import STAGE_KEYS

    try:
        checked: str = STAGE_KEYS[key](value)
    except ValueError as exc:
        raise BadArgument(f"--{key.replace('_', '-')} {exc}") from None
    return checked
