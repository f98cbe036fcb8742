"""check_adapter_fits: a LoRA adapter GGUF against its base, as llama_adapter_lora_init checks it.

The base model is a complete (tiny, random) Llama GGUF that llama.cpp loads, so the llama-marked
test can show that llama.cpp accepts exactly the adapters check_adapter_fits accepts.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from edge_stack.errors import AdapterError, GGUFFileError, ModelFileNotFound
from edge_stack.formats.gguf import _check as _gguf_check
from edge_stack.formats.gguf._check import check_adapter_fits, check_gguf

from gguf_builders import GPTNEOX, LLAMA, N_EMBD, N_FF, RANK, M, tname, write_adapter, write_model


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("gguf-adapter-check")
    return {
        "model": write_model(root / "model.gguf"),
        "adapter": write_adapter(root / "adapter.lora.gguf"),
    }


@pytest.fixture(autouse=True)
def _fresh_cache() -> None:
    _gguf_check.clear_cache()


def message(exc: pytest.ExceptionInfo[Exception]) -> str:
    text = str(exc.value)
    assert "\n" not in text, text
    return text


# --- adapter against base -----------------------------------------------------------------------


def test_adapter_fits_its_base(files: dict[str, Path], tmp_path: Path) -> None:
    check_adapter_fits(files["adapter"], files["model"])
    check_adapter_fits(check_gguf(files["adapter"], kind="adapter"), check_gguf(files["model"]))
    embd = write_adapter(
        tmp_path / "embd.lora.gguf", targets=[tname(M.TOKEN_EMBD), tname(M.OUTPUT)]
    )
    check_adapter_fits(embd, files["model"])


def test_adapter_for_another_architecture(files: dict[str, Path], tmp_path: Path) -> None:
    path = write_adapter(tmp_path / "neox.lora.gguf", arch=GPTNEOX)
    with pytest.raises(AdapterError) as info:
        check_adapter_fits(path, files["model"])
    assert f"is for architecture '{GPTNEOX}', but base model" in message(info)
    assert f"is '{LLAMA}'" in message(info)


def test_adapter_tensor_missing_in_base(files: dict[str, Path], tmp_path: Path) -> None:
    path = write_adapter(
        tmp_path / "extra.lora.gguf",
        extra={
            "blk.7.attn_q.weight.lora_a": (RANK, N_EMBD),
            "blk.7.attn_q.weight.lora_b": (N_EMBD, RANK),
        },
    )
    with pytest.raises(AdapterError) as info:
        check_adapter_fits(path, files["model"])
    assert "changes tensor 'blk.7.attn_q.weight', which base model" in message(info)


@pytest.mark.parametrize(
    ("options", "tensor", "base", "lora_a", "lora_b"),
    [
        ({"n_embd": 48}, tname(M.ATTN_Q, 0), "[32, 32]", "[48, 4]", "[4, 48]"),
        (
            {"n_ff": 96, "targets": [tname(M.FFN_UP, 1)]},
            tname(M.FFN_UP, 1),
            "[32, 64]",
            "[32, 4]",
            "[4, 96]",
        ),
        (
            {"n_embd": 48, "targets": [tname(M.TOKEN_EMBD)]},
            tname(M.TOKEN_EMBD),
            "[32, 257]",
            "[4, 257]",
            "[4, 48]",
        ),
    ],
    ids=["hidden-size", "ffn-size", "token-embd"],
)
def test_adapter_shape_mismatch_names_tensor_and_shapes(
    files: dict[str, Path],
    tmp_path: Path,
    options: dict[str, Any],
    tensor: str,
    base: str,
    lora_a: str,
    lora_b: str,
) -> None:
    path = write_adapter(tmp_path / "other.lora.gguf", **options)
    with pytest.raises(AdapterError) as info:
        check_adapter_fits(path, files["model"])
    text = message(info)
    assert f"tensor '{tensor}' is {base} in the base" in text
    assert f"lora_a {lora_a} and lora_b {lora_b}" in text


def test_adapter_rank_mismatch(files: dict[str, Path], tmp_path: Path) -> None:
    path = write_adapter(tmp_path / "rank.lora.gguf", rank_b=RANK + 1, targets=[tname(M.ATTN_K, 0)])
    with pytest.raises(AdapterError, match="whose ranks differ"):
        check_adapter_fits(path, files["model"])


def test_adapter_fits_checks_both_files(files: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(GGUFFileError, match="is a LoRA adapter, not a model"):
        check_adapter_fits(files["adapter"], files["adapter"])
    with pytest.raises(ModelFileNotFound):
        check_adapter_fits(tmp_path / "missing.gguf", files["model"])


# --- llama.cpp itself -----------------------------------------------------------------------------

ADAPTER_VARIANTS: dict[str, dict[str, Any]] = {
    "fits": {},
    "fits-token-embd": {"targets": [tname(M.TOKEN_EMBD), tname(M.OUTPUT), tname(M.ATTN_OUT, 1)]},
    "other-hidden-size": {"n_embd": 48},
    "other-ffn-size": {"n_ff": 96, "targets": [tname(M.FFN_DOWN, 0)]},
    "token-embd-other-size": {"n_embd": 48, "targets": [tname(M.TOKEN_EMBD)]},
    "rank-mismatch": {"rank_b": RANK + 1},
    "missing-base-tensor": {
        "extra": {
            "blk.9.ffn_up.weight.lora_a": (RANK, N_EMBD),
            "blk.9.ffn_up.weight.lora_b": (N_FF, RANK),
        }
    },
    "other-arch": {"arch": GPTNEOX},
}


@pytest.fixture(scope="module")
def llama_base(files: dict[str, Path]) -> Any:
    from llama_cpp import llama_cpp as lib

    lib.llama_backend_init()
    params = lib.llama_model_default_params()
    model = lib.llama_model_load_from_file(os.fsencode(files["model"]), params)
    assert model, "llama.cpp could not load the test base model"
    yield lib, model
    lib.llama_model_free(model)


@pytest.mark.llama
@pytest.mark.parametrize("variant", list(ADAPTER_VARIANTS))
def test_llama_cpp_accepts_exactly_what_we_accept(
    files: dict[str, Path], tmp_path: Path, llama_base: Any, variant: str
) -> None:
    """Our checks mirror llama-adapter.cpp: never stricter, never looser."""
    lib, model = llama_base
    path = write_adapter(tmp_path / f"{variant}.lora.gguf", **ADAPTER_VARIANTS[variant])
    try:
        check_adapter_fits(path, files["model"])
        ours = True
    except AdapterError:
        ours = False
    adapter = lib.llama_adapter_lora_init(model, os.fsencode(path))
    theirs = bool(adapter)
    if adapter:
        lib.llama_adapter_lora_free(adapter)
    assert ours == theirs == variant.startswith("fits")
