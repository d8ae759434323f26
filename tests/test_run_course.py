"""scripts/run_course.py: the thread settings it gives the notebook kernels."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "run_course.py"


def load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("run_course", SCRIPT)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


run_course = load_script()


@pytest.mark.parametrize(
    ("cores", "load", "threads"),
    [
        (2, 0.0, "2"),  # idle: every core
        (2, 0.49, "2"),
        (2, 0.5, "1"),  # another program keeps half a core busy or more: one thread
        (2, 1.0, "1"),
        (2, 6.0, "1"),  # overloaded: never fewer than one
        (8, 2.6, "5"),  # 3 cores busy, 5 free
        (1, 0.0, "1"),
        (4, -1.0, "4"),  # a nonsense load reads as idle
    ],
)
def test_threads_follow_the_cores_left_free(cores: int, load: float, threads: str) -> None:
    settings = run_course.thread_settings(cores, load, {})
    assert settings == {"OMP_NUM_THREADS": threads, "OMP_WAIT_POLICY": "PASSIVE"}


def test_what_the_user_set_is_kept() -> None:
    env = {"OMP_NUM_THREADS": "6", "OMP_WAIT_POLICY": "ACTIVE"}
    assert run_course.thread_settings(2, 1.0, env) == {}
    assert run_course.thread_settings(2, 1.0, {"OMP_NUM_THREADS": "6"}) == {
        "OMP_WAIT_POLICY": "PASSIVE"
    }


def test_apply_sets_the_environment_the_kernels_inherit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(run_course.os, "cpu_count", lambda: 2)
    monkeypatch.setattr(run_course.os, "getloadavg", lambda: (1.2, 0.8, 0.5))
    env: dict[str, str] = {"PATH": "/bin"}
    line = run_course.apply_thread_settings(env)
    assert env == {"PATH": "/bin", "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    assert "OMP_NUM_THREADS=1" in line and "load average 1.20" in line


def test_without_a_load_average_the_machine_counts_as_idle(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def unavailable() -> tuple[float, float, float]:
        raise OSError("no load average here")

    monkeypatch.setattr(run_course.os, "cpu_count", lambda: 4)
    monkeypatch.setattr(run_course.os, "getloadavg", unavailable)
    env: dict[str, str] = {}
    run_course.apply_thread_settings(env)
    assert env["OMP_NUM_THREADS"] == "4"
