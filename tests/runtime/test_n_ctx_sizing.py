"""Right-sized contexts: a stage without n_ctx gets what its template, the question limit and
max_tokens can need, rounded up to llama.cpp's 256 cells; an explicit n_ctx wins."""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

from edge_stack import Stack
from edge_stack.engines.llama._engine import Engine
from edge_stack.engines.llama._sizing import (
    CONTEXT_BYTES,
    PLACEHOLDER_SLACK,
    fixed_tokens,
    group_by_size,
    kv_cell_bytes,
    round_n_ctx,
    stage_need,
)
from edge_stack.errors import BadArgument, ManifestError
from edge_stack.formats._template import Rendered, Segment, parse_template, render
from edge_stack.manifest import DEFAULT_MAX_QUESTION_TOKENS, load_manifest

from stack_builders import write_stack

S = PLACEHOLDER_SLACK


@pytest.mark.parametrize(
    ("tokens", "n_ctx"),
    [(1, 256), (255, 256), (256, 256), (257, 512), (700, 768), (1 << 20, 1 << 20)],
)
def test_round_n_ctx(tokens: int, n_ctx: int) -> None:
    assert round_n_ctx(tokens) == n_ctx


@pytest.mark.parametrize(
    ("template", "fixed", "max_tokens", "limit", "outputs", "need"),
    [
        ("Q: {question}\nA:", 5, 16, 128, {}, 5 + 128 + S + 16),
        ("{question}{question}", 0, 1, 10, {}, 2 * (10 + S) + 1),
        ("E: {extract}\nV:", 4, 8, 128, {"extract": 24}, 4 + 2 * 24 + S + 8),
        ("{question} {a} {b}", 2, 3, 50, {"a": 7, "b": 9}, 2 + 50 + 2 * (7 + 9) + 3 * S + 3),
        ("no placeholders", 3, 40, 128, {}, 43),
    ],
)
def test_stage_need(
    template: str, fixed: int, max_tokens: int, limit: int, outputs: dict[str, int], need: int
) -> None:
    got = stage_need(
        parse_template(template),
        fixed=fixed,
        max_tokens=max_tokens,
        max_question_tokens=limit,
        output_tokens=outputs,
    )
    assert got == need


PYTHIA_CELL = kv_cell_bytes(12, 768, 768, "f16")  # 36,864 bytes


@pytest.mark.parametrize(
    ("cells", "cell_bytes", "groups"),
    [
        # Pythia-160M f16: a 256-cell stage among 512-cell ones saves 9.4 MB of KV cache alone,
        # more than a context of its own costs
        (
            [("extract", 512), ("plan", 512), ("compute", 256), ("answer", 512)],
            PYTHIA_CELL,
            [["extract", "plan", "answer"], ["compute"]],
        ),
        # a tiny model: the saving is below CONTEXT_BYTES, so all share
        ([("a", 256), ("b", 512), ("c", 256)], 1024, [["a", "b", "c"]]),
        ([("a", 512), ("b", 512)], PYTHIA_CELL, [["a", "b"]]),
        ([("only", 768)], PYTHIA_CELL, [["only"]]),
        # two sizes, two of each: two shared contexts
        (
            [("a", 256), ("b", 1024), ("c", 256), ("d", 1024)],
            PYTHIA_CELL,
            [["a", "c"], ["b", "d"]],
        ),
    ],
)
def test_group_by_size(
    cells: list[tuple[str, int]], cell_bytes: float, groups: list[list[str]]
) -> None:
    assert group_by_size(cells, cell_bytes) == groups

    # never worse than one context for all
    def cost(gs: list[list[str]]) -> float:
        size = dict(cells)
        return sum(len(g) * max(size[n] for n in g) * cell_bytes + CONTEXT_BYTES for g in gs)

    assert cost(groups) <= cost([[n for n, _ in cells]])


def test_fixed_tokens_counts_the_template_text_only() -> None:
    template = parse_template("ab{question}cd{x}")
    seen: list[str] = []

    def tokenize(prompt: Rendered) -> list[int]:
        seen.append(prompt.text)
        return [0] * len(prompt.text)

    assert fixed_tokens(template, tokenize) == 4
    assert seen == ["abcd"]


SIZED = """
name = "sized"
version = 1
{top}
[defaults]
model = "base.gguf"
[[stages]]
name = "extract"
prompt = "Question: {{question}}\\nEquation:"
max_tokens = {extract_max}
[[stages]]
name = "long"
prompt = "{long_text}Question: {{question}}\\nEquation: {{extract}}\\nAnswer:"
max_tokens = 40
[[stages]]
name = "fixed"
prompt = "Equation: {{extract}}\\nValue:"
n_ctx = 100
max_tokens = 8
"""


def _text_of(runner: object, n: int) -> str:
    """Plain text that is exactly ``n`` tokens for ``runner``'s tokenizer."""

    def count(text: str) -> int:
        return len(runner.tokenize(Rendered((Segment(text, inserted=True),))))  # type: ignore[attr-defined]

    empty = count("")
    text = ""
    while count(text) - empty < n:
        for word in (" seven", " a", "a", "7", "."):
            if count(text + word) - empty <= n:
                text += word
                break
        else:
            break
    assert count(text) - empty == n
    return text


def _stack(
    root: Path, base: Path, *, top: str = "", extract_max: int = 16, long_text: str = ""
) -> Path:
    toml = SIZED.format(top=top, extract_max=extract_max, long_text=long_text)
    return write_stack(root, toml, {"base.gguf": base})


@pytest.fixture(scope="module")
def base(tiny_gguf: Callable[..., Path]) -> Path:
    return tiny_gguf("gptneox", "q8_0")


@pytest.mark.llama
@pytest.mark.torch
@pytest.mark.parametrize(
    ("top", "extract_max", "long_text"),
    [
        ("", 16, ""),
        ("max_question_tokens = 300", 16, ""),
        ("max_question_tokens = 20", 200, ""),
        ("", 16, "Some fixed instructions that go on. " * 30),
    ],
)
def test_engine_sizes_each_stage_for_what_it_can_need(
    base: Path, tmp_path: Path, top: str, extract_max: int, long_text: str
) -> None:
    spec = load_manifest(
        _stack(tmp_path / "s", base, top=top, extract_max=extract_max, long_text=long_text)
    )
    limit = spec.question_tokens
    engine = Engine(spec, threads=1)
    try:
        for stage in spec.stages:
            runner = engine.runner(stage.name)
            if not stage.n_ctx_auto:
                assert engine.n_ctx[stage.name] == runner.n_ctx == stage.n_ctx == 100
                continue
            fixed = len(
                runner.tokenize(render(stage.template, dict.fromkeys(stage.template.fields, "")))
            )
            outputs = sum(
                2 * spec.stage(f).max_tokens + S for f in stage.template.fields if f != "question"
            )
            uses_question = "question" in stage.template.fields
            need = fixed + (limit + S if uses_question else 0) + outputs + stage.max_tokens
            assert runner.n_ctx == engine.n_ctx[stage.name] == round_n_ctx(need)
            # The worst case fits: a question at the limit, every output at its max_tokens.
            worst = {"question": _text_of(runner, limit)}
            for f in stage.template.fields:
                if f != "question":
                    worst[f] = _text_of(runner, spec.stage(f).max_tokens).strip()
            tokens = runner.tokenize(render(stage.template, worst))
            assert len(tokens) + stage.max_tokens <= runner.n_ctx
    finally:
        engine.close()


@pytest.mark.llama
@pytest.mark.torch
def test_question_limit_is_enforced_before_any_stage(base: Path, tmp_path: Path) -> None:
    path = _stack(tmp_path / "s", base, top="max_question_tokens = 24")
    with Stack.load(path, threads=1) as stack:
        ok = _text_of(stack.runner("extract"), 24)
        assert stack.ask(ok).text is not None  # at the limit: every stage fits
        engine = stack._backend
        assert isinstance(engine, Engine)
        last = engine.runner("extract").context.last_stats
        too_long = ok + " seven"
        with pytest.raises(BadArgument, match=r"max_question_tokens of 24.*stack.toml"):
            stack.ask(too_long)
        with pytest.raises(BadArgument, match=r"questions\[1\] is \d+ tokens"):
            stack.ask_batch([ok, too_long])
        assert engine.runner("extract").context.last_stats is last  # no stage ran since


@pytest.mark.llama
@pytest.mark.torch
def test_stacks_whose_stages_all_set_n_ctx_keep_the_context_rule(
    base: Path, tmp_path: Path
) -> None:
    path = write_stack(
        tmp_path / "s",
        """
        name = "explicit"
        version = 1
        [defaults]
        model = "base.gguf"
        n_ctx = 300
        max_tokens = 4
        [[stages]]
        name = "only"
        prompt = "Q: {question}\\nA:"
        """,
        {"base.gguf": base},
    )
    spec = load_manifest(path)
    assert spec.question_limit is None
    with Stack.load(path, threads=1) as stack:
        assert stack.ask("word " * 40).text is not None  # past the default limit, still fits


@pytest.mark.parametrize(
    ("top", "message"),
    [
        ("max_question_tokens = 0", "key 'max_question_tokens': must be an integer of at least 1"),
        ('max_question_tokens = "many"', "key 'max_question_tokens'"),
        ('memory = "tiny"', "key 'memory': must be one of shared, separate, low"),
        ("memory = 1", "key 'memory'"),
    ],
)
def test_manifest_refuses_bad_values(tmp_path: Path, top: str, message: str) -> None:
    root = tmp_path / "s"
    root.mkdir()
    (root / "base.gguf").write_bytes(b"")
    (root / "stack.toml").write_text(
        textwrap.dedent(SIZED.format(top=top, extract_max=16, long_text="")), encoding="utf-8"
    )
    with pytest.raises(ManifestError, match=message):
        load_manifest(root / "stack.toml")


@pytest.mark.parametrize(
    ("top", "limit", "sized_for"),
    [
        ("", DEFAULT_MAX_QUESTION_TOKENS, DEFAULT_MAX_QUESTION_TOKENS),
        ("max_question_tokens = 9", 9, 9),
    ],
)
def test_manifest_question_limit(tmp_path: Path, top: str, limit: int, sized_for: int) -> None:
    root = tmp_path / "s"
    root.mkdir()
    (root / "base.gguf").write_bytes(b"")
    (root / "stack.toml").write_text(
        textwrap.dedent(SIZED.format(top=top, extract_max=16, long_text="")), encoding="utf-8"
    )
    spec = load_manifest(root / "stack.toml")
    assert (spec.question_limit, spec.question_tokens) == (limit, sized_for)
    assert [s.n_ctx_auto for s in spec.stages] == [True, True, False]
