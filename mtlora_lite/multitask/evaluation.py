"""Evaluating a multi-task model, and what training shares with it: moving batches, checking
predictions.

    metrics = evaluate(model, tasks, val_loader)     # {task: {metric: value}}, whole set

Under torchrun, each rank evaluates its shard and the metrics are merged (``multitask.distributed``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Protocol

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from mtlora_lite.multitask import distributed
from mtlora_lite.multitask.history import Metrics
from mtlora_lite.multitask.precision import explain_dtype_errors
from mtlora_lite.multitask.runtime import resolve_device, seed_everything

__all__ = [  # seed_everything: importable from here too, as before runtime.py
    "EvalTask",
    "batch_to",
    "evaluate",
    "evaluate_launched",
    "predict",
    "resolve_device",
    "seed_everything",
]


class EvalTask(Protocol):
    """What evaluation needs from a task (``mtlora_lite.multitask.tasks.Task`` has it)."""

    name: str

    def new_metric(self) -> Any: ...


def batch_to(batch: Any, device: torch.device) -> tuple[Tensor, dict[str, Tensor]]:
    """``(images, {task: target})`` moved to ``device``."""
    images, targets = batch
    return images.to(device, non_blocking=True), {
        k: v.to(device, non_blocking=True) for k, v in targets.items()
    }


def predict(model: nn.Module, images: Tensor, tasks: Iterable[str]) -> dict[str, Tensor]:
    """``model(images)``, checked to be a dict with a prediction for every task."""
    preds = model(images)
    if not isinstance(preds, Mapping):
        raise TypeError(
            f"The model returned {type(preds).__name__}; it must return dict[task name -> Tensor]."
        )
    missing = [t for t in tasks if t not in preds]
    if missing:
        raise KeyError(f"The model gave no prediction for tasks {missing}; it gave {list(preds)}.")
    return preds


@torch.no_grad()
def evaluate(
    model: nn.Module,
    tasks: Mapping[str, EvalTask],
    loader: Iterable,
    *,
    device: str | torch.device = "auto",
    progress: bool = False,
) -> Metrics:
    """Each task's metrics over ``loader``, model in eval mode (its previous mode is restored),
    in the model's own precision (no autocast: fp32 for an fp32 model, whatever ``fit`` trained in).

    Under torchrun each rank evaluates its shard of ``loader``'s dataset and the metrics are merged,
    so every rank returns the metrics of the whole set.
    """
    dev = resolve_device(device)
    ctx = distributed.launch(dev)
    return evaluate_launched(model, tasks, distributed.shard_eval(loader, ctx), ctx, progress)


def evaluate_launched(
    model: nn.Module,
    tasks: Mapping[str, EvalTask],
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
                images, targets = batch_to(batch, dev)
                with explain_dtype_errors(model, images):
                    preds = predict(model, images, tasks)
                for name, metric in metrics.items():
                    metric.update(preds[name].float(), targets[name])
    finally:
        model.train(was_training)
    metrics = distributed.merge_metrics(metrics, ctx)
    return {name: metric.compute() for name, metric in metrics.items()}
