"""A small multi-task trainer: ``fit`` (AdamW, warmup + cosine, clipping) and ``evaluate``.

The model maps images (B, 3, H, W) to ``dict[task -> prediction]``; the loader yields
``(images, targets)`` with ``targets`` a ``dict[task -> Tensor]``; each ``Task`` gives the loss and a
streaming metric. The trainer records a ``History`` and never draws.
"""

from __future__ import annotations

import contextlib
import math
import random
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from mtlora_lite.adapters.heads import HEAD_MODES, head_similarity, nanmean

Metrics = dict[str, dict[str, float]]  # task -> metric name -> value


class TrainTask(Protocol):
    """What the trainer needs from a task (``mtlora_lite.multitask.tasks.Task`` has it)."""

    name: str

    def loss(self, pred: Tensor, target: Tensor) -> Tensor: ...

    def new_metric(self) -> Any: ...


class Callback:
    """Hooks called by ``fit``; subclass and override what you need (all are no-ops here)."""

    def on_fit_start(self, model: nn.Module) -> None:
        """Before the first step."""

    def on_step_end(self, step: int, model: nn.Module, logs: dict[str, Any]) -> None:
        """After optimizer step ``step`` (1-based); ``logs`` is that step's record in the History."""

    def on_eval_end(self, epoch: int, model: nn.Module, metrics: Metrics) -> None:
        """After validating at the end of epoch ``epoch`` (1-based)."""


class HeadSimilarityRecorder(Callback):
    """Trainer callback: ``head_similarity(model, mode)`` before training and every ``every`` steps.

    ``steps[k]`` is the optimizer step (0 = before training) of the record ``values[k]`` (layer ->
    mean head cosine). ``curve()`` gives what to plot; ``to_dict()`` what to save as JSON.
    """

    def __init__(self, every: int = 10, mode: str = "B") -> None:
        if every < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        if mode not in HEAD_MODES:
            raise ValueError(f"mode must be one of {HEAD_MODES}, got {mode!r}")
        self.every, self.mode = every, mode
        self.steps: list[int] = []
        self.values: list[dict[str, float]] = []

    def _record(self, step: int, model: nn.Module) -> None:
        self.steps.append(step)
        self.values.append(head_similarity(model, self.mode))

    def on_fit_start(self, model: nn.Module) -> None:
        self._record(0, model)

    def on_step_end(self, step: int, model: nn.Module, logs: dict[str, Any]) -> None:
        if step % self.every == 0:
            self._record(step, model)

    def curve(self, layer: str | None = None) -> tuple[list[int], list[float]]:
        """(steps, similarity) of one layer, or averaged over layers (NaNs skipped) by default."""
        if layer is None:
            return self.steps, [nanmean(v.values()) for v in self.values]
        return self.steps, [v[layer] for v in self.values]

    def to_dict(self) -> dict[str, Any]:
        return {"mode": self.mode, "every": self.every, "steps": self.steps, "values": self.values}


@dataclass
class History:
    """What ``fit`` measured.

    ``steps``: one record per optimizer step, ``{"step", "lr", "loss", "grad_norm", "losses": {task:
    loss}}``. ``evals``: one record per validation, ``{"epoch", "step", "metrics": {task: {metric:
    value}}}``. ``images_per_s`` counts training steps only (no validation).
    """

    steps: list[dict[str, Any]] = field(default_factory=list)
    evals: list[dict[str, Any]] = field(default_factory=list)
    wall_time_s: float = 0.0
    images_per_s: float = 0.0

    @property
    def final(self) -> Metrics:
        """The last validation metrics (empty if ``fit`` had no ``val_loader``)."""
        return self.evals[-1]["metrics"] if self.evals else {}

    def curve(self, key: str = "loss") -> tuple[list[int], list[float]]:
        """(steps, values) of ``"loss"``, ``"lr"``, ``"grad_norm"`` or a task name (its loss)."""
        if self.steps and key not in self.steps[0] and key not in self.steps[0]["losses"]:
            raise KeyError(f"No curve {key!r}; use 'loss', 'lr', 'grad_norm' or a task name.")
        values = [r[key] if key in r else r["losses"][key] for r in self.steps]
        return [r["step"] for r in self.steps], values

    def metric_curve(self, task: str, metric: str) -> tuple[list[int], list[float]]:
        """(steps, values) of one validation metric over the evaluations."""
        return [e["step"] for e in self.evals], [e["metrics"][task][metric] for e in self.evals]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable copy."""
        return {
            "steps": self.steps,
            "evals": self.evals,
            "wall_time_s": self.wall_time_s,
            "images_per_s": self.images_per_s,
        }


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
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed)  # noqa: NPY002 (seeds the legacy global RNG that user code may use)
    torch.manual_seed(seed)


def _autocast(device: torch.device, amp: bool) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA when ``amp``; full precision elsewhere."""
    if amp and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _to(batch: Any, device: torch.device) -> tuple[Tensor, dict[str, Tensor]]:
    images, targets = batch
    return images.to(device, non_blocking=True), {
        k: v.to(device, non_blocking=True) for k, v in targets.items()
    }


def _predict(model: nn.Module, images: Tensor, tasks: Iterable[str]) -> dict[str, Tensor]:
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
    tasks: Mapping[str, TrainTask],
    loader: Iterable,
    *,
    device: str | torch.device = "auto",
    amp: bool = True,
    progress: bool = False,
) -> Metrics:
    """Each task's metrics over ``loader``, model in eval mode (its previous mode is restored)."""
    dev = resolve_device(device)
    was_training = model.training
    model.to(dev).eval()
    metrics = {name: task.new_metric() for name, task in tasks.items()}
    try:
        for batch in tqdm(loader, desc="eval", disable=not progress, leave=False):
            images, targets = _to(batch, dev)
            with _autocast(dev, amp):
                preds = _predict(model, images, tasks)
            for name, metric in metrics.items():
                metric.update(preds[name].float(), targets[name])
    finally:
        model.train(was_training)
    return {name: metric.compute() for name, metric in metrics.items()}


def _optimizer(model: nn.Module, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW over trainable parameters; no weight decay on 1-D ones (biases, norms)."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError(
            "The model has no trainable parameters (requires_grad is False everywhere)."
        )
    groups = [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=lr)


def lr_factor(step: int, total: int, warmup_steps: int) -> float:
    """Multiplier of the base lr at 0-based ``step``: linear warmup, then cosine decay to 0."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def _weighted_loss(
    model: nn.Module,
    tasks: Mapping[str, TrainTask],
    weights: Mapping[str, float],
    images: Tensor,
    targets: Mapping[str, Tensor],
    amp: bool,
    step: int,
) -> tuple[Tensor, dict[str, float]]:
    """``sum_t weights[t] * loss_t`` (scalar) and each task's loss; raises if not finite."""
    with _autocast(images.device, amp):
        preds = _predict(model, images, tasks)
        losses = {n: t.loss(preds[n].float(), targets[n]) for n, t in tasks.items()}
    loss = sum(weights[n] * losses[n] for n in tasks)
    values = {n: v.item() for n, v in losses.items()}
    if not math.isfinite(loss.item()):
        raise FloatingPointError(f"Non-finite loss at step {step}: {values}.")
    return loss, values


def fit(
    model: nn.Module,
    tasks: Mapping[str, TrainTask],
    train_loader: Iterable,
    val_loader: Iterable | None = None,
    *,
    epochs: int = 1,
    max_steps: int | None = None,
    lr: float = 1e-3,
    weight_decay: float = 0.05,
    warmup: float = 0.05,
    grad_clip: float | None = 1.0,
    loss_weights: Mapping[str, float] | None = None,
    device: str | torch.device = "auto",
    amp: bool = True,
    callbacks: Sequence[Callback] = (),
    progress: bool = True,
    seed: int = 0,
) -> History:
    """Train ``model`` on the weighted sum of task losses, ``sum_t loss_weights[t] * loss_t``.

    Runs ``epochs`` passes over ``train_loader``, or exactly ``max_steps`` steps if given (looping
    over the loader as needed). ``warmup`` is a fraction of all steps. Validates on ``val_loader``
    after every pass and after the last step. Raises FloatingPointError on a non-finite loss.
    """
    unknown = set(loss_weights or {}) - set(tasks)
    if unknown:
        raise KeyError(
            f"loss_weights has unknown tasks {sorted(unknown)}; tasks are {list(tasks)}."
        )
    weights = {name: float((loss_weights or {}).get(name, 1.0)) for name in tasks}
    seed_everything(seed)
    dev = resolve_device(device)
    model.to(dev).train()
    if max_steps is None and not hasattr(train_loader, "__len__"):
        raise TypeError("train_loader has no len(): pass max_steps to say how long to train.")
    total = max_steps if max_steps is not None else epochs * len(train_loader)
    optimizer = _optimizer(model, lr, weight_decay)
    warmup_steps = round(warmup * total)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, total, warmup_steps)
    )
    trainable = [p for p in model.parameters() if p.requires_grad]
    history, step, epoch, n_images, train_time, smooth = History(), 0, 0, 0, 0.0, None
    start = time.perf_counter()
    for cb in callbacks:
        cb.on_fit_start(model)
    with tqdm(total=total, desc="train", disable=not progress) as bar:
        while step < total:
            epoch += 1
            tic = time.perf_counter()
            for batch in train_loader:
                images, targets = _to(batch, dev)
                current_lr = optimizer.param_groups[0]["lr"]
                loss, values = _weighted_loss(model, tasks, weights, images, targets, amp, step + 1)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                norm = nn.utils.clip_grad_norm_(trainable, grad_clip or math.inf)
                optimizer.step()
                scheduler.step()
                step, n_images = step + 1, n_images + images.shape[0]
                logs = {"step": step, "lr": current_lr, "loss": loss.item()}
                logs.update(grad_norm=norm.item(), losses=values)
                history.steps.append(logs)
                smooth = logs["loss"] if smooth is None else 0.9 * smooth + 0.1 * logs["loss"]
                bar.update(1)
                bar.set_postfix(loss=f"{smooth:.4f}", refresh=False)
                for cb in callbacks:
                    cb.on_step_end(step, model, logs)
                if step >= total:
                    break
            train_time += time.perf_counter() - tic
            if n_images == 0:
                raise ValueError("train_loader yielded no batches.")
            if val_loader is not None:
                metrics = evaluate(model, tasks, val_loader, device=dev, amp=amp)
                history.evals.append({"epoch": epoch, "step": step, "metrics": metrics})
                for cb in callbacks:
                    cb.on_eval_end(epoch, model, metrics)
    history.wall_time_s = time.perf_counter() - start
    history.images_per_s = n_images / max(train_time, 1e-9)
    return history
