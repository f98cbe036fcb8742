"""Train the default ``word-problems`` stack upstream: tokenizer, base model, one LoRA per stage.

Needs the optional ``train`` extra (torch, transformers, peft, tokenizers); the edgestack runtime
never imports this file. Everything is generated here and seeded, so a run is reproducible::

    python models/word-problems/train.py --out /work/artifacts/word-problems
    python models/word-problems/train.py --out /tmp/wp-quick --quick    # a smoke run, seconds

Writes, under ``--out``::

    base/                 GPT-NeoX base (config.json, model.safetensors, tokenizer files)
    adapters/<stage>/     PEFT LoRA per stage (adapter_config.json, adapter_model.safetensors)
    baseline/             single model, question -> final sentence (the paper's comparison)
    train_log.json        settings, parameter counts, losses and seconds per phase

``--only stack`` / ``--only baseline`` run one half (both can run at once, on a core each; the
log is then ``train_log_<half>.json``); ``--only adapters`` retrains the adapters over the base
already in ``--out``. Measure with ``eval_reference.py --out DIR``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import random
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import generate
import stages as stages_mod
from train_data import (
    EOS,
    WHOLE_NUMBERS,
    Encoded,
    batches,
    encode,
    save_tokenizer,
    train_tokenizer,
)

log = logging.getLogger("train")

LORA_TARGETS = ["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"]


@dataclass(frozen=True)
class Settings:
    """Every knob of a run; written to ``train_log.json``."""

    seed: int = 0
    threads: int = 1  # run --only stack and --only baseline side by side on a 2-core CPU
    only: str = "all"  # "all", "stack", "baseline" or "adapters" (over the base in --out)
    problems: int = 20000
    vocab_size: int = 1024
    # "no" (every number 0..199 one token), "apart" or "alone": see train_data.train_tokenizer
    split_digits: str = "no"
    hidden: int = 128
    layers: int = 4
    heads: int = 4
    # rotary on every dimension of each head (Pythia uses 0.25): copying numbers by position needs it
    rotary_pct: float = 1.0
    max_positions: int = 256
    batch_tokens: int = 2048
    base_steps: int = 5300  # one epoch of the default data (5 309 batches)
    base_lr: float = 3e-3
    # loss on prompts too (plain LM) or, by default, on the stages' outputs only
    base_prompt_loss: bool = False
    weight_decay: float = 0.1
    # examples per problem of each stage in the base's mix (fresh problems for each repeat)
    base_mix: str = "extract=5,compute=0,answer=4"
    # copies of the whole expression table (generate.all_expressions, ~15 000) among the base's
    # compute texts, on top of base_mix's; the compute adapter trains on the table (epochs repeat)
    compute_table: int = 20
    # how often each operator's expressions occur in one copy of the table (there are 9 801
    # additions, 4 949 subtractions and 240 products)
    table_repeat: str = "+=1,-=1,*=20"
    # write each whole number's digits into its token's embedding rows at initialisation
    number_features: bool = True
    # share of answer examples whose result is a random number (the sentence ends with it): the
    # answer stage learns to copy the result it is given instead of recomputing the expression
    answer_random_result: float = 0.5
    adapter_steps: str = "extract=800,compute=600,answer=800"
    adapter_lr: float = 2e-3
    lora_r: int = 8
    lora_alpha: int = 16
    warmup: int = 100
    tokenizer_problems: int = 20000
    # questions the baseline trains on: the first ones of the stream the stack's texts come from
    baseline_problems: int = 200000

    @classmethod
    def quick(cls) -> Settings:
        """A smoke-test run: tiny model, a few steps."""
        return cls(
            problems=3000,
            hidden=64,
            layers=2,
            heads=4,
            base_steps=60,
            compute_table=2,
            adapter_steps="extract=20,compute=20,answer=20",
            warmup=10,
            tokenizer_problems=3000,
            baseline_problems=3000,
        )

    def per_stage(self, field: str) -> dict[str, int]:
        """``"extract=1,compute=3"`` -> ``{"extract": 1, "compute": 3}``."""
        pairs = (item.split("=") for item in getattr(self, field).split(","))
        return {name.strip(): int(value) for name, value in pairs}


# --- models --------------------------------------------------------------------------------------


def base_config(s: Settings, vocab: int, eos_id: int, *, intermediate: int | None = None) -> Any:
    """GPT-NeoX as in Pythia (parallel residual, untied embeddings), small; rotary on
    ``s.rotary_pct`` of each head."""
    from transformers import GPTNeoXConfig

    return GPTNeoXConfig(
        vocab_size=vocab,
        hidden_size=s.hidden,
        num_hidden_layers=s.layers,
        num_attention_heads=s.heads,
        intermediate_size=intermediate or 4 * s.hidden,
        rotary_pct=s.rotary_pct,
        use_parallel_residual=True,
        max_position_embeddings=s.max_positions,
        tie_word_embeddings=False,
        bos_token_id=eos_id,
        eos_token_id=eos_id,
        pad_token_id=eos_id,
    )


def n_params(model: Any, *, trainable_only: bool = False) -> int:
    """Parameter count (all, or only those that train)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def fit_loop(
    model: Any, data: Iterator[dict[str, Any]], steps: int, lr: float, s: Settings
) -> dict[str, float]:
    """AdamW with linear warmup and cosine decay to 10%; returns first/last loss and seconds."""
    import torch

    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=s.weight_decay, betas=(0.9, 0.98))
    warmup = min(s.warmup, max(1, steps // 10))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, steps - warmup)
        return 0.1 + 0.45 * (1 + math.cos(math.pi * progress))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    model.train()
    start, losses = time.perf_counter(), []
    for step, batch in enumerate(data):
        loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if step % 100 == 0 or step == steps - 1:
            log.info("step %d/%d loss %.4f", step + 1, steps, losses[-1])
    model.eval()
    tail = losses[-20:]
    return {
        "steps": steps,
        "first_loss": losses[0],
        "last_loss": sum(tail) / len(tail),
        "seconds": time.perf_counter() - start,
    }


def write_number_features(model: Any, tok: Any) -> int:
    """Give every whole-number token its decimal digits at initialisation, in its input and its
    output embedding row: dims 0-9 one-hot units digit, 10-29 one-hot tens (0-19), 30 the value
    / 100 (dim 31 zero; the rest stays random). Arithmetic on whole-number tokens is then a
    per-digit table with carries instead of 15 000 unrelated facts. Measured (compute stage alone,
    from scratch, 1000 steps): whole table 51% -> 96%, additions 51% -> 99.9%. These are
    ordinary trainable weights: the converter and llama.cpp see nothing new. Returns how many
    tokens got features (numbers that are not one token, in the digit modes, are skipped)."""
    import torch

    done = 0
    with torch.no_grad():
        for n in WHOLE_NUMBERS:
            ids = tok.encode(f" {n}").ids
            if len(ids) != 1:
                continue
            features = torch.zeros(32)
            features[n % 10] = 1.0
            features[10 + n // 10] = 1.0
            features[30] = n / 100
            for weights in (
                model.get_input_embeddings().weight,
                model.get_output_embeddings().weight,
            ):
                weights[ids[0], :32] = features
            done += 1
    return done


def new_model(s: Settings, tok: Any, *, intermediate: int | None = None) -> Any:
    """A freshly initialised GPT-NeoX (seeded), with number features if ``s`` asks for them."""
    import torch
    from transformers import GPTNeoXForCausalLM

    torch.manual_seed(s.seed)
    eos_id = tok.token_to_id(EOS)
    config = base_config(s, tok.get_vocab_size(), eos_id, intermediate=intermediate)
    model = GPTNeoXForCausalLM(config)
    if s.number_features:
        write_number_features(model, tok)
    return model


def train_base(s: Settings, data: Sequence[Encoded], tok: Any, out: Path) -> dict[str, Any]:
    """The base LM, from scratch, on the stages' texts (loss on their outputs, by default)."""
    eos_id = tok.token_to_id(EOS)
    model = new_model(s, tok)
    feed = batches(
        data, s.batch_tokens, s.base_steps, s.seed, prompt_loss=s.base_prompt_loss, pad_id=eos_id
    )
    stats = fit_loop(model, feed, s.base_steps, s.base_lr, s)
    model.save_pretrained(out)
    return {"params": n_params(model), **stats}


def lora_config(s: Settings) -> Any:
    """The LoRA every stage uses."""
    from peft import LoraConfig

    return LoraConfig(
        r=s.lora_r,
        lora_alpha=s.lora_alpha,
        lora_dropout=0.0,
        bias="none",
        target_modules=LORA_TARGETS,
        task_type="CAUSAL_LM",
    )


def train_adapter(
    s: Settings, base_dir: Path, data: Sequence[Encoded], steps: int, out: Path, seed: int
) -> dict[str, Any]:
    """One stage's LoRA over the frozen base, loss on the stage's output tokens and EOS."""
    import torch
    from peft import get_peft_model
    from transformers import GPTNeoXForCausalLM

    torch.manual_seed(seed)
    base = GPTNeoXForCausalLM.from_pretrained(base_dir)
    model = get_peft_model(base, lora_config(s))
    pad = base.config.eos_token_id
    feed = batches(data, s.batch_tokens, steps, seed, prompt_loss=False, pad_id=pad)
    stats = fit_loop(model, feed, steps, s.adapter_lr, s)
    model.save_pretrained(out)
    return {"params": n_params(model, trainable_only=True), **stats}


def baseline_intermediate(s: Settings, vocab: int, eos_id: int, target: int) -> int:
    """The FFN width (a multiple of 32) that brings the baseline closest to ``target`` params."""
    import torch
    from transformers import GPTNeoXForCausalLM

    def count(ff: int) -> int:
        with torch.device("meta"):
            return n_params(GPTNeoXForCausalLM(base_config(s, vocab, eos_id, intermediate=ff)))

    per_32 = count(4 * s.hidden + 32) - count(4 * s.hidden)
    return 4 * s.hidden + 32 * round((target - count(4 * s.hidden)) / per_32)


def stack_param_count(s: Settings, vocab: int, eos_id: int, n_stages: int) -> int:
    """Parameters the stack holds: the shared base once, plus every stage's LoRA A and B
    (r x (in + out) per targeted linear layer). Counted on the meta device, nothing allocated."""
    import torch
    from transformers import GPTNeoXForCausalLM

    with torch.device("meta"):
        base = GPTNeoXForCausalLM(base_config(s, vocab, eos_id))
    lora = sum(
        s.lora_r * (module.in_features + module.out_features)
        for name, module in base.named_modules()
        if isinstance(module, torch.nn.Linear) and name.rsplit(".", 1)[-1] in LORA_TARGETS
    )
    return n_params(base) + n_stages * lora


def train_baseline(
    s: Settings, data: Sequence[Encoded], tok: Any, target: int, out: Path
) -> dict[str, Any]:
    """Question -> sentence in one model, same budget as the stack: the base's steps, then the
    adapters' steps (summed) with loss on the sentence only, all weights training."""
    eos_id, vocab = tok.token_to_id(EOS), tok.get_vocab_size()
    ff = baseline_intermediate(s, vocab, eos_id, target)
    model = new_model(s, tok, intermediate=ff)
    feed = batches(
        data, s.batch_tokens, s.base_steps, s.seed, prompt_loss=s.base_prompt_loss, pad_id=eos_id
    )
    first = fit_loop(model, feed, s.base_steps, s.base_lr, s)
    steps = sum(s.per_stage("adapter_steps").values())
    feed = batches(data, s.batch_tokens, steps, s.seed + 1, prompt_loss=False, pad_id=eos_id)
    second = fit_loop(model, feed, steps, s.adapter_lr, s)
    model.save_pretrained(out)
    return {
        "params": n_params(model),
        "intermediate_size": ff,
        "lm": first,
        "finetune": second,
        "seconds": first["seconds"] + second["seconds"],
    }


# --- the run -------------------------------------------------------------------------------------


def build_tokenizer(s: Settings, stack: list[stages_mod.StagePrompt]) -> Any:
    """The BPE, trained on the stage texts of the first ``tokenizer_problems`` problems."""
    problems = generate.problems(s.seed, s.tokenizer_problems, "train")
    texts = [e.prompt + e.completion for p in problems for e in stages_mod.stage_examples(p, stack)]
    return train_tokenizer(texts, s.vocab_size, split_digits=s.split_digits)


def stage_data(
    s: Settings, stack: list[stages_mod.StagePrompt]
) -> dict[str, list[stages_mod.Example]]:
    """Per stage, its examples from ``problems`` training problems times its share in the mix
    (each repeat draws fresh problems)."""
    mix = s.per_stage("base_mix")
    most = max(mix.values())
    problems = generate.problems(s.seed, s.problems * most, "train")
    rows = [stages_mod.stage_examples(p, stack) for p in problems]
    data = {
        st.name: [row[i] for row in rows[: s.problems * mix.get(st.name, 1)]]
        for i, st in enumerate(stack)
    }
    if s.answer_random_result and "answer" in data:
        rng = random.Random(f"answer:{s.seed}")
        last = [st.name for st in stack].index("answer")
        data["answer"] = [
            stages_mod.stage_examples(random_result(p, rng, s.answer_random_result), stack)[last]
            for p in problems[: len(data["answer"])]
        ]
    return data


def random_result(problem: generate.Problem, rng: random.Random, share: float) -> generate.Problem:
    """With probability ``share``, ``problem`` with another result (0..198) in place of its value,
    and its sentence ending with that number: an answer example the expression can't give."""
    if rng.random() >= share:
        return problem
    value = rng.choice([n for n in range(199) if n != problem.value])
    sentence = problem.sentence.rsplit(" ", 1)[0] + f" {value}"
    return replace(problem, value=value, sentence=sentence)


def table_data(
    stack: list[stages_mod.StagePrompt], repeat: dict[str, int] | None = None
) -> list[stages_mod.Example]:
    """The compute stage's example for every expression the generator can write, each
    ``repeat[operator]`` times (default once)."""
    stage = next(st for st in stack if st.name == "compute")
    return [
        stages_mod.Example(
            stage.name,
            stages_mod.render(stage.template, {"extract": e}),
            str(generate.evaluate_expression(e)),
        )
        for e in generate.all_expressions()
        for _ in range((repeat or {}).get(e.split()[1], 1))
    ]


def run_stack(
    s: Settings, out: Path, tok: Any, stack: list[stages_mod.StagePrompt]
) -> dict[str, Any]:
    """Base, then one adapter per stage (``--only adapters``: reuse the base already in ``out``;
    the tokenizer and data are rebuilt from the seed, so they match it)."""
    eos_id, vocab = tok.token_to_id(EOS), tok.get_vocab_size()
    data = {name: encode(tok, examples, eos_id) for name, examples in stage_data(s, stack).items()}
    repeat = s.per_stage("table_repeat")
    table = encode(tok, table_data(stack, repeat), eos_id) if s.compute_table else []
    result: dict[str, Any] = {}
    if s.only == "adapters":
        result["base"] = reused_base(out / "base", tok)
    else:
        mixed = [e for encoded in data.values() for e in encoded] + table * s.compute_table
        log.info("base: %d stage texts, vocab %d", len(mixed), vocab)
        result["base"] = train_base(s, mixed, tok, out / "base")
        # after the model: its save clears the folder
        save_tokenizer(tok, out / "base", s.max_positions)
    result["adapters"] = {}
    steps = s.per_stage("adapter_steps")
    if table:  # the compute adapter learns the whole table (plus base_mix's compute texts, if any)
        data["compute"] = data["compute"] + table
    for i, (name, encoded) in enumerate(data.items()):
        log.info("adapter %s", name)
        result["adapters"][name] = train_adapter(
            s, out / "base", encoded, steps[name], out / "adapters" / name, s.seed + 1 + i
        )
    adapters = sum(a["params"] for a in result["adapters"].values())
    result["stack_params"] = result["base"]["params"] + adapters
    return result


def reused_base(folder: Path, tok: Any) -> dict[str, Any]:
    """Parameter count of an existing base; refuses one whose tokenizer differs from ``tok``."""
    from transformers import GPTNeoXForCausalLM

    saved = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))["model"]["vocab"]
    if saved != tok.get_vocab():
        raise ValueError(f"{folder}: its tokenizer is not this run's (other settings or seed?)")
    return {"params": n_params(GPTNeoXForCausalLM.from_pretrained(folder)), "reused": True}


def run_baseline(s: Settings, out: Path, tok: Any, stack_params: int) -> dict[str, Any]:
    """The single-model baseline on the same problems."""
    eos_id = tok.token_to_id(EOS)
    stage = stages_mod.load_stages(stages_mod.BASELINE_RECIPE)[0]
    # the start of the problem stream the stack's stage texts come from
    problems = generate.problems(s.seed, s.baseline_problems, "train")
    data = encode(tok, [stages_mod.baseline_example(p, stage) for p in problems], eos_id)
    log.info("baseline: %d questions, target %d params", len(data), stack_params)
    result = train_baseline(s, data, tok, stack_params, out / "baseline")
    save_tokenizer(tok, out / "baseline", s.max_positions)
    return result


def run(s: Settings, out: Path) -> dict[str, Any]:
    """The whole pipeline (or the half ``s.only`` names); returns and writes the training log."""
    import torch

    torch.set_num_threads(s.threads)
    started = time.perf_counter()
    stack = stages_mod.load_stages(stages_mod.RECIPE)
    tok = build_tokenizer(s, stack)
    vocab, eos_id = tok.get_vocab_size(), tok.token_to_id(EOS)
    target = stack_param_count(s, vocab, eos_id, len(stack))
    result: dict[str, Any] = {"settings": asdict(s), "vocab_size": vocab, "stack_params": target}
    if s.only in ("all", "stack", "adapters"):
        result.update(run_stack(s, out, tok, stack))
        result["stack_seconds"] = time.perf_counter() - started
    if s.only in ("all", "baseline"):
        result["baseline"] = run_baseline(s, out, tok, target)
    result["seconds"] = time.perf_counter() - started
    name = {"all": "train_log.json"}.get(s.only, f"train_log_{s.only}.json")
    (out / name).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return result


def parse_settings(argv: Sequence[str] | None) -> tuple[Settings, Path]:
    """Command line -> settings; every Settings field is an option."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="output folder (created)")
    parser.add_argument("--quick", action="store_true", help="tiny smoke run")
    for f in fields(Settings):
        flag = "--" + f.name.replace("_", "-")
        if f.type in ("bool", bool):
            parser.add_argument(flag, type=lambda v: v.lower() in ("1", "true", "yes"))
        else:
            parser.add_argument(flag, type=type(f.default))
    args = parser.parse_args(argv)
    base = Settings.quick() if args.quick else Settings()
    overrides = {f.name: getattr(args, f.name) for f in fields(Settings)}
    kept = {k: v for k, v in overrides.items() if v is not None}
    return Settings(**{**asdict(base), **kept}), args.out


def quiet_libraries() -> None:
    """No progress bars or deprecation chatter from transformers/peft in our logs."""
    import warnings

    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    warnings.filterwarnings("ignore", category=FutureWarning)


def main(argv: Sequence[str] | None = None) -> None:
    """Train everything into ``--out``."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    quiet_libraries()
    settings, out = parse_settings(argv)
    out.mkdir(parents=True, exist_ok=True)
    result = run(settings, out)
    log.info("done in %.0f s", result["seconds"])


if __name__ == "__main__":
    main()
