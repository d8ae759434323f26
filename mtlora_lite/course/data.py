"""Datasets and DataLoaders over generated scenes (``mtlora_lite.course.scenes``).

``SceneDataset`` serves ``(image, {task: target})`` for the dense and image-level tasks.
``MixtureDataset`` serves the task mixture of the multi-head LoRA notebooks: each example
belongs to exactly one image-level task, and its label is an index into the union of the
tasks' answers (see ``mixture_layout``). The model never gets the task index: the task is
painted into the image as a ``CUE_WIDTH``-pixel border, white for "count", black for "shape"
and dashed black and white (4-pixel dashes) for "colour".
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from mtlora_lite.course.scenes import (
    DOWNSTREAM,
    IMAGE_LABELS,
    SEED_LIMIT,
    SceneConfig,
    check_seed,
    class_names,
    generate_scenes,
)

MEAN = (0.472, 0.471, 0.472)  # per-channel statistics of DOWNSTREAM images in [0, 1]
STD = (0.159, 0.154, 0.159)
MIXTURE_TASKS = IMAGE_LABELS
CUE_WIDTH = 3  # pixels of the border that names the task of a mixture example
_CUE_DASHED = {"count": False, "shape": False, "colour": True}
_CUE_VALUE = {"count": 255, "shape": 0, "colour": 255}
# Loaders draw scenes with seeds 2 * seed and 2 * seed + 1, so their seed must be below this.
LOADER_SEED_LIMIT = SEED_LIMIT // 2
_LOADER_WHY = " and the loaders draw scenes with seeds 2 * seed and 2 * seed + 1"


_MEAN, _STD = torch.tensor(MEAN)[:, None, None], torch.tensor(STD)[:, None, None]


def normalize(images: Tensor) -> Tensor:
    """uint8 images (..., 3, H, W) -> float32 normalised with ``MEAN`` and ``STD``."""
    return (images.float() / 255 - _MEAN) / _STD


def denormalize(images: Tensor) -> Tensor:
    """Normalised images (..., 3, H, W) -> float32 in [0, 1] on the CPU, for plotting."""
    return (images.detach().cpu().float() * _STD + _MEAN).clamp(0, 1)


class SceneDataset(Dataset):
    """Scenes as ``(image (3, H, W) float32 normalised, {task: target})``.

    Targets: "semseg", "parts" (H, W) int64; "saliency", "depth", "edges" (H, W) float32;
    "normals" (3, H, W) float32; "count", "shape", "colour" 0-d int64.
    """

    def __init__(self, scenes: dict[str, Tensor], tasks: Sequence[str]) -> None:
        available = sorted(k for k in scenes if k != "image")
        unknown = [t for t in tasks if t not in available]
        if unknown or not tasks:
            raise ValueError(f"cannot serve tasks {list(tasks)}: choose among {available}")
        self.images = scenes["image"]
        self.targets = {t: scenes[t] for t in tasks}

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[Tensor, dict[str, Tensor]]:
        return normalize(self.images[i]), {t: v[i] for t, v in self.targets.items()}


def mixture_layout(
    tasks: Sequence[str] = MIXTURE_TASKS, config: SceneConfig = DOWNSTREAM
) -> dict[str, tuple[int, int]]:
    """Where each task's answers sit in the union answer space: task -> (offset, n_classes).

    With the defaults: count (0, 4), shape (4, 4), colour (8, 6), so 14 answers in all.
    """
    unknown = [t for t in tasks if t not in _CUE_VALUE]
    if unknown or not tasks or len(set(tasks)) != len(tasks):
        raise ValueError(
            f"mixture tasks must be distinct, among {list(_CUE_VALUE)}; got {list(tasks)}"
        )
    layout, offset = {}, 0
    for task in tasks:
        layout[task] = (offset, len(class_names(config, task)))
        offset += layout[task][1]
    return layout


def mixture_class_names(
    tasks: Sequence[str] = MIXTURE_TASKS, config: SceneConfig = DOWNSTREAM
) -> list[str]:
    """Names of the union answers in index order, e.g. "count=1", "shape=cube", "colour=red"."""
    return [f"{t}={name}" for t in mixture_layout(tasks, config) for name in class_names(config, t)]


def paint_cue(images: Tensor, task: Tensor, tasks: Sequence[str] = MIXTURE_TASKS) -> Tensor:
    """Copy of uint8 images (B, 3, H, W) with a ``CUE_WIDTH`` border naming ``tasks[task[b]]``."""
    h, w = images.shape[-2:]
    border = torch.ones(h, w, dtype=torch.bool)
    border[CUE_WIDTH:-CUE_WIDTH, CUE_WIDTH:-CUE_WIDTH] = False
    dash = (torch.arange(h)[:, None] + torch.arange(w)) // 4 % 2 == 0  # alternates every 4 px
    cues = torch.stack(
        [torch.where(dash & _CUE_DASHED[t], 0, _CUE_VALUE[t]).expand(3, h, w) for t in tasks]
    ).to(torch.uint8)
    return torch.where(border, cues[task], images)


class MixtureDataset(Dataset):
    """One image-level task per example, as ``(image, {"answer": [answer, task]})``.

    The task is visible only through the border cue (``paint_cue``); the model never gets the
    task index. The target "answer" is int64 (2,): the index into the union answer space
    (``mixture_layout``) and the task index, which only the metrics use (per-task accuracy).
    Tasks are assigned in equal shares, shuffled with ``seed``. Labels are those of the whole
    scene: the border can hide a sliver of an object near the edge, never its centre.
    """

    def __init__(
        self,
        scenes: dict[str, Tensor],
        tasks: Sequence[str] = MIXTURE_TASKS,
        *,
        seed: int,
        config: SceneConfig = DOWNSTREAM,
    ) -> None:
        layout, n = mixture_layout(tasks, config), len(scenes["image"])
        g = torch.Generator().manual_seed(check_seed(seed))
        self.task = torch.randperm(n, generator=g) % len(tasks)
        answers = torch.stack([scenes[t] + layout[t][0] for t in tasks])  # (T, n)
        self.answer = answers.gather(0, self.task[None])[0]
        self.images = paint_cue(scenes["image"], self.task, tasks)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[Tensor, dict[str, Tensor]]:
        return normalize(self.images[i]), {"answer": torch.stack([self.answer[i], self.task[i]])}


def _loaders(
    train: Dataset, val: Dataset, seed: int, batch_size: int, num_workers: int
) -> tuple[DataLoader, DataLoader]:
    shuffle = torch.Generator().manual_seed(seed)
    return (
        DataLoader(
            train,
            batch_size,
            shuffle=True,
            drop_last=True,
            generator=shuffle,
            num_workers=num_workers,
        ),
        DataLoader(val, batch_size, shuffle=False, num_workers=num_workers),
    )


def make_loaders(
    tasks: Sequence[str],
    *,
    n_train: int,
    n_val: int,
    seed: int,
    batch_size: int,
    config: SceneConfig = DOWNSTREAM,
    num_workers: int = 0,
) -> tuple[DataLoader, DataLoader]:
    """Train and validation loaders of ``SceneDataset``s.

    Scenes use seeds 2 * seed (train) and 2 * seed + 1 (validation), so they never coincide
    (``seed`` in [0, 2**31)); training batches are shuffled by a generator seeded with ``seed``
    and the last partial batch is dropped.
    """
    seed = check_seed(seed, LOADER_SEED_LIMIT, _LOADER_WHY)
    train = SceneDataset(generate_scenes(n_train, 2 * seed, config), tasks)
    val = SceneDataset(generate_scenes(n_val, 2 * seed + 1, config), tasks)
    return _loaders(train, val, seed, batch_size, num_workers)


def make_mixture_loaders(
    tasks: Sequence[str] = MIXTURE_TASKS,
    *,
    n_train: int,
    n_val: int,
    seed: int,
    batch_size: int,
    config: SceneConfig = DOWNSTREAM,
    num_workers: int = 0,
) -> tuple[DataLoader, DataLoader]:
    """Train and validation loaders of ``MixtureDataset``s (scene seeds as in ``make_loaders``)."""
    seed = check_seed(seed, LOADER_SEED_LIMIT, _LOADER_WHY)
    train = MixtureDataset(
        generate_scenes(n_train, 2 * seed, config), tasks, seed=2 * seed, config=config
    )
    val = MixtureDataset(
        generate_scenes(n_val, 2 * seed + 1, config), tasks, seed=2 * seed + 1, config=config
    )
    return _loaders(train, val, seed, batch_size, num_workers)
