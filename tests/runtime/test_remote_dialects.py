"""What each kind of server carries, the request bodies, and reading what they stream back."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from edge_stack.engines._backend import GenerationParams
from edge_stack.engines.remote._dialects import (
    DIALECTS,
    BadAnswer,
    Piece,
    engine_error,
    parse_piece,
    request_body,
    unsupported,
)

GREEDY = GenerationParams(
    max_tokens=16,
    temperature=0.0,
    top_k=40,
    top_p=1.0,
    min_p=0.05,
    repeat_penalty=1.0,
    seed=None,
    stop=("\n",),
    grammar=None,
)
SAMPLING = replace(GREEDY, temperature=0.7)
GRAMMAR = 'root ::= [0-9]+ " + " [0-9]+'


@pytest.mark.parametrize(
    ("engine", "params", "lora_scale", "refused"),
    [
        # greedy: the filters change nothing, so every engine takes the defaults
        *[(e, GREEDY, 1.0, None) for e in DIALECTS],
        ("openai", SAMPLING, 1.0, "top_k"),
        ("openai", replace(SAMPLING, top_k=0, min_p=0.0), 1.0, None),
        ("openai", replace(SAMPLING, top_k=0, min_p=0.0, top_p=0.9), 1.0, None),
        ("ollama", SAMPLING, 1.0, None),
        ("vllm", SAMPLING, 1.0, None),
        ("vllm", replace(GREEDY, repeat_penalty=1.1), 1.0, "repeat_penalty"),
        ("openai", replace(GREEDY, repeat_penalty=1.1), 1.0, "repeat_penalty"),
        ("llama-cpp-python", replace(GREEDY, repeat_penalty=1.1), 1.0, None),
        ("ollama", replace(GREEDY, grammar=GRAMMAR), 1.0, "grammar"),
        ("openai", replace(GREEDY, grammar=GRAMMAR), 1.0, "grammar"),
        ("vllm", replace(GREEDY, grammar=GRAMMAR), 1.0, None),
        ("vllm", replace(GREEDY, grammar='root ::= <[42]> "x"'), 1.0, "grammar"),
        ("edgestack", replace(GREEDY, grammar=GRAMMAR), 1.0, None),
        ("llama-server", GREEDY, 0.5, None),
        ("vllm", GREEDY, 0.5, "lora_scale"),
        ("ollama", GREEDY, 0.5, "lora_scale"),
    ],
)
def test_unsupported_settings_are_named(
    engine: str, params: GenerationParams, lora_scale: float, refused: str | None
) -> None:
    problem = unsupported(DIALECTS[engine], params, lora_scale=lora_scale)
    assert (problem[0] if problem else None) == refused
    if problem:
        assert engine in problem[1] or "vLLM" in problem[1]


def test_llama_server_body_carries_every_setting_and_the_adapter() -> None:
    params = replace(SAMPLING, seed=7, grammar=GRAMMAR, repeat_penalty=1.2)
    body = request_body(
        DIALECTS["llama-server"], params, [1, 2, 3], model=None, lora_id=2, lora_scale=0.5
    )
    assert body == {
        "prompt": [1, 2, 3],
        "max_tokens": 16,
        "temperature": 0.7,
        "top_p": 1.0,
        "stream": True,
        "stop": ["\n"],
        "seed": 7,
        "top_k": 40,
        "min_p": 0.05,
        "repeat_penalty": 1.2,
        "grammar": GRAMMAR,
        "stream_options": {"include_usage": True},
        "repeat_last_n": 64,
        "cache_prompt": True,
        "lora": [{"id": 2, "scale": 0.5}],
    }


@pytest.mark.parametrize(
    ("engine", "present", "absent"),
    [
        ("openai", {"model", "top_p"}, {"top_k", "min_p", "repeat_penalty", "lora", "grammar"}),
        ("vllm", {"model", "top_k", "min_p", "structured_outputs"}, {"repeat_penalty", "grammar"}),
        ("llama-cpp-python", {"model", "grammar", "repeat_penalty"}, {"stream_options", "lora"}),
        ("edgestack", {"model", "grammar", "stream_options"}, {"lora", "cache_prompt"}),
    ],
)
def test_openai_bodies_hold_what_the_engine_takes(
    engine: str, present: set[str], absent: set[str]
) -> None:
    grammar = present & {"grammar", "structured_outputs"}
    params = replace(GREEDY, grammar=GRAMMAR) if grammar else GREEDY
    body = request_body(DIALECTS[engine], params, "Q: 1 + 1\nA:", model="m")
    assert present <= set(body), body
    assert not absent & set(body), body
    assert body["prompt"] == "Q: 1 + 1\nA:" and body["stream"] is True


def test_vllm_turns_top_k_off_its_own_way() -> None:
    body = request_body(DIALECTS["vllm"], replace(GREEDY, top_k=0), [5], model="m")
    assert body["top_k"] == -1


def test_ollama_body_is_raw_generate_with_options() -> None:
    body = request_body(
        DIALECTS["ollama"], replace(SAMPLING, seed=3), "Q:", model="stack-extract", n_ctx=256
    )
    assert body == {
        "model": "stack-extract",
        "prompt": "Q:",
        "raw": True,
        "stream": True,
        "options": {
            "num_predict": 16,
            "temperature": 0.7,
            "top_k": 40,
            "top_p": 1.0,
            "min_p": 0.05,
            "repeat_penalty": 1.0,
            "repeat_last_n": 64,
            "stop": ["\n"],
            "seed": 3,
            "num_ctx": 256,
        },
    }


OPENAI = DIALECTS["openai"]
OLLAMA = DIALECTS["ollama"]


@pytest.mark.parametrize(
    ("dialect", "obj", "piece"),
    [
        (OPENAI, {"choices": [{"text": " 12", "finish_reason": None}]}, Piece(" 12")),
        (OPENAI, {"choices": [{"text": "", "finish_reason": "length"}]}, Piece("", "length")),
        (
            OPENAI,
            {
                "choices": [{"text": "x", "finish_reason": "stop"}],
                "usage": {"completion_tokens": 5},
            },
            Piece("x", "stop", 5),
        ),
        (OPENAI, {"choices": [], "usage": {"completion_tokens": 3}}, Piece("", None, 3)),
        (OLLAMA, {"response": " 4", "done": False}, Piece(" 4")),
        (
            OLLAMA,
            {"response": "", "done": True, "done_reason": "length", "eval_count": 9},
            Piece("", "length", 9),
        ),
    ],
)
def test_pieces_are_read(dialect: Any, obj: object, piece: Piece) -> None:
    assert parse_piece(dialect, obj) == piece


@pytest.mark.parametrize(
    ("dialect", "obj", "words"),
    [
        (OPENAI, [1, 2], "JSON object"),
        (OPENAI, {"id": "x"}, "'choices' list"),
        (OPENAI, {"choices": []}, "choices[0]"),
        (OPENAI, {"choices": [{"message": {"content": "hi"}}]}, "choices[0].text"),
        (OPENAI, {"choices": [{"text": 5}]}, "choices[0].text"),
        (OLLAMA, {"model": "m"}, "'response'"),
        (OLLAMA, {"response": 3, "done": False}, "'response'"),
    ],
)
def test_nonsense_is_refused(dialect: Any, obj: object, words: str) -> None:
    with pytest.raises(BadAnswer, match=words.replace("[", r"\[").replace("]", r"\]")):
        parse_piece(dialect, obj)


@pytest.mark.parametrize(
    ("obj", "message"),
    [
        ({"error": {"message": "model not loaded", "code": 503}}, "model not loaded"),
        ({"error": "context overflow"}, "context overflow"),
        ({"choices": []}, None),
        ("text", None),
    ],
)
def test_engine_errors_are_found(obj: object, message: str | None) -> None:
    assert engine_error(obj) == message
