"""``edgestack build``: a recipe (see :mod:`.recipe`) to a ready, verified stack folder.

Steps, in order: resolve and check every source before anything is written (checkpoints open,
tokenizers convert, every adapter fits its base); convert each distinct base once (mode
"adapters", and stages without an adapter) or merge each stage's adapter (mode "merged"); export
each adapter (mode "adapters"); verify every file against its source before it is kept (see
:mod:`._build_verify`); write stack.toml with sha256 pins, checked by the manifest loader.

Every file is written in a scratch folder inside the output folder and renamed into place only
once verified. The build is incremental: ``<out>/.edgestack-build.json`` (:mod:`._build_state`)
records what each output was made from, and an output whose inputs and settings are unchanged is
kept as it is. Files in the output folder that the build did not make are never touched; a file
in the way of an output is replaced only with ``force``.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import time
import tomllib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from edge_stack._version import __version__
from edge_stack.errors import EdgeStackError, OutputExistsError, VerificationFailed
from edge_stack.util._atomic import atomic_output, temp_dir

from ._state import STATE_NAME, BuildState, remove_quietly, step_key, unchanged
from .recipe import Recipe, RecipeStage, Source, load_recipe

__all__ = ["BuildEvent", "build"]

logger = logging.getLogger(__name__)

MANIFEST = "stack.toml"
Kind = Literal["model", "merged", "adapter", "gguf"]


@dataclass(frozen=True)
class BuildEvent:
    """A progress report: step ``step`` of ``total`` (1-based) started, finished or was skipped.

    ``action`` says what the step does ("convert", "merge", "export", "write");
    ``detail`` is the verification summary (done) or why it was skipped.
    """

    step: int
    total: int
    output: str
    action: str
    status: Literal["start", "done", "skipped"]
    detail: str = ""
    seconds: float = 0.0
    #: the output's file when it is not in the stack folder (a base_gguf named by pip:// or hf://)
    file: Path | None = None


Progress = Callable[[BuildEvent], None]


@dataclass(frozen=True)
class _Step:
    output: str
    kind: Kind
    base: Path
    adapter: Path | None = None
    scale: float = 1.0
    base_output: str | None = None  # adapter steps: the base GGUF it is applied to
    #: "gguf" steps (a recipe's base_gguf): the GGUF file used as the base instead of a
    #: conversion; copied into the stack, or with ``ref`` named by its pip:// or hf:// reference
    gguf: Path | None = None
    ref: bool = False

    @property
    def action(self) -> str:
        actions = {"model": "convert", "merged": "merge", "adapter": "export", "gguf": "verify"}
        return actions[self.kind] if not (self.kind == "gguf" and not self.ref) else "copy"


def _located(exc: EdgeStackError, where: str) -> EdgeStackError:
    """The same error with ``where`` in front of its message."""
    try:
        return type(exc)(f"{where}: {exc}")
    except TypeError:  # an error class with another constructor: keep the original
        return exc


@contextmanager
def _at(where: str) -> Iterator[None]:
    try:
        yield
    except EdgeStackError as exc:
        raise _located(exc, where) from None


def _resolve(recipe: Recipe) -> dict[Source, Path]:
    from edge_stack.convert.hub import resolve_model_dir

    folders: dict[Source, Path] = {}
    for stage in recipe.stages:
        for key, source in (("base", stage.base), ("adapter", stage.adapter)):
            if source is None or source in folders:
                continue
            with _at(f"{recipe.path}: stage '{stage.name}', key '{key}'"):
                kind: Literal["model", "adapter"] = "model" if key == "base" else "adapter"
                folders[source] = source.path or resolve_model_dir(source.spec, kind=kind)
    return folders


def _resolve_ggufs(recipe: Recipe) -> dict[str, Path]:
    """Each distinct ``base_gguf`` value -> the GGUF file (pip:// from the installed package,
    hf:// from huggingface_hub's cache, downloaded when it is not there), checked as a model."""
    from edge_stack.formats.gguf._check import check_gguf
    from edge_stack.util._hubref import cached_hub_file, is_hub_file, parse_hub_file
    from edge_stack.util._pkgref import (
        installed_package_file,
        is_package_file,
        parse_package_file,
    )

    found: dict[str, Path] = {}
    for stage in recipe.stages:
        value = stage.base_gguf
        if value is None or value in found:
            continue
        with _at(f"{recipe.path}: stage '{stage.name}', key 'base_gguf'"):
            if is_package_file(value):
                path = installed_package_file(parse_package_file(value))
            elif is_hub_file(value):
                ref = parse_hub_file(value)
                cached = cached_hub_file(ref)
                if cached is None:
                    from huggingface_hub import hf_hub_download

                    cached = Path(hf_hub_download(ref.repo_id, ref.filename, revision=ref.revision))
                path = cached
            else:
                path = Path(value)
            check_gguf(path, kind="model")
        found[value] = path
    return found


def _preflight(recipe: Recipe, folders: dict[Source, Path]) -> None:
    """Open every base and adapter and check each adapter fits its base: nothing written yet."""
    from edge_stack.convert._peft import load_adapter
    from edge_stack.convert.arch import arch_for
    from edge_stack.convert.checkpoint import open_checkpoint
    from edge_stack.convert.lora import check_fits
    from edge_stack.convert.tokenizer import load_vocab

    by_base: dict[Path, list[RecipeStage]] = {}
    for stage in recipe.stages:
        by_base.setdefault(folders[stage.base], []).append(stage)
    for base_dir, stages in by_base.items():
        with _at(f"{recipe.path}: stage '{stages[0].name}', key 'base'"):
            ckpt = open_checkpoint(base_dir)
        with ckpt:
            with _at(f"{recipe.path}: stage '{stages[0].name}', key 'base'"):
                spec = arch_for(ckpt)
                load_vocab(base_dir, n_vocab=spec.hparams.n_vocab)
            for stage in stages:
                if stage.adapter is None:
                    continue
                with _at(f"{recipe.path}: stage '{stage.name}', key 'adapter'"):
                    adapter = load_adapter(folders[stage.adapter])
                    try:
                        check_fits(adapter, ckpt, spec)
                    finally:
                        adapter.close()


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.") or "base"


def _plan(
    recipe: Recipe, folders: dict[Source, Path], ggufs: dict[str, Path] | None = None
) -> tuple[list[_Step], dict[str, _Step]]:
    """The steps in order (bases first) and, per stage, the step of its model file."""
    from edge_stack.util._hubref import is_hub_file
    from edge_stack.util._pkgref import is_package_file

    ggufs = ggufs or {}
    q = recipe.quantization
    taken = {MANIFEST.lower(), STATE_NAME.lower()}
    if recipe.mode == "merged":
        taken |= {f"{s.name}.{q}.gguf" for s in recipe.stages if s.adapter is not None}
    else:
        taken |= {f"{s.name}.lora.gguf" for s in recipe.stages if s.adapter is not None}
    base_steps: dict[tuple[Path, str | None], _Step] = {}
    for stage in recipe.stages:
        base_dir = folders[stage.base]
        needs_base = recipe.mode == "adapters" or stage.adapter is None
        if stage.base_gguf is not None and (base_dir, stage.base_gguf) not in base_steps:
            value = stage.base_gguf
            ref = is_package_file(value) or is_hub_file(value)
            name = value if ref else ggufs[value].name
            if not ref:
                if name.lower() in taken:
                    raise OutputExistsError(
                        f"{recipe.path}: stage '{stage.name}', key 'base_gguf': the file name "
                        f"{name} is taken by another output of this build; rename the GGUF"
                    )
                taken.add(name.lower())
            step = _Step(name, "gguf", base_dir, gguf=ggufs[value], ref=ref)
            base_steps[base_dir, value] = step
        elif needs_base and (base_dir, None) not in base_steps and stage.base_gguf is None:
            hub_name = stage.base.spec.split("@")[0].split("/")[-1]
            stem = _slug(base_dir.name if stage.base.path else hub_name)
            name, n = f"{stem}.{q}.gguf", 1
            while name.lower() in taken:
                n += 1
                name = f"{stem}-{n}.{q}.gguf"
            taken.add(name.lower())
            base_steps[base_dir, None] = _Step(name, "model", base_dir)
    steps = list(base_steps.values())
    model_of: dict[str, _Step] = {}
    for stage in recipe.stages:
        base_dir = folders[stage.base]
        if stage.adapter is None:
            model_of[stage.name] = base_steps[base_dir, stage.base_gguf]
            continue
        adapter_dir = folders[stage.adapter]
        if recipe.mode == "merged":
            step = _Step(
                f"{stage.name}.{q}.gguf", "merged", base_dir, adapter_dir, stage.lora_scale
            )
            model_of[stage.name] = step
        else:
            base = base_steps[base_dir, stage.base_gguf]
            step = _Step(
                f"{stage.name}.lora.gguf",
                "adapter",
                base_dir,
                adapter_dir,
                stage.lora_scale,
                base_output=base.output,
            )
            model_of[stage.name] = base
        steps.append(step)
    return steps, model_of


def _keys(recipe: Recipe, steps: list[_Step], state: BuildState) -> dict[str, str]:
    prints: dict[tuple[Path, str], dict[str, str]] = {}

    def fingerprint(folder: Path, kind: str) -> dict[str, str]:
        if (folder, kind) not in prints:
            prints[folder, kind] = state.folder_fingerprint(folder, kind)
        return prints[folder, kind]

    keys: dict[str, str] = {}
    for step in steps:
        parts: dict[str, Any] = {"kind": step.kind, "base": fingerprint(step.base, "model")}
        if step.gguf is not None:
            parts.update(gguf=state.input_sha(step.gguf), ref=step.ref)
        if step.adapter is not None:
            parts.update(adapter=fingerprint(step.adapter, "adapter"), scale=step.scale)
        if step.kind == "adapter":
            assert step.base_output is not None
            parts.update(outtype=recipe.adapter_type, base_output=keys[step.base_output])
        elif step.kind != "gguf":
            parts["outtype"] = recipe.quantization
        keys[step.output] = step_key(**parts)
    return keys


def _check_conflicts(out: Path, names: list[str], state: BuildState, *, force: bool) -> None:
    """Refuse (before any work) to replace a file this build did not make, unless ``force``."""
    if force:
        return
    for name in names:
        path = out / name
        if path.is_dir():
            raise OutputExistsError(f"{path} is a folder where the build writes a file; move it")
        if path.exists() and state.output_sha(out, name) is None:
            made = "was changed since the last build" if name in state.outputs else "exists"
            raise OutputExistsError(
                f"{path} {made} and was not made by this build; pass --force to replace it "
                "(or build into another folder)"
            )


class _Runner:
    """Runs the steps in a scratch folder inside ``out``."""

    def __init__(self, recipe: Recipe, out: Path, work: Path, threads: int | None) -> None:
        self.recipe = recipe
        self.out = out
        self.work = work
        self.threads = threads
        self._refs: dict[tuple[Path, Path | None, float], Path] = {}
        #: outputs that are GGUF files named by reference (pip://, hf://) -> their files
        self.base_files: dict[str, Path] = {}

    def f32_reference(self, base: Path, adapter: Path | None, scale: float) -> Path:
        """The f32 conversion of ``base`` (with ``adapter`` merged), made once per build."""
        from edge_stack.convert import convert_checkpoint

        key = (base, adapter, scale)
        if key not in self._refs:
            path = self.work / f"reference-{len(self._refs)}.f32.gguf"
            merge = [adapter] if adapter is not None else []
            convert_checkpoint(base, path, outtype="f32", merge_lora=merge, lora_scale=scale)
            self._refs[key] = path
        return self._refs[key]

    def run(self, step: _Step) -> str:
        """Make ``step.output`` in the scratch folder, verify it, move it into place."""
        from edge_stack.convert import convert_checkpoint
        from edge_stack.convert.lora import export_lora

        from ._verify import looser, transformers_available, verify_adapter, verify_model

        q = self.recipe.quantization
        tmp = self.work / (Path(step.output).name if step.ref else step.output)
        if step.kind == "gguf":
            assert step.gguf is not None
            candidate = step.gguf
            if not step.ref:  # a local GGUF: the stack gets its own copy
                shutil.copyfile(step.gguf, tmp)
                candidate = tmp
            reference = (
                step.base if transformers_available() else self.f32_reference(step.base, None, 1.0)
            )
            report = verify_model(candidate, reference, threads=self.threads)
        elif step.kind == "model":
            convert_checkpoint(step.base, tmp, outtype=q)
            reference = (
                step.base if transformers_available() else self.f32_reference(step.base, None, 1.0)
            )
            report = verify_model(tmp, reference, threads=self.threads)
        elif step.kind == "merged":
            assert step.adapter is not None
            convert_checkpoint(
                step.base, tmp, outtype=q, merge_lora=[step.adapter], lora_scale=step.scale
            )
            reference = self.f32_reference(step.base, step.adapter, step.scale)
            report = verify_model(tmp, reference, threads=self.threads)
        else:
            from edge_stack.formats.gguf._check import check_adapter_fits, check_gguf

            assert step.adapter is not None and step.base_output is not None
            kind = self.recipe.adapter_type
            export_lora(step.adapter, step.base, tmp, outtype=kind)
            base_gguf = self.base_files.get(step.base_output, self.out / step.base_output)
            if step.base_output in self.base_files:  # a recipe's base_gguf: its own type
                q = check_gguf(base_gguf, kind="model").file_type.lower()
            check_adapter_fits(tmp, base_gguf)
            report = verify_adapter(
                base_gguf,
                tmp,
                self.f32_reference(step.base, step.adapter, step.scale),
                scale=step.scale,
                thresholds=looser(q, kind),
                file_type=f"{q} base + {kind} adapter",
                threads=self.threads,
            )
        if not report.passed:
            if step.kind == "gguf":
                raise VerificationFailed(
                    f"{self.recipe.path}: key 'base_gguf': the GGUF {step.gguf} disagrees with "
                    f"the checkpoint {step.base} the "
                    f"adapters were trained on: {report.summary()}; give the GGUF this "
                    "checkpoint was made from (base_gguf) or the checkpoint of this GGUF (base)"
                )
            raise VerificationFailed(
                f"{step.output} ({step.action} of {step.adapter or step.base}) disagrees with its "
                f"source: {report.summary()}; the file was not kept. Check the source folders, "
                "or try a finer quantization in the recipe"
            )
        if not step.ref:
            _publish(tmp, self.out / step.output)
        return report.summary()


def _ref_unchanged(state: BuildState, step: _Step, key: str) -> bool:
    """A referenced base GGUF was verified by an earlier build with the same inputs."""
    record = state.outputs.get(step.output) or {}
    return bool(record.get("reference")) and record.get("key") == key


def _publish(tmp: Path, target: Path) -> None:
    """Move a finished file into place, readable by everyone like any file in a package."""
    # Temporary files are created private (0600); a stack is meant to be shared and shipped.
    os.chmod(tmp, 0o644)
    os.replace(tmp, target)


def build(
    recipe_path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    force: bool = False,
    progress: Progress | None = None,
    threads: int | None = None,
) -> Path:
    """Build the stack of ``recipe_path`` into ``out_dir``; return the path of its stack.toml.

    Only outputs whose inputs or settings changed since the last build into ``out_dir`` are
    made again (``force`` remakes everything and replaces files in the way). ``progress``
    receives a :class:`BuildEvent` when each step starts, finishes or is skipped.
    """
    report = progress or (lambda event: None)
    recipe = load_recipe(recipe_path)
    out = Path(out_dir).expanduser().resolve()
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"output {out} is a file; give a folder for the stack")
    folders = _resolve(recipe)
    ggufs = _resolve_ggufs(recipe)
    _preflight(recipe, folders)
    steps, model_of = _plan(recipe, folders, ggufs)
    state = BuildState.load(out)
    recipe_rel = Path(os.path.relpath(recipe.path, out)).as_posix()
    if state.recipe not in (None, recipe_rel) and state.outputs and not force:
        raise OutputExistsError(
            f"{out} holds a stack built from another recipe ({state.recipe}); build into another "
            "folder, or pass --force to replace that stack's files"
        )
    files = [s.output for s in steps if not s.ref]
    _check_conflicts(out, [*files, MANIFEST], state, force=force)
    state.recipe = recipe_rel
    keys = _keys(recipe, steps, state)
    out.mkdir(parents=True, exist_ok=True)
    total = len(steps) + 1
    with temp_dir(out, "build") as scratch:
        runner = _Runner(recipe, out, scratch, threads)
        runner.base_files = {s.output: s.gguf for s in steps if s.ref and s.gguf is not None}
        for index, step in enumerate(steps, start=1):
            key = keys[step.output]
            ext = step.gguf if step.ref else None
            done = _ref_unchanged(state, step, key) if step.ref else None
            if not force and (done or (not step.ref and unchanged(state, out, step.output, key))):
                detail = "unchanged"
                report(
                    BuildEvent(index, total, step.output, step.action, "skipped", detail, file=ext)
                )
                continue
            report(BuildEvent(index, total, step.output, step.action, "start", file=ext))
            started = time.perf_counter()
            summary = runner.run(step)
            if step.ref:  # nothing written here: remember the referenced file's digest
                assert step.gguf is not None
                digest = state.input_sha(step.gguf)
                state.outputs[step.output] = {
                    "key": key,
                    "sha256": digest,
                    "reference": True,
                    "verify": summary,
                }
            else:
                state.record(out, step.output, key, verify=summary)
            state.save()
            seconds = time.perf_counter() - started
            logger.info("%s: %s (%.1fs)", step.output, summary, seconds)
            report(
                BuildEvent(
                    index, total, step.output, step.action, "done", summary, seconds, file=ext
                )
            )
    manifest = _write_manifest(recipe, out, steps, model_of, state, force=force)
    report(BuildEvent(total, total, MANIFEST, "write", manifest[1]))
    _remove_stale(out, state, {s.output for s in steps} | {MANIFEST})
    state.save()
    return manifest[0]


def _write_manifest(
    recipe: Recipe,
    out: Path,
    steps: list[_Step],
    model_of: dict[str, _Step],
    state: BuildState,
    *,
    force: bool,
) -> tuple[Path, Literal["done", "skipped"]]:
    from edge_stack.formats.gguf._check import check_adapter_fits, check_gguf
    from edge_stack.manifest import load_manifest, parse_manifest

    from ._stack_toml import manifest_text

    sha = {s.output: str(state.outputs[s.output]["sha256"]) for s in steps}
    adapter_of = {s.output: s for s in steps if s.kind == "adapter"}
    merged = recipe.mode == "merged"
    stages: list[dict[str, Any]] = []
    for stage in recipe.stages:
        model = model_of[stage.name].output
        entry: dict[str, Any] = {"name": stage.name, "model": model, "sha256": sha[model]}
        lora = f"{stage.name}.lora.gguf"
        if not merged and lora in adapter_of:
            entry.update(lora=lora, lora_sha256=sha[lora])
        entry.update(_settings(recipe, stage.settings, merged))
        stages.append(entry)
    rel = os.path.relpath(recipe.path, out)
    header = [
        f"Built by edgestack {__version__}: edgestack build {rel} -o <this folder>",
        f'from recipe "{recipe.path.name}" (mode "{recipe.mode}", {recipe.quantization}).',
        "Do not edit: change the recipe and build again (the build keeps unchanged files).",
    ]
    top = {"name": recipe.name, "description": recipe.description, "version": 1}
    text = manifest_text(header, top, _settings(recipe, recipe.defaults, merged), stages)
    path = out / MANIFEST
    # Validate before writing: the text must parse, and be a valid manifest over these files.
    parse_manifest(tomllib.loads(text), path, check_files=True)
    files = {s.output: s.gguf for s in steps if s.ref and s.gguf is not None}
    for step in steps:
        if step.kind == "adapter":
            assert step.base_output is not None
            check_adapter_fits(
                out / step.output, files.get(step.base_output, out / step.base_output)
            )
        else:
            check_gguf(files.get(step.output, out / step.output), kind="model")
    key = step_key(kind="manifest", text=text)
    status: Literal["done", "skipped"] = "skipped"
    if force or not unchanged(state, out, MANIFEST, key):
        with atomic_output(path, force=True) as tmp:
            tmp.write_text(text, encoding="utf-8")
            os.chmod(tmp, 0o644)
        state.record(out, MANIFEST, key)
        status = "done"
    load_manifest(path)  # the proof: what the runtime will read
    return path, status


def _settings(recipe: Recipe, values: Any, merged: bool) -> dict[str, Any]:
    """Generation keys for stack.toml: grammar files inlined, lora_scale only on adapters."""
    result: dict[str, Any] = {}
    for key, value in values.items():
        if key == "lora_scale" and merged:
            continue  # applied when merging
        if key == "grammar" and "::=" not in value:
            value = (recipe.root / value).read_text(encoding="utf-8")
        result[key] = list(value) if isinstance(value, tuple) else value
    return result


def _remove_stale(out: Path, state: BuildState, keep: set[str]) -> None:
    """Delete outputs of an earlier build that this recipe no longer makes (only if unchanged)."""
    for name in sorted(set(state.outputs) - keep):
        if state.outputs[name].get("reference"):  # a pip:// or hf:// base: nothing of ours
            pass
        elif state.output_sha(out, name) is not None:
            remove_quietly(out / name)
            logger.info("removed %s (no longer in the recipe)", name)
        else:
            logger.warning("left %s in place: it changed since the build that made it", name)
        del state.outputs[name]
