"""Figures for the course.

Every function returns a ``matplotlib.figure.Figure`` built without pyplot, so no global state
leaks: in a notebook leave the figure as the last expression of a cell to show it, and save it
with ``fig.savefig(path)``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from torch import Tensor

from mtlora_lite.adapters.head_plots import (  # noqa: F401 (the notebooks import them from here)
    plot_head_cosine_matrix,
    plot_head_similarity,
    plot_head_similarity_curves,
    split_layer_name,
)
from mtlora_lite.course.data import denormalize, mixture_class_names
from mtlora_lite.course.scenes import (
    DENSE_LABELS,
    DOWNSTREAM,
    IMAGE_LABELS,
    SceneConfig,
    class_names,
)

_CATEGORICAL = ("semseg", "parts")


def _names(task: str, config: SceneConfig, given: Mapping[str, Sequence[str]]) -> Sequence[str]:
    if task in given:
        return given[task]
    return mixture_class_names(config=config) if task == "answer" else class_names(config, task)


def _draw_label(ax: Axes, task: str, label: Tensor, names: Sequence[str], legend: bool) -> None:
    """One dense label on ``ax``: classes with a categorical map (and a legend below when
    ``legend``), normals as RGB (invalid = black), depth with viridis, masks in grey."""
    if task in _CATEGORICAL:
        cmap = ListedColormap([(0.2, 0.2, 0.2), *colormaps["tab10"].colors[: len(names) - 1]])
        ax.imshow(label.numpy(), cmap=cmap, vmin=-0.5, vmax=len(names) - 0.5, interpolation="none")
        if legend:
            handles = [Patch(color=cmap(k), label=name) for k, name in enumerate(names)]
            ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.05), fontsize=6)
    elif task == "normals":  # x, y, z in [-1, 1] -> RGB
        valid = label.norm(dim=0, keepdim=True) > 0
        ax.imshow(((label + 1) / 2 * valid).permute(1, 2, 0).numpy())
    elif task == "depth":
        ax.imshow(label.numpy(), cmap="viridis_r")
    else:
        ax.imshow(label.numpy(), cmap="gray", vmin=0, vmax=1)


def show_scenes(
    images: Tensor,
    targets: Mapping[str, Tensor],
    tasks: Sequence[str] | None = None,
    n: int = 4,
    class_names: Mapping[str, Sequence[str]] | None = None,
    config: SceneConfig = DOWNSTREAM,
) -> Figure:
    """A gallery with one row per image: the image, then one column per dense label.

    images: (N, 3, H, W), uint8 as made by ``generate_scenes`` or normalised float32 as given
    by the DataLoaders. targets: task -> (N, ...) labels (a ``generate_scenes`` dict works;
    its "image" is ignored). tasks: which labels to show, default all present. Image-level
    labels ("count", "shape", "colour", "answer") go into each row's title. class_names:
    task -> names, default the names of ``config``'s classes.
    """
    given = class_names or {}
    order = [*DENSE_LABELS, *IMAGE_LABELS, "answer"]
    tasks = [t for t in order if t in targets] if tasks is None else list(tasks)
    missing = [t for t in tasks if t not in targets]
    if missing:
        raise KeyError(f"no targets for {missing}; targets has {sorted(targets)}")
    dense = [t for t in tasks if t in DENSE_LABELS]
    n = min(n, len(images))
    if images.dtype == torch.uint8:
        pictures = images[:n].cpu().float() / 255
    else:
        pictures = denormalize(images[:n])
    size = (1.6 * (1 + len(dense)), 1.7 * n + 0.6 * bool(dense))
    fig = Figure(figsize=size, layout="constrained")
    axes = fig.subplots(n, 1 + len(dense), squeeze=False)
    for row in range(n):
        title = []
        for task in (t for t in tasks if t not in DENSE_LABELS):
            value = int(targets[task][row].reshape(-1)[0])  # "answer" rows are [answer, task]
            title.append(f"{task}={_names(task, config, given)[value]}")
        axes[row, 0].imshow(pictures[row].permute(1, 2, 0).numpy())
        axes[row, 0].set_title("\n".join(title), fontsize=7)
        for col, task in enumerate(dense, start=1):
            names = _names(task, config, given) if task in _CATEGORICAL else []
            label = targets[task][row].detach().cpu()
            _draw_label(axes[row, col], task, label, names, legend=row == n - 1)
            if row == 0:
                axes[row, col].set_title(task, fontsize=8)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    return fig


# ---------------------------------------------------------------------------------------------------
# Multi-head LoRA: per-task accuracy (the head-similarity figures are the library's, imported above)
# ---------------------------------------------------------------------------------------------------


def plot_per_task_accuracy(
    results: Mapping[str, Mapping[str, Sequence[float]]],
    metric: str = "accuracy",
    title: str | None = None,
) -> Figure:
    """Grouped bars: ``{variant: {task: [value per seed]}}``, mean with a std error bar, seeds as dots.

    The error bar is the sample standard deviation over seeds (none for a single seed).
    """
    variants = list(results)
    tasks = list(dict.fromkeys(t for per_task in results.values() for t in per_task))
    width = 0.8 / max(len(variants), 1)
    fig = Figure(
        figsize=(max(4.0, 1.0 + 0.45 * len(tasks) * max(len(variants), 2)), 3.4),
        layout="constrained",
    )
    ax = fig.subplots()
    seeds: set[int] = set()
    for k, variant in enumerate(variants):
        x = np.arange(len(tasks)) + (k - (len(variants) - 1) / 2) * width
        runs = [np.asarray(results[variant].get(t, [np.nan]), dtype=float) for t in tasks]
        seeds.update(len(r) for r in runs)
        mean = [r.mean() for r in runs]
        std = [r.std(ddof=1) if len(r) > 1 else 0.0 for r in runs]
        ax.bar(x, mean, width, yerr=std, capsize=3, label=variant, alpha=0.85)
        for xi, r in zip(x, runs, strict=True):
            ax.plot(np.full(len(r), xi), r, ".", color="black", markersize=3, alpha=0.6)
    ax.set_xticks(range(len(tasks)), tasks)
    ax.set_xlabel("task")
    ax.set_ylabel(metric)
    n_seeds = "/".join(str(s) for s in sorted(seeds))
    ax.set_title(title or f"Per-task {metric}: mean ± std over {n_seeds} seed(s)", fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7)
    return fig
