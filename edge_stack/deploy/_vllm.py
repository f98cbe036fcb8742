"""``edgestack export --to vllm``: ``vllm serve`` on the recipe's Hugging Face base with every
stage's PEFT adapter as a LoRA module (``--lora-modules NAME=PATH``); a stage picks its
adapter by the request's ``model``. vLLM reads Hugging Face checkpoints and PEFT folders, not
GGUF, so this needs the recipe the stack was built from."""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import BadArgument, ModelFileNotFound
from ..manifest import StackSpec
from ._bundle import Bundle, lines_of, local_stages, port_of, shell_quote, with_port

DEFAULT_URL = "http://127.0.0.1:8000/v1"
#: the ranks vLLM's --max-lora-rank accepts
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


def find_recipe(spec: StackSpec, given: Path | None) -> Path:
    """The recipe: ``given``, else the one the build recorded, else recipe.toml beside the stack."""
    from edge_stack.builder._state import STATE_NAME

    if given is not None:
        return given
    state = spec.root / STATE_NAME
    candidates = []
    if state.is_file():
        try:
            recorded = json.loads(state.read_text(encoding="utf-8")).get("recipe")
        except (OSError, ValueError):
            recorded = None
        if isinstance(recorded, str):
            candidates.append((spec.root / recorded).resolve())
    candidates.append(spec.root / "recipe.toml")
    for path in candidates:
        if path.is_file():
            return path
    raise ModelFileNotFound(
        f"{spec.path}: vLLM serves the Hugging Face base and PEFT adapters the stack was built "
        "from, and no recipe was found beside the stack; pass --recipe RECIPE.toml"
    )


def _rank(folder: Path | None) -> int | None:
    if folder is None:
        return None
    try:
        config = json.loads((folder / "adapter_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    ranks = [config.get("r", 0), *(config.get("rank_pattern") or {}).values()]
    return max((r for r in ranks if isinstance(r, int)), default=None)


def plan(
    spec: StackSpec,
    bundle: Bundle,
    *,
    url: str,
    recipe_path: Path,
    api_key_env: str | None,
) -> list[list[str]]:
    """Fill ``bundle``; return each ``vllm serve`` command line."""
    from edge_stack.builder.recipe import load_recipe

    stages = local_stages(spec)
    recipe = load_recipe(recipe_path)
    by_name = {s.name: s for s in recipe.stages}
    if set(by_name) != {s.name for s in stages}:
        raise BadArgument(
            f"{recipe.path} has the stages {', '.join(by_name)} but {spec.path} has "
            f"{', '.join(s.name for s in stages)}; pass the recipe this stack was built from"
        )
    servers: dict[str, list[str]] = {}  # base as vLLM names it -> stage names
    sources: dict[str, str] = {}  # base -> what `vllm serve` gets
    for stage in stages:
        base = by_name[stage.name].base
        if base.path is not None:
            served = bundle.add_file(base.path, "checkpoints")
        else:
            if "@" in base.spec:
                raise BadArgument(
                    f"{recipe.path}: stage {stage.name}: base {base.spec} pins a revision; "
                    "give vllm serve the id and --revision yourself, or download it first"
                )
            served = base.spec
        sources.setdefault(str(base), served)
        servers.setdefault(str(base), []).append(stage.name)
    commands: list[list[str]] = []
    rows: list[str] = []
    for offset, (base_key, names) in enumerate(servers.items()):
        server_url = with_port(url, offset)
        modules: list[str] = []
        ranks: list[int] = []
        base_name = spec.name if offset == 0 else f"{spec.name}-{offset}"
        for name in names:
            stage = spec.stage(name)
            adapter = by_name[name].adapter
            remote_model = base_name
            if adapter is not None:
                if adapter.path is not None:
                    where = bundle.add_file(adapter.path, "adapters")
                else:
                    if "@" in adapter.spec:
                        raise BadArgument(
                            f"{recipe.path}: stage {name}: adapter {adapter.spec} pins a "
                            "revision, which --lora-modules cannot; download it first"
                        )
                    where = adapter.spec
                modules.append(f"{name}={where}")
                ranks.append(_rank(adapter.path) or 64)
                remote_model = name
                rows.append(f"| {name} | `{name}` | `{where}` |")
            else:
                rows.append(f"| {name} | `{base_name}` | (base model) |")
            assert stage.model is not None
            bundle.client_stage(
                stage,
                engine="vllm",
                url=server_url,
                remote_model=remote_model,
                lora_scale=by_name[name].lora_scale if adapter is not None else None,
                model=bundle.add_file(stage.model),
                sha256=stage.sha256,
                api_key_env=api_key_env,
            )
        host = "127.0.0.1" if _loopback(server_url) else "0.0.0.0"
        n_ctx = max(spec.stage(n).n_ctx for n in names)
        command = ["vllm", "serve", sources[base_key], "--served-model-name", base_name]
        if modules:
            rank = next((r for r in VLLM_LORA_RANKS if r >= max(ranks)), VLLM_LORA_RANKS[-1])
            command += ["--enable-lora", "--max-loras", str(len(modules))]
            command += ["--max-lora-rank", str(rank), "--lora-modules", *modules]
        command += ["--max-model-len", str(n_ctx), "--generation-config", "vllm"]
        command += ["--host", host, "--port", str(port_of(server_url))]
        if api_key_env is not None:
            command += ["--api-key", f'"${api_key_env}"']
        commands.append(command)
    script = ["#!/bin/sh", "# Start vLLM for this stack; run from this folder.", "set -e"]
    script.append('cd "$(dirname "$0")"')
    for n, command in enumerate(commands):
        # all but the last in the background; the last one replaces the shell (signals reach
        # it) and takes the script's own arguments (more options: ./SCRIPT --threads 8)
        last = n == len(commands) - 1
        prefix, background = ("exec ", ' "$@"') if last else ("", " &")
        script.append(prefix + lines_of([_quoted(p) for p in command]) + background)
    bundle.texts["vllm-serve.sh"] = "\n".join(script) + "\n"
    bundle.texts["README.md"] = _readme(spec, commands, rows, url)
    return commands


def _quoted(part: str) -> str:
    return part if part.startswith('"$') else shell_quote(part)


def _loopback(url: str) -> bool:
    from urllib.parse import urlsplit

    return (urlsplit(url).hostname or "") in ("localhost", "127.0.0.1", "::1")


def _readme(spec: StackSpec, commands: list[list[str]], rows: list[str], url: str) -> str:
    shown = "\n\n".join(lines_of([_quoted(p) for p in c]) for c in commands)
    table = "\n".join(rows)
    return f"""# {spec.name} on vLLM

Written by `edgestack export --to vllm`. vLLM serves the Hugging Face base checkpoint and the
PEFT adapters the stack was built from (copied here from the recipe's folders; Hub ids are left
for vLLM to download), one LoRA module per stage; `stack.toml` is the stack whose stages run
on it.

## On the GPU machine

Install vLLM (`pip install vllm`; version 0.11 or newer, for `structured_outputs` and the
`min_p`/`top_k` request fields), copy this folder there and run `./vllm-serve.sh`:

```sh
{shown}
```

`--lora-modules NAME=PATH` registers each stage's adapter under the stage's name; a request
picks it with `"model": NAME`. `--generation-config vllm` keeps a checkpoint's
`generation_config.json` from changing the sampling defaults under the stack.
`--max-lora-rank` is the largest adapter rank rounded up to a rank vLLM accepts. To spread one
model over several GPUs add `--tensor-parallel-size N`; for many replicas put Ray Serve LLM
(or any load balancer) in front and point `url` at it.

| stage | model in the request | adapter |
|---|---|---|
{table}

## On the client

```sh
edgestack ask --stack . "your question"
```

Every stage points at {url}. Prompts go as token ids (`model` in stack.toml names the GGUF
whose vocabulary is the checkpoint's; only the vocabulary is read). vLLM computes in the GPU's
precision, not the GGUF's quantization, so at temperature 0 answers match the local stack's
where the model is sure and can differ on near-ties. A stage's `repeat_penalty` must be 1
(vLLM's repetition penalty weighs every earlier token, not llama.cpp's last 64) and
`lora_scale` 1 (vLLM has no per-request scale): the export refuses other values.
"""
