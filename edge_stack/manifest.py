"""The stack manifest (``stack.toml``, version 1): loading and validation.

A stack is a folder with a ``stack.toml`` and the files it names::

    name = "word-problems"
    description = "Arithmetic word problems in three steps"
    version = 1

    [defaults]                  # optional: any stage key except `name`
    temperature = 0.0
    max_tokens = 64

    [[stages]]
    name = "extract"            # [a-z][a-z0-9_]*, unique, not "question"
    model = "base.q8_0.gguf"    # relative to stack.toml, or hf://owner/name/file.gguf@rev
    lora = "extract.lora.gguf"  # optional GGUF LoRA adapter, attached to this stage's context
    prompt = "Question: {question}\\nEquation:"
    stop = ["\\n"]

Stage keys, their defaults and allowed values are in :data:`STAGE_KEYS` and
docs/stack-manifest.md. Rules:

- unknown keys (top level, ``[defaults]``, a stage) are errors;
- a prompt names ``{question}`` and earlier stages only; ``{{`` and ``}}`` are literal braces,
  any other brace is an error;
- ``grammar`` is inline GBNF when it contains ``::=``, otherwise a file relative to stack.toml;
  either way it is checked (:mod:`edge_stack.formats.grammar._validate`) before any model loads;
- ``model``, ``lora`` and grammar files must be inside the stack's folder after symlinks are
  resolved, unless the caller allows outside paths (``allow_outside_paths=True`` or
  EDGESTACK_ALLOW_OUTSIDE_PATHS=1): the stack's author cannot, so a stack.toml from elsewhere
  cannot make edgestack read files outside its folder;
- a stage needs ``len(prompt tokens) + max_tokens <= n_ctx``; a prompt that does not fit is never
  shortened: the ask fails with :class:`~edge_stack.errors.ContextOverflowError` naming the stage.
- a stack has 1 to :data:`MAX_STAGES` stages;
- a stage with ``engine`` other than "local" runs on a server (:class:`RemoteSpec`: ``url``,
  ``remote_model``, ...); its ``model`` is optional and only read for the vocabulary.

Every error names the file, and where it applies the stage and the key.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .errors import GrammarError, HubError, ManifestError, ModelFileNotFound
from .formats._template import Template, TemplateSyntaxError, parse_template
from .formats.grammar._validate import MAX_GRAMMAR_BYTES, validate_grammar
from .util._env import settings
from .util._hubref import (
    cached_hub_file,
    hf_cache_dir,
    is_hub_file,
    parse_hub_file,
    snapshot_repo_folder,
)
from .util._limits import MAX_DRAFT, MAX_N_CTX
from .util._paths import resolved_manifest
from .util._pkgref import (
    installed_package_file,
    is_package_file,
    not_installed_path,
    parse_package_file,
)
from .util._toml import read_toml

__all__ = [
    "DEFAULT_MAX_QUESTION_TOKENS",
    "MAX_STAGES",
    "MEMORY_MODES",
    "STAGE_KEYS",
    "RemoteSpec",
    "StackSpec",
    "StageSpec",
    "load_manifest",
    "parse_manifest",
]


MANIFEST_VERSION = 1
#: most [[stages]] a stack may have. Each local stage holds a llama.cpp KV-cache sequence (in a
#: shared context: llama.cpp allows 256 per context) and its graph; 64 stages of the bundled
#: model peak at 112 MB, while 2,002 made llama.cpp abort on a failed allocation
#: (GGML_ASSERT in ggml_init) under a 3 GB address-space limit.
MAX_STAGES = 64
_NAME = re.compile(r"[a-z][a-z0-9_]*")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_RESERVED = {"question"}
#: what llama.cpp's KV cache can hold (its -ctk/-ctv choices); quantized types need heads whose
#: size is a multiple of 32
KV_CACHE_TYPES = ("f16", "f32", "bf16", "q8_0", "q5_1", "q5_0", "q4_1", "q4_0", "iq4_nl")
#: how the stack holds its llama.cpp contexts (top-level ``memory``): "shared" (one context per
#: base model, a KV cache sequence per stage), "separate" (one context per stage) or "low" (only
#: the running stage's context exists, one base model loaded at a time)
MEMORY_MODES = ("shared", "separate", "low")
#: the longest question, in tokens, unless the stack says otherwise (top-level
#: ``max_question_tokens``); stages without ``n_ctx`` are sized for it
DEFAULT_MAX_QUESTION_TOKENS = 128


@dataclass(frozen=True)
class RemoteSpec:
    """Where a remote stage runs (``engine`` other than "local") and how it is reached.

    The stage keys ``engine``, ``url``, ``remote_model``, ``lora_id``, ``api_key_env``,
    ``connect_timeout``, ``read_timeout`` and ``retries``; docs/remote-engines.md."""

    engine: str
    #: the server's API base (OpenAI-compatible engines: ending in /v1; ollama: its root)
    url: str
    #: the model name the server knows (None: the server's only model, llama-server)
    model: str | None = None
    #: llama-server: the adapter's index in the server's --lora list, applied per request
    lora_id: int | None = None
    #: the environment variable holding the API key (never the key itself)
    api_key_env: str | None = None
    connect_timeout: float = 10.0
    read_timeout: float = 120.0
    retries: int = 3


@dataclass(frozen=True)
class StageSpec:
    """One validated stage. Paths are absolute; ``grammar`` holds GBNF text (read from its file).

    ``remote`` is set for a stage that runs on a server; its ``model``, if any, is then only
    read for the vocabulary (token counts, the context check, token ids over the wire)."""

    name: str
    model: Path | None
    prompt: str
    template: Template = field(repr=False, compare=False)
    lora: Path | None = None
    lora_scale: float = 1.0
    sha256: str | None = None
    lora_sha256: str | None = None
    stop: tuple[str, ...] = ()
    max_tokens: int = 64
    temperature: float = 0.0
    top_k: int = 40
    top_p: float = 1.0
    min_p: float = 0.05
    repeat_penalty: float = 1.0
    seed: int | None = None
    grammar: str | None = None
    #: the context size in tokens; unless set in stack.toml (``n_ctx_auto``), the llama engine
    #: sizes it when the stack loads (edge_stack.engines.llama._sizing) and this is only the
    #: value for engines that do not
    n_ctx: int = 512
    kv_cache_type: str = "f16"
    #: prompt-lookup drafting: most tokens checked per step, 0 = off (llama.cpp stages only)
    draft: int = 0
    remote: RemoteSpec | None = None
    #: True when stack.toml sets no n_ctx for the stage (an explicit n_ctx always wins)
    n_ctx_auto: bool = True


@dataclass(frozen=True)
class StackSpec:
    """A validated ``stack.toml``."""

    path: Path
    name: str
    description: str
    version: int
    stages: tuple[StageSpec, ...]
    #: ``max_question_tokens`` as stack.toml sets it (None: not set; see :attr:`question_limit`)
    max_question_tokens: int | None = None
    #: one of MEMORY_MODES
    memory: str = "shared"

    @property
    def question_tokens(self) -> int:
        """The question length, in tokens, stages without n_ctx are sized for."""
        if self.max_question_tokens is None:
            return DEFAULT_MAX_QUESTION_TOKENS
        return self.max_question_tokens

    @property
    def question_limit(self) -> int | None:
        """The longest question an ask accepts, in tokens of each stage's model: the stack's
        ``max_question_tokens``, else the default when a stage sized for it inserts the question
        (a stack whose stages all set n_ctx has no limit but the context rule)."""
        if self.max_question_tokens is not None:
            return self.max_question_tokens
        for stage in self.stages:
            if stage.n_ctx_auto and stage.remote is None and "question" in stage.template.fields:
                return DEFAULT_MAX_QUESTION_TOKENS
        return None

    @property
    def root(self) -> Path:
        """The folder stage paths are relative to."""
        return self.path.parent

    def stage(self, name: str) -> StageSpec:
        """The stage called ``name`` (KeyError if there is none)."""
        for stage in self.stages:
            if stage.name == name:
                return stage
        raise KeyError(name)


class _Where:
    """Builds error messages that name the file, the stage and the key."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def error(
        self, message: str, *, stage: str | None = None, key: str | None = None
    ) -> ManifestError:
        return ManifestError(f"{self.path}: {self._at(stage, key)}{message}")

    def missing(self, message: str, *, stage: str | None, key: str) -> ModelFileNotFound:
        return ModelFileNotFound(f"{self.path}: {self._at(stage, key)}{message}")

    @staticmethod
    def _at(stage: str | None, key: str | None) -> str:
        where = []
        if stage is not None:
            where.append(f"stage {stage}")
        if key is not None:
            where.append(f"key '{key}'")
        return (", ".join(where) + ": ") if where else ""


# --- value checkers: each returns the normalized value or raises ValueError(explanation) ------


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: object) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _str(v: object) -> str:
    if not isinstance(v, str):
        raise ValueError(f"must be a string, got {v!r}")
    return v


def _nonempty_str(v: object) -> str:
    if not _str(v).strip():
        raise ValueError("must not be empty")
    return str(v)


def _int_range(lo: int, hi: int | None = None) -> Callable[[object], int]:
    def check(v: object) -> int:
        if not _is_int(v) or v < lo or (hi is not None and v > hi):  # type: ignore[operator]
            upper = f" and at most {hi}" if hi is not None else ""
            raise ValueError(f"must be an integer of at least {lo}{upper}, got {v!r}")
        return int(v)  # type: ignore[call-overload]

    return check


def _float_range(lo: float, hi: float, *, lo_open: bool = False) -> Callable[[object], float]:
    def check(v: object) -> float:
        ok = _is_num(v) and (v > lo if lo_open else v >= lo) and v <= hi  # type: ignore[operator]
        if not ok:
            low = f"above {lo}" if lo_open else f"at least {lo}"
            raise ValueError(f"must be a number {low} and at most {hi}, got {v!r}")
        return float(v)  # type: ignore[arg-type]

    return check


def _stop(v: object) -> tuple[str, ...]:
    if not isinstance(v, list) or not all(isinstance(s, str) and s for s in v):
        raise ValueError(f'must be a list of non-empty strings such as ["\\n"], got {v!r}')
    return tuple(v)


def _kv_cache_type(v: object) -> str:
    if not isinstance(v, str) or v.strip().lower() not in KV_CACHE_TYPES:
        raise ValueError(f"must be one of {', '.join(KV_CACHE_TYPES)}, got {v!r}")
    return v.strip().lower()


def _sha256(v: object) -> str:
    if not isinstance(v, str) or not _SHA256.fullmatch(v.strip().lower()):
        raise ValueError(f"must be 64 hexadecimal digits (the output of sha256sum), got {v!r}")
    return v.strip().lower()


#: llama.cpp takes top_k as a C int
_INT32_MAX = 2**31 - 1
#: bounds of lora_scale (either sign) and repeat_penalty: far past any useful value, and kept
#: well inside the C float llama.cpp stores them in
MAX_LORA_SCALE = 100.0
MAX_REPEAT_PENALTY = 100.0

# --- remote stages: the keys, checked here; what each engine can carry in a request is checked
# when the stack loads (edge_stack.engines.remote), since that is the engine's knowledge -------

#: servers a stage can run on; "local" is llama.cpp in this process (the default)
REMOTE_ENGINES = ("openai", "llama-server", "llama-cpp-python", "vllm", "ollama", "edgestack")
ENGINES = ("local", *REMOTE_ENGINES)
#: keys only remote stages take, and keys only local stages take
REMOTE_KEYS = (
    "url",
    "remote_model",
    "lora_id",
    "api_key_env",
    "connect_timeout",
    "read_timeout",
    "retries",
)
LOCAL_ONLY_KEYS = ("lora", "lora_sha256", "kv_cache_type", "draft")
#: bounds of the network settings: seconds to connect, seconds without a byte, extra attempts
MAX_CONNECT_TIMEOUT_S = 300.0
MAX_READ_TIMEOUT_S = 3600.0
MAX_RETRIES = 10
MAX_URL_CHARS = 2048
#: engines whose API base is OpenAI's, ending in /v1 (the generic "openai" may end anywhere)
_V1_ENGINES = {"llama-server", "llama-cpp-python", "vllm", "edgestack"}
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_STAGE_MODEL = re.compile(r"[^/\s]+/[a-z][a-z0-9_]*")


def _engine(v: object) -> str:
    if not isinstance(v, str) or v.strip().lower() not in ENGINES:
        raise ValueError(f"must be one of {', '.join(ENGINES)}, got {v!r}")
    return v.strip().lower()


def _url(v: object) -> str:
    if not isinstance(v, str) or not v.strip() or len(v) > MAX_URL_CHARS:
        raise ValueError(f"must be an http(s) URL of at most {MAX_URL_CHARS} characters, got {v!r}")
    text = v.strip().rstrip("/")
    try:
        parts = urlsplit(text)
        parts.port  # noqa: B018  raises ValueError for a port that is not a number
    except ValueError:
        raise ValueError(f"is not a valid URL: {v!r}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"must be an http:// or https:// URL with a host, got {v!r}")
    if parts.username or parts.password:
        raise ValueError(
            "must not hold a user name or password; put the key in an environment variable "
            "and name it in api_key_env"
        )
    if parts.query or parts.fragment:
        raise ValueError(f"must be the server's API base, without ?query or #fragment, got {v!r}")
    return text


def _env_name(v: object) -> str:
    if not isinstance(v, str) or not _ENV_NAME.fullmatch(v):
        raise ValueError(
            f"must be the NAME of an environment variable ([A-Za-z_][A-Za-z0-9_]*) that holds "
            f"the key, never the key itself, got {str(v)[:4]!r}..."
        )
    return v


def _remote(
    values: Mapping[str, Any], raw: Mapping[str, Any], where: _Where, stage: str
) -> RemoteSpec | None:
    """The remote settings of a stage (None for a local one). Keys of the other kind are
    refused when the stage itself sets them; from [defaults] they apply where they fit."""
    engine = values.get("engine", "local")
    if engine == "local":
        for key in REMOTE_KEYS:
            if key in raw:
                raise where.error(
                    f"is for a stage on a server; set engine (one of {', '.join(REMOTE_ENGINES)}) "
                    "or remove it",
                    stage=stage,
                    key=key,
                )
        return None
    for key in LOCAL_ONLY_KEYS:
        if key in raw:
            raise where.error(
                f"does not apply to a stage on engine '{engine}': its server holds the model "
                "and adapters (pick the adapter with remote_model, or lora_id on llama-server); "
                "remove it",
                stage=stage,
                key=key,
            )
    if "url" not in values:
        raise where.error(
            f"missing key: a stage on engine '{engine}' needs the server's URL, e.g. "
            + ("http://host:11434" if engine == "ollama" else "http://host:8080/v1"),
            stage=stage,
            key="url",
        )
    url: str = values["url"]
    path = urlsplit(url).path
    if engine == "ollama" and path.endswith(("/v1", "/api")):
        raise where.error(
            f"expected Ollama's root URL such as http://host:11434 (edgestack calls its native "
            f"/api/generate), found {url}; drop the {path.rsplit('/', 1)[-1]!r} part",
            stage=stage,
            key="url",
        )
    if engine in _V1_ENGINES and not path.endswith("/v1"):
        raise where.error(
            f"expected {engine}'s OpenAI API base ending in /v1 (e.g. http://host:8080/v1), "
            f"found {url}; add /v1",
            stage=stage,
            key="url",
        )
    model = values.get("remote_model")
    if model is None and engine != "llama-server":
        what = {
            "vllm": "the LoRA adapter's name from --lora-modules (or the base model's)",
            "ollama": "the name given to `ollama create`",
            "edgestack": "STACK/STAGE, a stage of a stack that server serves",
            "llama-cpp-python": "the model_alias in the server's config file",
        }.get(engine, "the model name the server knows")
        raise where.error(f"missing key: set it to {what}", stage=stage, key="remote_model")
    if engine == "edgestack" and not _STAGE_MODEL.fullmatch(model or ""):
        raise where.error(
            f"expected STACK/STAGE (a stage of a stack the edgestack server serves), found "
            f"{model!r}",
            stage=stage,
            key="remote_model",
        )
    if "lora_id" in values and engine != "llama-server":
        raise where.error(
            "selects an adapter of llama-server (its --lora order) only; on "
            f"'{engine}' the adapter is chosen by remote_model",
            stage=stage,
            key="lora_id",
        )
    return RemoteSpec(
        engine=engine,
        url=url,
        model=model,
        lora_id=values.get("lora_id"),
        api_key_env=values.get("api_key_env"),
        connect_timeout=values.get("connect_timeout", RemoteSpec.connect_timeout),
        read_timeout=values.get("read_timeout", RemoteSpec.read_timeout),
        retries=values.get("retries", RemoteSpec.retries),
    )


#: every stage key -> its checker; all of them may also sit in [defaults] except `name`
STAGE_KEYS: dict[str, Callable[[object], Any]] = {
    "name": _str,
    "model": _nonempty_str,
    "lora": _nonempty_str,
    "lora_scale": _float_range(-MAX_LORA_SCALE, MAX_LORA_SCALE),
    "sha256": _sha256,
    "lora_sha256": _sha256,
    "prompt": _nonempty_str,
    "stop": _stop,
    "max_tokens": _int_range(1, MAX_N_CTX),
    "temperature": _float_range(0.0, 2.0),
    "top_k": _int_range(0, _INT32_MAX),
    "top_p": _float_range(0.0, 1.0, lo_open=True),
    "min_p": _float_range(0.0, 1.0),
    "repeat_penalty": _float_range(0.0, MAX_REPEAT_PENALTY, lo_open=True),
    "seed": _int_range(0, 2**32 - 2),
    "grammar": _nonempty_str,
    "n_ctx": _int_range(16, MAX_N_CTX),
    "kv_cache_type": _kv_cache_type,
    "draft": _int_range(0, MAX_DRAFT),
    "engine": _engine,
    "url": _url,
    "remote_model": _nonempty_str,
    "lora_id": _int_range(0, 2**16),
    "api_key_env": _env_name,
    "connect_timeout": _float_range(0.0, MAX_CONNECT_TIMEOUT_S, lo_open=True),
    "read_timeout": _float_range(0.0, MAX_READ_TIMEOUT_S, lo_open=True),
    "retries": _int_range(0, MAX_RETRIES),
}
_TOP_KEYS = {
    "name",
    "description",
    "version",
    "defaults",
    "stages",
    "max_question_tokens",
    "memory",
}


def _check_keys(
    table: Mapping[str, object],
    allowed: set[str] | Mapping[str, object],
    where: _Where,
    *,
    stage: str | None,
    section: str,
) -> None:
    for key in table:
        if key not in allowed:
            known = ", ".join(sorted(allowed))
            raise where.error(
                f"unknown key in {section} (known keys: {known})", stage=stage, key=key
            )


def _hub_file(value: str, where: _Where, *, stage: str, key: str, check: bool) -> Path:
    """The cached copy of a ``hf://`` value (``edgestack pull`` downloads it; this only looks)."""
    try:
        ref = parse_hub_file(value)
        found = cached_hub_file(ref)
    except HubError as exc:
        raise where.error(str(exc), stage=stage, key=key) from None
    if found is not None:
        return found
    if check:
        raise where.missing(
            f"{ref} is not in the Hugging Face cache ({hf_cache_dir()}); download it with "
            "`edgestack pull` (for a pulled stack: pull it again), or connect once",
            stage=stage,
            key=key,
        )
    # Not cached and not needed now (inspect): a path that says so and does not exist.
    return hf_cache_dir() / "not-cached" / ref.repo_id / ref.filename


def _package_file(value: str, where: _Where, *, stage: str, key: str, check: bool) -> Path:
    """The installed copy of a ``pip://`` value (a file a Python package installs)."""
    try:
        ref = parse_package_file(value)
    except ManifestError as exc:
        raise where.error(str(exc), stage=stage, key=key) from None
    try:
        return installed_package_file(ref)
    except ModelFileNotFound as exc:
        if check:
            raise where.missing(str(exc), stage=stage, key=key) from None
    # Not installed and not needed now (inspect): a path that says so and does not exist.
    return not_installed_path(ref)


def _resolve_file(
    root: Path,
    value: str,
    where: _Where,
    *,
    stage: str,
    key: str,
    check: bool,
    outside_ok: bool,
) -> Path:
    """The absolute path of a stage's file, symlinks resolved; inside ``root`` unless
    ``outside_ok``; an existing regular file if ``check``. A ``hf://`` value is a Hub file
    (its copy in huggingface_hub's cache): the stack names it explicitly, so it may be outside.

    A stack that is itself a snapshot in huggingface_hub's cache may use its repository's
    ``blobs/`` folder too: the snapshot's files are links there."""
    if "\0" in value:
        raise where.error("expected a file path, found a NUL character in it", stage=stage, key=key)
    if is_hub_file(value):
        return _hub_file(value, where, stage=stage, key=key, check=check)
    if is_package_file(value):
        return _package_file(value, where, stage=stage, key=key, check=check)
    try:
        path = (root / Path(value).expanduser()).resolve()
        folder = root.resolve()
    except (OSError, RuntimeError) as exc:  # RuntimeError: a symlink loop
        raise where.error(
            f"cannot resolve {value!r} ({exc.__class__.__name__}); fix the path or the links",
            stage=stage,
            key=key,
        ) from None
    allowed = snapshot_repo_folder(folder) or folder
    if not outside_ok and not path.is_relative_to(allowed):
        raise where.error(
            f"expected a file inside the stack folder {folder}, found {path} (symlinks "
            "resolved); move the file into the folder, or set EDGESTACK_ALLOW_OUTSIDE_PATHS=1 "
            "if you trust this stack.toml",
            stage=stage,
            key=key,
        )
    if check and not path.is_file():
        if path.is_dir():
            what = "is a folder, not a file"
        else:
            what = "is not a regular file" if path.exists() else "does not exist"
        raise where.missing(
            f"{path} {what}; fix the path (it is relative to stack.toml)", stage=stage, key=key
        )
    return path


def _stage_grammar(root: Path, value: str, where: _Where, *, stage: str, outside_ok: bool) -> str:
    """A stage's GBNF text, checked as llama.cpp will parse it: inline when ``value`` holds
    ``::=``, else read from that file (at most MAX_GRAMMAR_BYTES). Errors give the line and
    column in the grammar, never its text."""
    source: str | bytes = value
    name = "GBNF grammar"
    if "::=" not in value:
        path = _resolve_file(
            root, value, where, stage=stage, key="grammar", check=True, outside_ok=outside_ok
        )
        name = f"GBNF grammar file {path}"
        try:
            with path.open("rb") as file:
                size = os.fstat(file.fileno()).st_size
                # One byte past the limit is enough to refuse a bigger file without reading it.
                source = file.read(MAX_GRAMMAR_BYTES + 1)
        except OSError as exc:
            raise where.error(
                f"cannot read {path}: {exc.strerror or exc.__class__.__name__}; check the file "
                "and its permissions",
                stage=stage,
                key="grammar",
            ) from None
        if len(source) > MAX_GRAMMAR_BYTES:
            raise where.error(
                f"{name}: expected at most {MAX_GRAMMAR_BYTES:,} bytes, found "
                f"{max(size, len(source)):,}; make the grammar smaller",
                stage=stage,
                key="grammar",
            )
    try:
        validate_grammar(source, name=name)
    except GrammarError as exc:
        raise where.error(str(exc), stage=stage, key="grammar") from None
    return source.decode("utf-8") if isinstance(source, bytes) else source


def parse_manifest(
    data: Mapping[str, Any],
    path: Path,
    *,
    check_files: bool = True,
    allow_outside_paths: bool | None = None,
) -> StackSpec:
    """Validate parsed TOML ``data`` as the manifest at ``path``.

    Stage files must be inside ``path``'s folder unless ``allow_outside_paths`` (default:
    EDGESTACK_ALLOW_OUTSIDE_PATHS); ``hf://`` files come from huggingface_hub's cache.
    """
    outside_ok = (
        settings().allow_outside_paths if allow_outside_paths is None else allow_outside_paths
    )
    where = _Where(path)
    root = path.parent
    _check_keys(data, _TOP_KEYS, where, stage=None, section="the top level")

    version = data.get("version")
    if version is None:
        raise where.error(f"missing key 'version'; add `version = {MANIFEST_VERSION}` at the top")
    if not _is_int(version) or version != MANIFEST_VERSION:
        raise where.error(
            f"manifest version {version!r} is not supported; this edgestack reads version "
            f"{MANIFEST_VERSION}",
            key="version",
        )
    name = data.get("name", root.name)
    if not isinstance(name, str) or not name.strip():
        raise where.error(f"must be a non-empty string, got {name!r}", key="name")
    description = data.get("description", "")
    if not isinstance(description, str):
        raise where.error(f"must be a string, got {description!r}", key="description")
    max_question_tokens = data.get("max_question_tokens")
    try:
        if max_question_tokens is not None:
            max_question_tokens = _int_range(1, MAX_N_CTX)(max_question_tokens)
    except ValueError as exc:
        raise where.error(str(exc), key="max_question_tokens") from None
    memory = data.get("memory", "shared")
    if not isinstance(memory, str) or memory.strip().lower() not in MEMORY_MODES:
        raise where.error(f"must be one of {', '.join(MEMORY_MODES)}, got {memory!r}", key="memory")

    defaults_raw = data.get("defaults", {})
    if not isinstance(defaults_raw, dict):
        raise where.error("must be a table ([defaults])", key="defaults")
    allowed_defaults = {k: v for k, v in STAGE_KEYS.items() if k != "name"}
    if "name" in defaults_raw:
        raise where.error(
            "a stage name cannot have a default; give each stage its own name", key="defaults.name"
        )
    _check_keys(defaults_raw, allowed_defaults, where, stage=None, section="[defaults]")
    defaults: dict[str, Any] = {}
    for key, value in defaults_raw.items():
        try:
            defaults[key] = STAGE_KEYS[key](value)
        except ValueError as exc:
            raise where.error(str(exc), key=f"defaults.{key}") from None

    stages_raw = data.get("stages")
    if not isinstance(stages_raw, list) or not stages_raw:
        raise where.error("a stack needs at least one [[stages]] table", key="stages")
    if len(stages_raw) > MAX_STAGES:
        raise where.error(
            f"expected at most {MAX_STAGES} [[stages]] tables, found {len(stages_raw):,}; "
            "merge stages or split the pipeline into several stacks",
            key="stages",
        )

    stages: list[StageSpec] = []
    seen: set[str] = set()
    for index, raw in enumerate(stages_raw):
        label = f"#{index + 1}"
        if not isinstance(raw, dict):
            raise where.error("must be a table ([[stages]])", stage=label)
        stage_name = raw.get("name")
        if isinstance(stage_name, str) and _NAME.fullmatch(stage_name):
            label = f"'{stage_name}'"
        _check_keys(raw, STAGE_KEYS, where, stage=label, section="a stage")
        if stage_name is None:
            raise where.error("missing key; every stage needs a name", stage=label, key="name")
        if not isinstance(stage_name, str) or not _NAME.fullmatch(stage_name):
            raise where.error(
                f"must match [a-z][a-z0-9_]* (it is used as {{name}} in later prompts), got {stage_name!r}",
                stage=label,
                key="name",
            )
        if stage_name in _RESERVED:
            raise where.error(
                f"'{stage_name}' is reserved for the input; pick another name",
                stage=label,
                key="name",
            )
        if stage_name in seen:
            raise where.error(
                "another stage already has this name; names must be unique", stage=label, key="name"
            )

        values: dict[str, Any] = dict(defaults)
        for key, value in raw.items():
            try:
                values[key] = STAGE_KEYS[key](value)
            except ValueError as exc:
                raise where.error(str(exc), stage=label, key=key) from None
        remote = _remote(values, raw, where, label)
        for required in ("prompt",) if remote else ("model", "prompt"):
            if required not in values:
                raise where.error(
                    "missing key (set it in the stage or in [defaults])", stage=label, key=required
                )
        max_tokens = values.get("max_tokens", StageSpec.max_tokens)
        if "n_ctx" in values and max_tokens > values["n_ctx"]:
            raise where.error(
                f"{max_tokens} is more than the stage's n_ctx "
                f"({values['n_ctx']}), so the stage could never run; lower "
                "max_tokens or raise n_ctx",
                stage=label,
                key="max_tokens",
            )
        if "lora_sha256" in values and "lora" not in values:
            raise where.error(
                "pins an adapter but the stage has no 'lora'", stage=label, key="lora_sha256"
            )

        prompt: str = values["prompt"]
        try:
            template = parse_template(prompt)
        except TemplateSyntaxError as exc:
            raise where.error(str(exc), stage=label, key="prompt") from None
        for ref in template.fields:
            if ref == "question" or ref in seen:
                continue
            later = any(isinstance(s, dict) and s.get("name") == ref for s in stages_raw[index:])
            why = (
                "runs later (or is this stage): a prompt may name {question} and earlier stages only"
                if later
                else "is not a stage of this stack"
            )
            known = ", ".join(["question", *[s.name for s in stages]])
            raise where.error(
                f"{{{ref}}} {why} (available here: {known})", stage=label, key="prompt"
            )

        model = (
            None
            if "model" not in values
            else _resolve_file(
                root,
                values["model"],
                where,
                stage=label,
                key="model",
                check=check_files,
                outside_ok=outside_ok,
            )
        )
        lora = None
        if "lora" in values and remote is None:
            lora = _resolve_file(
                root,
                values["lora"],
                where,
                stage=label,
                key="lora",
                check=check_files,
                outside_ok=outside_ok,
            )
        grammar = values.get("grammar")
        if grammar is not None:
            grammar = _stage_grammar(root, grammar, where, stage=label, outside_ok=outside_ok)

        fields: dict[str, Any] = {
            k: v
            for k, v in values.items()
            if k not in {"model", "lora", "grammar", "name", "prompt", "engine", *REMOTE_KEYS}
            and not (remote and k in LOCAL_ONLY_KEYS)
        }
        stages.append(
            StageSpec(
                name=stage_name,
                model=model,
                lora=lora,
                grammar=grammar,
                prompt=prompt,
                template=template,
                remote=remote,
                n_ctx_auto="n_ctx" not in values,
                **fields,
            )
        )
        seen.add(stage_name)

    return StackSpec(
        path=path,
        name=name.strip(),
        description=description,
        version=version,
        stages=tuple(stages),
        max_question_tokens=max_question_tokens,
        memory=memory.strip().lower(),
    )


def load_manifest(
    path: str | Path,
    *,
    check_files: bool = True,
    allow_outside_paths: bool | None = None,
) -> StackSpec:
    """Read and validate a ``stack.toml`` (or the ``stack.toml`` inside a stack folder).

    Raises :class:`~edge_stack.errors.ManifestError` for anything wrong in the file and
    :class:`~edge_stack.errors.ModelFileNotFound` for a missing manifest or a missing model file
    (``check_files=False`` skips the model and adapter existence checks, as ``inspect`` does).
    Stage files outside the stack's folder are refused unless ``allow_outside_paths`` (default:
    EDGESTACK_ALLOW_OUTSIDE_PATHS).
    """
    p = Path(path).expanduser()
    if p.is_dir():
        p = p / "stack.toml"
    p = resolved_manifest(p)
    if not p.is_file():
        raise ModelFileNotFound(
            f"stack manifest {p} does not exist; pass a stack.toml or a stack folder"
        )
    data = read_toml(p, "manifest")
    return parse_manifest(data, p, check_files=check_files, allow_outside_paths=allow_outside_paths)
