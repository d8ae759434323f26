"""The four PASCAL-Context tasks of the MTLoRA benchmark as ``Task``s: losses, metrics, weights.

========== ============== ========================= ===============================================
task       prediction     target (``PascalTransform``) loss; metrics (primary first)
========== ============== ========================= ===============================================
semseg     (B, 21, H, W)  (B, H, W) int64, 255 =    cross-entropy over labelled pixels; "mIoU"
           logits         ignore                    over all 21 classes (background included)
human_parts (B, 7, H, W)  (B, H, W) int64, 255 =    the same; "mIoU" over background + 6 parts
           logits         ignore (all 255 without
                          a person with parts)
sal        (B, 1, H, W)   (B, H, W) {0, 1}, 255 =   balanced BCE; "mIoU" (best mean per-image IoU
           logits         ignore                    over 15 thresholds 0.2 ... 0.9), "maxF"
normals    (B, 3, H, W)   (B, 3, H, W) unit, zero = L1 of the L2-normalised prediction on valid
                          invalid                   pixels; "mean_angle" (degrees, lower is
                                                    better; the paper's "rmse" column is this
                                                    mean), "rmse_angle", "median_angle", ...
========== ============== ========================= ===============================================

Loss weights (``LOSS_WEIGHTS``): semseg 1, human_parts 2, sal 5, normals 10. As in the public
evaluation code, a class IoU is tp / (tp + fp + fn) and counts as 0 when the class never occurs
(``SegmentationIoU``); saliency's IoU of an image with neither a salient pixel nor a positive
prediction is 1, and "maxF" is the best 2 P R / (P + R) of the per-image precision and recall
averaged over images (beta = 1). Every metric has ``merge(other)``, so that evaluation can add up
metrics computed on several processes.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor

from mtlora_lite.multitask.pascal.data import TASKS
from mtlora_lite.multitask.pascal.readers import IGNORE, NUM_SEMSEG
from mtlora_lite.multitask.tasks import ConfusionMetric, NormalsMetric, Task, normals_loss

NUM_CLASSES = {"semseg": NUM_SEMSEG, "human_parts": 7}
LOSS_WEIGHTS = {"semseg": 1.0, "human_parts": 2.0, "sal": 5.0, "normals": 10.0}
SALIENCY_THRESHOLDS = torch.linspace(0.2, 0.9, 15)


def segmentation_loss(pred: Tensor, target: Tensor) -> Tensor:
    """Cross-entropy of logits (B, C, H, W) against labels (B, H, W), averaged over the pixels
    that are not ``IGNORE``; 0 (with a gradient) when a batch has none, e.g. no person at all."""
    total = F.cross_entropy(pred, target, ignore_index=IGNORE, reduction="sum")
    return total / (target != IGNORE).sum().clamp_min(1)


def saliency_loss(pred: Tensor, target: Tensor) -> Tensor:
    """Balanced BCE of logits (B, 1, H, W) against {0, 1} maps (B, H, W), ``IGNORE`` left out.

    With w the share of negatives among the batch's labelled pixels, positives weigh w and
    negatives 1 - w; the sum is divided by the number of labelled pixels.
    """
    valid = target != IGNORE
    positive = (target == 1) & valid
    n_valid = valid.sum().clamp_min(1)
    w = (valid.sum() - positive.sum()) / n_valid
    bce = F.binary_cross_entropy_with_logits(pred[:, 0], positive.float(), reduction="none")
    weights = torch.where(positive, w, 1 - w) * valid
    return (weights * bce).sum() / n_valid


class SegmentationIoU(ConfusionMetric):
    """``ConfusionMetric`` whose "mIoU" averages every class, an absent one counting as 0 (as the
    benchmark's evaluation does). Also "pixel_acc", in %."""

    def compute(self) -> dict[str, float]:
        out = super().compute()  # raises before any update
        tp = self.matrix.diag().double()
        union = self.matrix.sum(0) + self.matrix.sum(1) - tp
        iou = torch.where(union > 0, tp / union.clamp_min(1), 0.0)
        return {**out, "mIoU": 100 * iou.mean().item()}


class SaliencyMetric:
    """Saliency scored per image at each threshold of ``SALIENCY_THRESHOLDS`` (on the sigmoid):
    "mIoU" = the best, over thresholds, of the IoU averaged over images; "maxF" = the best
    F-measure of the averaged precision and recall; in %. ``IGNORE`` pixels are left out."""

    def __init__(self) -> None:
        n = len(SALIENCY_THRESHOLDS)
        self.iou, self.precision, self.recall = (torch.zeros(n, dtype=torch.float64) for _ in "ipr")
        self.images = 0

    def update(self, pred: Tensor, target: Tensor) -> None:
        """pred: logits (B, 1, H, W); target: (B, H, W) in {0, 1, 255}."""
        prob = torch.sigmoid(pred[:, 0].float())
        valid, truth = target != IGNORE, target == 1
        for k, threshold in enumerate(SALIENCY_THRESHOLDS.tolist()):
            positive = (prob > threshold) & valid
            tp = (positive & truth).sum((1, 2)).double()
            fp = (positive & ~truth).sum((1, 2)).double()
            fn = (~positive & truth & valid).sum((1, 2)).double()
            union = tp + fp + fn
            self.iou[k] += torch.where(union > 0, tp / union.clamp_min(1), 1.0).sum().cpu()
            self.precision[k] += (tp / (tp + fp + 1e-12)).sum().cpu()
            self.recall[k] += (tp / (tp + fn + 1e-12)).sum().cpu()
        self.images += pred.shape[0]

    def merge(self, other: SaliencyMetric) -> None:
        """Add ``other``'s per-threshold sums and image count to this one."""
        for name in ("iou", "precision", "recall"):
            getattr(self, name).add_(getattr(other, name))
        self.images += other.images

    def compute(self) -> dict[str, float]:
        if self.images == 0:
            raise RuntimeError(
                "SaliencyMetric.compute() before any update(): evaluate on data first"
            )
        p, r = self.precision / self.images, self.recall / self.images
        f = 2 * p * r / (p + r + 1e-12)
        return {"mIoU": 100 * (self.iou / self.images).max().item(), "maxF": 100 * f.max().item()}


def pascal_tasks(names: Sequence[str] = TASKS) -> dict[str, Task]:
    """The benchmark's tasks by name (module docstring), in the order given."""
    unknown = [n for n in names if n not in TASKS]
    if unknown or not names:
        raise ValueError(
            f"unknown PASCAL-Context tasks {unknown or list(names)}; choose from {TASKS}"
        )
    seg = {"kind": "segmentation", "dense": True, "primary": "mIoU", "higher_is_better": True}
    made = {
        "semseg": Task(
            name="semseg",
            out_channels=NUM_CLASSES["semseg"],
            loss_fn=segmentation_loss,
            metric_factory=partial(SegmentationIoU, NUM_CLASSES["semseg"]),
            **seg,
        ),
        "human_parts": Task(
            name="human_parts",
            out_channels=NUM_CLASSES["human_parts"],
            loss_fn=segmentation_loss,
            metric_factory=partial(SegmentationIoU, NUM_CLASSES["human_parts"]),
            **seg,
        ),
        "sal": Task(
            name="sal",
            kind="saliency",
            out_channels=1,
            dense=True,
            primary="mIoU",
            higher_is_better=True,
            loss_fn=saliency_loss,
            metric_factory=SaliencyMetric,
        ),
        "normals": Task(
            name="normals",
            kind="normals",
            out_channels=3,
            dense=True,
            primary="mean_angle",
            higher_is_better=False,
            loss_fn=normals_loss,
            metric_factory=NormalsMetric,
        ),
    }
    return {name: made[name] for name in names}
