"""A small multi-task trainer: ``fit`` (AdamW, warmup + cosine, clipping) and ``evaluate``.

The model maps images (B, 3, H, W) to ``dict[task -> prediction]``; the loader yields
``(images, targets)`` with ``targets`` a ``dict[task -> Tensor]``; each ``Task`` gives the loss and a
streaming metric. The trainer records a ``History`` (``multitask.history``) and never draws.

The same call trains in one process or, started by ``torchrun``, in N (``multitask.distributed``):

    torchrun --nproc_per_node 4 train.py      # train.py calls fit(...) as usual

Without gradient accumulation, the effective batch is the loader's batch size times N, and ``lr``
is used as given: to follow a linear scaling rule such as the MTLoRA paper's (5e-4 x batch / 512),
pass ``lr = 5e-4 * batch_size * N / 512``. Under torchrun, fit prints the effective batch.
"""

from __future__ import annotations

import contextlib
import math
import time
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from mtlora_lite.adapters.base import AdapterLayer
from mtlora_lite.adapters.checks import check_count, check_number
from mtlora_lite.adapters.targets import Targets
from mtlora_lite.multitask import distributed
from mtlora_lite.multitask.checkpoint import (
    CHECKPOINT_NAME,
    read_checkpoint,
    restore_checkpoint,
    save_checkpoint,
)
from mtlora_lite.multitask.evaluation import batch_to, evaluate_launched, predict
from mtlora_lite.multitask.history import Callback, History
from mtlora_lite.multitask.loaders import reseed, steps_per_pass
from mtlora_lite.multitask.precision import (
    autocast,
    check_model_dtype,
    explain_dtype_errors,
    grad_scaler,
    resolve_precision,
)
from mtlora_lite.multitask.resume import check_same_run, run_settings
from mtlora_lite.multitask.runtime import resolve_device, seed_everything
from mtlora_lite.multitask.schedule import build_optimizer, build_scheduler, lr_factor

__all__ = ["TrainTask", "fit", "lr_factor"]

MAX_SKIPPED_IN_A_ROW = (
    30  # fp16: consecutive steps skipped for inf / NaN gradients before fit stops
)


class TrainTask(Protocol):
    """What the trainer needs from a task (``mtlora_lite.multitask.tasks.Task`` has it)."""

    name: str

    def loss(self, pred: Tensor, target: Tensor) -> Tensor: ...

    def new_metric(self) -> Any: ...


def fit(
    model: nn.Module,
    tasks: Mapping[str, TrainTask],
    train_loader: Iterable,
    val_loader: Iterable | None = None,
    *,
    epochs: int = 1,
    max_steps: int | None = None,
    lr: float = 1e-3,
    min_lr: float = 0.0,
    weight_decay: float = 0.05,
    no_weight_decay: Targets = (),
    warmup: float = 0.05,
    warmup_start_lr: float | None = None,
    grad_clip: float | None = 1.0,
    loss_weights: Mapping[str, float] | None = None,
    device: str | torch.device = "auto",
    precision: str = "bf16",
    eval_every: int = 1,
    callbacks: Sequence[Callback] = (),
    progress: bool = True,
    seed: int = 0,
    checkpoint_dir: str | Path | None = None,
    resume: bool = True,
    ddp_options: Mapping[str, Any] | None = None,
) -> History:
    """Train ``model`` on the weighted sum of task losses, ``sum_t loss_weights[t] * loss_t``.

    Schedule: ``epochs`` passes over ``train_loader``, or exactly ``max_steps`` steps if given
    (looping over the loader as needed); linear warm-up over the fraction ``warmup`` of all steps
    (from ``warmup_start_lr`` at step 0 if given, else from ``lr / warm-up steps``; the official
    MTLoRA starts at 5e-7 x batch / 512), then per-step cosine decay from ``lr`` to
    ``min_lr * lr`` (``multitask.schedule``). AdamW with ``weight_decay``, none on 1-D parameters
    nor on names matching ``no_weight_decay`` (e.g. ``"relative_position_bias_table"``);
    gradients clipped to norm ``grad_clip``.

    ``precision`` (``multitask.precision``): "bf16" (default: bf16 autocast), "fp16" (fp16
    autocast with a GradScaler, as the official MTLoRA trains; a step whose gradients are inf /
    NaN is skipped, recorded in ``History.skipped_steps``, and fit stops after
    ``MAX_SKIPPED_IN_A_ROW`` in a row) or "fp32". Autocast runs on CUDA only: on a CPU (or MPS)
    fit trains in fp32 whatever is asked ("fp16" warns). Validation always runs in fp32.

    Validation on ``val_loader`` every ``eval_every`` passes and after the last step; the History
    keeps each one (``history.evals``, ``history.best(score)``); ``history.final`` is the last.

    Reproducible: ``seed`` seeds everything, and before every pass the loader is reshuffled from
    ``seed`` and the epoch (``set_epoch`` of its sampler, or its own torch.Generator), so the same
    seed gives the same run even on a loader used before.

    ``checkpoint_dir``: after every pass, ``checkpoint.safetensors`` there holds what is needed to
    resume (``multitask.checkpoint``) and the settings of the run (``multitask.resume``); with
    ``resume`` (default) a later call with the same settings continues after the last saved pass
    and returns the whole History, and a call with other settings is refused (pass another
    checkpoint_dir, or resume=False, to start afresh).

    Under torchrun (module docstring): DDP with ``ddp_options`` (``multitask.distributed.wrap``),
    sharded data, losses and metrics reduced over ranks; progress, callbacks and checkpoints on
    rank 0 only; the process group is created once per process and destroyed at its exit.

    Refuses to run zero steps, a model with merged adapters, or bad numbers, saying why. Any
    exception raised during training (a non-finite loss: FloatingPointError; Ctrl-C:
    KeyboardInterrupt) carries the History so far as ``err.history``; the model's train / eval
    mode is restored in every case.
    """
    if not isinstance(tasks, Mapping) or not tasks:
        raise ValueError(f"tasks must be a non-empty mapping name -> task, got {tasks!r}")
    unknown = set(loss_weights or {}) - set(tasks)
    if unknown:
        raise KeyError(
            f"loss_weights has unknown tasks {sorted(unknown)}; tasks are {list(tasks)}."
        )
    weights = {
        n: check_number((loss_weights or {}).get(n, 1.0), f"loss_weights[{n!r}]", 0.0)
        for n in tasks
    }
    lr = check_number(lr, "lr", 0.0, open_low=True)
    min_lr = check_number(min_lr, "min_lr", 0.0, 1.0)
    weight_decay = check_number(weight_decay, "weight_decay", 0.0)
    warmup = check_number(warmup, "warmup", 0.0, 1.0)
    if warmup_start_lr is not None:
        warmup_start_lr = check_number(warmup_start_lr, "warmup_start_lr", 0.0, lr)
    if grad_clip is not None:
        grad_clip = check_number(grad_clip, "grad_clip", 0.0, open_low=True)
    eval_every = check_count(eval_every, "eval_every")
    merged = [n for n, m in model.named_modules() if isinstance(m, AdapterLayer) and m.merged]
    if merged:
        raise RuntimeError(
            f"{len(merged)} adapter(s) are merged into their base weights (e.g. {merged[0]!r}), so "
            "they would get no gradient: call unmerge_adapters(model) before fit"
        )
    if max_steps is None:  # fail before any setup
        check_count(epochs, "epochs")
        steps_per_pass(train_loader)
    else:
        check_count(max_steps, "max_steps")

    dev = resolve_device(device)
    precision = resolve_precision(precision, dev)
    check_model_dtype(model, dev, precision)
    ctx = distributed.launch(dev)
    was_training = model.training
    history = History()
    try:
        seed_everything(seed)
        model.to(ctx.device)
        loader = distributed.shard_train(train_loader, ctx, int(seed))
        total = int(max_steps) if max_steps is not None else epochs * steps_per_pass(loader)
        optimizer = build_optimizer(model, lr, weight_decay, no_weight_decay)
        start = None if warmup_start_lr is None else warmup_start_lr / lr
        scheduler = build_scheduler(optimizer, total, round(warmup * total), min_lr, start)
        settings = run_settings(
            steps=total,
            lr=lr,
            min_lr=min_lr,
            weight_decay=weight_decay,
            no_weight_decay=no_weight_decay,
            warmup=warmup,
            warmup_start_lr=warmup_start_lr,
            grad_clip=grad_clip,
            loss_weights=weights,
            seed=int(seed),
            precision=precision,
            eval_every=eval_every,
            processes=ctx.world_size,
        )
        scaler = grad_scaler(ctx.device, precision)
        path = None if checkpoint_dir is None else Path(checkpoint_dir) / CHECKPOINT_NAME
        saved = read_checkpoint(path) if path and resume else None
        if saved is not None:
            check_same_run(saved, settings)
            restore_checkpoint(saved, model, optimizer, scheduler, scaler)
            history = History.from_dict(saved.progress["history"])
        run = _Run(
            model=model,
            ddp_model=distributed.wrap(model, ctx, ddp_options),
            tasks=tasks,
            weights=weights,
            optimizer=optimizer,
            scheduler=scheduler,
            scaler=scaler,
            precision=precision,
            grad_clip=grad_clip,
            total=total,
            eval_every=eval_every,
            ctx=ctx,
            settings=settings,
            checkpoint=path if ctx.main else None,
        )
        _train(
            run,
            loader,
            None if val_loader is None else distributed.shard_eval(val_loader, ctx),
            history=history,
            epoch=0 if saved is None else saved.progress["epoch"],
            callbacks=callbacks if ctx.main else (),
            progress=progress and ctx.main,
            seed=int(seed),
            batch_size=getattr(train_loader, "batch_size", None),
        )
    except BaseException as err:
        with contextlib.suppress(AttributeError, TypeError):
            err.history = history  # type: ignore[attr-defined]
        raise
    finally:
        model.train(was_training)
    return history


@dataclass
class _Run:
    """What the loop of ``fit`` trains with (``fit``'s arguments, checked and built)."""

    model: nn.Module  # the model itself: callbacks, evaluation, checkpoints
    ddp_model: nn.Module  # what the steps run through: the model, or its DDP wrapper
    tasks: Mapping[str, TrainTask]
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
    checkpoint: Path | None = None  # where to save after every pass (rank 0)


def _weighted_loss(
    run: _Run, images: Tensor, targets: Mapping[str, Tensor], step: int
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


def _step(run: _Run, images: Tensor, targets: Mapping[str, Tensor], step: int) -> dict[str, Any]:
    """One optimizer step (1-based ``step``); returns its record for the History, with
    ``"skipped": True`` when fp16 loss scaling skipped the update."""
    logs: dict[str, Any] = {"step": step, "lr": run.optimizer.param_groups[0]["lr"]}
    loss, logs["loss"], values = _weighted_loss(run, images, targets, step)
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


def _skipped(history: History, logs: dict[str, Any]) -> None:
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


def _train(
    run: _Run,
    loader: Iterable,
    val: Iterable | None,
    *,
    history: History,
    epoch: int,
    callbacks: Sequence[Callback],
    progress: bool,
    seed: int,
    batch_size: int | None,
) -> None:
    """The loop of ``fit`` from ``epoch`` (passes done) on, filling ``history`` in place."""
    ctx, model, total = run.ctx, run.model, run.total
    if ctx.active and progress and batch_size is not None:
        tqdm.write(
            f"torchrun: {ctx.world_size} processes x batch {batch_size} = effective batch "
            f"{ctx.world_size * batch_size}; lr is used as given"
        )
    step = len(history.steps)
    n_images, train_time, smooth = 0, 0.0, None
    start = time.perf_counter() - history.wall_time_s
    model.train()
    for cb in callbacks:
        cb.on_fit_start(model)
    with tqdm(total=total, initial=step, desc="train", disable=not progress) as bar:
        while step < total:
            epoch += 1
            reseed(loader, seed, epoch)
            tic, steps_before = time.perf_counter(), step
            for batch in loader:
                images, targets = batch_to(batch, ctx.device)
                logs = _step(run, images, targets, step + 1)
                step, n_images = step + 1, n_images + images.shape[0] * ctx.world_size
                history.steps.append(logs)
                _skipped(history, logs)
                smooth = logs["loss"] if smooth is None else 0.9 * smooth + 0.1 * logs["loss"]
                bar.update(1)
                bar.set_postfix(loss=f"{smooth:.4f}", refresh=False)
                for cb in callbacks:
                    cb.on_step_end(step, model, logs)
                if step >= total:
                    break
            train_time += time.perf_counter() - tic
            if step == steps_before:
                raise ValueError("train_loader yielded no batches (an empty iterable?).")
            if val is not None and (epoch % run.eval_every == 0 or step >= total):
                metrics = evaluate_launched(model, run.tasks, val, ctx, progress=False)
                history.evals.append({"epoch": epoch, "step": step, "metrics": metrics})
                for cb in callbacks:
                    cb.on_eval_end(epoch, model, metrics)
            history.wall_time_s = time.perf_counter() - start
            if n_images:
                history.images_per_s = n_images / max(train_time, 1e-9)
            if run.checkpoint is not None:
                save_checkpoint(
                    run.checkpoint,
                    model,
                    run.optimizer,
                    run.scheduler,
                    run.scaler,
                    {"epoch": epoch, "history": history.to_dict()},
                    run.settings,
                )
