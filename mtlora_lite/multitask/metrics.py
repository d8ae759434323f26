"""Streaming metrics: ``update`` once per batch, ``compute`` at the end, ``merge`` to add another
instance's counts. Accumulated over the whole evaluation set (never averaged over batches):

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
from collections.abc import Sequence
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor

THRESHOLDS = torch.linspace(0.05, 0.95, 19)  # probability thresholds for saliency and edges
ANGLE_BIN = 0.1  # degrees per histogram bin for the median angular error


class Metric(Protocol):
    """A streaming metric, over a whole evaluation set.

    ``update(pred, target)`` adds one batch's counts (pred as the model gives it, in float);
    ``compute()`` gives ``{metric name: value}`` from all the counts (and raises before any
    update); ``merge(other)`` adds another instance's counts into this one: evaluation under
    torchrun gives each process a shard, then merges the processes' metrics, so that the result
    is that of one process on the whole set. ``Task`` checks for all three when it is built.
    """

    def update(self, pred: Tensor, target: Tensor) -> None: ...

    def compute(self) -> dict[str, float]: ...

    def merge(self, other: Metric) -> None: ...


def check_metric(metric: object, owner: str) -> Metric:
    """``metric`` if it has callable ``update``, ``compute`` and ``merge``; else a ``TypeError``
    naming ``owner`` and what to add."""
    missing = [m for m in ("update", "compute", "merge") if not callable(getattr(metric, m, None))]
    if missing:
        raise TypeError(
            f"{owner}: its metric {type(metric).__name__} has no {missing}. A metric needs "
            "update(pred, target) per batch, compute() -> {name: value} at the end and "
            "merge(other), which adds other's counts into self (evaluation under torchrun merges "
            "the processes' metrics with it); see mtlora_lite.multitask.metrics.Metric"
        )
    return metric  # type: ignore[return-value]


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
