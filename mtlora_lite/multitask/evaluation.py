"""Evaluating a multi-task model, and the runtime helpers training shares with it: the device,
the seeds, autocast, moving batches, checking predictions.

    metrics = evaluate(model, tasks, val_loader)     # {task: {metric: value}}, whole set

Under torchrun, each rank evaluates its shard and the metrics are merged (``multitask.distributed``).
"""

from __future__ import annotations

import contextlib
import numbers
import random
from collections.abc import Iterable, Mapping
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from mtlora_lite.multitask import distributed
from mtlora_lite.multitask.history import Metrics


class EvalTask(Protocol):
    """What evaluation needs from a task (``mtlora_lite.multitask.tasks.Task`` has it)."""

    name: str

    def new_metric(self) -> Any: ...


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` -> cuda if available, then mps, then cpu; anything else -> ``torch.device(device)``
    after checking that it exists here (``ValueError`` with the fix otherwise)."""
    if str(device) != "auto":
        try:
            dev = torch.device(device)
        except RuntimeError as err:
            raise ValueError(
                f"unknown device {device!r}: use 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'"
            ) from err
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(
                f"device {device!r} was asked for, but torch sees no CUDA GPU here (torch "
                f"{torch.__version__}, CUDA build: {torch.version.cuda}). Use device='auto' or "
                "'cpu', or install a CUDA build of torch on a machine with a GPU."
            )
        if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(
                f"device {device!r}: only {torch.cuda.device_count()} GPU(s) here, indices "
                f"0..{torch.cuda.device_count() - 1}"
            )
        if dev.type == "mps" and not torch.backends.mps.is_available():
            raise ValueError(f"device {device!r}: MPS is not available here; use 'auto' or 'cpu'")
        return dev
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices); ``seed`` in [0, 2^32), NumPy's range."""
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or not 0 <= seed < 2**32:
        raise ValueError(
            f"seed must be an integer in [0, 2**32) (NumPy's seed range), got {seed!r}"
        )
    random.seed(seed)
    np.random.seed(seed)  # noqa: NPY002 (seeds the legacy global RNG that user code may use)
    torch.manual_seed(seed)


def autocast(device: torch.device, amp: bool) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA when ``amp``; full precision elsewhere."""
    if amp and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


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
    amp: bool = True,
    progress: bool = False,
) -> Metrics:
    """Each task's metrics over ``loader``, model in eval mode (its previous mode is restored).

    Under torchrun each rank evaluates its shard of ``loader``'s dataset and the metrics are merged,
    so every rank returns the metrics of the whole set.
    """
    dev = resolve_device(device)
    ctx = distributed.launch(dev)
    return evaluate_launched(model, tasks, distributed.shard_eval(loader, ctx), ctx, amp, progress)


def evaluate_launched(
    model: nn.Module,
    tasks: Mapping[str, EvalTask],
    loader: Iterable,
    ctx: distributed.Launch,
    amp: bool,
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
                with autocast(dev, amp):
                    preds = predict(model, images, tasks)
                for name, metric in metrics.items():
                    metric.update(preds[name].float(), targets[name])
    finally:
        model.train(was_training)
    metrics = distributed.merge_metrics(metrics, ctx)
    return {name: metric.compute() for name, metric in metrics.items()}
