"""Remote stages in stack.toml: the keys, checked on load like every other key (file, stage, key)."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_stack import ManifestError, load_manifest
from edge_stack.manifest import RemoteSpec

from .conftest import MakeStack

HEAD = """
name = "r"
version = 1
[[stages]]
name = "one"
prompt = "Q: {question}\\nA:"
"""


def test_remote_stage_needs_no_model_and_keeps_its_settings(make_stack: MakeStack) -> None:
    path = make_stack(
        HEAD
        + """
engine = "vllm"
url = "http://gpu:8000/v1/"
remote_model = "extract"
api_key_env = "GPU_KEY"
read_timeout = 30
retries = 0
temperature = 0.5
""",
        files=(),
    )
    stage = load_manifest(path).stages[0]
    assert stage.model is None and stage.lora is None
    assert stage.remote == RemoteSpec(
        engine="vllm",
        url="http://gpu:8000/v1",
        model="extract",
        api_key_env="GPU_KEY",
        read_timeout=30.0,
        retries=0,
    )
    assert stage.temperature == 0.5


def test_defaults_reach_remote_and_local_stages_where_they_fit(make_stack: MakeStack) -> None:
    path = make_stack(
        """
        name = "mixed"
        version = 1
        [defaults]
        model = "base.gguf"
        engine = "llama-server"
        url = "http://127.0.0.1:8080/v1"
        kv_cache_type = "q8_0"
        [[stages]]
        name = "near"
        engine = "local"
        prompt = "{question}"
        [[stages]]
        name = "far"
        lora_id = 2
        prompt = "{near}"
        """
    )
    near, far = load_manifest(path).stages
    assert near.remote is None and near.kv_cache_type == "q8_0"
    assert far.remote is not None and far.remote.lora_id == 2
    assert far.model == path.parent.resolve() / "base.gguf"  # the vocabulary, read only


@pytest.mark.parametrize(
    ("keys", "key", "words"),
    [
        ('engine = "tgi"', "engine", "must be one of local, openai"),
        ('engine = "vllm"\nremote_model = "m"', "url", "needs the server's URL"),
        ('engine = "vllm"\nremote_model = "m"\nurl = "ftp://x/v1"', "url", "http:// or https://"),
        ('engine = "vllm"\nremote_model = "m"\nurl = "http://u:p@x/v1"', "url", "api_key_env"),
        ('engine = "vllm"\nremote_model = "m"\nurl = "http://x/v1?a=1"', "url", "?query"),
        ('engine = "vllm"\nremote_model = "m"\nurl = "http://x:port/v1"', "url", "not a valid URL"),
        ('engine = "llama-server"\nurl = "http://x:8080"', "url", "ending in /v1"),
        ('engine = "ollama"\nremote_model = "m"\nurl = "http://x:11434/v1"', "url", "root URL"),
        ('engine = "vllm"\nurl = "http://x/v1"', "remote_model", "--lora-modules"),
        (
            'engine = "edgestack"\nurl = "http://x/v1"\nremote_model = "s"',
            "remote_model",
            "STACK/STAGE",
        ),
        (
            'engine = "vllm"\nurl = "http://x/v1"\nremote_model = "m"\nlora_id = 1',
            "lora_id",
            "llama-server",
        ),
        ('engine = "llama-server"\nurl = "http://x/v1"\nlora = "a.gguf"', "lora", "does not apply"),
        (
            'engine = "llama-server"\nurl = "http://x/v1"\nkv_cache_type = "q8_0"',
            "kv_cache_type",
            "does not apply",
        ),
        ('model = "base.gguf"\nurl = "http://x/v1"', "url", "set engine"),
        ('model = "base.gguf"\nretries = 2', "retries", "set engine"),
        (
            'engine = "openai"\nurl = "http://x/v1"\nremote_model = "m"\napi_key_env = "sk-abc"',
            "api_key_env",
            "NAME",
        ),
        (
            'engine = "openai"\nurl = "http://x/v1"\nremote_model = "m"\nretries = 11',
            "retries",
            "at most 10",
        ),
        (
            'engine = "openai"\nurl = "http://x/v1"\nremote_model = "m"\nread_timeout = 0',
            "read_timeout",
            "above 0",
        ),
    ],
    ids=lambda v: v if isinstance(v, str) and "\n" not in v and "=" not in v else None,
)
def test_remote_keys_are_checked(make_stack: MakeStack, keys: str, key: str, words: str) -> None:
    path = make_stack(HEAD + keys + "\n")
    with pytest.raises(ManifestError) as info:
        load_manifest(path)
    message = str(info.value)
    assert message.startswith(f"{path}: stage 'one', key '{key}': "), message
    assert words in message
    assert "\n" not in message


def test_an_api_key_written_in_the_file_is_never_repeated(make_stack: MakeStack) -> None:
    secret = "sk-live-0123456789abcdef"
    path = make_stack(
        HEAD
        + f'engine = "openai"\nurl = "http://x/v1"\nremote_model = "m"\napi_key_env = "{secret}"\n'
    )
    with pytest.raises(ManifestError) as info:
        load_manifest(path)
    assert secret not in str(info.value)


def test_recipes_do_not_take_remote_keys(tmp_path: Path) -> None:
    from edge_stack.builder.recipe import GENERATION_KEYS

    assert not {"engine", "url", "remote_model", "lora_id", "api_key_env"} & set(GENERATION_KEYS)
