"""The stack store: stacks by name, pulled from the Hugging Face Hub, listed, shown, removed,
and packaged for upload.

A stack is named the same way everywhere (``edge_stack.util._paths.resolve_stack``): a path,
a bundled stack's name, or the name of a pulled stack (``owner/name[@revision]``). See
docs/architecture.md for where this package sits (above ``pipeline``, beside ``tools``).
"""

from __future__ import annotations

from ..util._paths import resolve_stack
from ._package import PackageResult, package_stack
from ._pull import PullResult, pull_stack
from ._registry import StackEntry, StoredFile, list_stacks, remove_stack

__all__ = [
    "PackageResult",
    "PullResult",
    "StackEntry",
    "StoredFile",
    "list_stacks",
    "package_stack",
    "pull_stack",
    "remove_stack",
    "resolve_stack",
]
