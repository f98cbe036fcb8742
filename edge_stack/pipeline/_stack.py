"""The pipeline: a loaded stack that answers questions stage by stage.

Example::

    from edge_stack import Stack

    with Stack.load("models/word-problems/stack.toml") as stack:
        answer = stack.ask("What is 15 plus 28?")
        print(answer.text)
        for trace in answer.stages:
            print(trace.name, trace.output)
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections.abc import Generator, Sequence
from dataclasses import replace
from types import TracebackType

from ..engines._backend import Backend, Chunk, GenerationParams, StageRunner, stage_params
from ..errors import BadArgument, Cancelled, ContextOverflowError, EngineError
from ..formats._template import Rendered, Segment, render
from ..manifest import MEMORY_MODES, StackSpec, StageSpec, load_manifest
from ..util._env import settings
from ..util._limits import MAX_N_CTX, MAX_QUESTION_BYTES, check_threads
from ..util._paths import edit_hint, resolve_stack
from ._events import Answer, Done, Event, StageFinished, StageStarted, StageTrace, Token

__all__ = ["Stack", "check_question"]

logger = logging.getLogger(__name__)

_SURROGATE = re.compile("[\ud800-\udfff]")


class _Stripper:
    """Turns raw generated text into deltas whose concatenation is the stripped output."""

    def __init__(self) -> None:
        self.started = False
        self.pending = ""
        self.raw: list[str] = []

    def feed(self, text: str) -> str:
        self.raw.append(text)
        if not self.started:
            text = text.lstrip()
            if not text:
                return ""
            self.started = True
        text = self.pending + text
        body = text.rstrip()
        self.pending = text[len(body) :]
        return body


class Stack:
    """A loaded stack. Safe to use from several threads: calls on one stage are serialized.

    Use :meth:`load` to open a ``stack.toml`` with the llama.cpp engine; ``Stack(spec, backend)``
    takes any :class:`~edge_stack.engines._backend.Backend` (tests use a fake). Close it (or use ``with``)
    to free every llama.cpp object.
    """

    def __init__(self, spec: StackSpec, backend: Backend) -> None:
        self._spec = spec
        self._backend = backend
        self._locks = {stage.name: threading.Lock() for stage in spec.stages}
        self._owners: dict[str, int] = {}
        self._closed = False
        self._close_lock = threading.Lock()

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str],
        *,
        threads: int | None = None,
        verbose: bool | None = None,
        memory: str | None = None,
    ) -> Stack:
        """Load the stack at ``path`` (a ``stack.toml`` or its folder, or a stack's name: a
        bundled one such as ``"word-problems"`` or one pulled with ``edgestack pull``) with
        llama.cpp.

        Every file is checked (sha256 pins, GGUF structure, adapter fits its base) before
        llama.cpp sees it. ``threads`` (1 to 512, llama.cpp's limit) defaults to
        EDGESTACK_THREADS or the machine's cores; ``verbose`` lets llama.cpp print its own log
        (default: EDGESTACK_VERBOSE). A stage whose n_ctx is above its model's training context
        loads, with a warning logged. A stage with an ``engine`` other than "local" runs on its
        server (docs/remote-engines.md); nothing is sent to it until the first question.
        ``memory`` ("shared", "separate" or "low") overrides the stack's ``memory`` mode
        (docs/stack-manifest.md); ``"low"`` is ``edgestack ask --low-memory``.
        """
        from ..engines._load import load_backend

        # Checked before anything loads (a bad EDGESTACK_THREADS fails here too).
        threads = (
            settings().threads
            if threads is None
            else check_threads(threads, "Stack.load(threads=)")
        )
        spec = load_manifest(resolve_stack(path, "Stack.load"))
        if memory is not None:
            if memory not in MEMORY_MODES:
                raise BadArgument(
                    f"Stack.load(memory=) must be one of {', '.join(MEMORY_MODES)}, got {memory!r}"
                )
            spec = replace(spec, memory=memory)
        backend = load_backend(spec, threads=threads, verbose=verbose)
        _warn_past_training(spec, backend)
        return cls(spec, backend)

    @property
    def spec(self) -> StackSpec:
        """The validated manifest."""
        return self._spec

    @property
    def name(self) -> str:
        """The stack's name."""
        return self._spec.name

    def runner(self, stage: str) -> StageRunner:
        """The backend's runner for ``stage`` (hold the stage's lock while using it)."""
        return self._backend.runner(stage)

    def stage_stream(
        self,
        stage: str,
        prompt: str | Sequence[int],
        params: GenerationParams,
        cancel: threading.Event | None = None,
    ) -> Generator[Chunk, None, None]:
        """Run one stage on a prompt rendered elsewhere: what ``edgestack serve`` does when a
        remote stage of another stack points at this one (model id ``STACK/STAGE``).

        ``prompt`` is token ids, or text (special tokens written in it are parsed, as
        llama-server does). Yields the raw chunks (stop strings already cut, not stripped);
        the stage's lock is held while they are consumed. Raises ContextOverflowError when the
        prompt plus max_tokens does not fit the stage's n_ctx, BadArgument for an empty prompt
        or a token id outside the vocabulary.
        """
        if stage not in self._locks:
            raise KeyError(stage)
        return self._stage_stream(stage, prompt, params, cancel or threading.Event())

    def _stage_stream(
        self,
        stage: str,
        prompt: str | Sequence[int],
        params: GenerationParams,
        cancel: threading.Event,
    ) -> Generator[Chunk, None, None]:
        with self._hold(stage):
            runner = self._backend.runner(stage)
            if isinstance(prompt, str):
                tokens = runner.tokenize(Rendered((Segment(prompt, inserted=False),)))
            else:
                tokens = [int(t) for t in prompt]
                n_vocab = getattr(getattr(runner, "model", None), "n_vocab", None)
                bad = [t for t in tokens if t < 0 or (n_vocab is not None and t >= n_vocab)]
                if bad:
                    raise BadArgument(
                        f"token id {bad[0]} is outside stage {stage}'s vocabulary "
                        f"(0..{(n_vocab or 1) - 1}); send ids of this stage's model"
                    )
            if not tokens:
                raise BadArgument("the prompt is empty; send the stage's rendered prompt")
            if len(tokens) + params.max_tokens > runner.n_ctx:
                raise ContextOverflowError(
                    f"stack {self.name}, stage {stage}: the prompt is {len(tokens)} tokens and "
                    f"max_tokens is {params.max_tokens}, more than n_ctx {runner.n_ctx}; "
                    "shorten the prompt or lower max_tokens"
                )
            chunks = runner.generate(tokens, params, cancel)
            try:
                yield from chunks
            finally:
                close = getattr(chunks, "close", None)
                if close is not None:
                    close()

    @property
    def closed(self) -> bool:
        """True once :meth:`close` has been called."""
        return self._closed

    # --- calls -------------------------------------------------------------------------------

    def ask(
        self,
        question: str,
        *,
        max_tokens: int | None = None,
        temperature: float | None = None,
        seed: int | None = None,
        stop: Sequence[str] = (),
        cancel: threading.Event | None = None,
    ) -> Answer:
        """Run every stage on ``question`` and return the answer with each stage's trace.

        ``max_tokens``, ``temperature`` and ``seed`` override the manifest for every stage of this
        call; ``stop`` adds stop strings to the last stage (the answer), as an OpenAI client's
        ``stop`` does (at most 4). Setting ``cancel`` (from any thread) stops generation within a token and raises
        :class:`~edge_stack.errors.Cancelled`.
        """
        events = self.stream(
            question,
            max_tokens=max_tokens,
            temperature=temperature,
            seed=seed,
            stop=stop,
            cancel=cancel,
        )
        try:
            for event in events:
                if isinstance(event, Done):
                    return event.answer
        finally:
            events.close()
        raise EngineError("the stack finished without an answer")  # unreachable by construction

    def ask_batch(
        self,
        questions: Sequence[str],
        *,
        batch_size: int | None = None,
        max_tokens: int | None = None,
        temperature: float | None = None,
        seed: int | None = None,
        cancel: threading.Event | None = None,
        pack_prompts: bool = False,
    ) -> list[Answer]:
        """Answer several questions together; the answers, in order, equal :meth:`ask`'s.

        Each stage runs all the questions before the next stage starts, ``batch_size``
        (default 8) at a time through llama.cpp's batched decoding: one pass over the weights
        per generated token serves every question in the batch, which is where a CPU spends
        its time. Each trace's ``seconds`` is that question's own time in its stage (from the start
        of the decode call it was part of, ``batch_size`` questions together, until its output
        was complete), and each answer's ``seconds`` the sum over its stages.

        Prompts are evaluated exactly as :meth:`ask` evaluates them and the base model's Q8_0
        matrix products give the same bits for one row or many, so greedy answers match. One
        caveat from llama.cpp: its f16 kernel (used for LoRA adapter matrices) sums in another
        order for several rows than for one, so with an f16 adapter a near-tie between two
        tokens can break the other way (seen on random-weight models, not on the test stacks).

        ``pack_prompts=True`` evaluates the batch's prompts together instead, in llama.cpp's
        large micro-batches (faster: ``benchmarks/batch_throughput.py``), at the price of that
        exactness: a prompt's logits are then not bit for bit :meth:`ask`'s, and a near-tie can
        break the other way. Engines that batch on their own (remote) ignore it.
        """
        from ._batch import DEFAULT_BATCH_SIZE, ask_batch

        if isinstance(questions, str):
            raise TypeError("questions must be a sequence of str, not one str")
        questions = list(questions)
        for number, question in enumerate(questions):
            check_question(question, f"questions[{number}]")
            self.check_question_tokens(question, f"questions[{number}]")
        _check_overrides(max_tokens, temperature, seed)
        params = {s.name: _params(s, max_tokens, temperature, seed) for s in self._spec.stages}
        return ask_batch(
            self,
            questions,
            batch_size=DEFAULT_BATCH_SIZE if batch_size is None else batch_size,
            params_for=params,
            cancel=cancel or threading.Event(),
            pack_prompts=pack_prompts,
        )

    def stream(
        self,
        question: str,
        *,
        max_tokens: int | None = None,
        temperature: float | None = None,
        seed: int | None = None,
        stop: Sequence[str] = (),
        cancel: threading.Event | None = None,
    ) -> Generator[Event, None, None]:
        """Like :meth:`ask`, but yield events as they happen: ``StageStarted``, ``Token`` (each
        new piece of a stage's output), ``StageFinished``, and finally ``Done`` with the answer.

        A stage's lock is held while its events are consumed, so do not call this stack again
        from inside the loop on the same thread (that raises EngineError instead of deadlocking).
        """
        check_question(question)
        self.check_question_tokens(question)
        _check_overrides(max_tokens, temperature, seed)
        extra_stop = _check_stop(stop)
        return self._run(
            question, max_tokens, temperature, seed, extra_stop, cancel or threading.Event()
        )

    def check_question_tokens(self, question: str, name: str = "the question") -> None:
        """Refuse a question longer than the stack's question limit (``max_question_tokens``,
        StackSpec.question_limit) in the tokens of any stage that inserts it (BadArgument):
        stages without n_ctx are sized for that limit."""
        limit = self._spec.question_limit
        if limit is None:
            return
        counted: set[object] = set()
        for stage in self._spec.stages:
            if "question" not in stage.template.fields or stage.model in counted:
                continue
            counted.add(stage.model)
            runner = self._backend.runner(stage.name)
            n = len(runner.tokenize(Rendered((Segment(question, inserted=True),)))) - len(
                runner.tokenize(Rendered(()))
            )
            if n > limit:
                raise BadArgument(
                    f"stack {self.name} ({self._spec.path}), stage {stage.name}: {name} is {n} "
                    f"tokens, more than the stack's max_question_tokens of {limit}; shorten it, "
                    f"or raise the limit: {edit_hint(self._spec.path, 'max_question_tokens')}"
                )

    def _run(
        self,
        question: str,
        max_tokens: int | None,
        temperature: float | None,
        seed: int | None,
        extra_stop: tuple[str, ...],
        cancel: threading.Event,
    ) -> Generator[Event, None, None]:
        start = time.perf_counter()
        values = {"question": question}
        traces: list[StageTrace] = []
        last = len(self._spec.stages) - 1
        for index, stage in enumerate(self._spec.stages):
            params = _params(stage, max_tokens, temperature, seed)
            if index == last and extra_stop:
                params = replace(params, stop=params.stop + extra_stop)
            rendered = render(stage.template, values)
            with self._hold(stage.name):
                if cancel.is_set():
                    raise Cancelled(f"stack {self.name}: cancelled before stage {stage.name}")
                stage_start = time.perf_counter()
                runner = self._backend.runner(stage.name)
                tokens = runner.tokenize(rendered)
                n_ctx = runner.n_ctx
                if len(tokens) + params.max_tokens > n_ctx:
                    raise ContextOverflowError(
                        f"stack {self.name} ({self._spec.path}), stage {stage.name}: the prompt is "
                        f"{len(tokens)} tokens and max_tokens is {params.max_tokens}, "
                        f"{len(tokens) + params.max_tokens} in all, but n_ctx is {n_ctx}; "
                        "shorten the question or lower max_tokens (--max-tokens), or raise "
                        f"n_ctx: {edit_hint(self._spec.path, 'n_ctx')}"
                    )
                prompt_text = rendered.text
                yield StageStarted(stage.name, index, prompt_text, len(tokens))
                stripper = _Stripper()
                completion = 0
                chunks = runner.generate(tokens, params, cancel)
                try:
                    for chunk in chunks:
                        completion += chunk.n_tokens
                        delta = stripper.feed(chunk.text)
                        if delta:
                            yield Token(stage.name, index, delta)
                        if cancel.is_set():
                            break
                finally:
                    close = getattr(chunks, "close", None)
                    if close is not None:
                        close()
                if cancel.is_set():
                    raise Cancelled(
                        f"stack {self.name}: cancelled during stage {stage.name} "
                        f"after {completion} tokens"
                    )
                output = "".join(stripper.raw).strip()
                trace = StageTrace(
                    name=stage.name,
                    prompt=prompt_text,
                    output=output,
                    prompt_tokens=len(tokens),
                    completion_tokens=completion,
                    seconds=time.perf_counter() - stage_start,
                )
            logger.debug(
                "stage %s: %d+%d tokens in %.3fs",
                stage.name,
                trace.prompt_tokens,
                trace.completion_tokens,
                trace.seconds,
            )
            traces.append(trace)
            values[stage.name] = output
            yield StageFinished(stage.name, index, trace)
        answer = Answer(
            text=traces[-1].output,
            stages=tuple(traces),
            stack=self.name,
            question=question,
            seconds=time.perf_counter() - start,
        )
        yield Done(answer)

    # --- locking and lifetime ------------------------------------------------------------------

    def _hold(self, stage: str) -> _StageHold:
        return _StageHold(self, stage)

    def close(self) -> None:
        """Free every llama.cpp object. Waits for calls in flight; idempotent."""
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        me = threading.get_ident()
        taken = []
        try:
            for name, lock in self._locks.items():
                if self._owners.get(name) == me:
                    continue  # closing from inside our own stream: that stage stops right after
                lock.acquire()
                taken.append(lock)
            self._backend.close()
        finally:
            for lock in taken:
                lock.release()

    def __enter__(self) -> Stack:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{len(self._spec.stages)} stages"
        return f"<Stack {self.name!r} ({state}) from {self._spec.path}>"


class _StageHold:
    """A stage's lock, refusing re-entry from the thread that holds it (that would deadlock)."""

    def __init__(self, stack: Stack, stage: str) -> None:
        self.stack = stack
        self.stage = stage

    def __enter__(self) -> None:
        stack = self.stack
        me = threading.get_ident()
        if stack._owners.get(self.stage) == me:
            raise EngineError(
                f"stack {stack.name}: stage {self.stage} is already running on this thread "
                "(a call from inside a stream loop); finish or close that stream first"
            )
        stack._locks[self.stage].acquire()
        if stack._closed:
            stack._locks[self.stage].release()
            raise EngineError(f"stack {stack.name} is closed; load it again to ask more")
        stack._owners[self.stage] = me

    def __exit__(self, *exc: object) -> None:
        self.stack._owners.pop(self.stage, None)
        self.stack._locks[self.stage].release()


def check_question(question: object, name: str = "question") -> None:
    """Refuse what no stage can take: not a str (TypeError), a lone surrogate (not Unicode text,
    cannot become UTF-8) or more than MAX_QUESTION_BYTES of UTF-8 (BadArgument). Checked before
    tokenizing, so an oversized question costs no time."""
    if not isinstance(question, str):
        raise TypeError(f"{name} must be a str, got {type(question).__name__}")
    # Characters never outnumber UTF-8 bytes: the cheap test first, then the exact one.
    too_long = len(question) > MAX_QUESTION_BYTES
    if not too_long and (bad := _SURROGATE.search(question)) is not None:
        raise BadArgument(
            f"{name} has a lone surrogate U+{ord(bad.group()):04X} at character {bad.start()}, "
            "which is not text and has no UTF-8 form; decode input bytes with "
            "errors='replace' (or fix the source of the text)"
        )
    size = len(question) if too_long else len(question.encode("utf-8"))
    if size > MAX_QUESTION_BYTES:
        at_least = "at least " if too_long else ""
        raise BadArgument(
            f"{name} is {at_least}{size} bytes of UTF-8, more than the limit of "
            f"{MAX_QUESTION_BYTES}; shorten it"
        )


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


#: at most this many extra stop strings per call (OpenAI's limit), each at most this long
MAX_STOP, MAX_STOP_CHARS = 4, 200


def _check_stop(stop: Sequence[str]) -> tuple[str, ...]:
    if isinstance(stop, str):
        stop = (stop,)
    if not isinstance(stop, Sequence) or not all(isinstance(s, str) for s in stop):
        raise BadArgument("stop must be a string or a sequence of strings")
    if len(stop) > MAX_STOP or any(len(s) > MAX_STOP_CHARS for s in stop):
        raise BadArgument(
            f"stop takes at most {MAX_STOP} strings of at most {MAX_STOP_CHARS} characters"
        )
    return tuple(s for s in stop if s)


def _check_overrides(max_tokens: int | None, temperature: float | None, seed: int | None) -> None:
    if max_tokens is not None and (not _is_int(max_tokens) or not 1 <= max_tokens <= MAX_N_CTX):
        raise BadArgument(
            f"max_tokens must be a whole number from 1 to {MAX_N_CTX} (and fit the stages' "
            f"n_ctx), got {max_tokens!r}"
        )
    if temperature is not None and (
        isinstance(temperature, bool)
        or not isinstance(temperature, int | float)
        or not 0.0 <= temperature <= 2.0
    ):
        raise BadArgument(f"temperature must be a number from 0 to 2, got {temperature!r}")
    if seed is not None and (not _is_int(seed) or not 0 <= seed < 2**32 - 1):
        raise BadArgument(f"seed must be a whole number from 0 to 2**32-2, got {seed!r}")


def _warn_past_training(spec: StackSpec, backend: Backend) -> None:
    """Log a warning for each stage whose n_ctx is above its model's training context: llama.cpp
    runs it, but positions past what the model was trained on give poor text."""
    for stage in spec.stages:
        runner = backend.runner(stage.name)
        model = getattr(runner, "model", None)
        trained = getattr(model, "n_ctx_train", 0)
        n_ctx = runner.n_ctx  # a stage without n_ctx gets its size when it loads
        if isinstance(trained, int) and 0 < trained < n_ctx:
            logger.warning(
                "%s, stage %s: n_ctx %d is above the model's training context (%d tokens); "
                "text past that many tokens degrades, lower n_ctx to %d",
                spec.path,
                stage.name,
                n_ctx,
                trained,
                trained,
            )


def _params(
    stage: StageSpec, max_tokens: int | None, temperature: float | None, seed: int | None
) -> GenerationParams:
    own = stage_params(stage)
    return replace(
        own,
        max_tokens=own.max_tokens if max_tokens is None else max_tokens,
        temperature=own.temperature if temperature is None else temperature,
        seed=own.seed if seed is None else seed,
        draft=stage.draft,
    )
