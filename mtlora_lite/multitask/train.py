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
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from mtlora_lite.adapters.base import AdapterLayer
from mtlora_lite.adapters.checks import check_count, check_number
from mtlora_lite.adapters.targets import Targets, name_matches
from mtlora_lite.multitask import distributed
from mtlora_lite.multitask.checkpoint import CHECKPOINT_NAME, load_checkpoint, save_checkpoint
from mtlora_lite.multitask.evaluation import batch_to, evaluate_launched, predict
from mtlora_lite.multitask.history import Callback, History
from mtlora_lite.multitask.runtime import autocast, resolve_device, seed_everything


class TrainTask(Protocol):
    """What the trainer needs from a task (``mtlora_lite.multitask.tasks.Task`` has it)."""

    name: str

    def loss(self, pred: Tensor, target: Tensor) -> Tensor: ...

    def new_metric(self) -> Any: ...


def _optimizer(
    model: nn.Module, lr: float, weight_decay: float, no_weight_decay: Targets
) -> torch.optim.AdamW:
    """AdamW over trainable parameters; no weight decay on 1-D ones (biases, norms) nor on those
    whose names match ``no_weight_decay``."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not named:
        raise ValueError(
            "The model has no trainable parameters (requires_grad is False everywhere): mark "
            "some trainable, e.g. mark_only_adapters_trainable(model) after inject_lora(...)."
        )
    no_decay = no_weight_decay if no_weight_decay else []
    decay = [p.ndim >= 2 and not name_matches(n, no_decay) for n, p in named]
    groups = [
        {
            "params": [p for (_, p), d in zip(named, decay, strict=True) if d],
            "weight_decay": weight_decay,
        },
        {
            "params": [p for (_, p), d in zip(named, decay, strict=True) if not d],
            "weight_decay": 0.0,
        },
    ]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=lr)


def lr_factor(step: int, total: int, warmup_steps: int, min_lr: float = 0.0) -> float:
    """Multiplier of the base lr at 0-based ``step``: linear warmup, then cosine decay to
    ``min_lr``."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total - warmup_steps)
    return min_lr + (1.0 - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


def _weighted_loss(
    model: nn.Module,
    tasks: Mapping[str, TrainTask],
    weights: Mapping[str, float],
    images: Tensor,
    targets: Mapping[str, Tensor],
    amp: bool,
    step: int,
    ctx: distributed.Launch,
) -> tuple[Tensor, float, dict[str, float]]:
    """``sum_t weights[t] * loss_t`` (the scalar to back-propagate), its value and each task's loss
    (means over ranks under torchrun); raises if any is not finite (on every rank alike)."""
    with autocast(images.device, amp):
        preds = predict(model, images, tasks)
        losses = {n: t.loss(preds[n].float(), targets[n]) for n, t in tasks.items()}
    loss = sum(weights[n] * losses[n] for n in tasks)
    reported = distributed.mean_over_ranks(torch.stack([loss.detach(), *losses.values()]), ctx)
    total, *each = reported.tolist()
    values = dict(zip(losses, each, strict=True))
    if not math.isfinite(total):
        raise FloatingPointError(
            f"Non-finite loss at step {step}: {values}. Lower the learning rate, check the inputs "
            "for NaN / inf, or use grad_clip."
        )
    return loss, total, values


def _steps_per_pass(loader: Iterable) -> int:
    """len(loader), or a ``ValueError`` saying why a loader would give no batches."""
    if not hasattr(loader, "__len__"):
        raise TypeError("train_loader has no len(): pass max_steps to say how long to train.")
    n = len(loader)  # type: ignore[arg-type]
    if n == 0:
        why = "its dataset is empty"
        if isinstance(loader, DataLoader) and len(loader.dataset) > 0:  # type: ignore[arg-type]
            why = (
                f"its {len(loader.dataset)} examples make no full batch of {loader.batch_size} "  # type: ignore[arg-type]
                "with drop_last=True: use a smaller batch_size, more data, or drop_last=False"
            )
        raise ValueError(f"train_loader yields no batches: {why}.")
    return n


def _reseed(loader: Iterable, seed: int, epoch: int) -> None:
    """The same shuffle for the same (seed, epoch), whoever used the loader before: a sampler with
    ``set_epoch`` (DistributedSampler) gets the epoch, a loader's own generator ``seed + epoch``."""
    sampler = getattr(loader, "sampler", None)
    if callable(getattr(sampler, "set_epoch", None)):
        sampler.set_epoch(epoch)  # type: ignore[union-attr]
    elif isinstance(getattr(loader, "generator", None), torch.Generator):
        loader.generator.manual_seed(seed + epoch)  # type: ignore[union-attr]


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
    grad_clip: float | None = 1.0,
    loss_weights: Mapping[str, float] | None = None,
    device: str | torch.device = "auto",
    amp: bool = True,
    callbacks: Sequence[Callback] = (),
    progress: bool = True,
    seed: int = 0,
    checkpoint_dir: str | Path | None = None,
    resume: bool = True,
    ddp_options: Mapping[str, Any] | None = None,
) -> History:
    """Train ``model`` on the weighted sum of task losses, ``sum_t loss_weights[t] * loss_t``.

    Schedule: ``epochs`` passes over ``train_loader``, or exactly ``max_steps`` steps if given
    (looping over the loader as needed); linear warm-up over the fraction ``warmup`` of all steps,
    then per-step cosine decay from ``lr`` to ``min_lr * lr``. AdamW with ``weight_decay``,
    none on 1-D parameters nor on names matching ``no_weight_decay`` (e.g.
    ``"relative_position_bias_table"``); gradients clipped to norm ``grad_clip``; bf16 autocast
    on CUDA with ``amp``. Validates on ``val_loader`` after every pass and after the last step.

    Reproducible: ``seed`` seeds everything, and before every pass the loader is reshuffled from
    ``seed`` and the epoch (``set_epoch`` of its sampler, or its own torch.Generator), so the same
    seed gives the same run even on a loader used before.

    ``checkpoint_dir``: after every pass, ``checkpoint.safetensors`` there holds what is needed to
    resume (``multitask.checkpoint``); with ``resume`` (default) a later call with the same
    arguments continues after the last saved pass and returns the whole History.

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
    if grad_clip is not None:
        grad_clip = check_number(grad_clip, "grad_clip", 0.0, open_low=True)
    merged = [n for n, m in model.named_modules() if isinstance(m, AdapterLayer) and m.merged]
    if merged:
        raise RuntimeError(
            f"{len(merged)} adapter(s) are merged into their base weights (e.g. {merged[0]!r}), so "
            "they would get no gradient: call unmerge_adapters(model) before fit"
        )
    if max_steps is None:  # fail before any setup
        check_count(epochs, "epochs")
        _steps_per_pass(train_loader)
    else:
        check_count(max_steps, "max_steps")

    dev = resolve_device(device)
    ctx = distributed.launch(dev)
    was_training = model.training
    history = History()
    try:
        seed_everything(seed)
        model.to(ctx.device)
        loader = distributed.shard_train(train_loader, ctx, int(seed))
        total = int(max_steps) if max_steps is not None else epochs * _steps_per_pass(loader)
        val = None if val_loader is None else distributed.shard_eval(val_loader, ctx)
        optimizer = _optimizer(model, lr, weight_decay, no_weight_decay)
        warmup_steps = round(warmup * total)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: lr_factor(s, total, warmup_steps, min_lr)
        )
        path = None if checkpoint_dir is None else Path(checkpoint_dir) / CHECKPOINT_NAME
        saved = load_checkpoint(path, model, optimizer, scheduler) if path and resume else None
        if saved is not None and saved["total"] != total:
            raise ValueError(
                f"checkpoint {path} is for a run of {saved['total']} steps, this one has {total}: "
                "resume with the same schedule, or pass resume=False to start afresh"
            )
        if saved is not None:
            history = History.from_dict(saved["history"])
        _train(
            distributed.wrap(model, ctx, ddp_options),
            model,
            tasks,
            loader,
            val,
            weights,
            total=total,
            optimizer=optimizer,
            scheduler=scheduler,
            history=history,
            epoch=0 if saved is None else saved["epoch"],
            amp=amp,
            grad_clip=grad_clip,
            callbacks=callbacks if ctx.main else (),
            progress=progress and ctx.main,
            seed=int(seed),
            ctx=ctx,
            checkpoint=path if ctx.main else None,
            batch_size=getattr(train_loader, "batch_size", None),
        )
    except BaseException as err:
        with contextlib.suppress(AttributeError, TypeError):
            err.history = history  # type: ignore[attr-defined]
        raise
    finally:
        model.train(was_training)
    return history


def _train(
    ddp_model: nn.Module,
    model: nn.Module,
    tasks: Mapping[str, TrainTask],
    loader: Iterable,
    val: Iterable | None,
    weights: Mapping[str, float],
    *,
    total: int,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    history: History,
    epoch: int,
    amp: bool,
    grad_clip: float | None,
    callbacks: Sequence[Callback],
    progress: bool,
    seed: int,
    ctx: distributed.Launch,
    checkpoint: Path | None,
    batch_size: int | None,
) -> None:
    """The loop of ``fit`` from ``epoch`` (passes done) on, filling ``history`` in place."""
    if ctx.active and progress and batch_size is not None:
        tqdm.write(
            f"torchrun: {ctx.world_size} processes x batch {batch_size} = effective batch "
            f"{ctx.world_size * batch_size}; lr is used as given"
        )
    trainable = [p for p in model.parameters() if p.requires_grad]
    step = len(history.steps)
    n_images, train_time, smooth = 0, 0.0, None
    start = time.perf_counter() - history.wall_time_s
    model.train()
    for cb in callbacks:
        cb.on_fit_start(model)
    with tqdm(total=total, initial=step, desc="train", disable=not progress) as bar:
        while step < total:
            epoch += 1
            _reseed(loader, seed, epoch)
            tic, steps_before = time.perf_counter(), step
            for batch in loader:
                images, targets = batch_to(batch, ctx.device)
                current_lr = optimizer.param_groups[0]["lr"]
                loss, value, values = _weighted_loss(
                    ddp_model, tasks, weights, images, targets, amp, step + 1, ctx
                )
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                norm = nn.utils.clip_grad_norm_(trainable, grad_clip or math.inf)
                optimizer.step()
                scheduler.step()
                step, n_images = step + 1, n_images + images.shape[0] * ctx.world_size
                logs = {"step": step, "lr": current_lr, "loss": value}
                logs.update(grad_norm=norm.item(), losses=values)
                history.steps.append(logs)
                smooth = value if smooth is None else 0.9 * smooth + 0.1 * value
                bar.update(1)
                bar.set_postfix(loss=f"{smooth:.4f}", refresh=False)
                for cb in callbacks:
                    cb.on_step_end(step, model, logs)
                if step >= total:
                    break
            train_time += time.perf_counter() - tic
            if step == steps_before:
                raise ValueError("train_loader yielded no batches (an empty iterable?).")
            if val is not None:
                metrics = evaluate_launched(model, tasks, val, ctx, amp, progress=False)
                history.evals.append({"epoch": epoch, "step": step, "metrics": metrics})
                for cb in callbacks:
                    cb.on_eval_end(epoch, model, metrics)
            history.wall_time_s = time.perf_counter() - start
            if n_images:
                history.images_per_s = n_images / max(train_time, 1e-9)
            if checkpoint is not None:
                progress_state = {"epoch": epoch, "total": total, "history": history.to_dict()}
                save_checkpoint(checkpoint, model, optimizer, scheduler, progress_state)
