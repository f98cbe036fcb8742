"""`edgestack export`: a built stack as a deployment on llama-server, vLLM or Ollama."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from ._app import app


@app.command()
def export(
    stack: Annotated[str, typer.Argument(help="A built stack: stack.toml, its folder or a name.")],
    to: Annotated[
        str, typer.Option("--to", help="The engine to serve it: llama-server, vllm or ollama.")
    ],
    output: Annotated[
        Path, typer.Option("--output", "-o", help="Folder to write (new, or empty).")
    ],
    url: Annotated[
        str | None,
        typer.Option(
            help="Where clients will reach the server (default: http://127.0.0.1:8080/v1 for "
            "llama-server, :8000/v1 for vllm, :11434 for ollama)."
        ),
    ] = None,
    recipe: Annotated[
        Path | None,
        typer.Option(
            help="vllm: the recipe the stack was built from (default: the one the build "
            "recorded, or recipe.toml beside stack.toml)."
        ),
    ] = None,
    parallel: Annotated[
        int | None,
        typer.Option(help="llama-server: requests served at once (--parallel; default 4)."),
    ] = None,
    api_key_env: Annotated[
        str | None,
        typer.Option(
            "--api-key-env",
            help="Name of the environment variable holding the server's API key (both the "
            "server command and the client stack.toml read it).",
        ),
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Replace OUTPUT if it is not empty.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Write what it takes to serve a built stack on another engine, and a stack.toml whose
    stages run there.

    OUTPUT gets the model files, the server's command line (llama-server.sh: every adapter with
    --lora, picked per request by id; vllm-serve.sh: vllm serve with --lora-modules, from the
    recipe's Hugging Face base and PEFT adapters; ollama-create.sh: one Modelfile per stage), a
    README.md with the exact commands, and stack.toml for the clients. Prints the client
    stack.toml's path, and the command(s) on stderr.

    Examples:

      edgestack export word-problems --to llama-server -o deploy/llama-server

      edgestack export ./my-stack --to vllm --recipe recipe.toml --url http://gpu:8000/v1 -o deploy/vllm

      edgestack export ./my-stack --to ollama -o deploy/ollama

      edgestack ask --stack deploy/llama-server "What is 15 plus 28?"
    """
    from ..deploy import export_stack

    result = export_stack(
        stack,
        to,
        output,
        url=url,
        recipe=recipe,
        parallel=parallel,
        api_key_env=api_key_env,
        force=force,
    )
    if as_json:
        typer.echo(
            json.dumps(
                {
                    "folder": str(result.folder),
                    "target": result.target,
                    "stack": str(result.stack),
                    "script": str(result.script),
                    "commands": list(result.commands),
                }
            )
        )
        return
    typer.echo(f"start the server with {result.script} (see README.md there):", err=True)
    for command in result.commands:
        typer.echo(f"  {command}", err=True)
    typer.echo(str(result.stack))
