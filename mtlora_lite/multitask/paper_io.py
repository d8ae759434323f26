"""What the paper command reads and writes besides the table: the data loaders of a recipe, the
JSON log of a run (``JsonLog``), and a run's trained parts back into a model (``load_trained``).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn
from torch.utils.data import DataLoader

from mtlora_lite.multitask.checkpoint import CHECKPOINT_NAME, training_state
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


def load_trained(model: nn.Module, run_dir: str | Path) -> None:
    """Load the trained parts saved in ``run_dir/checkpoint.safetensors`` into ``model``, built
    as the run built it (same recipe backbone, method and options). Raises ``ValueError`` if
    the tensors differ."""
    path = Path(run_dir) / CHECKPOINT_NAME
    saved = {
        k.removeprefix("model/"): v
        for k, v in load_file(str(path)).items()
        if k.startswith("model/")
    }
    state = training_state(model)
    wrong = sorted(saved.keys() ^ state.keys()) + [
        k for k in saved.keys() & state.keys() if saved[k].shape != state[k].shape
    ]
    if wrong:
        raise ValueError(
            f"{path} does not fit this model ({len(wrong)} tensors differ, e.g. {wrong[0]!r}): "
            "build it as the run did"
        )
    with torch.no_grad():
        for name, value in saved.items():
            state[name].copy_(value)
