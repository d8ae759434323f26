"""Tasks: what the trainer needs per task (a loss, a streaming metric, its primary metric), the
usual dense and image-level metrics and losses, and Delta_m.

A ``Task`` bundles them; ``mtlora_lite.course.scene_tasks`` builds the course's scene tasks from
these parts. Metrics are accumulated over the whole evaluation set (never averaged over batches):

* ``ConfusionMetric``: one confusion matrix over all pixels; "mIoU" averages the IoU of the
  classes (background included) whose union (ground truth or prediction) is non-empty; labels
  outside [0, C) (e.g. 255) are ignored. Also "pixel_acc".
* ``ThresholdMetric`` (saliency, edges): true / false positives counted per threshold in
  ``THRESHOLDS`` over the whole set, then the best threshold: the F-measure with ``beta2`` (0.3,
  "maxF", as in the multi-task literature; or 1.0, "odsF" with exact pixel matching) and "IoU".
* ``NormalsMetric``: angles in degrees between the normalised prediction and valid (non-zero)
  targets: "mean_angle", "rmse_angle", "median_angle" (from ``ANGLE_BIN`` degree bins),
  "within_11.25" (%).
* ``DepthMetric``: "rmse", "mae" over pixels with target > 0. ``AccuracyMetric``: "acc" (%),
  optionally per group.

All metrics are in percent except the angles (degrees) and depth errors.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor

THRESHOLDS = torch.linspace(0.05, 0.95, 19)  # probability thresholds for saliency and edges
ANGLE_BIN = 0.1  # degrees per histogram bin for the median angular error


class Metric(Protocol):
    """A streaming metric: ``update`` once per batch, ``compute`` at the end; ``merge`` adds
    another instance's counts (evaluation under torchrun merges the ranks' metrics with it)."""

    def update(self, pred: Tensor, target: Tensor) -> None: ...

    def compute(self) -> dict[str, float]: ...

    def merge(self, other: Metric) -> None: ...


def _empty(metric: object) -> RuntimeError:
    return RuntimeError(
        f"{type(metric).__name__}.compute() before any update(): evaluate on data first"
    )


class ConfusionMetric:
    """Segmentation: "mIoU" (classes with an empty union are left out) and "pixel_acc", in %."""

    def __init__(self, num_classes: int) -> None:
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.long)  # [truth, predicted]

    def update(self, pred: Tensor, target: Tensor) -> None:
        c = len(self.matrix)
        keep = (target >= 0) & (target < c)  # other labels (e.g. 255) are ignored
        index = target[keep] * c + pred.argmax(1)[keep]
        self.matrix += torch.bincount(index, minlength=c * c).view(c, c).cpu()

    def merge(self, other: ConfusionMetric) -> None:
        self.matrix += other.matrix

    def compute(self) -> dict[str, float]:
        if self.matrix.sum() == 0:
            raise _empty(self)
        tp = self.matrix.diag().double()
        union = self.matrix.sum(0) + self.matrix.sum(1) - tp
        iou = tp[union > 0] / union[union > 0]
        return {
            "mIoU": 100 * iou.mean().item(),
            "pixel_acc": 100 * (tp.sum() / self.matrix.sum()).item(),
        }


class AccuracyMetric:
    """Top-1 accuracy "acc" in %. With ``groups``, targets are (B, 2) [label, group index] and
    the accuracy of each group is added as "acc/<group>" (nan for a group never seen)."""

    def __init__(self, groups: Sequence[str] = ()) -> None:
        self.groups = list(groups)
        self.correct = torch.zeros(max(1, len(self.groups)), dtype=torch.long)
        self.total = torch.zeros_like(self.correct)

    def update(self, pred: Tensor, target: Tensor) -> None:
        label, group = (
            (target[:, 0], target[:, 1]) if self.groups else (target, torch.zeros_like(target))
        )
        hit = pred.argmax(1) == label
        self.correct += torch.bincount(group[hit], minlength=len(self.correct)).cpu()
        self.total += torch.bincount(group, minlength=len(self.total)).cpu()

    def merge(self, other: AccuracyMetric) -> None:
        self.correct += other.correct
        self.total += other.total

    def compute(self) -> dict[str, float]:
        if self.total.sum() == 0:
            raise _empty(self)
        out = {"acc": 100 * self.correct.sum().item() / self.total.sum().item()}
        for k, name in enumerate(self.groups):
            seen = self.total[k].item()
            out[f"acc/{name}"] = 100 * self.correct[k].item() / seen if seen else math.nan
        return out


class ThresholdMetric:
    """Binary maps scored at every threshold in ``THRESHOLDS``: the best F-measure (named
    ``f_name``, with ``beta2``) and the best foreground IoU over thresholds, in %."""

    def __init__(self, beta2: float, f_name: str) -> None:
        self.beta2, self.f_name = beta2, f_name
        self.hist = torch.zeros(2, len(THRESHOLDS) + 1, dtype=torch.long)  # [negatives, positives]

    def update(self, pred: Tensor, target: Tensor) -> None:
        above = torch.bucketize(torch.sigmoid(pred[:, 0]), THRESHOLDS.to(pred.device), right=True)
        # above = number of thresholds <= probability; row = ground truth
        index = (target > 0.5).long() * self.hist.shape[1] + above
        self.hist += (
            torch.bincount(index.flatten(), minlength=self.hist.numel()).view_as(self.hist).cpu()
        )

    def merge(self, other: ThresholdMetric) -> None:
        self.hist += other.hist

    def compute(self) -> dict[str, float]:
        if self.hist.sum() == 0:
            raise _empty(self)
        # pixels predicted positive at each threshold, for negatives (row 0) and positives (row 1)
        at_least = self.hist.flip(1).cumsum(1).flip(1)[:, 1:].double()
        tp, fp = at_least[1], at_least[0]
        fn = self.hist[1].sum() - tp
        precision = torch.where(tp + fp > 0, tp / (tp + fp), 0.0)
        recall = torch.where(tp + fn > 0, tp / (tp + fn), 0.0)
        denom = self.beta2 * precision + recall
        f = torch.where(denom > 0, (1 + self.beta2) * precision * recall / denom, 0.0)
        iou = torch.where(tp + fp + fn > 0, tp / (tp + fp + fn), 0.0)
        return {self.f_name: 100 * f.max().item(), "IoU": 100 * iou.max().item()}


class NormalsMetric:
    """Angular error in degrees between the normalised prediction and valid (non-zero) targets."""

    def __init__(self) -> None:
        self.hist = torch.zeros(round(180 / ANGLE_BIN), dtype=torch.long)
        self.sum = self.sum_sq = 0.0

    def update(self, pred: Tensor, target: Tensor) -> None:
        valid = target.norm(dim=1) > 0.5
        cos = (F.normalize(pred, dim=1) * target).sum(1)[valid].clamp(-1, 1)
        angle = torch.rad2deg(torch.acos(cos))
        self.sum += angle.sum().item()
        self.sum_sq += angle.square().sum().item()
        bins = (angle / ANGLE_BIN).long().clamp(max=len(self.hist) - 1)
        self.hist += torch.bincount(bins, minlength=len(self.hist)).cpu()

    def merge(self, other: NormalsMetric) -> None:
        self.hist += other.hist
        self.sum += other.sum
        self.sum_sq += other.sum_sq

    def compute(self) -> dict[str, float]:
        n = self.hist.sum().item()
        if n == 0:
            raise _empty(self)
        median_bin = int((self.hist.cumsum(0) >= n / 2).nonzero()[0])
        return {
            "mean_angle": self.sum / n,
            "rmse_angle": math.sqrt(self.sum_sq / n),
            "median_angle": (median_bin + 0.5) * ANGLE_BIN,
            "within_11.25": 100 * self.hist[: round(11.25 / ANGLE_BIN)].sum().item() / n,
        }


class DepthMetric:
    """Root-mean-square ("rmse") and mean absolute ("mae") error over pixels with target > 0."""

    def __init__(self) -> None:
        self.sum_abs = self.sum_sq = 0.0
        self.count = 0

    def update(self, pred: Tensor, target: Tensor) -> None:
        valid = target > 0
        err = (pred[:, 0] - target)[valid]
        self.sum_abs += err.abs().sum().item()
        self.sum_sq += err.square().sum().item()
        self.count += int(valid.sum())

    def merge(self, other: DepthMetric) -> None:
        self.sum_abs += other.sum_abs
        self.sum_sq += other.sum_sq
        self.count += other.count

    def compute(self) -> dict[str, float]:
        if self.count == 0:
            raise _empty(self)
        return {"rmse": math.sqrt(self.sum_sq / self.count), "mae": self.sum_abs / self.count}


def normals_loss(pred: Tensor, target: Tensor) -> Tensor:
    """L1 between the L2-normalised prediction (B, 3, H, W) and unit targets, on valid (non-zero)
    target pixels."""
    valid = (target.norm(dim=1) > 0.5).unsqueeze(1)
    diff = (F.normalize(pred, dim=1) - target).abs() * valid
    return diff.sum() / (3 * valid.sum()).clamp_min(1)


def depth_loss(pred: Tensor, target: Tensor) -> Tensor:
    """L1 of pred (B, 1, H, W) against target (B, H, W) on pixels with target > 0."""
    valid = target > 0
    return ((pred[:, 0] - target).abs() * valid).sum() / valid.sum().clamp_min(1)


def binary_loss(pred: Tensor, target: Tensor) -> Tensor:
    """Binary cross-entropy of logits (B, 1, H, W) against a {0, 1} mask (B, H, W)."""
    return F.binary_cross_entropy_with_logits(pred[:, 0], target)


def balanced_binary_loss(pred: Tensor, target: Tensor) -> Tensor:
    """``binary_loss`` with positives weighted by #negatives / #positives of the batch."""
    pos = target.sum()
    pos_weight = (target.numel() - pos) / pos.clamp_min(1)
    return F.binary_cross_entropy_with_logits(pred[:, 0], target, pos_weight=pos_weight)


@dataclass(frozen=True, kw_only=True)
class Task:
    """One task: its head size, loss and metric, given by keyword. ``primary`` names the metric
    used for Delta_m, ``higher_is_better`` says which way it improves.

    ``kind`` is free text for tables ("segmentation", "normals", "classification", ...); ``dense``
    says whether predictions are maps (B, C, H, W) at the input resolution or labels (B, C).
    """

    name: str
    kind: str
    out_channels: int
    dense: bool
    primary: str
    higher_is_better: bool
    loss_fn: Callable[[Tensor, Tensor], Tensor] = field(repr=False)
    metric_factory: Callable[[], Metric] = field(repr=False)

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


def primary_metrics(
    metrics: Mapping[str, Mapping[str, float]], tasks: Mapping[str, Task]
) -> dict[str, float]:
    """{task: {metric: value}} (as from an evaluation) -> {task: value of its primary metric}."""
    return {name: metrics[name][task.primary] for name, task in tasks.items()}


def relative_changes(
    multi: Mapping[str, float], single: Mapping[str, float], higher_is_better: Mapping[str, bool]
) -> dict[str, float]:
    """Each task's signed relative change in %: (-1)^l_t (M_mt,t - M_st,t) / M_st,t * 100, with
    l_t = 1 where lower is better, so that positive always means better than single-task."""
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
    multi: Mapping[str, float], single: Mapping[str, float], higher_is_better: Mapping[str, bool]
) -> float:
    """Delta_m in %: the mean over tasks of ``relative_changes`` (Maninis et al. 2019).
    Positive = the multi-task model is better on average."""
    changes = relative_changes(multi, single, higher_is_better)
    return sum(changes.values()) / len(changes)
