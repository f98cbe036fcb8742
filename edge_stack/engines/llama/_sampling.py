"""Sampler chains and stop-string text assembly for :mod:`edge_stack.engines.llama._model`.

Kept apart from the context code: the sampler chain is a pure function of the sampling settings,
and the text assembler (UTF-8 and stop strings) is pure Python that tests can drive byte by byte.
"""

from __future__ import annotations

import codecs
import ctypes
from collections.abc import Sequence
from typing import Any

from ...errors import EngineError, GrammarError
from ...formats.grammar._validate import validate_grammar
from ._lib import native_stderr

#: how many recent tokens (prompt included) the repeat penalty looks at, as llama.cpp's default
REPEAT_LAST_N = 64
#: llama.cpp's "pick a random seed" value
_RANDOM_SEED = 0xFFFFFFFF


def build_sampler(
    lib: Any,
    vocab: Any,
    n_vocab: int,
    *,
    temperature: float,
    top_k: int,
    top_p: float,
    min_p: float,
    repeat_penalty: float,
    seed: int | None,
    grammar: str | None,
    history: Sequence[int],
) -> Any:
    """A llama.cpp sampler chain for one generation; the caller frees it (``llama_sampler_free``).

    ``temperature <= 0`` is greedy (argmax after grammar and penalties). Otherwise the order is
    llama.cpp's own default: penalties, top-k, top-p, min-p, temperature, then a seeded draw.
    ``history`` (the prompt) primes the repeat penalty, as llama.cpp's tools do.
    """
    params = lib.llama_sampler_chain_default_params()
    params.no_perf = True
    chain = lib.llama_sampler_chain_init(params)
    if not chain:
        raise EngineError("llama.cpp could not create a sampler chain (out of memory?)")
    try:
        if grammar is not None:
            # First, so every later step only sees tokens the grammar allows; before it, the
            # tokens llama.cpp's grammar engine cannot handle (see _not_utf8).
            banned = _not_utf8(lib, vocab, n_vocab)
            if banned:
                biases = (lib.llama_logit_bias * len(banned))(
                    *[lib.llama_logit_bias(tok, float("-inf")) for tok in banned]
                )
                lib.llama_sampler_chain_add(
                    chain, lib.llama_sampler_init_logit_bias(n_vocab, len(banned), biases)
                )
            smpl = _grammar_sampler(lib, vocab, grammar)
            lib.llama_sampler_chain_add(chain, smpl)
        if repeat_penalty != 1.0:
            pen = lib.llama_sampler_init_penalties(
                n_vocab, REPEAT_LAST_N, float(repeat_penalty), 0.0, 0.0
            )
            # Accepted before joining the chain, so the grammar never sees prompt tokens.
            for tok in history[-REPEAT_LAST_N:]:
                lib.llama_sampler_accept(pen, int(tok))
            lib.llama_sampler_chain_add(chain, pen)
        if temperature <= 0.0:
            lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_greedy())
            return chain
        if top_k > 0:
            lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_top_k(int(top_k)))
        if top_p < 1.0:
            lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_top_p(float(top_p), 1))
        if min_p > 0.0:
            lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_min_p(float(min_p), 1))
        lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_temp(float(temperature)))
        draw_seed = _RANDOM_SEED if seed is None else int(seed) & 0xFFFFFFFF
        lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_dist(draw_seed))
        return chain
    except BaseException:
        lib.llama_sampler_free(chain)
        raise


_not_utf8_cache: dict[int, tuple[int, ...]] = {}


def _not_utf8(lib: Any, vocab: Any, n_vocab: int) -> tuple[int, ...]:
    """Tokens whose text is not complete, valid UTF-8 on its own, or holds a NUL (cached).

    llama.cpp's grammar engine reads such a token as an empty string, lets it through any
    grammar, then aborts the process when it accepts it ("Unexpected empty grammar stack",
    seen with byte tokens such as b"\\xc0@"). Under a grammar they are never sampled, so a
    character is written with tokens that hold all of its bytes.
    """
    key = ctypes.cast(vocab, ctypes.c_void_p).value or 0
    found = _not_utf8_cache.get(key)
    if found is None:
        buf = ctypes.create_string_buffer(256)
        bad = []
        for tok in range(n_vocab):
            n = lib.llama_token_to_piece(vocab, tok, buf, len(buf), 0, False)
            piece = buf.raw[: max(n, 0)] if n <= len(buf) else b"\xff"
            try:
                piece.decode("utf-8")
            except UnicodeDecodeError:
                bad.append(tok)
                continue
            if b"\x00" in piece:  # a NUL ends llama.cpp's C string: read as empty too
                bad.append(tok)
        found = _not_utf8_cache[key] = tuple(bad)
    return found


#: grammars llama.cpp has parsed once: parsing them again prints nothing, no need to capture
_parsed_grammars: set[str] = set()
#: room for the tokens of a <text> token reference: llama.cpp needs exactly one
_TOKEN_REF_ROOM = 2


def _grammar_sampler(lib: Any, vocab: Any, grammar: str) -> Any:
    _check_before_llama(lib, vocab, grammar)
    if grammar in _parsed_grammars:
        smpl = lib.llama_sampler_init_grammar(vocab, grammar.encode("utf-8"), b"root")
        said: list[str] = []
    else:
        # llama.cpp's GBNF parser prints its errors to stderr itself; capture them for ours.
        with native_stderr() as said:
            smpl = lib.llama_sampler_init_grammar(vocab, grammar.encode("utf-8"), b"root")
    if not smpl:
        # Its message quotes the grammar from the error on: keep only the reason before that.
        said_text = " ".join(" ".join(said).split())
        why = said_text.split("error parsing grammar: ")[-1].split(" at ", 1)[0]
        raise EngineError(
            f"llama.cpp rejected the GBNF grammar that edgestack's own check accepted "
            f"({why[:80] or 'no reason given'}); please report it with the grammar"
        )
    _parsed_grammars.add(grammar)
    return smpl


def _check_before_llama(lib: Any, vocab: Any, grammar: str) -> None:
    """edgestack's grammar check, then the token references against this model's vocabulary.

    llama.cpp aborts the process when no token fits the grammar at some point, so a token
    reference must name one token that sampling can pick under a grammar: a real id, not an
    end-of-generation token (the grammar ends generation itself by completing), with text.
    """
    info = validate_grammar(grammar, n_vocab=lib.llama_vocab_n_tokens(vocab))
    for ref in info.tokens:
        where = f"GBNF grammar line {ref.line}, column {ref.column}"
        token = ref.token_id
        if ref.text is not None:
            data = ref.text.encode("utf-8")
            buf = (lib.llama_token * _TOKEN_REF_ROOM)()
            n = lib.llama_tokenize(vocab, data, len(data), buf, _TOKEN_REF_ROOM, False, True)
            if n != 1:
                raise GrammarError(
                    f"{where}: expected a token reference that is one token of this model, "
                    f"found {'more' if n < 0 or n > 1 else 'no'} tokens; use <[id]> or a "
                    "special token's exact text"
                )
            token = int(buf[0])
        if ref.negated or token is None:
            continue
        piece = ctypes.create_string_buffer(8)
        if (
            lib.llama_vocab_is_eog(vocab, token)
            or lib.llama_token_to_piece(vocab, token, piece, len(piece), 0, True) == 0
        ):
            raise GrammarError(
                f"{where}: expected a token a grammar can match, found token {token}, which "
                "ends generation or has no text; end the rule there instead"
            )


def check_grammar(lib: Any, vocab: Any, grammar: str) -> None:
    """Raise :class:`GrammarError` if ``grammar`` is not a safe GBNF grammar for this vocabulary.

    edgestack's own check (:mod:`edge_stack.formats.grammar._validate`) runs first, so llama.cpp never parses
    a grammar that could crash or stall it; llama.cpp's parser then runs once per grammar as a
    second line (:class:`EngineError` if it still refuses).
    """
    _check_before_llama(lib, vocab, grammar)
    if grammar not in _parsed_grammars:
        lib.llama_sampler_free(_grammar_sampler(lib, vocab, grammar))


class StopText:
    """Turns token bytes into text that is safe to emit.

    Never emits half a UTF-8 character (incomplete bytes wait for the next token) and never emits
    any part of a stop string: text that could be the start of one is held back until it is
    clear either way. Invalid UTF-8 becomes U+FFFD, as a decoder with ``errors="replace"`` does.
    """

    def __init__(self, stop: Sequence[str]) -> None:
        self._stops = [s for s in stop if s]
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._held = ""
        #: set once a stop string has been seen; nothing more is emitted after that
        self.stopped = False

    def feed(self, piece: bytes) -> str:
        """Add one token's bytes; return the text that can be emitted now."""
        if self.stopped:
            return ""
        text = self._held + self._decoder.decode(piece)
        if not self._stops:
            self._held = ""
            return text
        cut = min((i for i in (text.find(s) for s in self._stops) if i >= 0), default=-1)
        if cut >= 0:
            self.stopped = True
            self._held = ""
            return text[:cut]
        hold = self._longest_stop_prefix_suffix(text)
        self._held = text[len(text) - hold :]
        return text[: len(text) - hold]

    def flush(self) -> str:
        """At the end: text held back for a stop string that never completed.

        Bytes of an unfinished UTF-8 character are dropped rather than emitted as half a character.
        """
        if self.stopped:
            return ""
        held, self._held = self._held, ""
        self._decoder.reset()
        return held

    def _longest_stop_prefix_suffix(self, text: str) -> int:
        best = 0
        for s in self._stops:
            for n in range(min(len(s) - 1, len(text)), best, -1):
                if text.endswith(s[:n]):
                    best = n
                    break
        return best
