"""The scene tasks of the course: each label of ``course.scenes`` as a ``Task`` (``build_tasks``).

Predictions and targets (B = batch; dense predictions are at the input resolution H x W):

========== ================= ======================= ============================================
task       prediction        target                  loss; metrics (primary first)
========== ================= ======================= ============================================
semseg,    (B, C, H, W)      (B, H, W) int64         cross-entropy; "mIoU", "pixel_acc"
parts      logits
saliency   (B, 1, H, W)      (B, H, W) {0, 1}        BCE with logits; "maxF", "IoU"
normals    (B, 3, H, W)      (B, 3, H, W), zero =    L1 of the L2-normalised prediction on valid
                             invalid                 pixels; "mean_angle", "rmse_angle",
                                                     "median_angle", "within_11.25" (degrees / %)
depth      (B, 1, H, W)      (B, H, W), 0 = invalid  L1 on valid pixels; "rmse", "mae"
edges      (B, 1, H, W)      (B, H, W) {0, 1}        BCE, positives weighted by #neg / #pos of
                                                     the batch; "odsF", "IoU"
count,     (B, C) logits     (B,) int64              cross-entropy; "acc"
shape,
colour
answer     (B, A) logits     (B, 2) int64:           cross-entropy on the answer; "acc" and
                             [answer, task]          "acc/<task>" per mixture task
========== ================= ======================= ============================================

Each is built by the library's constructor of its kind (``Task.segmentation``, ``Task.saliency``,
...; ``mtlora_lite.multitask.metrics`` explains the metrics).
"answer": a prediction is right only if its argmax over the whole union answer space is the
true answer, so the model must also recognise the task from its cue.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import torch.nn.functional as F
from torch import Tensor

from mtlora_lite.course.data import MIXTURE_TASKS, mixture_layout
from mtlora_lite.course.scenes import (
    DENSE_LABELS,
    DOWNSTREAM,
    IMAGE_LABELS,
    SceneConfig,
    class_names,
)
from mtlora_lite.multitask.metrics import AccuracyMetric
from mtlora_lite.multitask.tasks import Task

TASK_NAMES = (*DENSE_LABELS, *IMAGE_LABELS, "answer")


def _answer_loss(pred: Tensor, target: Tensor) -> Tensor:
    return F.cross_entropy(pred, target[:, 0])


def _make_task(name: str, config: SceneConfig, mixture_tasks: Sequence[str]) -> Task:
    if name in ("semseg", "parts"):
        return Task.segmentation(name, len(class_names(config, name)))
    if name == "saliency":
        return Task.saliency(name)
    if name == "normals":
        return Task.normals(name)
    if name == "depth":
        return Task.depth(name)
    if name == "edges":
        return Task.edges(name)
    if name == "answer":
        answers = sum(n for _, n in mixture_layout(mixture_tasks, config).values())
        per_task = partial(AccuracyMetric, list(mixture_tasks))
        return Task.classification(
            name, answers, kind="mixture", loss_fn=_answer_loss, metric_factory=per_task
        )
    return Task.classification(name, len(class_names(config, name)))


def build_tasks(
    names: str | Sequence[str],
    config: SceneConfig = DOWNSTREAM,
    mixture_tasks: Sequence[str] = MIXTURE_TASKS,
) -> dict[str, Task]:
    """The tasks ``names`` for scenes drawn with ``config``, keyed by name, in the given order.

    ``names`` is one name or a list of distinct names (at least one). ``mixture_tasks`` sets the
    union answer space of the "answer" task (see ``mixture_layout``).
    """
    names = [names] if isinstance(names, str) else list(names)
    if not names:
        raise ValueError(f"no tasks given; choose at least one from {list(TASK_NAMES)}")
    unknown = [n for n in names if n not in TASK_NAMES]
    if unknown:
        raise ValueError(f"unknown tasks {unknown}; choose from {list(TASK_NAMES)}")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"tasks {repeated} are named more than once in {names}; name each once")
    return {name: _make_task(name, config, mixture_tasks) for name in names}
