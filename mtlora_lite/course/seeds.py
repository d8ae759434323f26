"""Course runs over several seeds, and the single-task references with their learning-rate sweep.

    refs = single_task_references(DENSE_TASKS, FULL_LRS, seeds=(0, 1, 2), profile="course")
    runs = run_dense_seeds("mtlora", DENSE_TASKS, (0, 1, 2), workers="auto", profile="course")
    print(refs.delta_m(runs))  # {seed: delta_m against that seed's references}

Every run is an ``experiments.run_dense`` call (cached as such). ``workers`` > 1 trains the
uncached runs of one call at the same time in that many processes, one torch thread each: on a
CPU with few cores the course's small models train faster as parallel runs than with several
threads per run (on 2 cores, two threads made a training step only about 1.3x faster than one).
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any

import torch

from mtlora_lite.adapters.checks import check_count
from mtlora_lite.course.experiments import DENSE_TASKS, FULL_LRS, cached_dense, run_dense
from mtlora_lite.course.records import RunResult
from mtlora_lite.multitask.evaluation import resolve_device
from mtlora_lite.multitask.tasks import delta_m, relative_changes


def auto_workers(profile: str, device: str = "auto") -> int:
    """How many runs ``workers="auto"`` trains at once: on a CPU in the course profile, one
    process per thread torch may use (``torch.get_num_threads()``, which ``OMP_NUM_THREADS``
    sets), each with one thread; else 1 (a GPU trains one run at a time, and smoke runs are too
    short to pay for starting processes)."""
    if profile == "smoke" or resolve_device(device).type != "cpu":
        return 1
    return torch.get_num_threads()


def _one_thread() -> None:
    torch.set_num_threads(1)


def _run_quietly(call: Mapping[str, Any]) -> RunResult:
    return run_dense(**{**call, "progress": False})


def run_dense_many(calls: Sequence[Mapping[str, Any]], workers: int | str = 1) -> list[RunResult]:
    """``run_dense(**call)`` for every call (a dict of its arguments), the results in order.

    ``workers`` > 1: the calls whose result is not in the cache train at the same time, in that
    many processes with one torch thread each (on a CPU with few cores, small models train
    faster as parallel runs than with several threads per run). ``"auto"``: ``auto_workers``
    of the first call's profile and device. 1: one after another, here.
    """
    calls = [dict(c) for c in calls]
    if workers == "auto":
        first = calls[0] if calls else {}
        workers = auto_workers(first.get("profile", "course"), first.get("device", "auto"))
    workers = check_count(workers, "workers")
    if workers == 1:
        return [run_dense(**c) for c in calls]
    found = [cached_dense(**c) for c in calls]  # every call checked before anything trains
    todo = [c for c, hit in zip(calls, found, strict=True) if hit is None]
    trained: list[RunResult] = []
    if todo:
        spawn = multiprocessing.get_context("spawn")  # no fork of a process with torch threads
        with ProcessPoolExecutor(
            min(workers, len(todo)), mp_context=spawn, initializer=_one_thread
        ) as pool:
            trained = list(pool.map(_run_quietly, todo))
    new = iter(trained)
    return [hit if hit is not None else next(new) for hit in found]


def run_dense_seeds(
    method: str,
    tasks: str | Sequence[str] = DENSE_TASKS,
    seeds: Sequence[int] = (0,),
    workers: int | str = 1,
    **kwargs: Any,
) -> dict[int, RunResult]:
    """``run_dense(method, tasks, seed=s, **kwargs)`` for each seed: ``{seed: RunResult}``;
    ``workers`` as in ``run_dense_many``."""
    calls = [dict(method=method, tasks=tasks, seed=int(s), **kwargs) for s in seeds]
    return dict(zip((int(s) for s in seeds), run_dense_many(calls, workers), strict=True))


@dataclass
class References:
    """Single-task full fine-tuning references (``single_task_references``).

    ``lr[task]``: the chosen learning rate; ``sweep[task][lr]``: the sweep's runs (first seed);
    ``runs[task][seed]``: the reference runs at the chosen learning rate, one per seed.
    """

    lr: dict[str, float]
    sweep: dict[str, dict[float, RunResult]]
    runs: dict[str, dict[int, RunResult]]

    @property
    def tasks(self) -> list[str]:
        return list(self.runs)

    @property
    def seeds(self) -> list[int]:
        return list(next(iter(self.runs.values())))

    @property
    def trainable(self) -> int:
        """Trainable parameters of all the single-task models together."""
        return sum(next(iter(runs.values())).trainable for runs in self.runs.values())

    def primary(self, seed: int) -> dict[str, float]:
        """``{task: primary metric}`` of the references with ``seed``."""
        return {t: runs[seed].primary[t] for t, runs in self.runs.items()}

    def higher_is_better(self) -> dict[str, bool]:
        return {t: next(iter(runs.values())).higher_is_better[t] for t, runs in self.runs.items()}

    def relative(self, runs: Mapping[int, RunResult]) -> dict[int, dict[str, float]]:
        """Each task's signed relative change (%) of multi-task ``runs`` against these references,
        seed by seed: ``{seed: {task: change}}`` (positive = better; the terms of delta_m)."""
        better = self.higher_is_better()
        return {
            s: relative_changes(run.primary, self.primary(s), better) for s, run in runs.items()
        }

    def delta_m(self, runs: Mapping[int, RunResult]) -> dict[int, float]:
        """``delta_m`` (%) of multi-task ``runs`` against these references, seed by seed."""
        better = self.higher_is_better()
        return {s: delta_m(run.primary, self.primary(s), better) for s, run in runs.items()}


def best_lr(sweep: Mapping[float, RunResult], task: str) -> float:
    """The learning rate whose run has the best validation ``task`` primary metric."""
    sign = 1.0 if next(iter(sweep.values())).higher_is_better[task] else -1.0
    return max(sweep, key=lambda lr: sign * sweep[lr].primary[task])


def single_task_references(
    tasks: Sequence[str] = DENSE_TASKS,
    lrs: Sequence[float] = FULL_LRS,
    seeds: Sequence[int] = (0,),
    workers: int | str = 1,
    **kwargs: Any,
) -> References:
    """One fully fine-tuned model per task (``run_dense("full", [task])``), each at the best of
    ``lrs``: the sweep runs on the first seed, the chosen learning rate on every seed.

    The first seed's reference is its sweep run, chosen on that run's own validation scenes: if
    anything, that favours the references (and lowers every delta_m measured against them).
    ``workers`` as in ``run_dense_many``; ``kwargs`` go to ``run_dense`` (profile, device,
    cache_dir, progress).
    """
    if not seeds:
        raise ValueError("seeds is empty: pass at least one seed, e.g. seeds=(0, 1, 2)")
    first, *others = (int(s) for s in seeds)
    grid = [(t, x) for t in tasks for x in lrs]
    swept = run_dense_many(
        [dict(method="full", tasks=[t], seed=first, lr=x, **kwargs) for t, x in grid], workers
    )
    sweep: dict[str, dict[float, RunResult]] = {t: {} for t in tasks}
    for (t, x), result in zip(grid, swept, strict=True):
        sweep[t][x] = result
    lr = {t: best_lr(sweep[t], t) for t in tasks}
    rest = [(t, s) for t in tasks for s in others]
    more = run_dense_many(
        [dict(method="full", tasks=[t], seed=s, lr=lr[t], **kwargs) for t, s in rest], workers
    )
    runs = {t: {first: sweep[t][lr[t]]} for t in tasks}
    for (t, s), result in zip(rest, more, strict=True):
        runs[t][s] = result
    return References(lr=lr, sweep=sweep, runs=runs)
