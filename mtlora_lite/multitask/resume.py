"""What makes two ``fit`` calls the same run, so that the second may resume the first.

``run_settings`` collects every setting that shapes a run (the schedule, the optimizer, the
seed, the precision, the tasks, ...) as plain JSON, and ``run_identity`` what it trains on: the
frozen parameters' fingerprint (``adapters.fingerprint``: equal up to rounding) and the training
and validation data's identity (``multitask.loaders.data_identity``). ``fit`` stores both in each
checkpoint and, before resuming (finished or not), ``check_same_run`` refuses a checkpoint of
another run, naming each difference and the way to start afresh. Settings that do not change
what is computed (progress bars, callbacks, the device's name, DDP options) are not part of it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from typing import Any

from torch import nn

from mtlora_lite.adapters.fingerprint import weights_difference, weights_fingerprint
from mtlora_lite.adapters.targets import Targets
from mtlora_lite.multitask.checkpoint import Checkpoint
from mtlora_lite.multitask.loaders import data_difference, data_identity


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


def run_identity(model: nn.Module, train: Iterable, val: Iterable | None) -> dict[str, Any]:
    """``{"base": fingerprint of the frozen parameters, "data": {"train": ..., "val": ...}}``."""
    frozen = [(n, p) for n, p in model.named_parameters() if not p.requires_grad]
    data = {"train": data_identity(train), "val": None if val is None else data_identity(val)}
    return json.loads(json.dumps({"base": weights_fingerprint(frozen), "data": data}))


def check_same_run(
    saved: Checkpoint, settings: Mapping[str, Any], identity: Mapping[str, Any]
) -> None:
    """Raise ``ValueError`` if ``saved`` is a checkpoint of another run: other ``settings`` (each
    difference named with both values), another frozen base or other data; always with the way
    to start afresh."""
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
    base = weights_difference(saved.identity["base"], identity["base"])
    if base is not None:
        raise ValueError(
            f"checkpoint {saved.path} was written for another frozen base: its frozen parameters "
            f"have {base}. Build the model from the same pretrained weights, or {saved.fix()}"
        )
    for part in ("train", "val"):
        why = _data_difference(saved.identity["data"][part], identity["data"][part])
        if why is not None:
            raise ValueError(
                f"checkpoint {saved.path} was written for other {part} data ({why}). Resume on "
                f"the same data, or {saved.fix()}"
            )


def _data_difference(before: Mapping[str, Any] | None, now: Mapping[str, Any] | None) -> str | None:
    if before is None or now is None:
        return None if before is now else f"none {'there' if before is None else 'here'}"
    return data_difference(before, now)
