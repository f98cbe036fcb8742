"""Mutation testing of the modules whose fast tests allow it (issue 19), with mutmut.

    nice -n 19 python scripts/mutation.py                    # every module below
    nice -n 19 python scripts/mutation.py manifest atomic    # some of them
    python scripts/mutation.py --report                      # scores of the last run only

mutmut rewrites the code it mutates, so it never runs in this source tree: each module gets a
private copy under ``--workdir`` (default: $TMPDIR/edgestack-mutation) laid out as the package is
installed (``convert/`` and ``builder/`` inside ``edge_stack/``), with the tests beside it. Only
that module is mutated, and only its fast tests run against each mutant (``-m "not llama and not
torch and not slow"``: no model is built, no llama.cpp is loaded). The kernel probe that the test
session runs once is skipped in the copy (those tests load no model). Results are printed as a
Markdown table, one row per module, with every surviving mutant (``mutmut show NAME`` in the
module's folder prints its diff); docs/testing.md keeps the last run's figures and explanations.

Not run in CI: a full run takes tens of minutes on two cores.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: exit codes of mutmut's workers (mutmut/stats.py) that count as a killed mutant
KILLED = {1, 3, 36, -24, 24, 152, 255, -11, -9, 37}
SURVIVED = {0}
NO_TESTS = {5, 33}


@dataclass(frozen=True)
class Target:
    """One module (as installed: edge_stack/...) and the fast tests that cover it."""

    files: tuple[str, ...]
    tests: tuple[str, ...]
    #: only mutants of these functions count (mutmut's names: "xǁClassǁmethod" or "x_function");
    #: empty: all of the module
    functions: tuple[str, ...] = ()


TARGETS: dict[str, Target] = {
    "manifest": Target(
        ("edge_stack/manifest.py",),
        (
            "tests/runtime/test_manifest.py",
            "tests/runtime/test_manifest_ranges.py",
            "tests/runtime/test_remote_manifest.py",
            "tests/runtime/test_pkgref.py",
        ),
    ),
    "template": Target(
        ("edge_stack/formats/_template.py",),
        (
            "tests/runtime/test_render.py",
            "tests/runtime/test_manifest.py",
            "tests/runtime/test_template_errors.py",
        ),
    ),
    "stop-scanner": Target(
        ("edge_stack/engines/_backend.py",),
        ("tests/runtime/test_render.py", "tests/runtime/test_stop_text.py"),
    ),
    "stop-text": Target(
        ("edge_stack/engines/llama/_sampling.py",),
        ("tests/runtime/test_llama.py::test_stop_text_assembly", "tests/runtime/test_stop_text.py"),
        functions=("xǁStopTextǁ",),
    ),
    "pipeline": Target(
        ("edge_stack/pipeline/_stack.py",),
        ("tests/runtime/test_stack.py",),
    ),
    "gguf-check": Target(
        (
            "edge_stack/formats/gguf/_check.py",
            "edge_stack/formats/gguf/_hparams.py",
            "edge_stack/formats/gguf/_vocab.py",
            "edge_stack/formats/gguf/_tensors.py",
            "edge_stack/formats/gguf/_adapter.py",
        ),
        (
            "tests/runtime/test_gguf_check.py",
            "tests/runtime/test_gguf_adapter_check.py",
            "tests/runtime/test_gguf_tensor_plans.py",
            "tests/runtime/test_gguf_metadata_rules.py",
        ),
    ),
    "recipe": Target(("edge_stack/builder/recipe.py",), ("tests/convert/test_recipe.py",)),
    "atomic": Target(("edge_stack/util/_atomic.py",), ("tests/runtime/test_atomic.py",)),
    "cli-boundary": Target(
        ("edge_stack/cli/__init__.py",),
        ("tests/cli/test_error_boundary.py", "tests/cli/test_cli_limits.py"),
        functions=("x_main", "x__usage_line"),
    ),
}

# The session's kernel probe (tests/conftest.py) runs llama.cpp in a child process; the tests
# run here load no model, so the copy uses an empty verdict folder instead.
_CONFTEST_OVERRIDE = '''

@pytest.fixture(scope="session")
def _kernel_verdicts(tmp_path_factory: pytest.TempPathFactory) -> Path:  # noqa: F811
    """Mutation runs (scripts/mutation.py): no kernel probe, these tests load no model."""
    return tmp_path_factory.mktemp("no-kernel-probe")
'''


def _ignore(_dir: str, names: list[str]) -> set[str]:
    return {n for n in names if n in {"__pycache__", ".pytest_cache", "mutants"}}


def lay_out(work: Path, target: Target) -> None:
    """The package as installed, the tests, and a pyproject.toml with mutmut's settings."""
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    pkg = work / "edge_stack"
    shutil.copytree(ROOT / "edge_stack", pkg, ignore=_ignore)
    for src, dest in (("convert", "convert"), ("builder", "builder"), ("models", "models")):
        shutil.copytree(ROOT / src, pkg / dest, ignore=_ignore)
    shutil.copytree(ROOT / "tests", work / "tests", ignore=_ignore)
    with (work / "tests" / "conftest.py").open("a", encoding="utf-8") as f:
        f.write(_CONFTEST_OVERRIDE)
    # The tests read the bundled stack at the top level too (models/, as in the source tree).
    shutil.copytree(ROOT / "models", work / "models", ignore=_ignore)
    settings = {
        "source_paths": ["edge_stack"],
        "also_copy": ["models"],
        "only_mutate": list(target.files),
        "pytest_add_cli_args_test_selection": list(target.tests),
        "pytest_add_cli_args": ["-m", "not llama and not torch and not slow", "-q", "-x"],
    }
    lines = ["[tool.mutmut]"] + [f"{k} = {json.dumps(v)}" for k, v in settings.items()]
    lines += [
        "",
        "[tool.pytest.ini_options]",
        'addopts = "-ra --strict-markers --import-mode=importlib -p no:cacheprovider"',
        'pythonpath = ["tests"]',
        'markers = ["slow: slow", "llama: llama.cpp", "torch: torch", "browser: browser"]',
        'filterwarnings = ["ignore::DeprecationWarning"]',
    ]
    (work / "pyproject.toml").write_text("\n".join(lines) + "\n", encoding="utf-8")


def run_mutmut(work: Path, target: Target, max_children: int) -> int:
    # Only the mutants of target.functions are run when it names some (mutmut matches the
    # names with fnmatch); the others would take time and not count.
    names = [f"*{function}*" for function in target.functions]
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGESTACK_")}
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    log = work / "mutmut.log"
    with log.open("w", encoding="utf-8") as out:
        proc = subprocess.run(
            [sys.executable, "-m", "mutmut", "run", "--max-children", str(max_children), *names],
            cwd=work,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    return proc.returncode


@dataclass
class Score:
    killed: int = 0
    survived: list[str] | None = None
    no_tests: list[str] | None = None
    other: list[str] | None = None

    @property
    def total(self) -> int:
        return (
            self.killed
            + len(self.survived or [])
            + len(self.no_tests or [])
            + len(self.other or [])
        )

    @property
    def percent(self) -> float:
        return 100.0 * self.killed / self.total if self.total else 0.0


def score(work: Path, target: Target) -> Score:
    result = Score(survived=[], no_tests=[], other=[])
    for file in target.files:
        meta = work / "mutants" / (file + ".meta")
        if not meta.exists():
            continue
        codes = json.loads(meta.read_text(encoding="utf-8")).get("exit_code_by_key", {})
        for name, code in sorted(codes.items()):
            if target.functions and not any(f in name for f in target.functions):
                continue
            if code in KILLED:
                result.killed += 1
            elif code in SURVIVED:
                result.survived.append(name)  # type: ignore[union-attr]
            elif code in NO_TESTS:
                result.no_tests.append(name)  # type: ignore[union-attr]
            else:
                result.other.append(f"{name} (exit {code})")  # type: ignore[union-attr]
    return result


def report(workdir: Path, names: list[str]) -> str:
    rows = ["| module | files | mutants | killed | score |", "|---|---|---|---|---|"]
    details: list[str] = []
    for name in names:
        target = TARGETS[name]
        s = score(workdir / name, target)
        files = ", ".join(f.removeprefix("edge_stack/") for f in target.files)
        if target.functions:
            files += " (" + ", ".join(f.strip("xǁ_") for f in target.functions) + ")"
        rows.append(f"| {name} | {files} | {s.total} | {s.killed} | {s.percent:.1f}% |")
        for label, items in (
            ("survived", s.survived),
            ("no test ran", s.no_tests),
            ("other", s.other),
        ):
            for item in items or []:
                details.append(f"- {name}: {label}: `{item}`")
    return "\n".join(rows) + ("\n\n" + "\n".join(details) if details else "") + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("modules", nargs="*", choices=[*TARGETS, []], metavar="MODULE")
    parser.add_argument(
        "--workdir", type=Path, default=Path(tempfile.gettempdir()) / "edgestack-mutation"
    )
    parser.add_argument("--max-children", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--report", action="store_true", help="only print the last run's scores")
    args = parser.parse_args(argv)
    names = args.modules or list(TARGETS)
    if not args.report:
        for name in names:
            work = args.workdir / name
            lay_out(work, TARGETS[name])
            print(f"{name}: running mutmut in {work} (log: {work / 'mutmut.log'})", flush=True)
            code = run_mutmut(work, TARGETS[name], args.max_children)
            if code != 0:
                print(f"{name}: mutmut exited {code}; see {work / 'mutmut.log'}", flush=True)
    print(textwrap.dedent(report(args.workdir, names)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
