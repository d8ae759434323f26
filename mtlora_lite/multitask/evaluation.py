"""Evaluating a multi-task model, and what training shares with it: moving batches, checking
predictions.

    metrics = evaluate(model, tasks, val_loader)     # {task: {metric: value}}, whole set

Under torchrun, each rank evaluates its shard and the metrics are merged (``multitask.distributed``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sized
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from mtlora_lite.multitask import distributed
from mtlora_lite.multitask.history import Metrics
from mtlora_lite.multitask.loaders import task_targets
from mtlora_lite.multitask.precision import explain_dtype_errors
from mtlora_lite.multitask.runtime import resolve_device, seed_everything
from mtlora_lite.multitask.tasks import TaskLike, task_dict

__all__ = [  # seed_everything: importable from here too, as before runtime.py
    "batch_to",
    "evaluate",
    "evaluate_launched",
    "predict",
    "resolve_device",
    "seed_everything",
]


def batch_to(
    batch: Any, device: torch.device, tasks: Iterable[str], what: str = "the loader"
) -> tuple[Tensor, dict[str, Tensor]]:
    """``(images, {task: target})`` moved to ``device``, from a batch ``(images, targets)`` whose
    targets are a dict, or one tensor for a single task (``loaders.task_targets``)."""
    images, targets = batch
    targets = task_targets(targets, tasks, what)
    return images.to(device, non_blocking=True), {
        k: v.to(device, non_blocking=True) for k, v in targets.items()
    }


def predict(model: nn.Module, images: Tensor, tasks: Iterable[str]) -> dict[str, Tensor]:
    """``model(images)`` as ``{task: prediction}``: the model's dict, checked to have every task,
    or ``{task: output}`` when a model of one task returns a plain tensor."""
    tasks = list(tasks)
    preds = model(images)
    if isinstance(preds, Tensor) and len(tasks) == 1:
        return {tasks[0]: preds}
    if not isinstance(preds, Mapping):
        raise TypeError(
            f"The model returned {type(preds).__name__}; with several tasks ({tasks}) it must "
            "return dict[task name -> Tensor] (a plain tensor serves one task only)."
        )
    missing = [t for t in tasks if t not in preds]
    if missing:
        raise KeyError(f"The model gave no prediction for tasks {missing}; it gave {list(preds)}.")
    return preds


@torch.no_grad()
def evaluate(
    model: nn.Module,
    tasks: Mapping[str, TaskLike] | TaskLike,
    loader: Iterable,
    *,
    device: str | torch.device = "auto",
    progress: bool = False,
) -> Metrics:
    """Each task's metrics over ``loader``, model in eval mode (its previous mode is restored),
    in the model's own precision (no autocast: fp32 for an fp32 model, whatever ``fit`` trained in).
    ``tasks``, model and loader as for ``fit``: a dict of tasks, or one task with a model that may
    return a plain tensor and a loader of plain ``(x, y)`` batches.

    Under torchrun each rank evaluates its shard of ``loader``'s dataset and the metrics are merged,
    so every rank returns the metrics of the whole set.
    """
    if isinstance(loader, Sized) and len(loader) == 0:
        raise ValueError("the evaluation loader yields no batches (its dataset is empty)")
    dev = resolve_device(device)
    ctx = distributed.launch(dev)
    tasks = task_dict(tasks)
    return evaluate_launched(model, tasks, distributed.shard_eval(loader, ctx), ctx, progress)


def evaluate_launched(
    model: nn.Module,
    tasks: Mapping[str, TaskLike],
    loader: Iterable,
    ctx: distributed.Launch,
    progress: bool,
) -> Metrics:
    """``evaluate`` inside a launch ``ctx`` that its caller owns (``fit`` uses it between passes),
    on a loader already sharded for it."""
    dev = ctx.device
    was_training = model.training
    model.to(dev).eval()
    metrics = {name: task.new_metric() for name, task in tasks.items()}
    try:
        with torch.no_grad():
            for batch in tqdm(
                loader, desc="eval", disable=not (progress and ctx.main), leave=False
            ):
                images, targets = batch_to(batch, dev, tasks, "the evaluation loader")
                with explain_dtype_errors(model, images):
                    preds = predict(model, images, tasks)
                for name, metric in metrics.items():
                    metric.update(preds[name].float(), targets[name])
    finally:
        model.train(was_training)
    metrics = distributed.merge_metrics(metrics, ctx)
    return {name: metric.compute() for name, metric in metrics.items()}
