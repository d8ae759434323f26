"""What makes two ``fit`` calls the same run, so that the second may resume the first.

``run_settings`` collects every setting that shapes a run (the schedule, the optimizer, the
seed, the precision, the tasks, ...) as plain JSON; ``fit`` stores it in each checkpoint and,
before resuming, ``check_same_run`` refuses a checkpoint of a run with other settings, naming
each difference and the way to start afresh. Settings that do not change what is computed
(progress bars, callbacks, the device's name, DDP options) are not part of it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from mtlora_lite.adapters.targets import Targets
from mtlora_lite.multitask.checkpoint import Checkpoint


def _targets(targets: Targets) -> Any:
    """``no_weight_decay`` as JSON: a regex as {"regex": pattern}, names as a list."""
    if isinstance(targets, re.Pattern):
        return {"regex": targets.pattern}
    return [targets] if isinstance(targets, str) else list(targets)


def run_settings(
    *,
    steps: int,
    lr: float,
    min_lr: float,
    weight_decay: float,
    no_weight_decay: Targets,
    warmup: float,
    warmup_start_lr: float | None,
    grad_clip: float | None,
    loss_weights: Mapping[str, float],
    seed: int,
    precision: str,
    eval_every: int,
    processes: int,
) -> dict[str, Any]:
    """The settings of a run as stored in its checkpoints (JSON round-tripped, so that a stored
    copy compares equal). ``loss_weights`` names every task; ``processes`` is the torchrun world
    size (it sets the effective batch)."""
    settings = {
        "steps": steps,
        "lr": lr,
        "min_lr": min_lr,
        "weight_decay": weight_decay,
        "no_weight_decay": _targets(no_weight_decay),
        "warmup": warmup,
        "warmup_start_lr": warmup_start_lr,
        "grad_clip": grad_clip,
        "loss_weights": dict(loss_weights),
        "seed": seed,
        "precision": precision,
        "eval_every": eval_every,
        "processes": processes,
    }
    return json.loads(json.dumps(settings))


def check_same_run(saved: Checkpoint, settings: Mapping[str, Any]) -> None:
    """Raise ``ValueError`` if ``saved`` is a checkpoint of a run with other ``settings``: each
    difference named with both values, and how to start afresh."""
    before = saved.settings
    diff = [k for k in sorted(before.keys() | settings.keys()) if before.get(k) != settings.get(k)]
    if diff:
        changes = "; ".join(
            f"{k}: {before.get(k, 'unset')!r} there, {settings.get(k, 'unset')!r} here"
            for k in diff
        )
        raise ValueError(
            f"checkpoint {saved.path} is of a run with other settings ({changes}). Resume with "
            f"the same settings, or {saved.fix()}"
        )
