"""``edgestack package STACK -o DIR``: a folder ready to upload to the Hub as a stack repository.

The folder holds a copy of the stack's stack.toml with every model and adapter pinned (sha256
computed for files the manifest does not pin yet), the files it names (``hf://`` files stay
references to their own repositories, pinned too), its ``eval.jsonl`` if it has one, and a
generated model card (``README.md``: stages, prompts, files with sizes and pins, and measured
accuracy when an ``edgestack eval --report`` file is given). ``edgestack pull`` takes such a
repository as it is. The folder is built in a temporary folder beside DIR and renamed at the
end; an existing DIR is replaced only with ``force``.
"""

from __future__ import annotations

import json
import os
import posixpath
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._version import __version__
from ..errors import BadArgument, ManifestError, ModelFileNotFound, OutputExistsError
from ..manifest import StackSpec, load_manifest
from ..util._atomic import temp_dir
from ..util._hubref import is_hub_file, parse_hub_file
from ..util._pins import check_pin, file_sha256
from ..util._toml import read_toml
from ..util._units import format_bytes
from ._toml_out import dumps_toml

__all__ = ["PackageResult", "package_stack"]

MANIFEST = "stack.toml"
EVAL_DATA = "eval.jsonl"
#: the largest eval report read for the model card
MAX_REPORT_BYTES = 64 << 20


@dataclass(frozen=True)
class PackagedFile:
    """A file of the packaged stack: its name there, size and sha256 (``hf://`` files are
    referenced, not copied)."""

    name: str
    size: int
    sha256: str
    copied: bool


@dataclass(frozen=True)
class PackageResult:
    """What :func:`package_stack` wrote."""

    folder: Path
    name: str
    files: tuple[PackagedFile, ...]
    pinned_now: tuple[str, ...]

    @property
    def size_bytes(self) -> int:
        return sum(f.size for f in self.files if f.copied)


def _destination(value: str, source: Path, taken: dict[str, Path]) -> str:
    """Where a file named ``value`` in the manifest goes in the package (a relative path)."""
    rel = posixpath.normpath(value.replace("\\", "/"))
    if rel.startswith(("/", "../", "~")) or rel in {"..", "."}:
        rel = source.name  # a file from outside the folder (EDGESTACK_ALLOW_OUTSIDE_PATHS)
    stem, n = rel, 2
    while rel in taken and taken[rel] != source:
        base, ext = posixpath.splitext(stem)
        rel, n = f"{base}-{n}{ext}", n + 1
    taken[rel] = source
    return rel


def _eval_summary(path: Path) -> dict[str, Any]:
    """The few figures of an ``edgestack eval --report`` file the card shows."""
    try:
        with path.open("rb") as fh:
            raw = fh.read(MAX_REPORT_BYTES + 1)
        data = json.loads(raw)
    except FileNotFoundError:
        raise ModelFileNotFound(
            f"eval report {path} (from --eval-report) does not exist; write one with "
            "edgestack eval --stack STACK --report FILE"
        ) from None
    except (OSError, ValueError) as exc:
        raise BadArgument(
            f"eval report {path} (from --eval-report) is not a JSON report ({exc}); write one "
            "with edgestack eval --stack STACK --report FILE"
        ) from None
    keys = ("n", "correct", "accuracy", "match", "seconds_per_question")
    if (
        len(raw) > MAX_REPORT_BYTES
        or not isinstance(data, dict)
        or any(k not in data for k in keys)
    ):
        raise BadArgument(
            f"eval report {path} (from --eval-report) lacks {', '.join(keys)}; give the file "
            "edgestack eval --report writes"
        )
    return {k: data[k] for k in (*keys, "data", "peak_rss_mb") if k in data}


def _card(
    spec: StackSpec,
    files: list[PackagedFile],
    values: dict[tuple[str, str], str],
    repo: str | None,
    report: dict[str, Any] | None,
    extra: str,
) -> str:
    """The model card (README.md) of a packaged stack."""
    name = repo or "OWNER/NAME"
    bases = sorted({parse_hub_file(v).repo_id for v in values.values() if is_hub_file(v)})
    lines = ["---", "library_name: edgestack", "tags:", "- edgestack", "- gguf", "- llama.cpp"]
    if any(s.lora for s in spec.stages):
        lines.append("- lora")
    if bases:
        lines += ["base_model:", *[f"- {b}" for b in bases]]
    lines += ["---", "", f"# {spec.name}", ""]
    if spec.description:
        lines += [spec.description, ""]
    arrow = " -> ".join(["question", *[s.name for s in spec.stages], "answer"])
    lines += [
        f"A stack of {len(spec.stages)} small models for [edgestack](https://pypi.org/project/"
        "edgestack/), run offline on CPUs with llama.cpp. Each stage passes plain text to the "
        f"next: {arrow}.",
        "",
        "## Use",
        "",
        "```bash",
        f"edgestack pull {name}",
        f'edgestack ask --stack {name} "your question"',
        f"edgestack show {name}",
        "```",
        "",
        "Every file is pinned by sha256 in `stack.toml`; `edgestack pull` verifies them.",
        "",
        "## Stages",
        "",
        "| # | stage | model | adapter | n_ctx | max_tokens | temperature |",
        "|---|---|---|---|---|---|---|",
    ]
    for i, s in enumerate(spec.stages, 1):
        model = values.get((s.name, "model"), "-")
        lora = values.get((s.name, "lora"), "-")
        lines.append(
            f"| {i} | {s.name} | `{model}` | `{lora}` | {s.n_ctx} | {s.max_tokens} | "
            f"{s.temperature} |"
        )
    lines += ["", "### Prompts", ""]
    for s in spec.stages:
        lines += [f"**{s.name}**", "", "```text", s.prompt.replace("```", "`\u200b``"), "```", ""]
    lines += ["## Files", "", "| file | size | sha256 |", "|---|---|---|"]
    for f in files:
        where = "" if f.copied else " (referenced, not copied)"
        lines.append(f"| `{f.name}`{where} | {format_bytes(f.size)} | `{f.sha256}` |")
    total = sum(f.size for f in files)
    lines += ["", f"In all {format_bytes(total)} to download.", "", "## Evaluation", ""]
    if report is None:
        lines.append(
            "Not measured yet: run `edgestack eval --stack STACK --report report.json` and "
            "package again with `--eval-report report.json`."
        )
    else:
        lines.append(
            f"Accuracy {float(report['accuracy']):.1%} ({report['correct']} of {report['n']} "
            f"questions, match {report['match']}), "
            f"{float(report['seconds_per_question']):.3f} s per question"
            + (f", on `{Path(str(report['data'])).name}`" if report.get("data") else "")
            + " (measured by `edgestack eval`)."
        )
    if extra.strip():
        lines += ["", "## About", "", extra.strip()]
    return "\n".join(lines) + "\n"


def _replace_folder(tmp: Path, out: Path, force: bool) -> None:
    if out.exists() or out.is_symlink():
        if not force:
            raise OutputExistsError(f"{out} exists; pass --force to replace it")
        if not out.is_dir() or out.is_symlink():
            raise OutputExistsError(
                f"{out} exists and is not a folder; remove it or pick another -o"
            )
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out)


def package_stack(
    manifest: Path,
    out: Path,
    *,
    force: bool = False,
    repo: str | None = None,
    eval_report: Path | None = None,
) -> PackageResult:
    """Write the stack at ``manifest`` as an upload-ready folder ``out`` (see the module)."""
    spec = load_manifest(manifest)
    out = Path(out).expanduser()
    if out.resolve() == spec.root.resolve() or spec.root.resolve().is_relative_to(out.resolve()):
        raise BadArgument(f"-o {out} holds the stack itself; give another folder")
    if out.exists() and not force:
        raise OutputExistsError(f"{out} exists; pass --force to replace it")
    if (out.exists() or out.is_symlink()) and (out.is_symlink() or not out.is_dir()):
        raise OutputExistsError(f"{out} exists and is not a folder; remove it or pick another -o")
    report = _eval_summary(eval_report) if eval_report is not None else None
    raw = read_toml(spec.path, "manifest")
    defaults = raw.get("defaults", {})
    stages_raw = raw.get("stages", [])
    if not isinstance(defaults, dict) or not isinstance(stages_raw, list):
        raise ManifestError(f"{spec.path}: [defaults] or [[stages]] is malformed")
    taken: dict[str, Path] = {}
    renamed: dict[str, str] = {}
    copies: dict[str, Path] = {}
    files: dict[str, PackagedFile] = {}
    values: dict[tuple[str, str], str] = {}
    pinned_now: list[str] = []
    for stage, table in zip(spec.stages, stages_raw, strict=True):
        merged = {**defaults, **table}
        for key, pin_key, path in (
            ("model", "sha256", stage.model),
            ("lora", "lora_sha256", stage.lora),
        ):
            value = merged.get(key)
            if path is None or not isinstance(value, str):
                continue
            digest = file_sha256(path)
            if is_hub_file(value):
                new = value
            else:
                new = renamed.setdefault(value, _destination(value, path, taken))
                copies[new] = path
            values[(stage.name, key)] = new
            files.setdefault(new, PackagedFile(new, path.stat().st_size, digest, new in copies))
            if merged.get(pin_key) is None:
                table[pin_key] = digest
                pinned_now.append(f"{stage.name}.{key}")
        grammar = merged.get("grammar")
        if isinstance(grammar, str) and "::=" not in grammar:
            source = (spec.root / grammar).resolve()
            new = renamed.setdefault(grammar, _destination(grammar, source, taken))
            copies[new] = source
    for table in (defaults, *stages_raw):
        for key in ("model", "lora", "grammar"):
            value = table.get(key)
            if isinstance(value, str) and value in renamed:
                table[key] = renamed[value]
    header = [f"Packaged by edgestack {__version__} from {spec.path}", "pins: sha256 of every file"]
    text = dumps_toml(raw, header)
    extra = ""
    readme = spec.root / "README.md"
    if readme.is_file():
        extra = readme.read_text(encoding="utf-8", errors="replace")
    out.parent.mkdir(parents=True, exist_ok=True)
    with temp_dir(out.parent, out.name) as tmp:
        for rel, source in copies.items():
            target = tmp / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target)
        if (spec.root / EVAL_DATA).is_file():
            shutil.copyfile(spec.root / EVAL_DATA, tmp / EVAL_DATA)
        (tmp / MANIFEST).write_text(text, encoding="utf-8")
        card = _card(spec, list(files.values()), values, repo, report, extra)
        (tmp / "README.md").write_text(card, encoding="utf-8")
        # The package must load and verify as it is, before it replaces anything.
        written = load_manifest(tmp / MANIFEST)
        for s in written.stages:
            if s.model is not None:
                check_pin(s.model, s.sha256, where=f"{tmp / MANIFEST}: stage {s.name}")
            if s.lora is not None:
                check_pin(s.lora, s.lora_sha256, where=f"{tmp / MANIFEST}: stage {s.name}")
        _replace_folder(tmp, out, force)
    return PackageResult(out, spec.name, tuple(files.values()), tuple(pinned_now))
