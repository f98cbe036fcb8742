"""Train the default ``word-problems`` stack upstream: tokenizer, base model, one LoRA per stage.

Needs the optional ``train`` extra (torch, transformers, peft, tokenizers); the edgestack runtime
never imports this file. Everything is generated here and seeded, so a run is reproducible::

    python models/word-problems/train.py --out /work/artifacts/word-problems
    python models/word-problems/train.py --out /tmp/wp-quick --quick    # a smoke run, ~1 minute

Writes, under ``--out``::

    base/                 GPT-NeoX base (config.json, model.safetensors, tokenizer files)
    adapters/<stage>/     PEFT LoRA per stage (adapter_config.json, adapter_model.safetensors)
    baseline/             single model, question -> final sentence (the paper's comparison)
    train_log.json        settings, parameter counts, losses and seconds per phase

Measure with ``python models/word-problems/eval_reference.py --out DIR``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import random
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import generate
import stages as stages_mod
from stages import Example

log = logging.getLogger("train")

EOS = "<|endoftext|>"
LORA_TARGETS = ["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"]


@dataclass(frozen=True)
class Settings:
    """Every knob of a run; written to ``train_log.json``."""

    seed: int = 0
    threads: int = 2
    vocab_size: int = 640
    split_digits: bool = True
    hidden: int = 256
    layers: int = 4
    heads: int = 8
    max_positions: int = 256
    batch: int = 32
    base_steps: int = 2400
    base_lr: float = 2e-3
    adapter_steps: int = 300
    adapter_lr: float = 2e-3
    lora_r: int = 8
    lora_alpha: int = 16
    warmup: int = 100
    tokenizer_problems: int = 20000
    baseline: bool = True

    @classmethod
    def quick(cls) -> Settings:
        """A smoke-test run: tiny model, a few steps."""
        return cls(
            hidden=64,
            layers=2,
            heads=4,
            base_steps=60,
            adapter_steps=20,
            warmup=10,
            tokenizer_problems=3000,
        )


# --- tokenizer -----------------------------------------------------------------------------------


def train_tokenizer(texts: Sequence[str], vocab_size: int, *, split_digits: bool) -> Any:
    """A byte-level BPE with GPT-2's pre-tokenizer and one special token, ``<|endoftext|>``.

    With ``split_digits`` every merge that would join two digits is dropped after training, so
    numbers are read and written digit by digit (the model can learn carrying instead of a
    100 x 100 table) while the pre-tokenizer keeps exactly the GPT-2/Pythia structure.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    if split_digits:
        tok = _drop_digit_merges(tok)
    return tok


def _drop_digit_merges(tok: Any) -> Any:
    """Remove merges whose result holds two digits, then renumber the vocabulary densely."""
    from tokenizers import Tokenizer

    spec = json.loads(tok.to_str())
    model = spec["model"]
    merges = [m if isinstance(m, list) else m.split(" ") for m in model["merges"]]

    def digits(token: str) -> int:
        return sum(ch.isdigit() for ch in token)

    kept_merges = [m for m in merges if digits(m[0] + m[1]) < 2]
    dropped = {m[0] + m[1] for m in merges if digits(m[0] + m[1]) >= 2}
    ordered = sorted(model["vocab"].items(), key=lambda kv: kv[1])
    vocab = {token: i for i, (token, _) in enumerate(t for t in ordered if t[0] not in dropped)}
    model["vocab"], model["merges"] = vocab, kept_merges
    for added in spec.get("added_tokens", []):
        added["id"] = vocab[added["content"]]
    return Tokenizer.from_str(json.dumps(spec))


def save_tokenizer(tok: Any, folder: Path, max_positions: int) -> Any:
    """Save ``tokenizer.json`` and ``tokenizer_config.json`` the way Pythia ships them."""
    from transformers import PreTrainedTokenizerFast

    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=EOS,
        eos_token=EOS,
        unk_token=EOS,
        pad_token=EOS,
        model_max_length=max_positions,
        clean_up_tokenization_spaces=False,
    )
    fast.save_pretrained(folder)
    # No BOS: prompts start at position 0 in training, as llama.cpp must feed them.
    config_path = folder / "tokenizer_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config.update(add_bos_token=False, add_eos_token=False)
    config_path.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    return fast


# --- data ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Encoded:
    """Token ids of prompt + completion + EOS, and which positions carry loss."""

    ids: list[int]
    n_prompt: int


def encode(tok: Any, examples: Sequence[Example], eos_id: int) -> list[Encoded]:
    """Tokenize prompt and completion separately: prompts end at a pre-token boundary (``:``), so
    this equals tokenizing the whole text, as the runtime does."""
    prompts = tok.encode_batch([e.prompt for e in examples])
    completions = tok.encode_batch([e.completion for e in examples])
    return [
        Encoded(p.ids + c.ids + [eos_id], len(p.ids))
        for p, c in zip(prompts, completions, strict=True)
    ]


def batches(
    data: Sequence[Encoded], batch: int, steps: int, seed: int, *, prompt_loss: bool, pad_id: int
) -> Iterator[dict[str, Any]]:
    """``steps`` shuffled, right-padded batches; labels -100 on padding (and prompts if asked)."""
    import torch

    rng = random.Random(seed)
    order: list[int] = []
    for _ in range(steps):
        if len(order) < batch:
            order = list(range(len(data)))
            rng.shuffle(order)
        chunk = [data[order.pop()] for _ in range(batch)]
        width = max(len(e.ids) for e in chunk)
        ids = torch.full((batch, width), pad_id, dtype=torch.long)
        labels = torch.full((batch, width), -100, dtype=torch.long)
        mask = torch.zeros((batch, width), dtype=torch.long)
        for row, e in enumerate(chunk):
            n = len(e.ids)
            ids[row, :n] = torch.tensor(e.ids)
            mask[row, :n] = 1
            start = 0 if prompt_loss else e.n_prompt
            labels[row, start:n] = ids[row, start:n]
        yield {"input_ids": ids, "attention_mask": mask, "labels": labels}


# --- models --------------------------------------------------------------------------------------


def base_config(s: Settings, vocab: int, eos_id: int, *, intermediate: int | None = None) -> Any:
    """GPT-NeoX as in Pythia (rotary on a quarter of each head, parallel residual), small."""
    from transformers import GPTNeoXConfig

    return GPTNeoXConfig(
        vocab_size=vocab,
        hidden_size=s.hidden,
        num_hidden_layers=s.layers,
        num_attention_heads=s.heads,
        intermediate_size=intermediate or 4 * s.hidden,
        rotary_pct=0.25,
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
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01, betas=(0.9, 0.98))
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
        "first_loss": losses[0],
        "last_loss": sum(tail) / len(tail),
        "seconds": time.perf_counter() - start,
    }


def train_base(
    s: Settings, data: Sequence[Encoded], vocab: int, eos_id: int, out: Path
) -> dict[str, Any]:
    """The base LM, from scratch, on every stage's full text (loss on every token)."""
    import torch
    from transformers import GPTNeoXForCausalLM

    torch.manual_seed(s.seed)
    model = GPTNeoXForCausalLM(base_config(s, vocab, eos_id))
    stats = fit_loop(
        model,
        batches(data, s.batch, s.base_steps, s.seed, prompt_loss=True, pad_id=eos_id),
        s.base_steps,
        s.base_lr,
        s,
    )
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
    s: Settings, base_dir: Path, data: Sequence[Encoded], eos_id: int, out: Path, seed: int
) -> dict[str, Any]:
    """One stage's LoRA over the frozen base, loss on the stage's output tokens and EOS."""
    import torch
    from peft import get_peft_model
    from transformers import GPTNeoXForCausalLM

    torch.manual_seed(seed)
    model = get_peft_model(GPTNeoXForCausalLM.from_pretrained(base_dir), lora_config(s))
    stats = fit_loop(
        model,
        batches(data, s.batch, s.adapter_steps, seed, prompt_loss=False, pad_id=eos_id),
        s.adapter_steps,
        s.adapter_lr,
        s,
    )
    model.save_pretrained(out)
    return {"params": n_params(model, trainable_only=True), **stats}


def baseline_intermediate(s: Settings, vocab: int, eos_id: int, target: int) -> int:
    """The FFN width (a multiple of 32) that brings the baseline closest to ``target`` params."""
    from transformers import GPTNeoXForCausalLM

    def count(ff: int) -> int:
        with _meta_device():
            return n_params(GPTNeoXForCausalLM(base_config(s, vocab, eos_id, intermediate=ff)))

    per_32 = count(4 * s.hidden + 32) - count(4 * s.hidden)
    return 4 * s.hidden + 32 * round((target - count(4 * s.hidden)) / per_32)


def _meta_device() -> Any:
    import torch

    return torch.device("meta")


def train_baseline(
    s: Settings, data: Sequence[Encoded], vocab: int, eos_id: int, target: int, out: Path
) -> dict[str, Any]:
    """Question -> sentence in one model: LM on everything for the base's steps, then the
    adapters' steps with loss on the sentence only (all weights train)."""
    import torch
    from transformers import GPTNeoXForCausalLM

    torch.manual_seed(s.seed)
    ff = baseline_intermediate(s, vocab, eos_id, target)
    model = GPTNeoXForCausalLM(base_config(s, vocab, eos_id, intermediate=ff))
    first = fit_loop(
        model,
        batches(data, s.batch, s.base_steps, s.seed, prompt_loss=True, pad_id=eos_id),
        s.base_steps,
        s.base_lr,
        s,
    )
    steps = 3 * s.adapter_steps
    second = fit_loop(
        model,
        batches(data, s.batch, steps, s.seed + 1, prompt_loss=False, pad_id=eos_id),
        steps,
        s.adapter_lr,
        s,
    )
    model.save_pretrained(out)
    return {
        "params": n_params(model),
        "intermediate_size": ff,
        "lm": first,
        "finetune": second,
        "seconds": first["seconds"] + second["seconds"],
    }


# --- the run -------------------------------------------------------------------------------------


def training_problems(s: Settings, n: int) -> list[generate.Problem]:
    """Training problems (train pool only), seeded."""
    return generate.problems(s.seed, n, "train")


def run(s: Settings, out: Path) -> dict[str, Any]:
    """The whole pipeline; returns (and writes) the training log."""
    import torch

    torch.set_num_threads(s.threads)
    random.seed(s.seed)
    started = time.perf_counter()
    stack = stages_mod.load_stages(stages_mod.RECIPE)
    baseline_stage = stages_mod.load_stages(stages_mod.BASELINE_RECIPE)[0]
    n_problems = s.batch * max(s.base_steps, 3 * s.adapter_steps)
    problems = training_problems(s, n_problems)
    rows = [stages_mod.stage_examples(p, stack) for p in problems]
    per_stage = {st.name: [row[i] for row in rows] for i, st in enumerate(stack)}
    texts = [e.prompt + e.completion for row in rows[: s.tokenizer_problems] for e in row]
    tok = train_tokenizer(texts, s.vocab_size, split_digits=s.split_digits)
    eos_id = tok.token_to_id(EOS)
    vocab = tok.get_vocab_size()
    base_dir = out / "base"

    mixed = [e for examples in per_stage.values() for e in examples]
    random.Random(s.seed).shuffle(mixed)
    result: dict[str, Any] = {"settings": asdict(s), "vocab_size": vocab}
    log.info("base: %d stage texts, vocab %d", len(mixed), vocab)
    result["base"] = train_base(
        s, encode(tok, mixed[: s.batch * s.base_steps], eos_id), vocab, eos_id, base_dir
    )
    save_tokenizer(tok, base_dir, s.max_positions)  # after the model: its save clears the folder
    result["adapters"] = {}
    for i, (name, examples) in enumerate(per_stage.items()):
        log.info("adapter %s", name)
        result["adapters"][name] = train_adapter(
            s,
            base_dir,
            encode(tok, examples, eos_id),
            eos_id,
            out / "adapters" / name,
            s.seed + 1 + i,
        )
    stack_params = result["base"]["params"] + sum(a["params"] for a in result["adapters"].values())
    result["stack_params"] = stack_params
    if s.baseline:
        log.info("baseline (target %d params)", stack_params)
        result["baseline"] = train_baseline(
            s,
            encode(tok, [stages_mod.baseline_example(p, baseline_stage) for p in problems], eos_id),
            vocab,
            eos_id,
            stack_params,
            out / "baseline",
        )
        save_tokenizer(tok, out / "baseline", s.max_positions)
    result["seconds"] = time.perf_counter() - started
    (out / "train_log.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return result


def parse_settings(argv: Sequence[str] | None) -> tuple[Settings, Path]:
    """Command line -> settings; every Settings field is an option."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="output folder (created)")
    parser.add_argument("--quick", action="store_true", help="tiny smoke run")
    for f in fields(Settings):
        flag = "--" + f.name.replace("_", "-")
        if f.type in ("bool", bool):
            parser.add_argument(
                flag, type=lambda v: v.lower() in ("1", "true", "yes"), default=None
            )
        else:
            parser.add_argument(flag, type=type(f.default), default=None)
    args = parser.parse_args(argv)
    base = Settings.quick() if args.quick else Settings()
    overrides = {
        f.name: getattr(args, f.name) for f in fields(Settings) if getattr(args, f.name) is not None
    }
    return Settings(**{**asdict(base), **overrides}), args.out


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
    log.info("done in %.0f s: stack %d params", result["seconds"], result["stack_params"])


if __name__ == "__main__":
    main()
