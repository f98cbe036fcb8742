"""Build recipes: what ``edgestack build`` turns into a ready stack folder.

A recipe names, per stage, the Hugging Face base checkpoint and the PEFT LoRA adapter it was
trained with (local folders relative to the recipe, or Hub ids ``owner/name[@revision]``), the
prompt and the generation settings (every stack.toml stage key except the files and pins, which
the build writes), plus how the whole stack is assembled::

    name = "word-problems"
    description = "Arithmetic word problems in three steps"
    mode = "adapters"          # one shared base GGUF + one GGUF LoRA adapter per stage
    quantization = "q8_0"      # any --outtype of `edgestack convert`
    adapter_type = "f16"       # exported adapters: f32, f16 or q8_0 (mode "adapters" only)

    [defaults]                 # optional: `base` and any generation key
    base = "../artifacts/base"
    temperature = 0.0

    [[stages]]
    name = "extract"
    adapter = "../artifacts/adapters/extract"
    prompt = "Question: {question}\\nExpression:"
    stop = ["\\n"]

``mode = "merged"`` writes one GGUF per stage with its adapter merged in instead. Unknown keys
are errors; every error names the recipe file, the stage and the key. Generation values and
prompts are checked exactly as stack.toml checks them (:mod:`edge_stack.manifest`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from edge_stack.errors import HubError, ManifestError, ModelFileNotFound
from edge_stack.manifest import REMOTE_KEYS, STAGE_KEYS, StackSpec, parse_manifest
from edge_stack.util._toml import read_toml

__all__ = [
    "GENERATION_KEYS",
    "MODES",
    "Recipe",
    "RecipeStage",
    "Source",
    "load_recipe",
    "parse_recipe",
]

Mode = Literal["merged", "adapters"]
MODES: tuple[Mode, ...] = ("merged", "adapters")

#: stack.toml stage keys a recipe sets directly; the build writes model/lora and their pins
#: (a recipe builds local stages: `edgestack export` writes stages that run on a server)
GENERATION_KEYS: tuple[str, ...] = tuple(
    k
    for k in STAGE_KEYS
    if k not in {"name", "model", "lora", "sha256", "lora_sha256", "engine", *REMOTE_KEYS}
)
_SOURCE_KEYS = ("base", "adapter")
_STAGE_KEYS = {"name", *_SOURCE_KEYS, "base_gguf", *GENERATION_KEYS}
_DEFAULT_KEYS = {"base", "base_gguf", *GENERATION_KEYS}
_TOP_KEYS = {"name", "description", "mode", "quantization", "adapter_type", "defaults", "stages"}
#: a stage with 'base_gguf' and no 'base': what to do instead (a build verifies every adapter
#: against an f32 conversion of the checkpoint it was trained on; a GGUF alone gives none)
_GGUF_ONLY = (
    "missing key: a stage on 'base_gguf' also needs the Hugging Face checkpoint its adapters were "
    "trained on, to export and verify them against; name it as 'base' (transformers makes one "
    "from the GGUF: from_pretrained(FOLDER, gguf_file=NAME), then save_pretrained), or skip the "
    "build and export each adapter with `edgestack export-lora ADAPTER --base BASE.gguf`"
)
# Keys of stack.toml that mean something else here: say what to write instead.
_MANIFEST_ONLY = {
    "model": "a recipe names the Hugging Face checkpoint as 'base'",
    "lora": "a recipe names the PEFT adapter folder as 'adapter'",
    "sha256": "the build writes the pins",
    "lora_sha256": "the build writes the pins",
    "version": "the build writes the manifest version",
}


@dataclass(frozen=True)
class Source:
    """A checkpoint or adapter: a local folder (``path``) or a Hub id (``path`` is None)."""

    spec: str  # as written in the recipe
    path: Path | None

    @property
    def is_hub(self) -> bool:
        """True for a Hub id (resolved through the Hub cache at build time)."""
        return self.path is None

    def __str__(self) -> str:
        return str(self.path) if self.path is not None else self.spec


@dataclass(frozen=True)
class RecipeStage:
    """One stage: its sources and the generation settings written for it in stack.toml.

    ``settings`` holds the stage's own validated generation keys (not the recipe's defaults);
    ``lora_scale`` is the effective scale (stage, then defaults, then 1.0).
    """

    name: str
    base: Source
    adapter: Source | None
    settings: Mapping[str, Any]
    lora_scale: float = 1.0
    #: the GGUF the stage runs on instead of a conversion of ``base``: an absolute path, or a
    #: ``pip://`` / ``hf://`` reference written as such into stack.toml (never copied)
    base_gguf: str | None = None


@dataclass(frozen=True)
class Recipe:
    """A validated build recipe. ``spec`` is the stack it describes, checked as stack.toml is
    (with placeholder model paths): prompts, references between stages, value ranges."""

    path: Path
    name: str
    description: str
    mode: Mode
    quantization: str
    adapter_type: str
    defaults: Mapping[str, Any]  # generation keys of [defaults], validated
    stages: tuple[RecipeStage, ...]
    spec: StackSpec

    @property
    def root(self) -> Path:
        """The folder relative paths in the recipe start from."""
        return self.path.parent


class _Where:
    def __init__(self, path: Path) -> None:
        self.path = path

    def prefix(self, stage: str | None = None, key: str | None = None) -> str:
        parts = [str(self.path)]
        if stage is not None:
            parts.append(f"stage {stage}")
        if key is not None:
            parts.append(f"key '{key}'")
        return ": ".join([parts[0], ", ".join(parts[1:])]) if len(parts) > 1 else parts[0]

    def error(self, message: str, *, stage: str | None = None, key: str | None = None) -> Exception:
        return ManifestError(f"{self.prefix(stage, key)}: {message}")


def _check_keys(
    table: Mapping[str, object], allowed: set[str], where: _Where, stage: str | None, section: str
) -> None:
    for key in table:
        if key in allowed:
            continue
        hint = _MANIFEST_ONLY.get(key)
        known = ", ".join(sorted(allowed))
        why = f"{hint}; " if hint else ""
        raise where.error(
            f"unknown key in {section} ({why}known keys: {known})", stage=stage, key=key
        )


def _looks_local(text: str, root: Path) -> bool:
    """Whether ``text`` means a folder (it may not exist yet) rather than a Hub id."""
    if text.startswith(("./", "../", "/", "~", ".\\", "..\\")) or text in {".", ".."}:
        return True
    if "\\" in text or text.split("@", 1)[0].count("/") != 1:
        return True
    # "artifacts/base" next to an "artifacts" folder is a path even before base/ is trained.
    return (root / text.split("/", 1)[0]).is_dir()


def _source(
    value: object, root: Path, where: _Where, *, stage: str, key: str, check: bool
) -> Source:
    if not isinstance(value, str) or not value.strip():
        raise where.error(
            f"must be a folder (relative to the recipe) or a Hub id owner/name, got {value!r}",
            stage=stage,
            key=key,
        )
    text = value.strip()
    local = Path(text).expanduser()
    path = local if local.is_absolute() else root / local
    if path.exists() or _looks_local(text, root):
        path = path.resolve()
        if check and not path.is_dir():
            what = "is a file, not a folder" if path.exists() else "does not exist"
            folder = "Hugging Face checkpoint" if key == "base" else "PEFT adapter"
            raise ModelFileNotFound(
                f"{where.prefix(stage, key)}: {folder} folder {path} {what}; fix the path (it is "
                "relative to the recipe) or train/download it first"
            )
        return Source(text, path)
    from edge_stack.convert.hub import parse_hub_id

    try:
        parse_hub_id(text)
    except HubError as exc:
        raise where.error(str(exc), stage=stage, key=key) from None
    return Source(text, None)


def _base_gguf(
    value: object, root: Path, where: _Where, stage: str, mode: str, *, check: bool
) -> str | None:
    """A stage's ``base_gguf``: a ``pip://``/``hf://`` reference as written, or a local GGUF
    file (relative to the recipe) as an absolute path."""
    from edge_stack.util._hubref import is_hub_file, parse_hub_file
    from edge_stack.util._pkgref import is_package_file, parse_package_file

    if value is None:
        return None
    if mode != "adapters":
        raise where.error(
            'applies to mode = "adapters" only: a merged stage is converted from the Hugging Face '
            "checkpoint 'base' with its adapter merged in, never from a GGUF; to run the stages "
            'on this GGUF set mode = "adapters" (the GGUF plus one exported adapter per stage), '
            "or remove 'base_gguf'",
            stage=stage,
            key="base_gguf",
        )
    if not isinstance(value, str) or not value.strip():
        raise where.error(
            "must be a GGUF file (relative to the recipe), pip://package/path/file.gguf or "
            f"hf://owner/name/file.gguf, got {value!r}",
            stage=stage,
            key="base_gguf",
        )
    text = value.strip()
    try:
        if is_package_file(text):
            return str(parse_package_file(text))
        if is_hub_file(text):
            return str(parse_hub_file(text))
    except (HubError, ManifestError) as exc:
        raise where.error(str(exc), stage=stage, key="base_gguf") from None
    path = (root / Path(text).expanduser()).resolve()
    if check and not path.is_file():
        raise ModelFileNotFound(
            f"{where.prefix(stage, 'base_gguf')}: GGUF file {path} does not exist; fix the path "
            "(it is relative to the recipe)"
        )
    return str(path)


def _generation(
    table: Mapping[str, Any], where: _Where, *, stage: str | None, prefix: str = ""
) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for key in GENERATION_KEYS:
        if key in table:
            try:
                values[key] = STAGE_KEYS[key](table[key])
            except ValueError as exc:
                raise where.error(str(exc), stage=stage, key=prefix + key) from None
    return values


def _choice(data: Mapping[str, Any], key: str, where: _Where, default: str | None) -> str:
    value = data.get(key, default)
    if value is None:
        raise where.error(f"missing key '{key}'")
    if not isinstance(value, str) or not value.strip():
        raise where.error(f"must be a string, got {value!r}", key=key)
    return value.strip().lower()


def _quantization(data: Mapping[str, Any], where: _Where) -> str:
    from edge_stack.convert import DIRECT_OUTTYPES
    from edge_stack.convert.quantize import QUANT_TYPES

    name = _choice(data, "quantization", where, None)
    if name not in DIRECT_OUTTYPES and name not in QUANT_TYPES:
        common = "f32, f16, bf16, q8_0, q6_k, q5_k_m, q4_k_m"
        raise where.error(
            f"unknown quantization {name!r}; choose a llama.cpp file type such as {common}",
            key="quantization",
        )
    return name


def parse_recipe(data: Mapping[str, Any], path: Path, *, check_files: bool = True) -> Recipe:
    """Validate parsed TOML ``data`` as the recipe at ``path``.

    ``check_files`` checks that local base and adapter folders exist (Hub ids are resolved by
    the build).
    """
    from edge_stack.convert.lora import EXPORT_TYPES

    where = _Where(path)
    root = path.parent
    _check_keys(data, _TOP_KEYS, where, None, "the top level")
    name = data.get("name", root.name)
    if not isinstance(name, str) or not name.strip():
        raise where.error(f"must be a non-empty string, got {name!r}", key="name")
    description = data.get("description", "")
    if not isinstance(description, str):
        raise where.error(f"must be a string, got {description!r}", key="description")
    mode = _choice(data, "mode", where, None)
    if mode not in MODES:
        raise where.error(
            f'must be "merged" (one GGUF per stage, adapter merged in) or "adapters" (one '
            f"shared base GGUF + one GGUF LoRA adapter per stage), got {mode!r}",
            key="mode",
        )
    quantization = _quantization(data, where)
    if "adapter_type" in data and mode != "adapters":
        raise where.error(
            'applies to mode = "adapters" only (merged stages use the quantization)',
            key="adapter_type",
        )
    adapter_type = _choice(data, "adapter_type", where, "f16")
    if adapter_type not in EXPORT_TYPES:
        raise where.error(
            f"must be one of {', '.join(EXPORT_TYPES)}, got {adapter_type!r}", key="adapter_type"
        )

    defaults_raw = data.get("defaults", {})
    if not isinstance(defaults_raw, dict):
        raise where.error("must be a table ([defaults])", key="defaults")
    _check_keys(defaults_raw, _DEFAULT_KEYS, where, None, "[defaults]")
    defaults = _generation(defaults_raw, where, stage=None, prefix="defaults.")

    stages_raw = data.get("stages")
    if not isinstance(stages_raw, list) or not stages_raw:
        raise where.error("a recipe needs at least one [[stages]] table", key="stages")
    stages: list[RecipeStage] = []
    manifest_stages: list[dict[str, Any]] = []
    for index, raw in enumerate(stages_raw):
        label = f"#{index + 1}"
        if not isinstance(raw, dict):
            raise where.error("must be a table ([[stages]])", stage=label)
        if isinstance(raw.get("name"), str) and raw["name"]:
            label = f"'{raw['name']}'"
        _check_keys(raw, _STAGE_KEYS, where, label, "a stage")
        base_gguf = _base_gguf(
            raw.get("base_gguf", defaults_raw.get("base_gguf")), root, where, label, mode,
            check=check_files,
        )  # fmt: skip
        base_value = raw.get("base", defaults_raw.get("base"))
        if base_value is None and base_gguf is not None:
            raise where.error(_GGUF_ONLY, stage=label, key="base")
        if base_value is None:
            raise where.error(
                "missing key (set it in the stage or in [defaults])", stage=label, key="base"
            )
        base = _source(base_value, root, where, stage=label, key="base", check=check_files)
        adapter = None
        if "adapter" in raw:
            adapter = _source(
                raw["adapter"], root, where, stage=label, key="adapter", check=check_files
            )
        settings = _generation(raw, where, stage=label)
        scale = float(settings.get("lora_scale", defaults.get("lora_scale", 1.0)))
        if "lora_scale" in settings and adapter is None:
            raise where.error("the stage has no 'adapter' to scale", stage=label, key="lora_scale")
        stages.append(RecipeStage(str(raw.get("name")), base, adapter, settings, scale, base_gguf))
        manifest_stages.append(
            {"name": raw.get("name"), "model": "base.gguf", **raw_generation(raw)}
        )

    # The stack checks (names, prompt references, values, grammar files) are stack.toml's own.
    # Files outside the recipe's folder are fine here (bases and adapters usually are): the
    # build inlines grammar files into the stack.toml it writes.
    spec = parse_manifest(
        {
            "name": name,
            "description": description,
            "version": 1,
            "defaults": raw_generation(defaults_raw),
            "stages": manifest_stages,
        },
        path,
        check_files=False,
        allow_outside_paths=True,
    )
    return Recipe(
        path=path,
        name=name.strip(),
        description=description,
        mode="merged" if mode == "merged" else "adapters",
        quantization=quantization,
        adapter_type=adapter_type,
        defaults=defaults,
        stages=tuple(stages),
        spec=spec,
    )


def raw_generation(table: Mapping[str, Any]) -> dict[str, Any]:
    """The generation keys of a recipe table, as written."""
    return {k: table[k] for k in GENERATION_KEYS if k in table}


def load_recipe(path: str | os.PathLike[str], *, check_files: bool = True) -> Recipe:
    """Read and validate a build recipe (TOML).

    Raises :class:`~edge_stack.errors.ManifestError` for anything wrong in the file and
    :class:`~edge_stack.errors.ModelFileNotFound` for a missing recipe or a missing local folder.
    """
    p = Path(path).expanduser().resolve()
    if not p.is_file():
        what = "is a folder" if p.is_dir() else "does not exist"
        raise ModelFileNotFound(f"recipe {p} {what}; pass a recipe .toml file")
    data = read_toml(p, "recipe")
    return parse_recipe(data, p, check_files=check_files)
