"""Records of training runs: ``RunResult``, written as one JSON file per run and read back.

    result = run_record(name, method, tasks, history, model, seed=0, options={"rank": 4})
    write_record(result, "outputs/cache/my-run.json")
    runs = load_results("outputs/cache")

A record carries each task's primary metric *name* and direction with its value, so tables and
the run explorer (``course.widgets``) work for runs of your own tasks too. Records are written
with ``adapters.atomic``; ``read_record`` raises ``ValueError`` naming the file for anything that
is not a complete record, and ``load_results`` skips such files with a warning that names them.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import typing
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from mtlora_lite.adapters.atomic import atomic_write
from mtlora_lite.adapters.atomic import check_writable as check_writable  # notebooks import it here
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
    """Write ``result`` (and ``extra`` top-level entries, e.g. the run's spec) as JSON, atomically."""
    return atomic_write(path, json.dumps({**dataclasses.asdict(result), **extra}, indent=1))


def _json_types(hint: Any) -> tuple[type, ...] | None:
    """The JSON types a field of type ``hint`` may hold (None: anything)."""
    origin = typing.get_origin(hint) or hint
    if origin is float:
        return (int, float)
    return (origin,) if isinstance(origin, type) and origin is not Any else None


def read_record(path: str | Path) -> RunResult:
    """A ``RunResult`` from a file written by ``write_record`` (marked ``cached``).

    Raises ``ValueError`` naming the file if it is not JSON (e.g. cut short by a crash), lacks a
    field of ``RunResult`` or holds one of the wrong type.
    """
    path = Path(path)
    try:
        stored = json.loads(path.read_bytes())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path} is not a readable run record (invalid JSON: {err})") from err
    if not isinstance(stored, dict):
        raise ValueError(f"{path} is not a run record: a JSON {type(stored).__name__}, not object")
    hints = typing.get_type_hints(RunResult)
    fields = {f.name: f for f in dataclasses.fields(RunResult)}
    no_default = dataclasses.MISSING
    required = [
        n for n, f in fields.items() if f.default is no_default and f.default_factory is no_default
    ]
    missing = [n for n in required if n not in stored]
    wrong = [
        f"{n} ({type(stored[n]).__name__})"
        for n in fields
        if n in stored and (kinds := _json_types(hints[n])) and not isinstance(stored[n], kinds)
    ]
    curve = stored.get("loss_curve", [])
    if not wrong and not all(isinstance(p, list) and len(p) == 2 for p in curve):
        wrong.append("loss_curve (not a list of (step, loss) pairs)")
    if missing or wrong:
        raise ValueError(f"{path} is not a complete run record: missing {missing}, wrong {wrong}")
    stored = {k: v for k, v in stored.items() if k in fields}
    stored["loss_curve"] = [tuple(p) for p in curve]
    return RunResult(**{**stored, "cached": True})


def load_results(folder: str | Path = "outputs/cache") -> list[RunResult]:
    """Every run recorded in ``folder`` (for explorers and summaries), sorted by file name.

    Files that are not readable records are skipped, with one warning that names them.
    """
    runs, bad = [], []
    for path in sorted(Path(folder).glob("*.json")):
        try:
            runs.append(read_record(path))
        except (OSError, ValueError) as err:
            bad.append(str(err))
    if bad:
        warnings.warn(
            f"skipped {len(bad)} unreadable file(s) in {folder}: {'; '.join(bad)}. Delete them, "
            "or run the notebook that made them again to record those runs anew.",
            stacklevel=2,
        )
    return runs
