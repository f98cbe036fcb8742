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
    model = "base.Q8_0.gguf"    # relative to stack.toml
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

from .errors import GrammarError, ManifestError, ModelFileNotFound
from .formats._template import Template, TemplateSyntaxError, parse_template
from .formats.grammar._validate import MAX_GRAMMAR_BYTES, validate_grammar
from .util._env import settings
from .util._limits import MAX_N_CTX
from .util._toml import read_toml

__all__ = ["STAGE_KEYS", "StackSpec", "StageSpec", "load_manifest", "parse_manifest"]

MANIFEST_VERSION = 1
_NAME = re.compile(r"[a-z][a-z0-9_]*")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_RESERVED = {"question"}
#: what llama.cpp's KV cache can hold (its -ctk/-ctv choices); quantized types need heads whose
#: size is a multiple of 32
KV_CACHE_TYPES = ("f16", "f32", "bf16", "q8_0", "q5_1", "q5_0", "q4_1", "q4_0", "iq4_nl")


@dataclass(frozen=True)
class StageSpec:
    """One validated stage. Paths are absolute; ``grammar`` holds GBNF text (read from its file)."""

    name: str
    model: Path
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
    n_ctx: int = 512
    kv_cache_type: str = "f16"


@dataclass(frozen=True)
class StackSpec:
    """A validated ``stack.toml``."""

    path: Path
    name: str
    description: str
    version: int
    stages: tuple[StageSpec, ...]

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
}
_TOP_KEYS = {"name", "description", "version", "defaults", "stages"}


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


def _resolve_file(
    root: Path, value: str, where: _Where, *, stage: str, key: str, check: bool, outside_ok: bool
) -> Path:
    """The absolute path of a stage's file, symlinks resolved; inside ``root`` unless
    ``outside_ok``; an existing regular file if ``check``."""
    if "\0" in value:
        raise where.error("expected a file path, found a NUL character in it", stage=stage, key=key)
    try:
        path = (root / Path(value).expanduser()).resolve()
        folder = root.resolve()
    except (OSError, RuntimeError) as exc:  # RuntimeError: a symlink loop
        raise where.error(
            f"cannot resolve {value!r} ({exc.__class__.__name__}); fix the path or the links",
            stage=stage,
            key=key,
        ) from None
    if not outside_ok and not path.is_relative_to(folder):
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
    EDGESTACK_ALLOW_OUTSIDE_PATHS).
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
        for required in ("model", "prompt"):
            if required not in values:
                raise where.error(
                    "missing key (set it in the stage or in [defaults])", stage=label, key=required
                )
        max_tokens = values.get("max_tokens", StageSpec.max_tokens)
        if max_tokens > values.get("n_ctx", StageSpec.n_ctx):
            raise where.error(
                f"{max_tokens} is more than the stage's n_ctx "
                f"({values.get('n_ctx', StageSpec.n_ctx)}), so the stage could never run; lower "
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

        model = _resolve_file(
            root,
            values["model"],
            where,
            stage=label,
            key="model",
            check=check_files,
            outside_ok=outside_ok,
        )
        lora = None
        if "lora" in values:
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
            if k not in {"model", "lora", "grammar", "name", "prompt"}
        }
        stages.append(
            StageSpec(
                name=stage_name,
                model=model,
                lora=lora,
                grammar=grammar,
                prompt=prompt,
                template=template,
                **fields,
            )
        )
        seen.add(stage_name)

    return StackSpec(
        path=path, name=name.strip(), description=description, version=version, stages=tuple(stages)
    )


def load_manifest(
    path: str | Path, *, check_files: bool = True, allow_outside_paths: bool | None = None
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
    p = p.resolve()
    if not p.is_file():
        raise ModelFileNotFound(
            f"stack manifest {p} does not exist; pass a stack.toml or a stack folder"
        )
    data = read_toml(p, "manifest")
    return parse_manifest(data, p, check_files=check_files, allow_outside_paths=allow_outside_paths)
