"""What ``fit`` records and calls: ``History`` (per step and per evaluation) and ``Callback``s,
e.g. ``HeadSimilarityRecorder`` (head similarity of multi-head LoRA during training)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from torch import nn

from mtlora_lite.adapters.heads import HEAD_MODES, head_similarity, nanmean

Metrics = dict[str, dict[str, float]]  # task -> metric name -> value


class Callback:
    """Hooks called by ``fit``; subclass and override what you need (all are no-ops here)."""

    def on_fit_start(self, model: nn.Module, start_step: int = 0) -> None:
        """Before the first step of this call: ``start_step`` is the number of optimizer steps
        already done (0, or where a resumed run continues from its checkpoint). Whatever a
        callback recorded after ``start_step`` (in an interrupted call) is about to be redone."""

    def on_step_end(self, step: int, model: nn.Module, logs: dict[str, Any]) -> None:
        """After optimizer step ``step`` (1-based); ``logs`` is that step's record in the History."""

    def on_eval_end(self, epoch: int, model: nn.Module, metrics: Metrics) -> None:
        """After validating at the end of epoch ``epoch`` (1-based)."""


class HeadSimilarityRecorder(Callback):
    """Trainer callback: ``head_similarity(model, mode)`` before training and every ``every`` steps.

    ``steps[k]`` is the optimizer step (0 = before training) of the record ``values[k]`` (layer ->
    mean head cosine). ``curve()`` gives what to plot; ``to_dict()`` what to save as JSON. When a
    ``fit`` starts (or resumes) at step s, records from step s on are replaced by the new call's,
    so one recorder used through an interrupted call and its resumption holds each step once.
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

    def on_fit_start(self, model: nn.Module, start_step: int = 0) -> None:
        kept = [k for k, step in enumerate(self.steps) if step < start_step]
        self.steps = [self.steps[k] for k in kept]
        self.values = [self.values[k] for k in kept]
        self._record(start_step, model)

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


class Validation(NamedTuple):
    """One validation of a ``fit`` run: after optimizer ``step`` (1-based), in pass ``epoch``."""

    step: int
    epoch: int
    metrics: Metrics


@dataclass
class History:
    """What ``fit`` measured.

    ``steps``: one record per optimizer step, ``{"step", "lr", "loss", "grad_norm", "losses": {task:
    loss}}`` (plus ``"loss_scale"`` with fp16 precision). ``evals``: one record per validation,
    ``{"epoch", "step", "metrics": {task: {metric: value}}}``, every ``eval_every`` passes and after
    the last step. ``skipped_steps``: the steps whose update fp16 loss scaling skipped (their
    gradients were inf / NaN). ``images_per_s`` counts training steps only (no validation).
    """

    steps: list[dict[str, Any]] = field(default_factory=list)
    evals: list[dict[str, Any]] = field(default_factory=list)
    wall_time_s: float = 0.0
    images_per_s: float = 0.0
    skipped_steps: list[int] = field(default_factory=list)

    @property
    def final(self) -> Metrics:
        """The last validation metrics (empty if ``fit`` had no ``val_loader``)."""
        return self.evals[-1]["metrics"] if self.evals else {}

    @property
    def validations(self) -> list[Validation]:
        """Every validation, in order: ``(step, epoch, metrics)``."""
        return [Validation(e["step"], e["epoch"], e["metrics"]) for e in self.evals]

    def best(self, score: Callable[[Metrics], float], *, maximize: bool = True) -> Validation:
        """The validation with the highest ``score(metrics)`` (lowest with ``maximize=False``);
        the earliest one on ties; NaN scores never win.

        ``score`` is yours to choose, e.g. Delta_m against single-task references ``single``
        (task -> primary metric) with ``higher`` (task -> higher is better)::

            best = history.best(lambda m: delta_m(primary_metrics(m, tasks), single, higher))
            best.step, best.metrics      # report it labelled as the best, beside history.final

        Raises ``ValueError`` if there was no validation or every score is NaN.
        """
        scored = [(float(score(v.metrics)), v) for v in self.validations]
        scored = [(s, v) for s, v in scored if not math.isnan(s)]
        if not scored:
            raise ValueError(
                "no validation to choose from: pass val_loader to fit (and check that score "
                "returns numbers, not NaN)"
            )
        sign = 1.0 if maximize else -1.0
        return max(scored, key=lambda sv: (sign * sv[0], -sv[1].step))[1]

    def curve(self, key: str = "loss") -> tuple[list[int], list[float]]:
        """(steps, values) of ``"loss"``, ``"lr"``, ``"grad_norm"`` or a task name (its loss)."""
        if self.steps and key not in self.steps[0] and key not in self.steps[0]["losses"]:
            raise KeyError(f"No curve {key!r}; use 'loss', 'lr', 'grad_norm' or a task name.")
        values = [r[key] if key in r else r["losses"][key] for r in self.steps]
        return [r["step"] for r in self.steps], values

    def metric_curve(self, task: str, metric: str) -> tuple[list[int], list[float]]:
        """(steps, values) of one validation metric over the evaluations."""
        return [e["step"] for e in self.evals], [e["metrics"][task][metric] for e in self.evals]

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> History:
        """The inverse of ``to_dict``."""
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable copy."""
        return {
            "steps": self.steps,
            "evals": self.evals,
            "wall_time_s": self.wall_time_s,
            "images_per_s": self.images_per_s,
            "skipped_steps": self.skipped_steps,
        }
