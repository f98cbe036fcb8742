"""The OpenMP wait policy edgestack sets before llama.cpp loads (issue 18)."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from edge_stack.util import _env
from edge_stack.util._env import OPENMP_BUSY, OPENMP_DEFAULTS, openmp_policy, other_runnable_tasks


@pytest.fixture(autouse=True)
def _no_user_policy(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT"):
        monkeypatch.setenv(name, "x")  # so that monkeypatch restores it, set or not
        monkeypatch.delenv(name)


@pytest.mark.parametrize(
    ("others", "cores", "expected"),
    [
        (0, 2, OPENMP_DEFAULTS),  # idle: a bounded spin
        (0, 1, OPENMP_DEFAULTS),
        (1, 2, OPENMP_BUSY),  # half a task per core: sleep at once
        (2, 2, OPENMP_BUSY),
        (1, 4, OPENMP_DEFAULTS),
        (2, 4, OPENMP_BUSY),
        (None, 2, OPENMP_DEFAULTS),  # unknown (not Linux): the idle choice
    ],
)
def test_choice_follows_other_work(others: int | None, cores: int, expected: dict[str, str],
                                   monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    monkeypatch.setattr(_env, "other_runnable_tasks", lambda: others)
    monkeypatch.setattr(_env, "cpu_threads", lambda: cores)
    assert openmp_policy() == expected
    assert openmp_policy(others, cores) == expected


@pytest.mark.parametrize("name", ["OMP_WAIT_POLICY", "GOMP_SPINCOUNT"])
def test_users_own_setting_wins(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(name, "ACTIVE" if name == "OMP_WAIT_POLICY" else "5")
    assert openmp_policy(0, 2) == {}
    assert openmp_policy(8, 2) == {}


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/loadavg")
def test_busy_processes_are_counted() -> None:
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(3)]
    try:
        time.sleep(0.3)
        seen = other_runnable_tasks()
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()
    assert seen is not None and seen >= 3
    assert openmp_policy(seen, 2) == OPENMP_BUSY


def test_quiet_openmp_sets_the_choice_in_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_env, "other_runnable_tasks", lambda: 0)
    monkeypatch.setattr(_env, "cpu_threads", lambda: 2)
    _env.quiet_openmp()
    assert {k: _env.os.environ.get(k) for k in OPENMP_DEFAULTS} == OPENMP_DEFAULTS
    assert "OMP_WAIT_POLICY" not in _env.os.environ
