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
    monkeypatch.setattr(run_course, "busy_cores", lambda cores: (1.2, "measured"))
    env: dict[str, str] = {"PATH": "/bin"}
    line = run_course.apply_thread_settings(env)
    assert env == {"PATH": "/bin", "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    assert "OMP_NUM_THREADS=1" in line and "1.20 busy" in line


def test_busy_cores_are_the_share_of_cpu_time_not_idle() -> None:
    before = "cpu  100 0 100 700 100 0 0 0 0 0"
    # 1000 ticks pass: 300 user, 200 system, 400 idle, 100 iowait -> half the time busy
    after = "cpu  400 0 300 1100 200 0 0 0 0 0"
    assert run_course.busy_between(before, after, 2) == pytest.approx(1.0)
    assert run_course.busy_between(before, before, 4) == 0.0  # no time passed: idle
    idle = "cpu  100 0 100 1700 100 0 0 0 0 0"
    assert run_course.busy_between(before, idle, 8) == 0.0


def test_busy_cores_fall_back_to_the_load_average(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(run_course, "Path", lambda _: run_course.ROOT / "no-such-stat-file")
    monkeypatch.setattr(run_course.os, "getloadavg", lambda: (0.7, 0.5, 0.4))
    assert run_course.busy_cores(2, seconds=0) == (0.7, "1-minute load average")


def test_a_user_thread_count_is_not_measured(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(cores: int) -> tuple[float, str]:
        raise AssertionError("measured although OMP_NUM_THREADS was set")

    monkeypatch.setattr(run_course, "busy_cores", refuse)
    env = {"OMP_NUM_THREADS": "3"}
    assert "OMP_NUM_THREADS=3" in run_course.apply_thread_settings(env)
