"""`edgestack pull`: a stack from the Hugging Face Hub into the store."""

from __future__ import annotations

from typing import Annotated

import typer

from ._app import app


@app.command()
def pull(
    repo: Annotated[
        str,
        typer.Argument(
            help="The Hub repository: owner/name, or owner/name@revision (branch, tag, commit).",
            show_default=False,
        ),
    ],
    trust_unpinned: Annotated[
        bool,
        typer.Option(
            "--trust-unpinned",
            help="Pull even if stack.toml pins no sha256 for some model or adapter (nothing "
            "can verify those files).",
        ),
    ] = False,
) -> None:
    """Pull a stack from the Hugging Face Hub: its stack.toml and exactly the files it names.

    Every model and adapter must be pinned by sha256 in stack.toml and is verified before the
    stack is registered under the name given (owner/name or owner/name@revision). Files go to
    huggingface_hub's cache (HF_HOME, HF_HUB_CACHE); files named hf://owner/name/file come from
    their own repositories. With HF_HUB_OFFLINE=1 or no network the cache is used. Progress
    goes to stderr.

    Examples:

      edgestack pull owner/name

      edgestack pull owner/name@v1.0 && edgestack ask -s owner/name@v1.0 "What is 2 plus 3?"

      HF_HUB_OFFLINE=1 edgestack pull owner/name
    """
    from ..store import pull_stack

    def report(line: str) -> None:
        typer.echo(line, err=True)

    result = pull_stack(repo, trust_unpinned=trust_unpinned, report=report)
    if result.unpinned:
        typer.echo(
            f"edgestack: warning: {len(result.unpinned)} files of {result.name} are not pinned "
            "and were not verified",
            err=True,
        )
