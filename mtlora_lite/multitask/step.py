"""One optimizer step of ``fit``: the weighted task loss under autocast, the (fp16: scaled)
backward pass, clipping, the update, and the bookkeeping of steps that fp16 loss scaling skips.

    logs = train_step(run, images, targets, step)    # the step's record for the History
    record_skip(history, logs)                      # fp16: note a skipped update, stop after many
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from mtlora_lite.multitask import distributed
from mtlora_lite.multitask.evaluation import predict
from mtlora_lite.multitask.history import History
from mtlora_lite.multitask.precision import autocast, explain_dtype_errors
from mtlora_lite.multitask.tasks import TaskLike

MAX_SKIPPED_IN_A_ROW = 30  # fp16: steps skipped in a row (inf / NaN gradients) before fit stops


@dataclass
class Run:
    """What the loop of ``fit`` trains with (``fit``'s arguments, checked and built)."""

    model: nn.Module  # the model itself: callbacks, evaluation, checkpoints
    ddp_model: nn.Module  # what the steps run through: the model, or its DDP wrapper
    tasks: Mapping[str, TaskLike]
    weights: Mapping[str, float]
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler  # enabled for fp16 only
    precision: str  # the precision used (``resolve_precision``)
    grad_clip: float | None
    total: int  # optimizer steps of the whole run
    eval_every: int
    ctx: distributed.Launch
    settings: dict[str, Any]  # ``run_settings``, stored in each checkpoint
    identity: dict[str, Any]  # ``run_identity``, too (empty without checkpoints or torchrun)
    checkpoint: Path | None = None  # where to save after every pass (rank 0)


def weighted_loss(
    run: Run, images: Tensor, targets: Mapping[str, Tensor], step: int
) -> tuple[Tensor, float, dict[str, float]]:
    """``sum_t weights[t] * loss_t`` (the scalar to back-propagate), its value and each task's loss
    (means over ranks under torchrun). Raises if it is not finite (on every rank alike), except
    under fp16 loss scaling, which skips such a step."""
    with autocast(images.device, run.precision), explain_dtype_errors(run.model, images):
        preds = predict(run.ddp_model, images, run.tasks)
        losses = {n: t.loss(preds[n].float(), targets[n]) for n, t in run.tasks.items()}
    loss = sum(run.weights[n] * losses[n] for n in run.tasks)
    reported = distributed.mean_over_ranks(torch.stack([loss.detach(), *losses.values()]), run.ctx)
    total, *each = reported.tolist()
    values = dict(zip(losses, each, strict=True))
    if not math.isfinite(total) and not run.scaler.is_enabled():
        raise FloatingPointError(
            f"Non-finite loss at step {step}: {values}. Lower the learning rate, check the inputs "
            "for NaN / inf, or use grad_clip."
        )
    return loss, total, values


def train_step(
    run: Run, images: Tensor, targets: Mapping[str, Tensor], step: int
) -> dict[str, Any]:
    """One optimizer step (1-based ``step``); returns its record for the History, with
    ``"skipped": True`` when fp16 loss scaling skipped the update."""
    logs: dict[str, Any] = {"step": step, "lr": run.optimizer.param_groups[0]["lr"]}
    loss, logs["loss"], values = weighted_loss(run, images, targets, step)
    run.optimizer.zero_grad(set_to_none=True)
    run.scaler.scale(loss).backward()
    run.scaler.unscale_(run.optimizer)  # (a no-op unless fp16) so that clipping sees true norms
    trainable = [p for p in run.model.parameters() if p.requires_grad]
    norm = nn.utils.clip_grad_norm_(trainable, run.grad_clip or math.inf)
    logs.update(grad_norm=norm.item(), losses=values)
    scale = run.scaler.get_scale() if run.scaler.is_enabled() else None
    run.scaler.step(run.optimizer)  # skips the update if a gradient is inf / NaN (fp16)
    run.scaler.update()
    if scale is not None:
        logs.update(loss_scale=scale, skipped=run.scaler.get_scale() < scale)
    with warnings.catch_warnings():  # a skipped first step makes torch warn about the order
        warnings.filterwarnings("ignore", "Detected call of `lr_scheduler.step", UserWarning)
        run.scheduler.step()  # the schedule counts skipped steps too, as the official code's
    return logs


def record_skip(history: History, logs: dict[str, Any]) -> None:
    """Record a step that fp16 loss scaling skipped; stop after too many in a row."""
    if not logs.pop("skipped", False):
        return
    history.skipped_steps.append(logs["step"])
    recent = history.skipped_steps[-MAX_SKIPPED_IN_A_ROW:]
    if len(recent) == MAX_SKIPPED_IN_A_ROW and recent[0] == logs["step"] - len(recent) + 1:
        raise FloatingPointError(
            f"fp16 loss scaling skipped the last {MAX_SKIPPED_IN_A_ROW} steps (up to step "
            f"{logs['step']}; loss {logs['loss']}, loss scale {logs['loss_scale']}): the "
            "gradients are inf / NaN even at a small scale. Lower the learning rate, check the "
            "inputs for NaN / inf, or train with precision='bf16' or 'fp32'."
        )
