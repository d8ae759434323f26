"""TensorBoard logs of a ``fit`` run: a ``Callback`` that writes event files, nothing else.

    with TensorBoardLogger("runs/lora-r8") as tb:
        fit(model, tasks, train_loader, val_loader, callbacks=[tb])
    # then: tensorboard --logdir runs

Tags, all at the optimizer step (1-based; 0 = before training):
    train/loss, train/lr, train/grad_norm, train/loss/<task>      every step
    val/<task>/<metric>                                           every evaluation
    heads/mean, heads/<layer>    mean pairwise head cosine (``head_similarity``), when the model
                                 has multi-head LoRA layers: at step 0 and every ``heads_every``
    trainable_breakdown          text, at step 0 (``trainable_breakdown`` of the model)

A resumed ``fit`` (``checkpoint_dir``) continues at the step of its checkpoint: the logger then
opens a new event file that purges what the interrupted call logged after that step
(``SummaryWriter(purge_step=...)``), so TensorBoard shows each step once. A folder that cannot
be written, or a full disk, fails when the logger is made or when ``fit`` starts, before the
first step, with an ``OSError`` naming the folder.

``tensorboard`` is an optional dependency, imported only when a logger is made.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

from torch import nn

from mtlora_lite.adapters.breakdown import trainable_breakdown
from mtlora_lite.adapters.heads import head_similarity, nanmean
from mtlora_lite.adapters.multihead import MultiHeadLoRALinear
from mtlora_lite.adapters.targets import Targets
from mtlora_lite.multitask.history import Callback, Metrics


class TensorBoardLogger(Callback):
    """Write a ``fit`` run's losses, learning rate, gradient norm and validation metrics to
    TensorBoard event files under ``log_dir``.

    Args:
        log_dir: the run's folder (one folder per run; TensorBoard compares sibling folders).
        groups: extra rows for the breakdown text, as in ``trainable_breakdown``.
        heads_every: log head similarity every this many steps, on models with multi-head LoRA
            (HydraLoRA / R-LoRA) layers; None: never.

    Events are flushed after every evaluation and on ``close()`` (or leaving a ``with`` block).
    """

    def __init__(
        self,
        log_dir: str | Path,
        *,
        groups: Mapping[str, Targets] | None = None,
        heads_every: int | None = 10,
    ) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as err:
            raise ImportError(
                "TensorBoardLogger needs the tensorboard package: pip install tensorboard"
            ) from err
        if heads_every is not None and heads_every < 1:
            raise ValueError(f"heads_every must be >= 1 or None, got {heads_every}")
        self.log_dir = Path(log_dir)
        self._summary_writer = SummaryWriter
        self.writer = self._open()
        self.groups, self.heads_every = groups, heads_every
        self.step = 0  # the last optimizer step seen: evaluations are logged at it
        self._heads = False

    def _fail(self, err: OSError) -> OSError:
        return OSError(
            err.errno,
            f"TensorBoardLogger cannot write to {self.log_dir}: {err.strerror or err}. Pass a "
            "log_dir on a writable disk with free space",
        )

    def _open(self, purge_step: int | None = None) -> Any:
        try:
            return self._summary_writer(str(self.log_dir), purge_step=purge_step)
        except OSError as err:
            raise self._fail(err) from err

    def _flush(self) -> None:
        try:
            self.writer.flush()
        except OSError as err:
            raise self._fail(err) from err

    def on_fit_start(self, model: nn.Module, start_step: int = 0) -> None:
        self.step = start_step
        self._heads = self.heads_every is not None and any(
            isinstance(m, MultiHeadLoRALinear) for m in model.modules()
        )
        if start_step > 0:  # resumed: hide what an interrupted call logged after start_step
            self.writer.close()
            self.writer = self._open(purge_step=start_step + 1)
        else:
            table = str(trainable_breakdown(model, self.groups))
            # TensorBoard renders text as Markdown: indent by 4 spaces to keep the table's columns
            self.writer.add_text(
                "trainable_breakdown", "\n".join("    " + r for r in table.split("\n")), 0
            )
            if self._heads:
                self._log_heads(model)
        self._flush()  # a full disk fails here, before the first step

    def on_step_end(self, step: int, model: nn.Module, logs: dict[str, Any]) -> None:
        self.step = step
        for key in ("loss", "lr", "grad_norm"):
            self.writer.add_scalar(f"train/{key}", logs[key], step)
        for task, value in logs["losses"].items():
            self.writer.add_scalar(f"train/loss/{task}", value, step)
        if self._heads and step % self.heads_every == 0:
            self._log_heads(model)

    def on_eval_end(self, epoch: int, model: nn.Module, metrics: Metrics) -> None:
        for task, values in metrics.items():
            for name, value in values.items():
                self.writer.add_scalar(f"val/{task}/{name}", value, self.step)
        self._flush()

    def _log_heads(self, model: nn.Module) -> None:
        """head_similarity per layer and its mean over layers (NaN layers skipped)."""
        similarity = head_similarity(model)
        mean = nanmean(similarity.values())
        if not math.isnan(mean):  # e.g. HydraLoRA's all-zero heads before the first step
            self.writer.add_scalar("heads/mean", mean, self.step)
        for layer, value in similarity.items():
            if not math.isnan(value):
                self.writer.add_scalar(f"heads/{layer}", value, self.step)

    def close(self) -> None:
        """Flush and close the event file."""
        self.writer.close()

    def __enter__(self) -> TensorBoardLogger:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
