"""stack.toml numbers: every numeric key has an upper bound, and max_tokens fits n_ctx."""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest

from edge_stack.errors import ManifestError
from edge_stack.manifest import (
    MAX_LORA_SCALE,
    MAX_REPEAT_PENALTY,
    _float_range,
    _int_range,
    load_manifest,
)
from edge_stack.util._limits import MAX_N_CTX

from .conftest import MakeStack

STAGE = 'name = "s"\nmodel = "base.gguf"\nprompt = "{question}"\n'

# (extra stage lines, the key the message must name, a substring of the message)
BAD = [
    (f"n_ctx = {MAX_N_CTX + 1}\n", "n_ctx", f"at most {MAX_N_CTX}"),
    (f"n_ctx = {2**63 - 1}\n", "n_ctx", f"at most {MAX_N_CTX}"),
    (f"n_ctx = {MAX_N_CTX}\nmax_tokens = {MAX_N_CTX + 1}\n", "max_tokens", f"at most {MAX_N_CTX}"),
    ("n_ctx = 512\nmax_tokens = 600\n", "max_tokens", "600 is more than the stage's n_ctx (512)"),
    ("n_ctx = 64\nmax_tokens = 65\n", "max_tokens", "more than the stage's n_ctx (64)"),
    ("top_k = 2147483648\n", "top_k", "at most 2147483647"),
    ("lora_scale = 1e300\n", "lora_scale", f"at most {MAX_LORA_SCALE}"),
    ("lora_scale = -101.0\n", "lora_scale", f"at least {-MAX_LORA_SCALE}"),
    ("lora_scale = inf\n", "lora_scale", "got inf"),
    ("lora_scale = nan\n", "lora_scale", "got nan"),
    ("repeat_penalty = 1e39\n", "repeat_penalty", f"at most {MAX_REPEAT_PENALTY}"),
    ("repeat_penalty = inf\n", "repeat_penalty", "got inf"),
    ("seed = 4294967295\n", "seed", "at most 4294967294"),
]


@pytest.mark.parametrize(("extra", "key", "match"), BAD)
def test_out_of_range_is_one_line(make_stack: MakeStack, extra: str, key: str, match: str) -> None:
    path = make_stack("version = 1\n[[stages]]\n" + STAGE + extra)
    with pytest.raises(ManifestError) as info:
        load_manifest(path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message
    assert f"stage 's', key '{key}'" in message and match in message


def test_max_tokens_from_defaults_is_checked_against_each_stage(make_stack: MakeStack) -> None:
    path = make_stack(
        "version = 1\n[defaults]\nmax_tokens = 100\n[[stages]]\n"
        + STAGE
        + 'n_ctx = 128\n[[stages]]\nname = "t"\nmodel = "base.gguf"\nprompt = "{s}"\n'
        "n_ctx = 64\n"
    )
    with pytest.raises(ManifestError, match=r"stage 't', key 'max_tokens': 100 is more than"):
        load_manifest(path)


@pytest.mark.parametrize(
    "extra",
    [
        f"n_ctx = {MAX_N_CTX}\nmax_tokens = {MAX_N_CTX}\n",
        "n_ctx = 16\nmax_tokens = 16\n",
        "top_k = 2147483647\n",
        f"lora_scale = {-MAX_LORA_SCALE}\nrepeat_penalty = {MAX_REPEAT_PENALTY}\n",
        "seed = 4294967294\n",
    ],
)
def test_bounds_themselves_are_allowed(make_stack: MakeStack, extra: str) -> None:
    assert load_manifest(make_stack("version = 1\n[[stages]]\n" + STAGE + extra)).stages


# The range checkers themselves, built inside the test: the manifest builds its own at import,
# where a mutation tool cannot reach them (issue 19).
# (kind, lo, hi, lo_open, value, the value returned or the error)
RANGES: list[tuple[str, float, float | None, bool, object, object]] = [
    ("int", 1, None, False, 1, 1),
    ("int", 1, None, False, 0, "must be an integer of at least 1, got 0"),
    ("int", 1, 5, False, 5, 5),
    ("int", 1, 5, False, 6, "must be an integer of at least 1 and at most 5, got 6"),
    ("int", 1, 5, False, True, "must be an integer of at least 1 and at most 5, got True"),
    ("int", 1, 5, False, 2.0, "got 2.0"),
    ("int", 0, None, False, 10**30, 10**30),
    ("float", 0.0, 1.0, False, 0.0, 0.0),
    ("float", 0.0, 1.0, False, 1, 1.0),
    ("float", 0.0, 1.0, False, -0.5, "must be a number at least 0.0 and at most 1.0, got -0.5"),
    ("float", 0.0, 1.0, False, 1.5, "must be a number at least 0.0 and at most 1.0, got 1.5"),
    ("float", 0.0, 1.0, True, 0.0, "must be a number above 0.0 and at most 1.0, got 0.0"),
    ("float", 0.0, 1.0, True, 1e-9, 1e-9),
    ("float", 0.0, 1.0, True, 1.0, 1.0),
    ("float", 0.0, 1.0, False, float("nan"), "got nan"),
    ("float", 0.0, 1.0, False, "0.5", "got '0.5'"),
]


@pytest.mark.parametrize(("kind", "lo", "hi", "lo_open", "value", "expected"), RANGES)
def test_range_checkers(
    kind: str, lo: float, hi: float | None, lo_open: bool, value: object, expected: object
) -> None:
    check: Callable[[object], object]
    # the defaults (no upper bound, a closed lower bound) are left to the checkers
    if kind == "int":
        check = _int_range(int(lo)) if hi is None else _int_range(int(lo), int(hi))
    else:
        assert hi is not None
        check = _float_range(lo, hi, lo_open=True) if lo_open else _float_range(lo, hi)
    if isinstance(expected, str):
        with pytest.raises(ValueError, match=re.escape(expected)):
            check(value)
    else:
        got = check(value)
        assert got == expected and type(got) is type(expected)
