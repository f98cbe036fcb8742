"""`edgestack ask` and `edgestack chat`."""

from __future__ import annotations

import contextlib
import json
import sys
import time
from collections.abc import Iterator
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
from ..util._units import format_bytes
from ._app import StackOpt, app, error_line

if TYPE_CHECKING:
    from ..errors import BadArgument
    from ..pipeline._stack import Stack

#: the QUESTION that means "read the question from standard input"
STDIN = "-"
#: lines of chat history kept on disk (in the data folder, for chat on a terminal)
CHAT_HISTORY_LINES = 1000
#: the largest chat history file read (its lines at their longest); a larger one is left alone
MAX_HISTORY_BYTES = CHAT_HISTORY_LINES * (MAX_QUESTION_BYTES + 1)
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
LowMemoryOpt = Annotated[
    bool,
    typer.Option(
        "--low-memory",
        help="Keep only the running stage's context in memory (the stack's memory = \"low\"): "
        "least memory, a little slower per question.",
    ),
]


def _load(
    stack: str | None, threads: int | None, verbose: bool, low_memory: bool = False
) -> tuple[Stack, Path]:
    from ..pipeline._stack import Stack
    from ..util._paths import find_stack

    path = find_stack(stack)
    memory = "low" if low_memory else None
    return Stack.load(path, threads=threads, verbose=verbose or None, memory=memory), path


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
    pack_prompts: bool,
) -> list[object]:
    answers = stack.ask_batch(
        questions,
        batch_size=batch_size,
        max_tokens=max_tokens,
        temperature=temperature,
        seed=seed,
        pack_prompts=pack_prompts,
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
            help="The question, as one argument (quote it); - or none with a pipe or file on "
            "standard input reads it from there (all of it, as one question). UTF-8, at most "
            f"{MAX_QUESTION_BYTES:,} bytes ({format_bytes(MAX_QUESTION_BYTES)}).",
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
            "line, as --json does, each with its own seconds. UTF-8, at most "
            f"{MAX_BATCH_BYTES:,} bytes ({format_bytes(MAX_BATCH_BYTES)}) and "
            f"{MAX_BATCH_LINES} lines.",
        ),
    ] = None,
    batch_size: Annotated[
        int, typer.Option("--batch-size", min=1, max=64, help="Questions decoded together.")
    ] = 8,
    pack_prompts: Annotated[
        bool,
        typer.Option(
            "--pack-prompts",
            help="With --batch: evaluate the batch's prompts together, in llama.cpp's large "
            "micro-batches. Faster, but not bit for bit what one question at a time computes: "
            "an answer can differ from the one-by-one answer where two tokens nearly tie.",
        ),
    ] = False,
    low_memory: LowMemoryOpt = False,
) -> None:
    """Answer one question with a stack; the answer streams to stdout as it is generated.

    The question is the argument; with - (or no argument while standard input is a pipe or a
    file) it is all of standard input. --batch answers one question per line, each printed as
    a JSON line with its own time.

    Examples:

      edgestack ask "Sam has 23 stamps and buys 18 more. How many stamps does Sam have?"

      edgestack ask "What is 15 plus 28?" --trace

      echo "What is 15 plus 28?" | edgestack ask

      edgestack ask - < question.txt

      edgestack ask "What is 15 plus 28?" --stack ./my-stack --json

      edgestack ask --batch questions.txt > answers.jsonl

      edgestack ask --batch questions.txt --batch-size 16 --pack-prompts

      printf 'What is 2 plus 3?\\nWhat is 7 minus 4?\\n' | edgestack ask --batch -

      edgestack ask "What is 15 plus 28?" --low-memory
    """
    from ..pipeline._events import Answer
    from ..tools._runlog import log_answer
    from ._input import check_argv_question, read_batch_file, read_stdin_question

    started = time.perf_counter()

    if pack_prompts and batch is None:
        raise typer.BadParameter(
            "--pack-prompts packs the prompts of a batch: give --batch FILE too",
            param_hint="--pack-prompts",
        )
    if batch is not None:
        if question is not None:
            raise typer.BadParameter(
                "give a QUESTION or --batch FILE, not both", param_hint="QUESTION"
            )
        questions = read_batch_file(batch)
        loaded, path = _load(stack, threads, verbose, low_memory)
        with loaded:
            answers = _ask_batch(
                loaded,
                questions,
                batch_size=batch_size,
                max_tokens=max_tokens,
                temperature=temperature,
                seed=seed,
                pack_prompts=pack_prompts,
            )
        for item in answers:
            if isinstance(item, Answer):
                log_answer(item, stack_path=path, enabled=not no_log)
        return
    if question == STDIN or (question is None and not sys.stdin.isatty()):
        question = read_stdin_question(sys.stdin)
        if not question:
            raise typer.BadParameter(
                "the question is empty (standard input had no text)", param_hint="QUESTION"
            )
    if question is None or not question.strip():
        raise typer.BadParameter(
            "the question is empty; give it as an argument, or - to read it from standard input",
            param_hint="QUESTION",
        )
    check_argv_question(question)
    loaded, path = _load(stack, threads, verbose, low_memory)
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
        wall = time.perf_counter() - started
        log_answer(answer, stack_path=path, enabled=not no_log, wall_seconds=wall)


def _history_file() -> Path:
    from ..util._env import settings

    return settings().data_dir / "chat-history"


def _usable_history(path: Path) -> bool:
    """Whether the chat history file may be read: missing, or a regular file of at most
    MAX_HISTORY_BYTES (else it is left alone, with a warning, and history is off)."""
    import os
    import stat

    try:
        st = os.stat(path)
    except FileNotFoundError:
        return True
    except OSError as exc:
        why = str(exc)
    else:
        if stat.S_ISREG(st.st_mode) and st.st_size <= MAX_HISTORY_BYTES:
            return True
        why = (
            f"more than {MAX_HISTORY_BYTES} bytes"
            if stat.S_ISREG(st.st_mode)
            else "not a regular file"
        )
    sys.stderr.write(
        f"edgestack: warning: chat history {path} is {why}; history is off until it is moved away\n"
    )
    return False


def _terminal_lines(out_is_tty: bool) -> Iterator[str | BadArgument]:
    """Lines typed at a terminal, with line editing and history (GNU readline, or libedit)
    when Python has it; history is kept in the data folder. Ctrl-C clears the line, Ctrl-D
    ends the session."""
    try:
        import readline
    except ImportError:  # Windows without pyreadline: plain lines
        readline = None  # type: ignore[assignment]
    from ..util._datafile import is_regular_or_missing, private_folder
    from ..util._signals import terminated

    history = _history_file()
    # Only a regular file (a FIFO would block the chat) of a sane size is read and written.
    if not _usable_history(history):
        readline = None  # type: ignore[assignment]
    if readline is not None:
        readline.set_history_length(CHAT_HISTORY_LINES)
        with contextlib.suppress(OSError):
            readline.read_history_file(history)
    try:
        while True:
            try:
                if out_is_tty:
                    line = input("> ")  # the prompt goes where readline edits: the terminal
                else:
                    sys.stderr.write("> ")
                    sys.stderr.flush()
                    line = input()
            except EOFError:
                sys.stderr.write("\n")
                return
            except KeyboardInterrupt:
                if terminated():  # SIGTERM ends the session; Ctrl-C only clears the line
                    raise
                sys.stderr.write("^C (Ctrl-D quits)\n")
                continue
            yield line
    finally:
        if readline is not None and is_regular_or_missing(history):
            try:
                private_folder(history.parent)
                readline.write_history_file(history)
            except OSError:
                pass


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
    low_memory: LowMemoryOpt = False,
) -> None:
    """Keep a stack loaded and answer question after question, one per line of input.

    Reads until the end of input (Ctrl-D on a terminal); blank lines are skipped. On a
    terminal, lines can be edited and earlier questions recalled with the arrow keys (history
    kept in the data folder); a pipe or file works as well. A line that cannot be asked (not
    UTF-8, too long for the limit or a stage's context) prints a one-line error and the
    session goes on; the exit code is then 1. A pipe or file is bounded as for ask --batch
    (at most 16,777,216 bytes and 10000 lines, no NUL byte): past that the chat ends with one
    error line.

    Examples:

      edgestack chat

      edgestack chat --stack owner/name --trace

      printf 'What is 2 plus 3?\\n\\nWhat is 7 minus 4?\\n' | edgestack chat --json

      edgestack chat --low-memory
    """
    from ..errors import BadArgument, Cancelled, EdgeStackError
    from ..pipeline._events import Answer
    from ..pipeline._stack import check_question
    from ..tools._runlog import log_answer
    from ._input import chat_lines

    interactive = sys.stdin.isatty()
    failed = False
    loaded, path = _load(stack, threads, verbose, low_memory)
    with loaded:
        lines: Iterator[str | BadArgument]
        if interactive:
            sys.stderr.write(f"{loaded.name}: ask a question (Ctrl-D to quit)\n")
            lines = _terminal_lines(sys.stdout.isatty())
        else:
            lines = chat_lines(sys.stdin)
        for line in lines:
            started = time.perf_counter()
            try:
                if isinstance(line, EdgeStackError):
                    raise line
                question = line.strip()
                if not question:
                    continue  # a blank line is not the end: only the end of input is
                if "\0" in question:  # a pipe's NUL ends the chat (chat_lines); typed: this line
                    raise BadArgument(
                        f"the question has a NUL character at character {question.index(chr(0))}"
                        ", so it is not text; type the question again"
                    )
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
                wall = time.perf_counter() - started
                log_answer(answer, stack_path=path, enabled=not no_log, wall_seconds=wall)
    if failed:
        raise typer.Exit(1)
