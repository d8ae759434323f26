"""What the paper command reads and writes besides the table: the data loaders of a recipe and
the JSON log of a run (``JsonLog``).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from mtlora_lite.multitask.history import Callback, Metrics
from mtlora_lite.multitask.paper_recipes import Recipe
from mtlora_lite.multitask.pascal import PascalContext
from mtlora_lite.multitask.pascal_transforms import PascalTransform


def rank_world() -> tuple[int, int]:
    """(rank, world size) as torchrun sets them; (0, 1) in a single process."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def loaders(data: Path, recipe: Recipe, tasks: Sequence[str]) -> tuple[DataLoader, DataLoader]:
    """Training (augmented, shuffled, full batches) and validation (resized) loaders; each
    process's batch is ``recipe.batch_size`` / world size."""
    _, world = rank_world()
    if recipe.batch_size % world:
        raise ValueError(f"batch {recipe.batch_size} does not split over {world} processes")
    batch = recipe.batch_size // world
    train = PascalContext(data, "train", tasks, PascalTransform(recipe.img_size, train=True))
    val = PascalContext(data, "val", tasks, PascalTransform(recipe.img_size))
    if len(train) < batch:
        raise ValueError(
            f"{len(train)} training images make no batch of {batch}: lower --batch-size"
        )
    workers = recipe.workers
    options = {"num_workers": workers, "persistent_workers": workers > 0}
    options["pin_memory"] = torch.cuda.is_available()
    shuffle = torch.Generator().manual_seed(recipe.seed)  # fit reseeds it every epoch
    return (
        DataLoader(train, batch, shuffle=True, drop_last=True, generator=shuffle, **options),
        DataLoader(val, batch, **options),
    )


class JsonLog(Callback):
    """Appends one JSON object a line to ``path`` (flushed each time): ``{"event", "run",
    "time", ...}`` for fit starts, every ``every``-th step (and the first), evaluations and
    whatever ``write`` is given. A crash leaves at most a partial last line."""

    def __init__(self, path: str | Path, run: str, every: int = 10) -> None:
        self.path, self.run, self.every = Path(path), run, every
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, event: str, **fields: Any) -> None:
        line = json.dumps({"event": event, "run": self.run, "time": time.time(), **fields})
        with self.path.open("a") as f:
            f.write(line + "\n")

    def on_fit_start(self, model: nn.Module) -> None:
        self.write("fit_start")

    def on_step_end(self, step: int, model: nn.Module, logs: dict[str, Any]) -> None:
        if step == 1 or step % self.every == 0:
            self.write("step", **logs)

    def on_eval_end(self, epoch: int, model: nn.Module, metrics: Metrics) -> None:
        self.write("eval", epoch=epoch, metrics=metrics)
