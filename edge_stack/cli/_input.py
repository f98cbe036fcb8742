"""Questions from the command line, a ``--batch`` file and standard input, checked and bounded.

Every way in has the same limits (``edge_stack.util._limits``) and gives the same one-line errors:
invalid UTF-8 is refused, naming its byte offset (never silently replaced, so what was asked is
what the log shows); reading stops at the size limit, so an endless input such as /dev/zero
costs one bounded read, not memory without end.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, TextIO

from ..errors import BadArgument
from ..util._limits import MAX_BATCH_BYTES, MAX_BATCH_LINES, MAX_QUESTION_BYTES

#: ``--batch`` value that means standard input
STDIN = "-"
_CHUNK = 1 << 20
_SURROGATE = re.compile("[\ud800-\udfff]")
# Python keeps each byte of argv that is not UTF-8 as one of these (PEP 383, surrogateescape).
_ESCAPED_BYTES = range(0xDC80, 0xDD00)


def check_argv_question(question: str) -> None:
    """Refuse a question from argv that was not UTF-8 (BadArgument naming the byte offset), too
    long, or a lone surrogate; the empty question is the caller's usage error."""
    from ..pipeline._stack import check_question

    bad = _SURROGATE.search(question)
    if bad is not None and ord(bad.group()) in _ESCAPED_BYTES:
        offset = len(question[: bad.start()].encode("utf-8"))
        raise BadArgument(
            f"the question is not valid UTF-8: byte 0x{ord(bad.group()) - 0xDC00:02X} at byte "
            f"offset {offset}; pass it as UTF-8 text (check the terminal's or script's encoding)"
        )
    check_question(question, "the question")


def read_batch_file(path: Path) -> list[str]:
    """The questions of a ``--batch`` file (``-``: standard input): one per line, blank lines
    skipped; at most MAX_BATCH_BYTES and MAX_BATCH_LINES lines, each at most MAX_QUESTION_BYTES.
    """
    from ..util._paths import checked_file

    if str(path) == STDIN:
        name = "standard input (--batch -)"
        data = _read_bounded(sys.stdin.buffer, name)
    else:
        path = checked_file(
            path,
            "batch file",
            "--batch",
            hint="give a text file with one question per line, or - to read standard input",
        )
        name = f"batch file {path}"
        try:
            with path.open("rb") as stream:
                data = _read_bounded(stream, name)
        except OSError as exc:
            raise BadArgument(f"cannot read {name}: {exc.strerror or exc}") from None
    lines = data.count(b"\n") + (0 if data.endswith(b"\n") else 1)
    if lines > MAX_BATCH_LINES:
        raise BadArgument(
            f"{name} has {lines} lines, more than {MAX_BATCH_LINES} (the limit); split it into "
            "smaller files"
        )
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise BadArgument(
            f"{name} is not UTF-8 text (bad byte 0x{data[exc.start]:02X} at line {line}, byte "
            f"offset {exc.start}); save it as UTF-8"
        ) from None
    questions = []
    for number, raw in enumerate(text.split("\n"), 1):
        question = raw.strip()
        if len(question.encode("utf-8")) > MAX_QUESTION_BYTES:
            raise BadArgument(
                f"{name}, line {number}: the question is more than {MAX_QUESTION_BYTES} bytes "
                "(the limit); shorten it"
            )
        if question:
            questions.append(question)
    if not questions:
        raise BadArgument(f"{name} has no questions; write one question per line")
    return questions


def read_stdin_question(stdin: TextIO) -> str:
    """The question ``ask -`` (or ``ask`` with a pipe or file on stdin) reads: all of standard
    input as one question (a question may span lines), surrounding whitespace stripped; at most
    MAX_QUESTION_BYTES of UTF-8, read with that bound. Empty: ``""`` (the caller's usage
    error)."""
    name = "the question from standard input"
    buffer: BinaryIO | None = getattr(stdin, "buffer", None)
    try:
        raw: bytes | str = (
            buffer.read(MAX_QUESTION_BYTES + 1)
            if buffer is not None
            else stdin.read(MAX_QUESTION_BYTES + 1)
        )
    except OSError as exc:
        raise BadArgument(
            f"cannot read {name}: {exc}; pass the question as an argument instead"
        ) from None
    if isinstance(raw, str):
        text = raw
        if len(text.encode("utf-8", "surrogatepass")) > MAX_QUESTION_BYTES:
            raw = b"x" * (MAX_QUESTION_BYTES + 1)
    if isinstance(raw, bytes):
        if len(raw) > MAX_QUESTION_BYTES:
            raise BadArgument(
                f"{name} is more than {MAX_QUESTION_BYTES} bytes (the limit for a question); "
                "shorten it, or use --batch - for one question per line"
            )
        try:
            text = raw.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise BadArgument(
                f"{name} is not valid UTF-8 (byte 0x{raw[exc.start]:02X} at byte offset "
                f"{exc.start}); send UTF-8 text"
            ) from None
    if "\0" in text:
        raise BadArgument(
            f"{name} has a NUL byte at character {text.index(chr(0))}, so it is not text; "
            "send the question as text"
        )
    return text.strip()


def _read_bounded(stream: BinaryIO, name: str) -> bytes:
    """All of ``stream``, refusing more than MAX_BATCH_BYTES or a NUL byte as soon as seen."""
    chunks: list[bytes] = []
    total = 0
    while chunk := stream.read(_CHUNK):
        if (nul := chunk.find(b"\0")) >= 0:
            raise BadArgument(
                f"{name} has a NUL byte at byte offset {total + nul}, so it is not text; give a "
                "text file with one question per line"
            )
        total += len(chunk)
        if total > MAX_BATCH_BYTES:
            raise BadArgument(
                f"{name} is more than {MAX_BATCH_BYTES} bytes (the limit); split it into "
                "smaller files"
            )
        chunks.append(chunk)
    return b"".join(chunks)


def chat_lines(stdin: TextIO) -> Iterator[str | BadArgument]:
    """Each line of ``stdin`` (newline kept off), or a BadArgument for a line that is not UTF-8
    or longer than MAX_QUESTION_BYTES (the rest of that line is skipped); ends at end of input.

    Bounded as ``--batch`` is: more than MAX_BATCH_BYTES or MAX_BATCH_LINES in all, or a NUL
    byte anywhere (the input is not text), *raises* BadArgument, which ends the chat; an
    endless input such as /dev/zero costs one bounded read. Reads bytes when ``stdin`` has
    them, so a bad byte costs one line, not the session.
    """
    buffer: BinaryIO | None = getattr(stdin, "buffer", None)
    total = 0

    def count(chunk: bytes | str, number: int) -> None:
        nonlocal total
        data = chunk if isinstance(chunk, bytes) else chunk.encode("utf-8", "surrogatepass")
        if (nul := data.find(b"\0")) >= 0:
            raise BadArgument(
                f"standard input has a NUL byte (line {number}, byte offset {total + nul}), so "
                "it is not text; send UTF-8 text, one question per line"
            )
        total += len(data)
        if total > MAX_BATCH_BYTES:
            raise BadArgument(
                f"standard input is more than {MAX_BATCH_BYTES} bytes (chat's limit for a pipe "
                "or file, as for --batch); split it into smaller inputs"
            )

    number = 0
    while True:
        number += 1
        raw: bytes | str = (
            buffer.readline(MAX_QUESTION_BYTES + 1)
            if buffer is not None
            else stdin.readline(MAX_QUESTION_BYTES + 1)
        )
        if not raw:
            return
        if number > MAX_BATCH_LINES:
            raise BadArgument(
                f"standard input has more than {MAX_BATCH_LINES} lines (chat's limit for a pipe "
                "or file, as for --batch); split it into smaller inputs"
            )
        count(raw, number)
        if len(raw) > MAX_QUESTION_BYTES and not _ends_line(raw):
            while True:  # skip the rest of the line, still within the bounds
                rest = buffer.readline(_CHUNK) if buffer is not None else stdin.readline(_CHUNK)
                if not rest:
                    break
                count(rest, number)
                if _ends_line(rest):
                    break
            yield _too_long(number)
            continue
        if isinstance(raw, str):
            yield raw.rstrip("\r\n")
            continue
        try:
            yield raw.decode("utf-8").rstrip("\r\n")
        except UnicodeDecodeError as exc:
            yield BadArgument(
                f"line {number} of standard input is not valid UTF-8 (byte "
                f"0x{raw[exc.start]:02X} at byte offset {exc.start} of the line); skipped it, "
                "send UTF-8 text"
            )


def _ends_line(chunk: bytes | str) -> bool:
    return chunk.endswith("\n") if isinstance(chunk, str) else chunk.endswith(b"\n")


def _too_long(number: int) -> BadArgument:
    return BadArgument(
        f"line {number} of standard input is more than {MAX_QUESTION_BYTES} bytes (the limit "
        "for a question); skipped it, shorten it"
    )
