"""`edgestack serve`."""

from __future__ import annotations

from typing import Annotated

import typer

from ._app import app


@app.command()
def serve(
    stack: Annotated[
        list[str] | None,
        typer.Option(
            "--stack",
            "-s",
            help="A stack: a name from `edgestack list` (served under that name) or a "
            "stack.toml or its folder (served under its manifest's name); repeat for several. "
            "Default: every stack `edgestack list` shows.",
        ),
    ] = None,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on (0: any free port).")] = 8000,
    api_key: Annotated[
        str | None,
        typer.Option(
            "--api-key",
            help="Require 'Authorization: Bearer KEY' (at least 8 characters; default "
            "$EDGESTACK_API_KEY). Needed to listen beyond this machine.",
        ),
    ] = None,
    insecure_no_api_key: Annotated[
        bool,
        typer.Option(
            "--insecure-no-api-key",
            help="Listen beyond this machine without an API key (anyone who reaches the port "
            "can use it).",
        ),
    ] = False,
    keep_alive: Annotated[
        str,
        typer.Option(
            help="How long a stack stays loaded after its last request: 5m, 30s, 1h, 0 "
            "(unload at once), -1 (until the server stops).",
        ),
    ] = "5m",
    max_queue: Annotated[
        int, typer.Option(help="Requests that may wait for a turn; more get 503.")
    ] = 64,
    parallel: Annotated[int, typer.Option(help="Requests that generate at once.")] = 4,
    cors_origin: Annotated[
        list[str] | None,
        typer.Option(
            "--cors-origin",
            help="Allow browser pages from this origin (repeatable), e.g. http://localhost:1420.",
        ),
    ] = None,
    threads: Annotated[
        int | None, typer.Option("--threads", "-t", help="llama.cpp threads per stage.")
    ] = None,
    no_log: Annotated[
        bool, typer.Option("--no-log", help="Do not record answers in the local run log.")
    ] = False,
) -> None:
    """Serve stacks over HTTP: OpenAI-compatible API, native trace API, and a web page.

    Each stack is a model id (its name). Endpoints: GET /v1/models, POST /v1/completions,
    POST /v1/chat/completions, POST /api/ask, GET /health, GET /metrics, and the page at /.
    Stops on Ctrl-C or SIGTERM, cancelling requests in flight.

    Examples:

      edgestack serve

      edgestack serve --stack ./my-stack --port 8080 --keep-alive -1

      edgestack serve --stack word-problems --stack owner/name

      curl http://127.0.0.1:8000/v1/chat/completions -d '{"model": "word-problems",
      "messages": [{"role": "user", "content": "What is 15 plus 28?"}]}'
    """
    from ..serve import ServeConfig, Server, check_exposure, parse_keep_alive, resolve_stacks
    from ..util._env import settings
    from ..util._limits import check_threads

    api_key = api_key or settings().api_key
    check_exposure(host, api_key, insecure_no_api_key)
    stacks = resolve_stacks(stack or [])
    config = ServeConfig(
        stacks=stacks,
        host=host,
        port=port,
        api_key=api_key,
        keep_alive=parse_keep_alive(keep_alive, "--keep-alive"),
        max_queue=max_queue,
        parallel=parallel,
        cors_origins=tuple(cors_origin or ()),
        threads=None if threads is None else check_threads(threads, "--threads"),
        no_log=no_log,
        default=next(iter(stacks)),
    )
    server = Server(config)
    typer.echo(f"edgestack: serving {', '.join(stacks)} on {server.url} (Ctrl-C stops)", err=True)
    server.run()
    typer.echo("edgestack: server stopped", err=True)
