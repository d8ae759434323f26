"""The optimizer and learning-rate schedule of ``fit``: AdamW, linear warm-up, cosine decay.

    optimizer = build_optimizer(model, lr=1e-3, weight_decay=0.05, no_weight_decay=())
    scheduler = build_scheduler(optimizer, total=1000, warmup_steps=50, min_lr=0.01)

At 0-based step ``s`` the learning rate is ``lr * lr_factor(s, ...)``: during the warm-up it rises
linearly (from ``lr / warmup_steps`` at step 0 by default, or from ``warmup_start_lr``), reaching
``lr`` at step ``warmup_steps``; then a cosine takes it to ``min_lr * lr`` at the last step.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from mtlora_lite.adapters.targets import Targets, name_matches


def build_optimizer(
    model: nn.Module, lr: float, weight_decay: float, no_weight_decay: Targets = ()
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


def lr_factor(
    step: int, total: int, warmup_steps: int, min_lr: float = 0.0, start: float | None = None
) -> float:
    """Multiplier of the peak lr at 0-based ``step`` of ``total``.

    Warm-up (``step < warmup_steps``): linear from ``start`` at step 0 to 1 at step
    ``warmup_steps`` (timm's warm-up, as the official MTLoRA uses it); ``start=None`` is
    ``(step + 1) / warmup_steps``. Then a cosine from 1 to ``min_lr`` at step ``total``.
    """
    if step < warmup_steps:
        if start is None:
            return (step + 1) / warmup_steps
        return start + (1.0 - start) * step / warmup_steps
    progress = (step - warmup_steps) / max(1, total - warmup_steps)
    return min_lr + (1.0 - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(
    optimizer: torch.optim.Optimizer,
    total: int,
    warmup_steps: int,
    min_lr: float = 0.0,
    start: float | None = None,
) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-step ``LambdaLR`` of ``lr_factor`` (``start``: warm-up start as a fraction of lr)."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, total, warmup_steps, min_lr, start)
    )
