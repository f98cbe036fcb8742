"""What each kind of server accepts, and the request and answer shapes of each: pure functions.

Every engine speaks OpenAI's ``/v1/completions`` except Ollama, whose native ``/api/generate``
(raw mode) carries every sampling setting where its OpenAI-compatible endpoint does not. A
setting a stage asks for that an engine cannot carry is refused (:func:`unsupported`), at load
for the stage's own values and per call for overrides, never silently dropped. A setting
"asks for" something when it changes the output: ``top_k``, ``top_p`` and ``min_p`` only matter
when sampling (temperature above 0), ``repeat_penalty`` when it is not 1, a grammar always.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ...formats.grammar._validate import validate_grammar
from .._backend import GenerationParams

#: how many recent tokens the repeat penalty looks at, as the local engine (llama.cpp's default)
REPEAT_LAST_N = 64


@dataclass(frozen=True)
class Dialect:
    """One kind of server."""

    name: str
    #: appended to the stage's url
    path: str
    #: the prompt may go as token ids (else as text)
    token_ids: bool
    #: the settings it carries per request besides max_tokens, temperature and stop
    carries: frozenset[str]
    #: Ollama streams newline-delimited JSON, the others server-sent events
    ndjson: bool = False


_OPENAI = frozenset({"top_p", "seed"})
_LLAMA = frozenset({"top_k", "top_p", "min_p", "repeat_penalty", "seed", "grammar"})

DIALECTS: dict[str, Dialect] = {
    "openai": Dialect("openai", "/completions", False, _OPENAI),
    "llama-server": Dialect("llama-server", "/completions", True, _LLAMA | {"lora_scale"}),
    "llama-cpp-python": Dialect("llama-cpp-python", "/completions", False, _LLAMA),
    # vLLM's repetition_penalty weighs every earlier token, not llama.cpp's last 64: not the same
    "vllm": Dialect("vllm", "/completions", True, _LLAMA - {"repeat_penalty"}),
    "ollama": Dialect("ollama", "/api/generate", False, _LLAMA - {"grammar"}, ndjson=True),
    "edgestack": Dialect("edgestack", "/completions", True, _LLAMA),
}

_WHERE_INSTEAD = "run the stage locally, or on an engine that has it (llama-server, edgestack)"


def unsupported(
    dialect: Dialect, params: GenerationParams, *, lora_scale: float = 1.0
) -> tuple[str, str] | None:
    """The first (key, explanation) of a setting ``dialect`` cannot honour, or None."""
    engine = dialect.name
    carries = dialect.carries
    sampling = params.temperature > 0.0
    if params.grammar is not None:
        if "grammar" not in carries:
            return "grammar", f"engine '{engine}' cannot constrain generation with a GBNF grammar"
        if engine == "vllm" and validate_grammar(params.grammar).tokens:
            return "grammar", "vLLM's grammars cannot hold llama.cpp token references (<[id]>)"
    if params.repeat_penalty != 1.0 and "repeat_penalty" not in carries:
        why = (
            "vLLM's repetition_penalty weighs every earlier token, not the last 64 as llama.cpp"
            if engine == "vllm"
            else f"engine '{engine}' has no repeat penalty"
        )
        return "repeat_penalty", f"{why}; set repeat_penalty = 1.0 or {_WHERE_INSTEAD}"
    filters = (("top_k", params.top_k > 0), ("top_p", params.top_p < 1.0))
    for key, active in (*filters, ("min_p", params.min_p > 0.0)):
        if sampling and active and key not in carries:
            off = {"top_k": "0", "top_p": "1.0", "min_p": "0.0"}[key]
            return key, (
                f"engine '{engine}' cannot apply {key} when sampling (temperature "
                f"{params.temperature:g}); set {key} = {off} (off) or {_WHERE_INSTEAD}"
            )
    if lora_scale != 1.0 and "lora_scale" not in carries:
        return "lora_scale", (
            f"engine '{engine}' applies its adapter at the scale it was loaded with; set "
            "lora_scale = 1.0, or use llama-server (per-request scale)"
        )
    return None


def request_body(
    dialect: Dialect,
    params: GenerationParams,
    prompt: Sequence[int] | str,
    *,
    model: str | None,
    lora_id: int | None = None,
    lora_scale: float = 1.0,
    n_ctx: int | None = None,
    id_slot: int | None = None,
) -> dict[str, Any]:
    """The JSON body of one streamed completion request (``id_slot``: llama-server's slot)."""
    if dialect.ndjson:
        return _ollama_body(params, prompt, model=model, n_ctx=n_ctx)
    body: dict[str, Any] = {
        "prompt": list(prompt) if not isinstance(prompt, str) else prompt,
        "max_tokens": params.max_tokens,
        "temperature": params.temperature,
        "top_p": params.top_p,
        "stream": True,
    }
    if model is not None:
        body["model"] = model
    if params.stop:
        body["stop"] = list(params.stop)
    if params.seed is not None:
        body["seed"] = params.seed
    carries = dialect.carries
    if "top_k" in carries:
        # vLLM turns top-k off with -1 (0 in newer versions); llama.cpp with 0
        body["top_k"] = -1 if dialect.name == "vllm" and params.top_k == 0 else params.top_k
    if "min_p" in carries:
        body["min_p"] = params.min_p
    if "repeat_penalty" in carries:
        body["repeat_penalty"] = params.repeat_penalty
    if params.grammar is not None:
        if dialect.name == "vllm":
            body["structured_outputs"] = {"grammar": params.grammar}
        else:
            body["grammar"] = params.grammar
    if dialect.name in ("llama-server", "vllm", "edgestack"):
        body["stream_options"] = {"include_usage": True}
    if dialect.name == "llama-server":
        body["repeat_last_n"] = REPEAT_LAST_N
        body["cache_prompt"] = True
        if lora_id is not None:
            # adapters not listed run at scale 0 (llama-server's rule for a request's list)
            body["lora"] = [{"id": lora_id, "scale": lora_scale}]
        if id_slot is not None:
            body["id_slot"] = id_slot
    return body


def _ollama_body(
    params: GenerationParams, prompt: Sequence[int] | str, *, model: str | None, n_ctx: int | None
) -> dict[str, Any]:
    options: dict[str, Any] = {
        "num_predict": params.max_tokens,
        "temperature": params.temperature,
        "top_k": params.top_k,
        "top_p": params.top_p,
        "min_p": params.min_p,
        "repeat_penalty": params.repeat_penalty,
        "repeat_last_n": REPEAT_LAST_N,
    }
    if params.stop:
        options["stop"] = list(params.stop)
    if params.seed is not None:
        options["seed"] = params.seed
    if n_ctx is not None:
        options["num_ctx"] = n_ctx
    # raw: the prompt as it is, no chat template around it
    return {"model": model, "prompt": prompt, "raw": True, "stream": True, "options": options}


@dataclass(frozen=True)
class Piece:
    """What one streamed object says: new text, and at the end the reason and the token count."""

    text: str
    finish: str | None = None
    completion_tokens: int | None = None


class BadAnswer(ValueError):
    """An object that is not what the engine should send; the message says what is missing."""


def engine_error(obj: object) -> str | None:
    """The message of an error object (``{"error": ...}`` in OpenAI's or Ollama's shape)."""
    if not isinstance(obj, dict) or "error" not in obj:
        return None
    error = obj["error"]
    if isinstance(error, dict):
        error = error.get("message", error)
    return str(error)


def parse_piece(dialect: Dialect, obj: object) -> Piece:
    """One streamed object (or a whole non-streamed answer) as a :class:`Piece`."""
    if not isinstance(obj, dict):
        raise BadAnswer(f"expected a JSON object, found {type(obj).__name__}")
    if dialect.ndjson:
        text = obj.get("response", "")
        if not isinstance(text, str):
            raise BadAnswer("expected a string 'response' in each object")
        if obj.get("done") is True:
            count = obj.get("eval_count")
            reason = obj.get("done_reason")
            return Piece(
                text,
                finish=reason if isinstance(reason, str) and reason else "stop",
                completion_tokens=count if _is_count(count) else None,
            )
        if "response" not in obj:
            raise BadAnswer("expected 'response' or 'done' in each object")
        return Piece(text)
    usage = obj.get("usage")
    count = usage.get("completion_tokens") if isinstance(usage, dict) else None
    choices = obj.get("choices")
    if not isinstance(choices, list):
        raise BadAnswer("expected a 'choices' list in each object")
    if not choices:  # the usage-only object at the end of a stream
        if not _is_count(count):
            raise BadAnswer("expected choices[0] (or usage) in each object")
        return Piece("", completion_tokens=count)
    choice = choices[0]
    text = choice.get("text") if isinstance(choice, dict) else None
    if not isinstance(text, str):
        raise BadAnswer("expected a string choices[0].text in each object")
    reason = choice.get("finish_reason")
    return Piece(
        text,
        finish=reason if isinstance(reason, str) and reason else None,
        completion_tokens=count if _is_count(count) else None,
    )


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0
