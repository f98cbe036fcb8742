"""`edgestack export`: a built stack as a deployment on llama-server, vLLM or Ollama, and the
client stack.toml whose stages point at it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import tomllib
from collections.abc import Callable
from pathlib import Path

import pytest

from edge_stack import Stack, load_manifest

from cli_support import run
from remote_servers import adapter_stack, llama_server_binary, wait_http, word_problems

STAGES = ["extract", "compute", "answer"]


def _export(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    return run(["export", *args], capsys)


def test_llama_server_export_serves_every_adapter_by_id(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "ls"
    code, stdout, err = _export(capsys, "word-problems", "--to", "llama-server", "-o", str(out))
    assert code == 0, err
    assert stdout.strip() == str(out / "stack.toml")
    script = (out / "llama-server.sh").read_text()
    assert os.access(out / "llama-server.sh", os.X_OK)
    adapters = ",".join(f"models/{stage}.lora.gguf" for stage in STAGES)
    assert f"--lora {adapters}" in script
    for n, stage in enumerate(STAGES):
        assert f"| {stage} | {n} |" in (out / "README.md").read_text()
    assert "--lora-init-without-apply" in script and "--ctx-size 1024" in script
    assert "--cache-ram 0" in script
    assert 'exec "${LLAMA_SERVER:-llama-server}"' in script
    for name in ("base.q8_0.gguf", *(f"{s}.lora.gguf" for s in STAGES)):
        assert (out / "models" / name).read_bytes() == (word_problems() / name).read_bytes()
    spec = load_manifest(out / "stack.toml")
    assert [s.remote.lora_id for s in spec.stages if s.remote] == [0, 1, 2]
    assert {s.remote.url for s in spec.stages if s.remote} == {"http://127.0.0.1:8080/v1"}
    assert all(s.model == out / "models" / "base.q8_0.gguf" for s in spec.stages)
    bundled = load_manifest(word_problems())
    assert [s.prompt for s in spec.stages] == [s.prompt for s in bundled.stages]
    assert [s.max_tokens for s in spec.stages] == [s.max_tokens for s in bundled.stages]
    with Stack.load(out, threads=1):  # loads without the server: nothing is sent until asked
        pass
    code, shown, _ = run(["inspect", str(out)], capsys)
    assert code == 0
    assert (
        "1. extract: llama-server at http://127.0.0.1:8080/v1 (vocabulary: base.q8_0.gguf)" in shown
    )


def test_ollama_export_writes_a_modelfile_per_stage(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "ol"
    code, _, err = _export(capsys, "word-problems", "--to", "ollama", "-o", str(out))
    assert code == 0, err
    for stage in STAGES:
        modelfile = (out / f"Modelfile.{stage}").read_text()
        assert "FROM ./models/base.q8_0.gguf" in modelfile
        assert f"ADAPTER ./models/{stage}.lora.gguf" in modelfile
        assert 'TEMPLATE """{{ .Prompt }}"""' in modelfile
        assert "PARAMETER num_ctx 256" in modelfile and "PARAMETER repeat_last_n 64" in modelfile
        assert (
            f"ollama create word-problems-{stage} -f Modelfile.{stage}"
            in (out / "ollama-create.sh").read_text()
        )
    data = tomllib.loads((out / "stack.toml").read_text())
    assert data["defaults"]["engine"] == "ollama"
    assert data["defaults"]["url"] == "http://127.0.0.1:11434"
    assert [s["remote_model"] for s in data["stages"]] == [f"word-problems-{s}" for s in STAGES]


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--to", "tgi"], "--to must be one of llama-server, vllm, ollama"),
        (["--to", "llama-server", "--recipe", "r.toml"], "--recipe is for --to vllm only"),
        (["--to", "ollama", "--parallel", "2"], "--parallel is for --to llama-server only"),
        (["--to", "llama-server", "--url", "ftp://x"], "--url must be an http:// or https://"),
        (["--to", "vllm", "--api-key-env", "sk-123"], "--api-key-env must be the NAME"),
        (["--to", "vllm"], "recipe.toml: stage 'extract', key 'base': Hugging Face checkpoint"),
    ],
)
def test_export_refusals_are_one_line(
    args: list[str], words: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = _export(capsys, "word-problems", *args, "-o", str(tmp_path / "o"))
    assert code == 1 and out == ""
    assert words in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "o").exists()


def test_an_export_replaces_a_folder_only_with_force(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "o"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    code, _, err = _export(capsys, "word-problems", "--to", "llama-server", "-o", str(out))
    assert code == 1 and "is not empty; pass --force" in err
    assert (out / "keep.txt").read_text() == "mine"
    code, _, err = _export(
        capsys, "word-problems", "--to", "llama-server", "-o", str(out), "--force"
    )
    assert code == 0, err
    assert not (out / "keep.txt").exists() and (out / "stack.toml").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["o"]  # no temporary folder left


def test_a_remote_stack_cannot_be_exported(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    first = tmp_path / "first"
    assert _export(capsys, "word-problems", "--to", "llama-server", "-o", str(first))[0] == 0
    code, _, err = _export(capsys, str(first), "--to", "ollama", "-o", str(tmp_path / "second"))
    assert code == 1 and "already runs on llama-server" in err


@pytest.mark.torch
def test_vllm_export_serves_the_recipes_peft_adapters(
    tmp_path_factory: pytest.TempPathFactory,
    tiny_model: Callable[[str], Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from build_builders import built_stack, recipe_folder

    stack = built_stack(tmp_path_factory, tiny_model("gptneox"), "adapters")
    recipe = recipe_folder(tmp_path_factory, tiny_model("gptneox")) / "recipe-adapters.toml"
    out = tmp_path / "vllm"
    code, _, err = _export(
        capsys, str(stack), "--to", "vllm", "--recipe", str(recipe), "-o", str(out),
        "--url", "http://gpu-box:8000/v1", "--api-key-env", "VLLM_KEY",
    )  # fmt: skip
    assert code == 0, err
    script = (out / "vllm-serve.sh").read_text()
    assert "exec vllm serve checkpoints/base \\\n  --served-model-name tiny-word-problems" in script
    modules = (
        "--lora-modules extract=adapters/extract compute=adapters/compute answer=adapters/answer"
    )
    assert modules in " ".join(script.split()).replace(" \\", "")
    assert "--max-lora-rank 8" in script and "--generation-config vllm" in script
    assert "--host 0.0.0.0" in script and '--api-key "$VLLM_KEY"' in script
    for stage in STAGES:
        assert (out / "adapters" / stage / "adapter_config.json").is_file()
    assert (out / "checkpoints" / "base" / "config.json").is_file()
    data = tomllib.loads((out / "stack.toml").read_text())
    assert data["defaults"]["engine"] == "vllm" and data["defaults"]["api_key_env"] == "VLLM_KEY"
    assert [s["remote_model"] for s in data["stages"]] == STAGES


# --- end to end with a real llama-server (optional) ---------------------------------------------


@pytest.mark.llama
@pytest.mark.parametrize("which", ["word-problems", "random adapters"])
def test_llama_server_export_answers_as_the_local_stack(
    which: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The exported stack on a real llama-server answers as the local stack.

    word-problems: exactly, one by one and batched (llama-server batches concurrent requests).
    Its trained base answers alone, so its adapters barely matter; the random adapters show
    per-request adapter selection: the stages share one prompt, so each stage's answer is its
    adapter's, and a wrong id (or none) changes most of them. A random model is full of
    near-ties, which llama-server's prompt cache (it evaluates only what follows a cached
    prefix, in other batches than the local engine) can break the other way: at least 90% of
    those answers must be the local ones (five runs here all passed), where the next
    stage's adapter gave 20 of 36 and no adapter 3 of 36.
    """
    binary = llama_server_binary()
    if binary is None:
        pytest.skip(
            "no llama-server binary: build it from llama.cpp's sources (cmake --build build "
            "--target llama-server) and set EDGESTACK_TEST_LLAMA_SERVER=/path/to/llama-server"
        )
    from edge_stack.serve._config import free_port

    url = f"http://127.0.0.1:{free_port()}/v1"
    out = tmp_path / "ls"
    stack = word_problems() if which == "word-problems" else adapter_stack(tmp_path / "adapters")
    code, _, err = _export(
        capsys, str(stack), "--to", "llama-server", "-o", str(out), "--url", url,
        "--parallel", "2",
    )  # fmt: skip
    assert code == 0, err
    lines = (word_problems() / "eval.jsonl").read_text().splitlines()[:12]
    questions = [json.loads(line)["question"] for line in lines]
    with Stack.load(stack, threads=1) as local:
        expected = {q: local.ask(q) for q in questions}
    if which != "word-problems":
        assert sum(len({s.output for s in a.stages}) > 1 for a in expected.values()) >= 4
    env = {**os.environ, "LLAMA_SERVER": binary}
    with (tmp_path / "server.log").open("wb") as log:
        server = subprocess.Popen(
            [str(out / "llama-server.sh"), "--threads", "1"], stdout=log, stderr=log, env=env
        )
    try:
        wait_http(url.removesuffix("/v1") + "/health", server)
        with Stack.load(out, threads=1) as remote:
            same = total = 0
            for question in questions:
                got = [(s.output, s.prompt_tokens) for s in remote.ask(question).stages]
                want = [(s.output, s.prompt_tokens) for s in expected[question].stages]
                if which == "word-problems":
                    assert got == want, question
                same += sum(a == b for a, b in zip(got, want, strict=True))
                total += len(want)
            assert same >= 0.9 * total, f"{same} of {total} stage answers as local"
            if which == "word-problems":
                batched = remote.ask_batch(questions, batch_size=4)
                assert [a.text for a in batched] == [expected[q].text for q in questions]
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
