"""A small multi-task trainer: ``fit`` (AdamW, warmup + cosine, clipping) and ``evaluate``.

Several tasks: the model maps images (B, 3, H, W) to ``dict[task -> prediction]`` and the loader
yields ``(images, targets)`` with ``targets`` a ``dict[task -> Tensor]``. One task: pass the task
itself, a model that returns a plain tensor and a loader of plain ``(x, y)`` batches:

    fit(model, Task.classification("cls", 10), loader)        # any nn.Module, any (x, y) loader

Each task gives the loss and a streaming metric. The trainer records a ``History``
(``multitask.history``) and never draws.

The same call trains in one process or, started by ``torchrun``, in N (``multitask.distributed``):

    torchrun --nproc_per_node 4 train.py      # train.py calls fit(...) as usual

Without gradient accumulation, the effective batch is the loader's batch size times N, and ``lr``
is used as given: to follow a linear scaling rule such as the MTLoRA paper's (5e-4 x batch / 512),
pass ``lr = 5e-4 * batch_size * N / 512``. Under torchrun, fit prints the effective batch.
"""

from __future__ import annotations

import contextlib
import inspect
import time
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from mtlora_lite.adapters.atomic import check_writable
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
from mtlora_lite.multitask.evaluation import batch_to, evaluate_launched
from mtlora_lite.multitask.history import Callback, History
from mtlora_lite.multitask.loaders import check_val_loader, reseed, steps_per_pass
from mtlora_lite.multitask.precision import (
    check_model_dtype,
    grad_scaler,
    resolve_precision,
)
from mtlora_lite.multitask.resume import check_same_run, run_identity, run_settings
from mtlora_lite.multitask.runtime import resolve_device, seed_everything
from mtlora_lite.multitask.schedule import build_optimizer, build_scheduler, lr_factor
from mtlora_lite.multitask.step import Run, record_skip, train_step
from mtlora_lite.multitask.tasks import TaskLike, task_dict

__all__ = ["fit", "lr_factor"]  # lr_factor lives in schedule.py

SHOWN_MEAN = 10  # the progress bar shows the last step's loss and its mean over this many steps


def fit(
    model: nn.Module,
    tasks: Mapping[str, TaskLike] | TaskLike,
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

    ``tasks`` is a dict ``{name: task}`` (the model returns ``{name: prediction}``, the loaders
    yield ``(images, {name: target})``), or one task: then the model may return a plain tensor
    and the loaders may yield plain ``(x, y)`` batches (module docstring).

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
    ``step.MAX_SKIPPED_IN_A_ROW`` in a row) or "fp32". Autocast runs on CUDA only: on a CPU (or MPS)
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
    tasks = task_dict(tasks)
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
    _check_callbacks(callbacks)
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
    if val_loader is not None:
        check_val_loader(val_loader, tasks)

    dev = resolve_device(device)
    precision = resolve_precision(precision, dev)
    check_model_dtype(model, dev, precision)
    ctx = distributed.launch(dev)
    if checkpoint_dir is not None and ctx.main:
        check_writable(checkpoint_dir, "pass another checkpoint_dir, or None to keep no checkpoint")
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
        path = None if checkpoint_dir is None else Path(checkpoint_dir) / CHECKPOINT_NAME
        identity = {}  # what checkpoints record and the ranks compare (not needed otherwise)
        if path is not None or ctx.active:
            identity = run_identity(model, train_loader, val_loader)
            distributed.same_on_every_rank(identity["data"], "data", ctx)
        scaler = grad_scaler(ctx.device, precision)
        saved = read_checkpoint(path) if path and resume else None
        if saved is not None:
            check_same_run(saved, settings, identity)
            restore_checkpoint(saved, model, optimizer, scheduler, scaler)
            history = History.from_dict(saved.progress["history"])
        run = Run(
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
            identity=identity,
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


def progress_text(recent: Sequence[float]) -> str:
    """What the progress bar shows after a step: the step's training loss (the weighted sum over
    tasks, as logged in the History) and its mean over the last ``SHOWN_MEAN`` steps."""
    mean = sum(recent) / len(recent)
    return f"loss {recent[-1]:.4f}, mean of last {len(recent)} steps {mean:.4f}"


def _check_callbacks(callbacks: Sequence[Callback]) -> None:
    """Refuse a callback whose ``on_fit_start`` cannot take the step ``fit`` starts from."""
    for cb in callbacks:
        try:
            inspect.signature(cb.on_fit_start).bind(nn.Module(), 0)
        except TypeError:
            raise TypeError(
                f"{type(cb).__name__}.on_fit_start must accept (model, start_step): fit passes "
                "the number of steps already done (0, or where a resumed run continues). Define "
                "it as on_fit_start(self, model, start_step=0)"
            ) from None


def _train(
    run: Run,
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
    n_images, train_time = 0, 0.0
    recent: deque[float] = deque(maxlen=SHOWN_MEAN)  # the losses the progress bar averages
    start = time.perf_counter() - history.wall_time_s
    model.train()
    for cb in callbacks:
        cb.on_fit_start(model, step)
    with tqdm(total=total, initial=step, desc="train", disable=not progress) as bar:
        while step < total:
            epoch += 1
            reseed(loader, seed, epoch)
            tic, steps_before = time.perf_counter(), step
            for batch in loader:
                images, targets = batch_to(batch, ctx.device, run.tasks, "train_loader")
                logs = train_step(run, images, targets, step + 1)
                step, n_images = step + 1, n_images + images.shape[0] * ctx.world_size
                history.steps.append(logs)
                record_skip(history, logs)
                recent.append(logs["loss"])
                bar.update(1)
                bar.set_postfix_str(progress_text(recent), refresh=False)
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
                    run.identity,
                )
