"""Tasks: what the trainer needs per task (a loss, a streaming metric, its primary metric), and
Delta_m. Metrics are in ``multitask.metrics``, the dense losses in ``multitask.losses``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Protocol

import torch.nn.functional as F
from torch import Tensor

from mtlora_lite.adapters.checks import check_count
from mtlora_lite.multitask.losses import (
    balanced_binary_loss,
    binary_loss,
    depth_loss,
    normals_loss,
)
from mtlora_lite.multitask.metrics import (
    AccuracyMetric,
    ConfusionMetric,
    DepthMetric,
    Metric,
    NormalsMetric,
    ThresholdMetric,
    check_metric,
)

__all__ = [  # the metrics and losses are importable from here too
    "AccuracyMetric",
    "ConfusionMetric",
    "DepthMetric",
    "Metric",
    "NormalsMetric",
    "Task",
    "TaskLike",
    "ThresholdMetric",
    "balanced_binary_loss",
    "binary_loss",
    "delta_m",
    "depth_loss",
    "normals_loss",
    "primary_metrics",
    "relative_changes",
    "task_dict",
]


class TaskLike(Protocol):
    """What the library needs of a task; ``Task`` has it, and so may a class of your own.

    ``build_model`` and the decoders read ``name``, ``out_channels`` and ``dense``; ``fit`` calls
    ``loss`` and ``new_metric``; ``evaluate`` calls ``new_metric`` (the ``Metric`` protocol).
    """

    name: str
    out_channels: int
    dense: bool

    def loss(self, pred: Tensor, target: Tensor) -> Tensor: ...

    def new_metric(self) -> Metric: ...


@dataclass(frozen=True, kw_only=True)
class Task:
    """One task: its head size, loss and metric. Build it with the constructor of its kind,
    ``Task.classification("cls", 10)``, ``Task.segmentation("seg", 21)``, ``Task.saliency()``,
    ``Task.edges()``, ``Task.normals()``, ``Task.depth()`` (each takes any field below as a keyword
    to override its default), or with every field by keyword.

    The metric is checked when the task is built: ``metric_factory()`` must give an object with
    ``update``, ``compute`` and ``merge`` (``multitask.metrics.Metric``), so that evaluation
    under torchrun, which merges the processes' metrics, cannot fail after training.
    """

    name: str  # the key of the task's predictions and targets (no '.')
    kind: str  # free text for tables: "segmentation", "classification", "normals", ...
    out_channels: int  # C, the channels of a prediction
    dense: bool  # predictions are maps (B, C, H, W) at the input resolution, else (B, C)
    primary: str  # the metric that tables and Delta_m compare
    higher_is_better: bool  # which way the primary metric improves
    loss_fn: Callable[[Tensor, Tensor], Tensor] = field(repr=False)  # (pred, target) -> scalar
    metric_factory: Callable[[], Metric] = field(repr=False)  # a fresh streaming metric

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name or "." in self.name:
            raise ValueError(f"a task name is a non-empty string without '.', got {self.name!r}")
        check_count(self.out_channels, f"task {self.name!r}: out_channels")
        check_metric(self.metric_factory(), f"task {self.name!r}")

    @classmethod
    def classification(cls, name: str, num_classes: int, **overrides: Any) -> Task:
        """Image-level labels: logits (B, C) against (B,) int64; cross-entropy; "acc" (%)."""
        fields = dict(kind="classification", dense=False, primary="acc", higher_is_better=True)
        fields.update(loss_fn=F.cross_entropy, metric_factory=AccuracyMetric)
        return cls(name=name, out_channels=num_classes, **{**fields, **overrides})

    @classmethod
    def segmentation(cls, name: str, num_classes: int, **overrides: Any) -> Task:
        """Classes per pixel: logits (B, C, H, W) against (B, H, W) int64; cross-entropy;
        "mIoU" and "pixel_acc" (%) from ``ConfusionMetric`` (labels outside [0, C) ignored)."""
        fields = dict(kind="segmentation", dense=True, primary="mIoU", higher_is_better=True)
        metric = partial(ConfusionMetric, num_classes)
        fields.update(loss_fn=F.cross_entropy, metric_factory=metric)
        return cls(name=name, out_channels=num_classes, **{**fields, **overrides})

    @classmethod
    def saliency(cls, name: str = "saliency", **overrides: Any) -> Task:
        """The salient region: logits (B, 1, H, W) against a {0, 1} mask (B, H, W); binary
        cross-entropy; "maxF" (beta^2 = 0.3) and "IoU" (%) at the best threshold."""
        fields = dict(kind="saliency", dense=True, primary="maxF", higher_is_better=True)
        fields.update(loss_fn=binary_loss, metric_factory=partial(ThresholdMetric, 0.3, "maxF"))
        return cls(name=name, out_channels=1, **{**fields, **overrides})

    @classmethod
    def edges(cls, name: str = "edges", **overrides: Any) -> Task:
        """Edge maps: logits (B, 1, H, W) against a {0, 1} mask (B, H, W); binary cross-entropy
        with positives weighted by #neg / #pos; "odsF" (beta^2 = 1) and "IoU" (%)."""
        fields = dict(kind="edges", dense=True, primary="odsF", higher_is_better=True)
        metric = partial(ThresholdMetric, 1.0, "odsF")
        fields.update(loss_fn=balanced_binary_loss, metric_factory=metric)
        return cls(name=name, out_channels=1, **{**fields, **overrides})

    @classmethod
    def normals(cls, name: str = "normals", **overrides: Any) -> Task:
        """Surface normals: (B, 3, H, W) against unit vectors (B, 3, H, W), zero = invalid; L1
        of the normalised prediction; "mean_angle" (degrees, lower is better) and more."""
        fields = dict(kind="normals", dense=True, primary="mean_angle", higher_is_better=False)
        fields.update(loss_fn=normals_loss, metric_factory=NormalsMetric)
        return cls(name=name, out_channels=3, **{**fields, **overrides})

    @classmethod
    def depth(cls, name: str = "depth", **overrides: Any) -> Task:
        """Depth: (B, 1, H, W) against (B, H, W), 0 = invalid; L1; "rmse" (lower is better) and
        "mae"."""
        fields = dict(kind="depth", dense=True, primary="rmse", higher_is_better=False)
        fields.update(loss_fn=depth_loss, metric_factory=DepthMetric)
        return cls(name=name, out_channels=1, **{**fields, **overrides})

    def loss(self, pred: Tensor, target: Tensor) -> Tensor:
        """Scalar loss of ``pred`` (B, out_channels, ...) against ``target``."""
        wanted = "(B, C, H, W) at the input resolution" if self.dense else "(B, C)"
        dense_ok = pred.ndim == 4 and pred.shape[-2:] == target.shape[-2:]
        if not (dense_ok if self.dense else pred.ndim == 2) or pred.shape[1] != self.out_channels:
            raise ValueError(
                f"task {self.name!r} wants predictions {wanted} with C = {self.out_channels}, "
                f"got {tuple(pred.shape)} for targets {tuple(target.shape)}: fix the head"
            )
        return self.loss_fn(pred, target)

    def new_metric(self) -> Metric:
        """A fresh streaming metric for one evaluation."""
        return self.metric_factory()


def task_dict(tasks: Mapping[str, TaskLike] | TaskLike) -> dict[str, TaskLike]:
    """``{name: task}``: a mapping as it is, or one task under its own name (what ``fit`` and
    ``evaluate`` take). ``TypeError`` with the fix for anything else."""
    if isinstance(tasks, Mapping):
        if not tasks:
            raise ValueError("tasks is empty: pass one task, or a dict {name: task} of several")
        return dict(tasks)
    if callable(getattr(tasks, "loss", None)) and isinstance(getattr(tasks, "name", None), str):
        return {tasks.name: tasks}  # type: ignore[union-attr]
    raise TypeError(
        f"tasks must be one task (e.g. Task.classification('cls', 10)) or a dict {{name: task}}, "
        f"got {type(tasks).__name__}"
    )


def primary_metrics(
    metrics: Mapping[str, Mapping[str, float]], tasks: Mapping[str, Task]
) -> dict[str, float]:
    """{task: {metric: value}} (as from an evaluation) -> {task: value of its primary metric}."""
    return {name: metrics[name][task.primary] for name, task in tasks.items()}


Directions = Mapping[str, bool] | Mapping[str, Task]


def _directions(given: Directions) -> dict[str, bool]:
    """{task: higher is better} from booleans or from the tasks themselves."""
    return {t: v.higher_is_better if isinstance(v, Task) else bool(v) for t, v in given.items()}


def relative_changes(
    multi: Mapping[str, float], single: Mapping[str, float], higher_is_better: Directions
) -> dict[str, float]:
    """Each task's signed relative change in %: (-1)^l_t (M_mt,t - M_st,t) / M_st,t * 100, with
    l_t = 1 where lower is better, so that positive always means better than single-task.

    ``higher_is_better``: ``{task: bool}``, or the tasks themselves (``{name: Task}``)."""
    higher_is_better = _directions(higher_is_better)
    if not multi or set(multi) != set(single) or set(multi) != set(higher_is_better):
        raise ValueError(
            "multi, single and higher_is_better need the same non-empty task set, got "
            f"{sorted(multi)}, {sorted(single)} and {sorted(higher_is_better)}"
        )
    zero = [t for t, v in single.items() if v == 0]
    if zero:
        raise ValueError(
            f"single-task references of {zero} are 0, so relative changes are undefined"
        )
    sign = {t: 1 if higher_is_better[t] else -1 for t in multi}
    return {t: 100 * sign[t] * (multi[t] - single[t]) / single[t] for t in multi}


def delta_m(
    multi: Mapping[str, float], single: Mapping[str, float], higher_is_better: Directions
) -> float:
    """Delta_m in %: the mean over tasks of ``relative_changes`` (Maninis et al. 2019).
    Positive = the multi-task model is better on average.

        delta_m(primary_metrics(mt, tasks), primary_metrics(st, tasks), tasks)

    ``multi`` and ``single``: each task's primary metric; ``higher_is_better``: ``{task: bool}``
    or the tasks themselves, which know their direction."""
    changes = relative_changes(multi, single, higher_is_better)
    return sum(changes.values()) / len(changes)
