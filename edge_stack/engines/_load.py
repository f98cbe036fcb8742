"""The backend for a stack: llama.cpp for local stages, the remote engine for the others.

A stack whose stages are all local gets the llama.cpp :class:`~edge_stack.engines.llama._engine.
Engine` itself; a stack with remote stages gets a :class:`MixedBackend` that holds that engine
(for its local stages, if any) and one :class:`~edge_stack.engines.remote.RemoteRunner` per
remote stage. The pipeline sees one :class:`~edge_stack.engines._backend.Backend` either way.
"""

from __future__ import annotations

from ..manifest import StackSpec
from ._backend import Backend, StageRunner

__all__ = ["MixedBackend", "load_backend"]


class MixedBackend:
    """Local and remote stages of one stack."""

    def __init__(self, local: Backend | None, remote: dict[str, StageRunner]) -> None:
        self.local = local
        self.remote = remote

    def runner(self, stage: str) -> StageRunner:
        found = self.remote.get(stage)
        if found is not None:
            return found
        if self.local is None:
            raise KeyError(stage)
        return self.local.runner(stage)

    def close(self) -> None:
        remote, self.remote = self.remote, {}
        for runner in remote.values():
            close = getattr(runner, "close", None)
            if close is not None:
                close()
        if self.local is not None:
            self.local.close()


def load_backend(
    spec: StackSpec, *, threads: int | None = None, verbose: bool | None = None
) -> Backend:
    """Load every stage of ``spec`` where its ``engine`` says it runs."""
    from .llama import _engine

    remote_stages = [s for s in spec.stages if s.remote is not None]
    if not remote_stages:
        return _engine.Engine(spec, threads=threads, verbose=verbose)
    from ..util._env import settings
    from .remote import RemoteRunner

    loud = settings().verbose if verbose is None else verbose
    runners: dict[str, StageRunner] = {}
    local: Backend | None = None
    try:
        for stage in remote_stages:
            runners[stage.name] = RemoteRunner(spec, stage, verbose=loud)
        if len(remote_stages) < len(spec.stages):
            local = _engine.Engine(spec, threads=threads, verbose=verbose)
    except BaseException:
        MixedBackend(None, runners).close()
        raise
    return MixedBackend(local, runners)
