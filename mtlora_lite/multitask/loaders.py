"""What ``fit`` needs from its loaders: how many steps a pass takes and the same shuffle for the
same (seed, epoch)."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch.utils.data import DataLoader


def steps_per_pass(loader: Iterable) -> int:
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


def reseed(loader: Iterable, seed: int, epoch: int) -> None:
    """The same shuffle for the same (seed, epoch), whoever used the loader before: a sampler with
    ``set_epoch`` (DistributedSampler) gets the epoch, a loader's own generator ``seed + epoch``."""
    sampler = getattr(loader, "sampler", None)
    if callable(getattr(sampler, "set_epoch", None)):
        sampler.set_epoch(epoch)  # type: ignore[union-attr]
    elif isinstance(getattr(loader, "generator", None), torch.Generator):
        loader.generator.manual_seed(seed + epoch)  # type: ignore[union-attr]
