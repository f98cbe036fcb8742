"""`edgestack ask` and `edgestack chat`."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, TextIO

import typer

from ..util._limits import (
    MAX_BATCH_BYTES,
    MAX_BATCH_LINES,
    MAX_N_CTX,
    MAX_QUESTION_BYTES,
    MAX_THREADS,
)
from ._app import app, error_line

if TYPE_CHECKING:
    from ..pipeline._stack import Stack

StackOpt = Annotated[
    Path | None,
    typer.Option(
        "--stack",
        "-s",
        help="stack.toml or stack folder (default: $EDGESTACK_STACK, then the bundled stack).",
    ),
]
TraceOpt = Annotated[
    bool, typer.Option("--trace", help="Show every stage's prompt and output on stderr.")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the answer and its stages as JSON.")]
ThreadsOpt = Annotated[
    int | None,
    typer.Option(
        "--threads",
        min=1,
        max=MAX_THREADS,
        help="CPU threads for llama.cpp (default: all cores; llama.cpp takes at most "
        f"{MAX_THREADS}).",
    ),
]
MaxTokensOpt = Annotated[
    int | None,
    typer.Option(
        "--max-tokens",
        min=1,
        max=MAX_N_CTX,
        help="Override max_tokens for every stage (at most the stage's n_ctx).",
    ),
]
TemperatureOpt = Annotated[
    float | None,
    typer.Option("--temperature", min=0.0, max=2.0, help="Override temperature for every stage."),
]
SeedOpt = Annotated[
    int | None, typer.Option("--seed", min=0, max=2**32 - 2, help="Override the sampling seed.")
]
NoLogOpt = Annotated[
    bool, typer.Option("--no-log", help="Do not record this run in the local log (edgestack logs).")
]
VerboseOpt = Annotated[bool, typer.Option("--verbose", help="Show llama.cpp's own log on stderr.")]


def _load(stack: Path | None, threads: int | None, verbose: bool) -> tuple[Stack, Path]:
    from ..pipeline._stack import Stack
    from ..util._paths import find_stack

    path = find_stack(stack)
    return Stack.load(path, threads=threads, verbose=verbose or None), path


def _rule(title: str, err: TextIO) -> None:
    err.write(f"--- {title} " + "-" * max(3, 60 - len(title)) + "\n")


def _answer_one(
    stack: Stack,
    question: str,
    *,
    trace: bool,
    as_json: bool,
    max_tokens: int | None,
    temperature: float | None,
    seed: int | None,
    out: TextIO,
    err: TextIO,
) -> object:
    """Stream one answer: final-stage tokens to ``out`` as they come, the trace to ``err``."""
    from ..pipeline._events import Done, StageFinished, StageStarted, Token

    last = len(stack.spec.stages) - 1
    stream = stack.stream(question, max_tokens=max_tokens, temperature=temperature, seed=seed)
    try:
        for event in stream:
            if isinstance(event, StageStarted) and trace:
                _rule(f"{event.stage} prompt ({event.prompt_tokens} tokens)", err)
                err.write(event.prompt + "\n")
                if event.index == last and not as_json:
                    _rule(f"{event.stage} output", err)
                err.flush()
            elif isinstance(event, Token) and event.index == last and not as_json:
                out.write(event.text)
                out.flush()
            elif isinstance(event, StageFinished):
                t = event.trace
                if event.index == last and not as_json:
                    # End the streamed answer's line before any trace line follows on the terminal.
                    out.write("\n")
                    out.flush()
                if trace and (event.index != last or as_json):
                    _rule(f"{t.name} output", err)
                    err.write(t.output + "\n")
                if trace:
                    err.write(
                        f"[{t.name}: {t.prompt_tokens} prompt + {t.completion_tokens} generated "
                        f"tokens, {t.seconds:.3f}s]\n"
                    )
                    err.flush()
            elif isinstance(event, Done):
                if as_json:
                    out.write(json.dumps(event.answer.to_dict(), ensure_ascii=False) + "\n")
                    out.flush()
                return event.answer
    finally:
        stream.close()
    return None


def _ask_batch(
    stack: Stack,
    questions: list[str],
    *,
    batch_size: int,
    max_tokens: int | None,
    temperature: float | None,
    seed: int | None,
) -> list[object]:
    answers = stack.ask_batch(
        questions,
        batch_size=batch_size,
        max_tokens=max_tokens,
        temperature=temperature,
        seed=seed,
    )
    for answer in answers:
        sys.stdout.write(json.dumps(answer.to_dict(), ensure_ascii=False) + "\n")
    sys.stdout.flush()
    return list(answers)


@app.command()
def ask(
    question: Annotated[
        str | None,
        typer.Argument(
            help=f"The question, as one argument (quote it); UTF-8, at most "
            f"{MAX_QUESTION_BYTES // 1024} KiB.",
            show_default=False,
        ),
    ] = None,
    stack: StackOpt = None,
    trace: TraceOpt = False,
    as_json: JsonOpt = False,
    threads: ThreadsOpt = None,
    max_tokens: MaxTokensOpt = None,
    temperature: TemperatureOpt = None,
    seed: SeedOpt = None,
    no_log: NoLogOpt = False,
    verbose: VerboseOpt = False,
    batch: Annotated[
        Path | None,
        typer.Option(
            "--batch",
            help="Answer every line of this file (one question per line; - reads standard "
            "input) together, with llama.cpp's batched decoding; prints one JSON object per "
            f"line, as --json does. UTF-8, at most {MAX_BATCH_BYTES // (1 << 20)} MiB and "
            f"{MAX_BATCH_LINES} lines.",
        ),
    ] = None,
    batch_size: Annotated[
        int, typer.Option("--batch-size", min=1, max=64, help="Questions decoded together.")
    ] = 8,
) -> None:
    """Answer one question with a stack; the answer streams to stdout as it is generated.

    Examples:

      edgestack ask "Sam has 23 stamps and buys 18 more. How many stamps does Sam have?"

      edgestack ask "What is 15 plus 28?" --trace

      edgestack ask "What is 15 plus 28?" --stack ./my-stack --json

      edgestack ask --batch questions.txt > answers.jsonl
    """
    from ..pipeline._events import Answer
    from ..tools._runlog import log_answer
    from ._input import check_argv_question, read_batch_file

    if batch is not None:
        if question is not None:
            raise typer.BadParameter(
                "give a QUESTION or --batch FILE, not both", param_hint="QUESTION"
            )
        questions = read_batch_file(batch)
        loaded, path = _load(stack, threads, verbose)
        with loaded:
            answers = _ask_batch(
                loaded,
                questions,
                batch_size=batch_size,
                max_tokens=max_tokens,
                temperature=temperature,
                seed=seed,
            )
        for item in answers:
            if isinstance(item, Answer):
                log_answer(item, stack_path=path, enabled=not no_log)
        return
    if question is None or not question.strip():
        raise typer.BadParameter("the question is empty", param_hint="QUESTION")
    check_argv_question(question)
    loaded, path = _load(stack, threads, verbose)
    with loaded:
        answer = _answer_one(
            loaded,
            question,
            trace=trace,
            as_json=as_json,
            max_tokens=max_tokens,
            temperature=temperature,
            seed=seed,
            out=sys.stdout,
            err=sys.stderr,
        )
    if isinstance(answer, Answer):
        log_answer(answer, stack_path=path, enabled=not no_log)


@app.command()
def chat(
    stack: StackOpt = None,
    trace: TraceOpt = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print one JSON object per answer (JSON lines).")
    ] = False,
    threads: ThreadsOpt = None,
    max_tokens: MaxTokensOpt = None,
    temperature: TemperatureOpt = None,
    seed: SeedOpt = None,
    no_log: NoLogOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Keep a stack loaded and answer question after question, one per line of input.

    Stops at the end of input or an empty line. Works with a pipe as well as a terminal. A
    line that cannot be asked (not UTF-8, too long for the limit or a stage's context) prints
    a one-line error and the session goes on; the exit code is then 1.

    Examples:

      edgestack chat

      printf 'What is 2 plus 3?\\nWhat is 7 minus 4?\\n' | edgestack chat --json
    """
    from ..errors import Cancelled, EdgeStackError
    from ..pipeline._events import Answer
    from ..pipeline._stack import check_question
    from ..tools._runlog import log_answer
    from ._input import chat_lines

    interactive = sys.stdin.isatty()
    failed = False
    loaded, path = _load(stack, threads, verbose)
    with loaded:
        if interactive:
            sys.stderr.write(f"{loaded.name}: ask a question (empty line or Ctrl-D to quit)\n")
        lines = chat_lines(sys.stdin)
        while True:
            if interactive:
                sys.stderr.write("> ")
                sys.stderr.flush()
            line = next(lines, "")
            try:
                if isinstance(line, EdgeStackError):
                    raise line
                question = line.strip()
                if not question:
                    break
                check_question(question)
                answer = _answer_one(
                    loaded,
                    question,
                    trace=trace,
                    as_json=as_json,
                    max_tokens=max_tokens,
                    temperature=temperature,
                    seed=seed,
                    out=sys.stdout,
                    err=sys.stderr,
                )
            except Cancelled:
                raise
            except EdgeStackError as exc:
                # One bad question costs its line, not the session (and not the loaded stack).
                failed = True
                sys.stdout.flush()
                print(error_line(exc), file=sys.stderr, flush=True)
                continue
            if isinstance(answer, Answer):
                log_answer(answer, stack_path=path, enabled=not no_log)
    if failed:
        raise typer.Exit(1)
