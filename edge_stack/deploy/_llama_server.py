"""``edgestack export --to llama-server``: one llama-server per base model, every adapter of its
stages loaded at start (``--lora``, applied at scale 0 until a request asks for one:
``--lora-init-without-apply``), each stage picking its adapter per request by id."""

from __future__ import annotations

from collections.abc import Sequence

from ..manifest import StackSpec
from ._bundle import Bundle, lines_of, local_stages, port_of, shell_quote, with_port

DEFAULT_URL = "http://127.0.0.1:8080/v1"
#: request slots of each server (llama-server's --parallel)
DEFAULT_PARALLEL = 4


def plan(
    spec: StackSpec,
    bundle: Bundle,
    *,
    url: str,
    parallel: int,
    api_key_env: str | None,
    binary: str = "llama-server",
) -> list[list[str]]:
    """Fill ``bundle``; return each server's command line."""
    stages = local_stages(spec)
    bases: dict[str, list[int]] = {}  # model file in the bundle -> stage indexes
    for index, stage in enumerate(stages):
        assert stage.model is not None
        bases.setdefault(bundle.add_file(stage.model), []).append(index)
    commands: list[list[str]] = []
    readme_ids: list[str] = []
    for offset, (model, members) in enumerate(bases.items()):
        server_url = with_port(url, offset)
        adapters: list[str] = []
        for index in members:
            lora = stages[index].lora
            if lora is not None and bundle.add_file(lora) not in adapters:
                adapters.append(bundle.add_file(lora))
        host = "0.0.0.0" if not _is_loopback(server_url) else "127.0.0.1"
        n_ctx = max(stages[i].n_ctx for i in members)
        command = [binary, "-m", model]
        if adapters:
            # one --lora with the files comma-separated (llama-server deprecates repeating it).
            # --cache-ram 0: llama-server's prompt cache in RAM is keyed by tokens alone, so a
            # prompt evaluated under one stage's adapter could be restored for another stage
            # whose prompt starts alike (wrong answers, seen in testing); each slot still keeps
            # its own prompt, which is what a stage's slots reuse.
            command += ["--lora", ",".join(adapters), "--lora-init-without-apply"]
            command += ["--cache-ram", "0"]
        command += ["--host", host, "--port", str(port_of(server_url))]
        command += ["--parallel", str(parallel), "--ctx-size", str(n_ctx * parallel)]
        kv = stages[members[0]].kv_cache_type
        if kv != "f16":
            command += ["--cache-type-k", kv, "--cache-type-v", kv]
        if api_key_env is not None:
            command += ["--api-key", f'"${api_key_env}"']
        commands.append(command)
        for index in members:
            stage = stages[index]
            lora_id = None
            if stage.lora is not None:
                lora_id = adapters.index(bundle.add_file(stage.lora))
                readme_ids.append(f"| {stage.name} | {lora_id} | `{bundle.add_file(stage.lora)}` |")
            bundle.client_stage(
                stage,
                engine="llama-server",
                url=server_url,
                lora_id=lora_id,
                lora_scale=stage.lora_scale if stage.lora is not None else None,
                model=model,
                sha256=stage.sha256,
                api_key_env=api_key_env,
            )
    script = [
        "#!/bin/sh",
        "# Start the llama-server(s) of this stack; run from this folder.",
        "set -e",
    ]
    script.append('cd "$(dirname "$0")"')
    for n, command in enumerate(commands):
        # all but the last in the background; the last one replaces the shell (signals reach
        # it) and takes the script's own arguments (more options: ./SCRIPT --threads 8)
        last = n == len(commands) - 1
        prefix, background = ("exec ", ' "$@"') if last else ("", " &")
        # $LLAMA_SERVER names the binary when it is not on the PATH (a build folder, say)
        launch = ['"${LLAMA_SERVER:-llama-server}"', *command[1:]]
        script.append(prefix + lines_of([_quoted(p) for p in launch]) + background)
    bundle.texts["llama-server.sh"] = "\n".join(script) + "\n"
    bundle.texts["README.md"] = _readme(spec, commands, readme_ids, url)
    return commands


def _quoted(part: str) -> str:
    return part if part.startswith('"$') else shell_quote(part)


def _is_loopback(url: str) -> bool:
    from urllib.parse import urlsplit

    host = urlsplit(url).hostname or ""
    return host in ("localhost", "127.0.0.1", "::1")


def _readme(spec: StackSpec, commands: Sequence[Sequence[str]], ids: list[str], url: str) -> str:
    shown = "\n\n".join(lines_of([_quoted(p) for p in c]) for c in commands)
    table = "\n".join(ids) or "| (no adapters) | | |"
    return f"""# {spec.name} on llama-server

Written by `edgestack export --to llama-server`. This folder holds the model files, the command
that serves them, and `stack.toml`, a stack whose stages run on that server.

## On the server machine

Build or install llama.cpp's `llama-server` (any build from 2025 on; `cmake --build build
--target llama-server` in llama.cpp's sources), copy this folder there, and run
`./llama-server.sh`, which runs:

```sh
{shown}
```

Every adapter is loaded once at start and applied at scale 0 (`--lora-init-without-apply`);
each request of a stage sends `"lora": [{{"id": N, "scale": S}}]`, which applies that adapter
alone (adapters a request does not list run at scale 0). Adapter ids are the order of the
files in `--lora`:

| stage | lora id | adapter |
|---|---|---|
{table}

Set `LLAMA_SERVER=/path/to/llama-server` when the binary is not on the PATH.

`--cache-ram 0` turns off llama-server's prompt cache in RAM: it tells prompts apart by their
tokens alone, not by adapter, and could restore a prompt evaluated under one stage's adapter for
another stage whose prompt starts the same way. Each slot still keeps its own last prompt, and
each stage sends its requests to slots of its own, so a stage's prompt start stays cached.

`--parallel` slots serve that many requests at once; `--ctx-size` is the stages' `n_ctx`
times the slots (each slot gets one stage's context). The server listens on 127.0.0.1 when
the export's `--url` is a loopback address and on every interface otherwise: then give it an
API key (`edgestack export --api-key-env NAME`).

## On the client

```sh
edgestack ask --stack . "your question"
```

`stack.toml` points every stage at {url} (the server's OpenAI API). It keeps each stage's
prompt and settings, and the base model's vocabulary (`model`: only the vocabulary is read on the
client), so prompts go to the server as token ids, tokenized exactly as they were locally; at
temperature 0 the answers are the local stack's (llama-server evaluates prompts in other batch
sizes, so on a near-tie a token can differ). Edit `url` in stack.toml if the server listens
elsewhere.
"""
