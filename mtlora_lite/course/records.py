"""Records of training runs: ``RunResult``, written as one JSON file per run and read back.

    result = run_record(name, method, tasks, history, model, seed=0, options={"rank": 4})
    write_record(result, "outputs/cache/my-run.json")
    runs = load_results("outputs/cache")

A record carries each task's primary metric *name* and direction with its value, so tables and
the run explorer (``course.widgets``) work for runs of your own tasks too.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from mtlora_lite.adapters.breakdown import trainable_breakdown
from mtlora_lite.multitask.history import History
from mtlora_lite.multitask.tasks import Task, primary_metrics


@dataclass
class RunResult:
    """What one training run measured (JSON-serialisable with ``dataclasses.asdict``).

    ``primary[t]`` is the value of task t's primary metric, named ``primary_metric[t]`` (e.g.
    "mIoU"); ``higher_is_better[t]`` says which way it improves. ``options`` are the method's
    options (the method has its own field).
    """

    name: str
    method: str
    tasks: list[str]
    seed: int
    options: dict[str, Any]
    metrics: dict[str, dict[str, float]]  # task -> metric -> value, on the validation set
    primary: dict[str, float]  # task -> value of its primary metric
    trainable: int
    total: int
    breakdown: dict[str, dict[str, int]]
    seconds: float
    images_per_s: float
    loss_curve: list[tuple[int, float]]
    primary_metric: dict[str, str] = field(default_factory=dict)  # task -> metric name
    higher_is_better: dict[str, bool] = field(default_factory=dict)
    extras: dict[str, Any] = field(default_factory=dict)
    measured_on: str = ""
    cached: bool = False  # True when this run was read from the cache rather than trained now


def _curve(history: History, points: int = 60) -> list[tuple[int, float]]:
    """At most about ``points`` (step, loss) pairs of the training loss."""
    stride = max(1, len(history.steps) // points)
    return [(r["step"], r["loss"]) for r in history.steps[::stride]]


def run_record(
    name: str,
    method: str,
    tasks: Mapping[str, Task],
    history: History,
    model: nn.Module,
    *,
    seed: int,
    options: Mapping[str, Any],
    device: str,
) -> RunResult:
    """The ``RunResult`` of a finished ``fit``: final validation metrics, parameter counts, time."""
    table = trainable_breakdown(model)
    return RunResult(
        name=name,
        method=method,
        tasks=list(tasks),
        seed=seed,
        options=dict(options),
        metrics=history.final,
        primary=primary_metrics(history.final, tasks),
        primary_metric={t: task.primary for t, task in tasks.items()},
        higher_is_better={t: task.higher_is_better for t, task in tasks.items()},
        trainable=table.trainable,
        total=table.total,
        breakdown=table.to_dict(),
        seconds=history.wall_time_s,
        images_per_s=history.images_per_s,
        loss_curve=_curve(history),
        measured_on=f"{dt.date.today().isoformat()}, {device}",
    )


def write_record(result: RunResult, path: str | Path, **extra: Any) -> Path:
    """Write ``result`` (and ``extra`` top-level entries, e.g. the run's spec) as JSON."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({**dataclasses.asdict(result), **extra}, indent=1))
    return path


def read_record(path: str | Path) -> RunResult:
    """A ``RunResult`` from a file written by ``write_record`` (marked ``cached``)."""
    stored = json.loads(Path(path).read_text())
    fields = {f.name for f in dataclasses.fields(RunResult)}
    stored = {k: v for k, v in stored.items() if k in fields}
    stored["loss_curve"] = [tuple(p) for p in stored["loss_curve"]]
    return RunResult(**{**stored, "cached": True})


def load_results(folder: str | Path = "outputs/cache") -> list[RunResult]:
    """Every run recorded in ``folder`` (for explorers and summaries), sorted by file name."""
    return [read_record(path) for path in sorted(Path(folder).glob("*.json"))]
