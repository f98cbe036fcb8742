"""LoRA adapters against peft: merged into the GGUF, and exported as GGUF adapters for llama.cpp.

Every adapter is built with peft inside the test, over the tiny random bases of model_builders,
with random (non-zero) A and B, so each adapted module moves the logits by 1..8 (checked).

Tolerance: llama.cpp keeps its KV cache in f16, so an f32 GGUF of the base alone already differs
from transformers by up to 0.004 (GPT-NeoX) .. 0.011 (Llama) on these models; with an adapter
(merged or attached) we measured at most 0.016. We allow max |dlogit| 0.03 and require the same
top-1 token wherever peft's top two are further apart than twice that; the adapters change the
logits by more than 1.0, 30x the tolerance.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import gguf
import numpy as np
import pytest

from edge_stack.convert import convert_checkpoint
from edge_stack.convert.lora import export_lora
from edge_stack.errors import (
    AdapterError,
    BadArgument,
    EdgeStackError,
    ModelFileNotFound,
    OutputExistsError,
)

from lora_builders import (
    KINDS,
    BuiltAdapter,
    build_adapter,
    build_adapter_on,
    lora_config,
    merged_reference,
)

pytestmark = [
    pytest.mark.torch,
    # peft and transformers talk about their own settings (saved embedding copies, deprecations).
    pytest.mark.filterwarnings("ignore::UserWarning:peft.*"),
    pytest.mark.filterwarnings("ignore::FutureWarning:transformers.*"),
]

ARCHS = ("gptneox", "llama", "qwen2", "mistral", "qwen3", "gemma3", "phi3")
TOLERANCE = 0.03
#: Gemma 3's logits are twice as large (see test_convert.SCALE): the same relative error
SCALE = {"gemma3": 2.0}
#: an adapter must move the logits by at least this much for a comparison to mean anything
MIN_EFFECT = 1.0
IDS = [int(x) for x in np.random.default_rng(0).integers(1, 250, 24)]

Adapters = Callable[[str, str], BuiltAdapter]


@pytest.fixture(scope="session")
def adapter(
    tiny_model: Callable[[str], Path], tmp_path_factory: pytest.TempPathFactory
) -> Adapters:
    """``adapter(arch, kind)``: a random peft adapter over the ``arch`` tiny base, built once."""
    cache: dict[tuple[str, str], BuiltAdapter] = {}

    def get(arch: str, kind: str) -> BuiltAdapter:
        if (arch, kind) not in cache:
            out = tmp_path_factory.mktemp(f"lora-{arch}-{kind}")
            cache[arch, kind] = build_adapter(tiny_model(arch), out, arch, kind, IDS)
        return cache[arch, kind]

    return get


def _llama_logits(model: Path, lora: Path | None = None, scale: float = 1.0) -> np.ndarray:
    from edge_stack.engines.llama import LlamaModel
    from edge_stack.engines.llama._context import LlamaContext

    with (
        LlamaModel.load(model) as m,
        LlamaContext(m, n_ctx=64, n_threads=1, lora=lora, lora_scale=scale) as ctx,
    ):
        return ctx.eval_logits(IDS)


def _assert_close(
    got: np.ndarray, ref: np.ndarray, base: np.ndarray, tol: float = TOLERANCE
) -> None:
    assert np.abs(ref - base).max() > MIN_EFFECT, "the adapter hardly changes the model"
    assert np.abs(got - ref).max() < tol
    # Same top-1 token wherever the reference's choice is not a near-tie the tolerance could flip.
    top2 = np.sort(ref, axis=-1)[:, -2:]
    clear = top2[:, 1] - top2[:, 0] > 2 * tol
    assert clear.mean() > 0.5
    assert (got.argmax(-1) == ref.argmax(-1))[clear].all()


def _files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# --- (a) merged into the GGUF ------------------------------------------------------------------


@pytest.mark.llama
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("arch", ARCHS)
def test_merged_gguf_matches_peft_merge(
    arch: str, kind: str, adapter: Adapters, tiny_model: Callable[[str], Path], tmp_path: Path
) -> None:
    built = adapter(arch, kind)
    out = convert_checkpoint(
        tiny_model(arch), tmp_path / "merged.gguf", outtype="f32", merge_lora=[built.path]
    )
    tol = TOLERANCE * SCALE.get(arch, 1.0)
    _assert_close(_llama_logits(out), built.merged_logits, built.base_logits, tol)


# --- (b) exported adapter attached in llama.cpp ------------------------------------------------


@pytest.mark.llama
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("arch", ARCHS)
def test_exported_adapter_matches_peft(
    arch: str,
    kind: str,
    adapter: Adapters,
    tiny_model: Callable[[str], Path],
    tiny_gguf: Callable[..., Path],
    tmp_path: Path,
) -> None:
    built = adapter(arch, kind)
    lora = export_lora(built.path, tiny_model(arch), tmp_path / "a.lora.gguf")
    tol = TOLERANCE * SCALE.get(arch, 1.0)
    got = _llama_logits(tiny_gguf(arch), lora)
    _assert_close(got, built.peft_logits, built.base_logits, tol)


@pytest.mark.llama
# q8_0 rounds A (B rows of r < 32 values stay f16): measured max |dlogit| 0.045..0.067.
@pytest.mark.parametrize(("outtype", "tol"), [("f16", TOLERANCE), ("q8_0", 0.15)])
@pytest.mark.parametrize("arch", ["gptneox", "llama"])
def test_exported_adapter_outtypes(
    arch: str,
    outtype: str,
    tol: float,
    adapter: Adapters,
    tiny_model: Callable[[str], Path],
    tiny_gguf: Callable[..., Path],
    tmp_path: Path,
) -> None:
    built = adapter(arch, "patterns")
    lora = export_lora(built.path, tiny_model(arch), tmp_path / "a.gguf", outtype=outtype)
    reader = gguf.GGUFReader(lora)
    types = {t.tensor_type for t in reader.tensors}
    want = gguf.GGMLQuantizationType[outtype.upper()]
    assert want in types
    got = _llama_logits(tiny_gguf(arch), lora)
    if outtype == "f16":
        _assert_close(got, built.peft_logits, built.base_logits)
    else:
        assert np.abs(got - built.peft_logits).max() < tol
        assert (got.argmax(-1) == built.peft_logits.argmax(-1)).mean() >= 0.9


def test_adapter_metadata(
    adapter: Adapters, tiny_model: Callable[[str], Path], tmp_path: Path
) -> None:
    built = adapter("llama", "patterns")
    lora = export_lora(built.path, tiny_model("llama"), tmp_path / "a.gguf")
    reader = gguf.GGUFReader(lora)
    kv = {f.name: f.contents() for f in reader.fields.values()}
    assert kv[gguf.Keys.General.ARCHITECTURE] == "llama"
    assert kv[gguf.Keys.General.TYPE] == gguf.GGUFType.ADAPTER
    assert kv[gguf.Keys.Adapter.TYPE] == "lora"
    assert kv[gguf.Keys.Adapter.LORA_ALPHA] == 16.0
    names = {t.name for t in reader.tensors}
    assert "blk.0.attn_q.weight.lora_a" in names and "output.weight.lora_b" in names
    # rank_pattern gives blk.0 q_proj rank 4; rank lives in the tensor shape (llama.cpp reads it there)
    shapes = {t.name: tuple(int(x) for x in t.shape) for t in reader.tensors}
    assert shapes["blk.0.attn_q.weight.lora_b"] == (4, 64)  # gguf order: (r, out)


@pytest.mark.llama
def test_several_adapters_merge_and_add_up(
    adapter: Adapters, tiny_model: Callable[[str], Path], tmp_path: Path
) -> None:
    # The second adapter targets no embedding layer: peft would load its saved lm_head copy over
    # the first adapter's merged lm_head (peft's own behaviour, not a LoRA sum).
    a, b = adapter("gptneox", "rslora"), adapter("gptneox", "regex")
    base = tiny_model("gptneox")
    ref = merged_reference(base, [a.path, b.path], IDS)
    out = convert_checkpoint(base, tmp_path / "m.gguf", outtype="f32", merge_lora=[a.path, b.path])
    _assert_close(_llama_logits(out), ref, a.base_logits)


@pytest.mark.llama
def test_lora_scale_matches_peft_scale(
    adapter: Adapters,
    tiny_model: Callable[[str], Path],
    tiny_gguf: Callable[..., Path],
    tmp_path: Path,
) -> None:
    import torch
    from peft import PeftModel
    from peft.tuners.lora import LoraLayer
    from transformers import AutoModelForCausalLM

    built, base = adapter("qwen2", "patterns"), tiny_model("qwen2")
    model = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32), built.path
    )
    for module in model.modules():
        if isinstance(module, LoraLayer):
            module.scale_layer(0.5)
    with torch.no_grad():
        ref = model.eval()(torch.tensor([IDS])).logits[0].numpy()
    merged = convert_checkpoint(
        base, tmp_path / "m.gguf", outtype="f32", merge_lora=[built.path], lora_scale=0.5
    )
    _assert_close(_llama_logits(merged), ref, built.peft_logits)
    lora = export_lora(built.path, base, tmp_path / "a.gguf")
    _assert_close(_llama_logits(tiny_gguf("qwen2"), lora, scale=0.5), ref, built.peft_logits)


# --- PEFT's matching rules, checked against peft itself ----------------------------------------


@pytest.mark.parametrize(
    ("patterns", "module"),
    [
        (["q_proj"], "model.layers.0.self_attn.q_proj"),
        (["layers.0.self_attn.q_proj"], "model.layers.0.self_attn.q_proj"),
        (["layers.1.self_attn.q_proj"], "model.layers.11.self_attn.q_proj"),
        (["proj"], "model.layers.0.self_attn.q_proj"),
        ([r"layers\.1\..*"], "model.layers.1.mlp.up_proj"),
        ([r"layers\.1\..*"], "model.layers.11.mlp.up_proj"),
        (["up_proj", "layers.0.mlp.up_proj"], "model.layers.0.mlp.up_proj"),
        (["model.layers.0.mlp.up_proj"], "model.layers.0.mlp.up_proj"),
        (["dense"], "gpt_neox.layers.0.mlp.dense_h_to_4h"),
    ],
)
def test_pattern_key_matches_peft(patterns: list[str], module: str) -> None:
    from peft.utils.other import get_pattern_key

    from edge_stack.convert._peft import pattern_key

    theirs = get_pattern_key(patterns, module)
    assert pattern_key(patterns, module) == (theirs if theirs in patterns else None)


# --- mismatched adapters are refused before anything is written --------------------------------


@pytest.fixture(scope="session")
def narrow_adapter(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A GPT-NeoX adapter trained on a base with hidden size 32 (ours have 64)."""
    from transformers import AutoModelForCausalLM, GPTNeoXConfig

    cfg = GPTNeoXConfig(
        vocab_size=320,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
    )
    model = AutoModelForCausalLM.from_config(cfg)
    return build_adapter_on(
        model, tmp_path_factory.mktemp("narrow"), lora_config("gptneox", "plain")
    )


MISMATCHES = {
    # other architecture: module names the base does not have
    "llama-on-gptneox": (
        "gptneox",
        "llama",
        r"changes (lm_head|model\.layers\.\d+\.\S+) \(lora_B @ lora_A is \[\d+, \d+\]\), which base .* \(gptneox\) does not have",
    ),
    "gptneox-on-qwen2": (
        "qwen2",
        "gptneox",
        r"changes (embed_out|gpt_neox\.layers\.\d+\.\S+) .* \(qwen2\) does not have",
    ),
    # same architecture, other hidden size: both shapes named
    "narrow-on-gptneox": (
        "gptneox",
        "narrow",
        r"module \S+ has lora_B @ lora_A \[\d+, 32\] but the base weight \S+ is \[\d+, 64\]",
    ),
}


@pytest.mark.parametrize("route", ["merge", "export"])
@pytest.mark.parametrize("case", list(MISMATCHES))
def test_mismatched_adapter_is_refused_before_writing(
    route: str,
    case: str,
    adapter: Adapters,
    narrow_adapter: Path,
    tiny_model: Callable[[str], Path],
    tmp_path: Path,
) -> None:
    base, which, pattern = MISMATCHES[case]
    path = narrow_adapter if which == "narrow" else adapter(which, "plain").path
    out = tmp_path / "out.gguf"
    with pytest.raises(AdapterError) as info:
        if route == "merge":
            convert_checkpoint(tiny_model(base), out, outtype="f32", merge_lora=[path])
        else:
            export_lora(path, tiny_model(base), out)
    message = str(info.value)
    assert "\n" not in message
    assert re.search(pattern, message), message
    assert _files(tmp_path) == []


# --- bad adapters: one clear error ---------------------------------------------------------------


def _edit_config(folder: Path, **changes: object) -> None:
    path = folder / "adapter_config.json"
    config = json.loads(path.read_text())
    config.update(changes)
    path.write_text(json.dumps(config))


def _rewrite_tensors(folder: Path, edit: Callable[[dict[str, np.ndarray]], None]) -> None:
    from safetensors.numpy import load_file, save_file

    path = folder / "adapter_model.safetensors"
    tensors = load_file(path)
    edit(tensors)
    save_file(tensors, path)


def _rename_first_a(tensors: dict[str, np.ndarray], new: str) -> None:
    key = next(k for k in tensors if ".lora_A." in k)
    tensors[key.replace(".lora_A.", new)] = tensors.pop(key)


def _change_saved_copy(tensors: dict[str, np.ndarray]) -> None:
    key = next(k for k in tensors if k.endswith("base_layer.weight"))
    tensors[key] = tensors[key] + 1.0


BAD = {
    "no-config": (
        lambda d: (d / "adapter_config.json").unlink(),
        ModelFileNotFound,
        "adapter_config.json",
    ),
    "no-weights": (
        lambda d: (d / "adapter_model.safetensors").unlink(),
        ModelFileNotFound,
        "adapter_model.safetensors",
    ),
    "bias": (lambda d: _edit_config(d, bias="lora_only"), AdapterError, "bias 'lora_only'"),
    "dora": (lambda d: _edit_config(d, use_dora=True), AdapterError, "DoRA"),
    "peft-type": (lambda d: _edit_config(d, peft_type="IA3"), AdapterError, "peft_type 'IA3'"),
    "modules-to-save": (
        lambda d: _edit_config(d, modules_to_save=["lm_head"]),
        AdapterError,
        "modules_to_save",
    ),
    "rank-mismatch": (lambda d: _edit_config(d, r=5), AdapterError, "r=5"),
    "embedding": (
        lambda d: _rewrite_tensors(d, lambda t: _rename_first_a(t, ".lora_embedding_A.")),
        AdapterError,
        "embedding LoRA",
    ),
    "magnitude": (
        lambda d: _rewrite_tensors(d, lambda t: _rename_first_a(t, ".lora_magnitude_vector.")),
        AdapterError,
        "DoRA",
    ),
    "half-pair": (
        lambda d: _rewrite_tensors(d, lambda t: t.pop(next(k for k in t if ".lora_B." in k))),
        AdapterError,
        "no lora_B",
    ),
    "changed-lm-head-copy": (
        lambda d: _rewrite_tensors(d, _change_saved_copy),
        AdapterError,
        "changed copy",
    ),
}


@pytest.mark.parametrize("route", ["merge", "export"])
@pytest.mark.parametrize("case", list(BAD))
def test_bad_adapter_is_one_clear_error(
    case: str, route: str, adapter: Adapters, tiny_model: Callable[[str], Path], tmp_path: Path
) -> None:
    damage, error, needle = BAD[case]
    folder = tmp_path / "adapter"
    shutil.copytree(adapter("llama", "plain").path, folder)
    damage(folder)
    outdir = tmp_path / "out"
    outdir.mkdir()
    with pytest.raises(error) as info:
        if route == "merge":
            convert_checkpoint(
                tiny_model("llama"), outdir / "m.gguf", outtype="f32", merge_lora=[folder]
            )
        else:
            export_lora(folder, tiny_model("llama"), outdir / "a.gguf")
    assert needle in str(info.value)
    assert "\n" not in str(info.value)
    assert _files(outdir) == []


def test_output_is_not_overwritten_without_force(
    adapter: Adapters, tiny_model: Callable[[str], Path], tmp_path: Path
) -> None:
    built, base = adapter("gptneox", "plain"), tiny_model("gptneox")
    out = tmp_path / "a.gguf"
    out.write_bytes(b"keep me")
    with pytest.raises(OutputExistsError, match="--force"):
        export_lora(built.path, base, out)
    assert out.read_bytes() == b"keep me"
    export_lora(built.path, base, out, force=True)
    assert out.read_bytes()[:4] == b"GGUF"
    assert _files(tmp_path) == ["a.gguf"]


def test_unknown_outtype(
    adapter: Adapters, tiny_model: Callable[[str], Path], tmp_path: Path
) -> None:
    with pytest.raises(BadArgument, match="f32, f16, q8_0"):
        export_lora(
            adapter("gptneox", "plain").path,
            tiny_model("gptneox"),
            tmp_path / "a.gguf",
            outtype="q4_k_m",
        )


def test_fan_in_fan_out_is_ignored_for_linear_layers(
    adapter: Adapters, tiny_model: Callable[[str], Path], tmp_path: Path
) -> None:
    # peft forces fan_in_fan_out off for torch.nn.Linear; a config that says true merges the same.
    folder = tmp_path / "adapter"
    shutil.copytree(adapter("gptneox", "plain").path, folder)
    _edit_config(folder, fan_in_fan_out=True)
    base = tiny_model("gptneox")
    a = export_lora(folder, base, tmp_path / "a.gguf")
    b = export_lora(adapter("gptneox", "plain").path, base, tmp_path / "b.gguf")
    ta = {t.name: np.array(t.data) for t in gguf.GGUFReader(a).tensors}
    tb = {t.name: np.array(t.data) for t in gguf.GGUFReader(b).tensors}
    assert ta.keys() == tb.keys() and all(np.array_equal(ta[k], tb[k]) for k in ta)


# --- CLI -----------------------------------------------------------------------------------------


def test_cli_export_lora(
    adapter: Adapters,
    tiny_model: Callable[[str], Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from edge_stack.cli import main

    out = tmp_path / "a.gguf"
    args = [
        "export-lora",
        str(adapter("gptneox", "plain").path),
        "--base",
        str(tiny_model("gptneox")),
        "-o",
        str(out),
    ]
    main([*args, "--outtype", "f16", "--json"])
    printed = json.loads(capsys.readouterr().out)
    assert printed == {"output": str(out), "outtype": "f16", "bytes": out.stat().st_size}

    with pytest.raises(SystemExit) as info:
        main(args)  # exists, no --force
    assert info.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith("edgestack: error:") and "--force" in err and err.count("\n") == 1


def test_cli_mismatch_is_one_line(
    adapter: Adapters,
    tiny_model: Callable[[str], Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from edge_stack.cli import main

    out = tmp_path / "a.gguf"
    args = [
        "export-lora",
        str(adapter("llama", "plain").path),
        "--base",
        str(tiny_model("gptneox")),
        "-o",
        str(out),
    ]
    with pytest.raises(SystemExit) as info:
        main(args)
    assert info.value.code == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "does not have" in err
    assert not out.exists()


# --- Hub ids ---------------------------------------------------------------------------------------


def _cache_repo(cache: Path, repo_id: str, folder: Path, commit: str) -> None:
    """Store ``folder``'s files as huggingface_hub's cache does (blobs, snapshot links, refs)."""
    import hashlib
    import os

    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / commit
    (repo / "blobs").mkdir(parents=True)
    snapshot.mkdir(parents=True)
    for file in folder.iterdir():
        data = file.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        (snapshot / file.name).symlink_to(os.path.relpath(blob, snapshot))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)


def test_hub_ids_from_the_offline_cache(
    adapter: Adapters,
    tiny_model: Callable[[str], Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import huggingface_hub.constants as constants

    cache = tmp_path / "hub"
    _cache_repo(cache, "me/tiny-neox", tiny_model("gptneox"), "1" * 40)
    _cache_repo(cache, "me/tiny-neox-lora", adapter("gptneox", "plain").path, "2" * 40)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)

    out = tmp_path / "out"
    out.mkdir()
    via_hub = export_lora("me/tiny-neox-lora", "me/tiny-neox", out / "hub.gguf")
    local = export_lora(adapter("gptneox", "plain").path, tiny_model("gptneox"), out / "local.gguf")
    hub_tensors = {t.name: np.array(t.data) for t in gguf.GGUFReader(via_hub).tensors}
    local_tensors = {t.name: np.array(t.data) for t in gguf.GGUFReader(local).tensors}
    assert hub_tensors.keys() == local_tensors.keys()
    assert all(np.array_equal(hub_tensors[k], local_tensors[k]) for k in hub_tensors)
    kv = {f.name: f.contents() for f in gguf.GGUFReader(via_hub).fields.values()}
    assert kv[gguf.Keys.General.NAME] == "tiny-neox-lora"

    merged = convert_checkpoint(
        "me/tiny-neox", out / "m.gguf", outtype="f32", merge_lora=["me/tiny-neox-lora"]
    )
    from_folders = convert_checkpoint(
        tiny_model("gptneox"),
        tmp_path / "folders.gguf",
        outtype="f32",
        merge_lora=[adapter("gptneox", "plain").path],
    )
    merged_tensors = {t.name: np.array(t.data) for t in gguf.GGUFReader(merged).tensors}
    folder_tensors = {t.name: np.array(t.data) for t in gguf.GGUFReader(from_folders).tensors}
    assert merged_tensors.keys() == folder_tensors.keys()
    assert all(np.array_equal(merged_tensors[k], folder_tensors[k]) for k in merged_tensors)
    with pytest.raises(EdgeStackError, match="me/not-cached"):
        export_lora("me/not-cached", "me/tiny-neox", out / "x.gguf")
    assert sorted(p.name for p in out.iterdir()) == ["hub.gguf", "local.gguf", "m.gguf"]


def test_lora_on_a_tied_output_layer_is_refused(
    tiny_model: Callable[[str], Path], tmp_path: Path
) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    base = tiny_model("llama-tied-mha")
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    folder = build_adapter_on(model, tmp_path / "adapter", lora_config("llama", "plain"))
    with pytest.raises(AdapterError, match="ties its output layer"):
        export_lora(folder, base, tmp_path / "a.gguf")
    assert not (tmp_path / "a.gguf").exists()


@pytest.mark.llama
@pytest.mark.parametrize("kind", ["rslora", "patterns"])
def test_without_folding_the_scale_llama_cpp_would_be_wrong(
    kind: str,
    adapter: Adapters,
    tiny_model: Callable[[str], Path],
    tiny_gguf: Callable[..., Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # What a converter that writes B as it is with the config's lora_alpha produces: llama.cpp
    # then scales every module by lora_alpha / r, which is wrong for rsLoRA and for patterns.
    from edge_stack.convert import lora

    monkeypatch.setattr(lora, "_fold", lambda module, alpha: 1.0)
    built = adapter("llama", kind)
    path = export_lora(built.path, tiny_model("llama"), tmp_path / "naive.gguf")
    got = _llama_logits(tiny_gguf("llama"), path)
    assert np.abs(got - built.peft_logits).max() > 10 * TOLERANCE


def test_saved_copy_at_lower_precision_is_accepted(
    adapter: Adapters, tiny_model: Callable[[str], Path], tmp_path: Path
) -> None:
    # Trained with the base loaded in bf16: peft's saved lm_head copy is the base rounded to bf16.
    def to_bf16(tensors: dict[str, np.ndarray]) -> None:
        key = next(k for k in tensors if k.endswith("base_layer.weight"))
        bits = tensors[key].astype(np.float32).view(np.uint32)
        rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000).view(np.float32)
        assert not np.array_equal(rounded, tensors[key])
        tensors[key] = rounded

    folder = tmp_path / "adapter"
    shutil.copytree(adapter("llama", "plain").path, folder)
    _rewrite_tensors(folder, to_bf16)
    lowered = export_lora(folder, tiny_model("llama"), tmp_path / "a.gguf")
    # The saved copy is only checked, never used: the export is the one of the original folder.
    original = export_lora(adapter("llama", "plain").path, tiny_model("llama"), tmp_path / "o.gguf")
    got = {t.name: np.array(t.data) for t in gguf.GGUFReader(lowered).tensors}
    want = {t.name: np.array(t.data) for t in gguf.GGUFReader(original).tensors}
    assert got.keys() == want.keys() and all(np.array_equal(got[k], want[k]) for k in got)
