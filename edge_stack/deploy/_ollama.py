"""``edgestack export --to ollama``: one Ollama model per stage, each made from a Modelfile
(``FROM`` the stage's GGUF, ``ADAPTER`` its GGUF LoRA adapter, a template that passes the prompt
through as it is); stages call Ollama's native ``/api/generate`` in raw mode, which carries
every sampling setting."""

from __future__ import annotations

import re

from ..errors import BadArgument
from ..manifest import StackSpec
from ._bundle import Bundle, local_stages, shell_quote

DEFAULT_URL = "http://127.0.0.1:11434"
_OLLAMA_NAME = re.compile(r"[^a-z0-9._-]+")


def model_name(spec: StackSpec, stage: str) -> str:
    """The Ollama model of a stage: ``STACK-STAGE``, in the characters Ollama allows."""
    return _OLLAMA_NAME.sub("-", f"{spec.name}-{stage}".lower()).strip("-.") or stage


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def plan(spec: StackSpec, bundle: Bundle, *, url: str, api_key_env: str | None) -> list[str]:
    """Fill ``bundle``; return the ``ollama create`` commands."""
    commands: list[str] = []
    rows: list[str] = []
    for stage in local_stages(spec):
        assert stage.model is not None
        if stage.lora is not None and stage.lora_scale != 1.0:
            raise BadArgument(
                f"{spec.path}: stage {stage.name}: lora_scale {stage.lora_scale:g}: an Ollama "
                "ADAPTER applies at scale 1; export with --to llama-server, or build the stack "
                'with mode = "merged"'
            )
        name = model_name(spec, stage.name)
        lines = [f"# Stage {stage.name} of {spec.name}; made by `edgestack export --to ollama`."]
        lines.append(f"FROM ./{bundle.add_file(stage.model)}")
        if stage.lora is not None:
            lines.append(f"ADAPTER ./{bundle.add_file(stage.lora)}")
        # The stage's prompt is rendered by edgestack; Ollama passes it on as it is.
        lines.append('TEMPLATE """{{ .Prompt }}"""')
        params = {
            "num_ctx": stage.n_ctx,
            "num_predict": stage.max_tokens,
            "temperature": stage.temperature,
            "top_k": stage.top_k,
            "top_p": stage.top_p,
            "min_p": stage.min_p,
            "repeat_penalty": stage.repeat_penalty,
            "repeat_last_n": 64,
        }
        if stage.seed is not None:
            params["seed"] = stage.seed
        lines += [
            f"PARAMETER {k} {v:g}" if isinstance(v, float) else f"PARAMETER {k} {v}"
            for k, v in params.items()
        ]
        for stop in stage.stop:
            if "\n" not in stop and '"' not in stop:
                lines.append(f"PARAMETER stop {_quote(stop)}")
        modelfile = f"Modelfile.{stage.name}"
        bundle.texts[modelfile] = "\n".join(lines) + "\n"
        commands.append(f"ollama create {shell_quote(name)} -f {modelfile}")
        rows.append(f"| {stage.name} | `{name}` | `{modelfile}` |")
        bundle.client_stage(
            stage,
            engine="ollama",
            url=url,
            remote_model=name,
            model=bundle.add_file(stage.model),
            sha256=stage.sha256,
            api_key_env=api_key_env,
        )
    script = ["#!/bin/sh", "# Create this stack's Ollama models; run from this folder.", "set -e"]
    script += ['cd "$(dirname "$0")"', *commands]
    bundle.texts["ollama-create.sh"] = "\n".join(script) + "\n"
    bundle.texts["README.md"] = _readme(spec, commands, rows, url)
    return commands


def _readme(spec: StackSpec, commands: list[str], rows: list[str], url: str) -> str:
    shown = "\n".join(commands)
    table = "\n".join(rows)
    return f"""# {spec.name} on Ollama

Written by `edgestack export --to ollama`: one Ollama model per stage, from a Modelfile that
names the stage's GGUF (`FROM`) and its LoRA adapter (`ADAPTER`), with a template that passes
the prompt through unchanged; `stack.toml` is the stack whose stages run on Ollama.

## On the Ollama machine

Copy this folder there and run `./ollama-create.sh` (Ollama must be running: `ollama serve`):

```sh
{shown}
```

| stage | Ollama model | Modelfile |
|---|---|---|
{table}

The Modelfiles set each stage's settings as defaults (`PARAMETER`), for using the models
directly; edgestack sends every setting with each request anyway. To serve other machines, start
Ollama with `OLLAMA_HOST=0.0.0.0 ollama serve` and give the clients that address.

## On the client

```sh
edgestack ask --stack . "your question"
```

Every stage calls {url}/api/generate in raw mode (no chat template) with the stage's prompt as
text (Ollama takes no token ids) and every sampling setting in `options` (`num_predict`,
`temperature`, `top_k`, `top_p`, `min_p`, `repeat_penalty`, `repeat_last_n` 64, `seed`,
`stop`, `num_ctx`). Ollama has no GBNF grammars: the export refuses stages that have one.
"""
