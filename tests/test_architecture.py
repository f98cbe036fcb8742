"""The import direction of docs/architecture.md, enforced: every import in every module, read.

Imports inside functions and ``TYPE_CHECKING`` blocks count like any other: a lazy import that
runs the wrong way is still a dependency the wrong way.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
#: source folder -> the package it is installed as
SOURCES = {
    "edge_stack": "edge_stack",
    "convert": "edge_stack.convert",
    "builder": "edge_stack.builder",
}

#: layer -> the layers it may import (itself always allowed); docs/architecture.md's table
RUNTIME_BELOW_CLI = {
    "tools",
    "pipeline",
    "engines",
    "manifest",
    "formats",
    "util",
    "errors",
    "version",
}
ALLOWED: dict[str, set[str]] = {
    "cli": RUNTIME_BELOW_CLI | {"root", "serve", "store", "deploy", "convert", "builder"},
    "serve": RUNTIME_BELOW_CLI | {"root", "store"},
    "store": {"pipeline", "engines", "manifest", "formats", "util", "errors", "version"},
    "root": {"pipeline", "manifest", "errors", "version"},
    "tools": {"pipeline", "engines", "manifest", "formats", "util", "errors", "version"},
    # `edgestack export`: reads built stacks and their recipes (builder), writes deployments
    "deploy": {"engines", "manifest", "formats", "util", "errors", "version", "builder"},
    "pipeline": {"engines", "manifest", "formats", "util", "errors", "version"},
    "engines": {"manifest", "formats", "util", "errors", "version"},
    "manifest": {"formats", "util", "errors"},
    "formats": {"util", "errors"},
    "util": {"errors", "version"},
    "errors": set(),
    "version": set(),
    "main": {"cli", "entry"},
    # the console entry point: signal handlers (util) before the CLI is imported
    "entry": {"cli", "util"},
    "models": set(),
    "convert": {"engines", "formats", "util", "errors", "version"},
    "builder": RUNTIME_BELOW_CLI | {"convert"},
}


def layer(module: str) -> str:
    parts = module.split(".")
    if parts == ["edge_stack"]:
        return "root"
    second = parts[1]
    return {
        "errors": "errors",
        "_version": "version",
        "manifest": "manifest",
        "__main__": "main",
        "_entry": "entry",
    }.get(second, second)


def modules() -> dict[str, Path]:
    found = {}
    for folder, package in SOURCES.items():
        for path in (ROOT / folder).rglob("*.py"):
            rel = path.relative_to(ROOT / folder).with_suffix("").parts
            parts = [p for p in rel if p != "__init__"]
            found[".".join([package, *parts])] = path
    return found


def imports(module: str, path: Path) -> set[str]:
    """Every edge_stack module ``module`` imports (resolved to the module, not the name)."""
    tree = ast.parse(path.read_text(), str(path))
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    known = modules_cache()
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                stem = ".".join([*base, *([node.module] if node.module else [])])
            else:
                stem = node.module or ""
            # `from pkg import submodule` names a module; `from mod import name` the module
            targets = [
                f"{stem}.{a.name}" if f"{stem}.{a.name}" in known else stem for a in node.names
            ]
        else:
            continue
        out.update(t for t in targets if t == "edge_stack" or t.startswith("edge_stack."))
    out.discard(module)
    return out


_MODULES: dict[str, Path] = {}


def modules_cache() -> dict[str, Path]:
    if not _MODULES:
        _MODULES.update(modules())
    return _MODULES


def graph() -> dict[str, set[str]]:
    return {m: imports(m, p) for m, p in modules_cache().items()}


def test_every_module_has_a_layer() -> None:
    unknown = sorted(m for m in modules_cache() if layer(m) not in ALLOWED)
    assert unknown == [], "add these to docs/architecture.md and ALLOWED"


def test_imports_run_one_way() -> None:
    wrong = []
    for module, targets in graph().items():
        mine = layer(module)
        for target in sorted(targets):
            theirs = layer(target)
            if theirs != mine and theirs not in ALLOWED[mine]:
                wrong.append(f"{module} ({mine}) imports {target} ({theirs})")
    assert wrong == [], "\n".join(wrong)


def test_no_import_circles() -> None:
    g = graph()
    cycles: list[list[str]] = []
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(g.get(node, ())):
            if nxt not in g:
                continue
            if state.get(nxt) == 1:
                cycles.append([*stack[stack.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(g):
        if node not in state:
            visit(node)
    # A package's __init__ importing its own submodules is how packages export names, and a
    # submodule importing a sibling through the package is then not a second edge: skip those.
    real = [c for c in cycles if not all(c[0] == n or n.startswith(c[0] + ".") for n in c)]
    assert real == [], "\n".join(" -> ".join(c) for c in real)


@pytest.mark.parametrize(
    ("module", "banned"),
    [
        ("edge_stack", ("llama_cpp", "torch", "starlette", "uvicorn", "huggingface_hub")),
        ("edge_stack.cli", ("llama_cpp", "torch", "starlette", "uvicorn", "huggingface_hub")),
    ],
)
def test_heavy_packages_are_not_imported_up_front(module: str, banned: tuple[str, ...]) -> None:
    import subprocess
    import sys

    code = f"import sys, {module}; print(','.join(m for m in {banned!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
