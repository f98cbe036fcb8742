"""A stage that runs on a server: the pipeline's :class:`StageRunner` over HTTP.

The pipeline does everything it does for a local stage (rendering, stop strings, stripping,
events, traces, the run log, cancellation); this runner only turns a rendered prompt into
streamed text. With the stage's ``model`` (a GGUF whose vocabulary is the server model's; only
the vocabulary is read) the prompt is tokenized here exactly as a local stage tokenizes it, the
context rule is checked before anything is sent, and engines that take token ids get those;
otherwise the prompt goes as text and the server tokenizes it (template special tokens are then
also parsed inside the question, and prompt token counts show 0).
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

from ...errors import BadArgument, EdgeStackError, ManifestError
from ...formats._template import Rendered
from ...manifest import RemoteSpec, StackSpec, StageSpec
from ...util._limits import MAX_N_CTX
from ...util._pins import check_pin
from .._backend import Chunk, GenerationParams, StopScanner, stage_params
from ._dialects import DIALECTS, BadAnswer, engine_error, parse_piece, request_body, unsupported
from ._http import HttpStage, one_line

if TYPE_CHECKING:
    from ..llama._model import LlamaModel

logger = logging.getLogger(__name__)

#: most requests one batch call keeps in flight at once (ask --batch on a remote stage)
MAX_CONCURRENT_REQUESTS = 16


class PromptTokens(list[int]):
    """A prompt's token ids (empty when the stage has no local vocabulary) and its text."""

    def __init__(self, tokens: Sequence[int], text: str) -> None:
        super().__init__(tokens)
        self.text = text


class RemoteRunner:
    """One stage on an OpenAI-compatible server or Ollama (:data:`DIALECTS`)."""

    def __init__(self, spec: StackSpec, stage: StageSpec, *, verbose: bool = False) -> None:
        if stage.remote is None:
            raise ValueError(f"stage {stage.name} is not a remote stage")
        self.stage = stage
        self.remote: RemoteSpec = stage.remote
        self.dialect = DIALECTS[self.remote.engine]
        self.where = f"{spec.path}, stage {stage.name}"
        problem = unsupported(self.dialect, stage_params(stage), lora_scale=stage.lora_scale)
        if problem is not None:
            key, why = problem
            raise ManifestError(f"{spec.path}: stage '{stage.name}', key '{key}': {why}")
        if self.remote.api_key_env is not None:
            # Checked now, so a missing key is a load error, not the first question's.
            from ...util._env import named_secret

            if named_secret(self.remote.api_key_env) is None:
                raise ManifestError(
                    f"{spec.path}: stage '{stage.name}', key 'api_key_env': the environment "
                    f"variable {self.remote.api_key_env} is not set or empty; export it with "
                    "the server's API key"
                )
        self.vocab: LlamaModel | None = None
        self._tokenize: Callable[[Rendered], list[int]] | None = None
        self._bos: tuple[int, ...] = ()
        if stage.model is not None:
            self._load_vocab(stage.model, verbose=verbose)
        #: llama-server: the slots this stage's requests go to (filled on the first call)
        self._slots: tuple[int, ...] | None = None
        self._turn = itertools.count()
        self.http = HttpStage(
            self.where,
            self.remote.url,
            engine=self.remote.engine,
            api_key_env=self.remote.api_key_env,
            connect_timeout=self.remote.connect_timeout,
            read_timeout=self.remote.read_timeout,
            retries=self.remote.retries,
        )
        logger.debug(
            "stage %s: %s at %s (%s)",
            stage.name,
            self.remote.engine,
            self.remote.url,
            self.remote.model or "its model",
        )

    def _load_vocab(self, path: Path, *, verbose: bool) -> None:
        """The vocabulary of ``path`` (llama.cpp's vocab_only: no weights), and the stage's
        tokenizer on it: the one a local stage on that model uses."""
        from ..llama._engine import stage_specials, stage_tokenizer
        from ..llama._model import LlamaModel

        try:
            check_pin(path, self.stage.sha256, where=f"{self.where}, key 'sha256'")
            self.vocab = LlamaModel.load(path, verbose=verbose, vocab_only=True)
        except EdgeStackError as exc:
            try:
                located = type(exc)(f"{self.where}, key 'model': {exc}")
            except Exception:  # an error class with another constructor: as it is
                raise exc from None
            raise located from exc
        self._tokenize = stage_tokenizer(self.stage, self.vocab)
        self._bos = stage_specials(self.stage, self.vocab)[1]

    # --- StageRunner -----------------------------------------------------------------------------

    @property
    def n_ctx(self) -> int:
        # Without an n_ctx of its own the stage has the server's context, which the server
        # enforces: nothing to check here.
        return MAX_N_CTX if self.stage.n_ctx_auto else self.stage.n_ctx

    def tokenize(self, prompt: Rendered) -> PromptTokens:
        if self._tokenize is None:
            return PromptTokens([], prompt.text)
        return PromptTokens(self._tokenize(prompt), prompt.text)

    def check(self, params: GenerationParams) -> None:
        """Refuse a call whose settings (overrides included) this engine cannot carry."""
        problem = unsupported(self.dialect, params, lora_scale=self.stage.lora_scale)
        if problem is not None:
            key, why = problem
            raise BadArgument(f"{self.where}: {key} for this call: {why}")

    def generate(
        self, tokens: Sequence[int], params: GenerationParams, cancel: threading.Event
    ) -> Iterator[Chunk]:
        self.check(params)
        prompt = self._wire_prompt(tokens)
        body = request_body(
            self.dialect,
            params,
            prompt,
            model=self.remote.model,
            lora_id=self.remote.lora_id,
            lora_scale=self.stage.lora_scale,
            n_ctx=None if self.stage.n_ctx_auto else self.stage.n_ctx,
            id_slot=self._slot(),
        )
        path = self.dialect.path
        scanner = StopScanner(params.stop)
        counted = 0
        finished = False
        stream = self.http.stream(path, body, cancel, ndjson=self.dialect.ndjson)
        try:
            for obj in stream:
                message = engine_error(obj)
                if message is not None:
                    raise self.http.error(
                        f"reported an error: {one_line(message)}", "check the server's log", path
                    )
                try:
                    piece = parse_piece(self.dialect, obj)
                except BadAnswer as exc:
                    raise self.http.error(
                        f"answered JSON that is not a completion ({exc})",
                        f"check that the url is {self.remote.engine}'s API base",
                        path,
                    ) from None
                # A piece of text is one token, until the server's own count (at the end)
                # says how many there were.
                n = 1 if piece.text else 0
                if piece.completion_tokens is not None:
                    n = max(n, piece.completion_tokens - counted)
                counted += n
                text = scanner.feed(piece.text)
                if text or n:
                    yield Chunk(text, n)
                finished = finished or piece.finish is not None
                # The server's own stop and max_tokens end the stream; these guard a server
                # that ignores them (each chunk holds at least one token).
                if scanner.stopped or counted >= params.max_tokens or cancel.is_set():
                    finished = True
                    break
        finally:
            stream.close()
        if not finished and not cancel.is_set():
            raise self.http.error(
                "ended the stream before the answer was finished",
                "the server stopped or is not a streaming completion API; check its log",
                path,
            )
        tail = scanner.flush()
        if tail:
            yield Chunk(tail, 0)

    def _slot(self) -> int | None:
        """llama-server: the slot for this request, or None to let the server pick.

        llama-server picks a slot by prompt similarity, whatever its adapter, and empties a
        slot's cached prompt when the adapter changes: stages whose prompts start alike would
        then evaluate their whole prompt every time. So a stage with an adapter keeps to its
        own slots, ``lora_id``, ``lora_id + n``, ``lora_id + 2n``, ... (n adapters on the
        server; one slot in turn per request), and its prompt's start stays cached there."""
        if self.dialect.name != "llama-server" or self.remote.lora_id is None:
            return None
        if self._slots is None:
            self._slots = self._stage_slots()
        if not self._slots:
            return None
        return self._slots[next(self._turn) % len(self._slots)]

    def _stage_slots(self) -> tuple[int, ...]:
        root = self.remote.url.removesuffix("/v1")
        props = self.http.get_json(root + "/props")
        adapters = self.http.get_json(root + "/lora-adapters")
        total = props.get("total_slots") if isinstance(props, dict) else None
        if not isinstance(total, int) or total < 1 or not isinstance(adapters, list):
            return ()  # an older or different server: it picks
        lora_id = self.remote.lora_id
        assert lora_id is not None
        n = max(len(adapters), 1)
        slots = tuple(range(lora_id % n, total, n)) or (lora_id % total,)
        logger.debug("stage %s: llama-server slots %s", self.stage.name, slots)
        return slots

    def _wire_prompt(self, tokens: Sequence[int]) -> Sequence[int] | str:
        if self.dialect.token_ids and self.vocab is not None and tokens:
            return [int(t) for t in tokens]
        text = getattr(tokens, "text", None)
        if isinstance(text, str):
            return text
        if self.vocab is None:
            raise BadArgument(f"{self.where}: a remote stage without `model` needs a text prompt")
        # Token ids from elsewhere (not from tokenize): their text, the BOS left to the server.
        skip = len(self._bos) if tuple(tokens[: len(self._bos)]) == self._bos else 0
        return self.vocab.detokenize(list(tokens[skip:]), special=True)

    def generate_batch(
        self,
        prompts: Sequence[Sequence[int]],
        params: GenerationParams,
        cancel: threading.Event,
        *,
        batch_size: int,
        pack_prompts: bool = False,
    ) -> list[Chunk]:
        """Each prompt as its own request, up to ``batch_size`` (at most
        MAX_CONCURRENT_REQUESTS) in flight: the server batches them, as it does for any clients
        (``pack_prompts`` is its business, so it is ignored here)."""

        def one(tokens: Sequence[int]) -> Chunk:
            started = time.perf_counter()
            parts, n = [], 0
            for chunk in self.generate(tokens, params, cancel):
                parts.append(chunk.text)
                n += chunk.n_tokens
            return Chunk("".join(parts), n, seconds=time.perf_counter() - started)

        workers = max(1, min(batch_size, MAX_CONCURRENT_REQUESTS, len(prompts)))
        with ThreadPoolExecutor(workers, thread_name_prefix=f"edgestack-{self.stage.name}") as pool:
            return list(pool.map(one, prompts))

    def close(self) -> None:
        self.http.close()
        if self.vocab is not None:
            self.vocab.close()
            self.vocab = None
