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
# Multi-head LoRA: head similarity and per-task accuracy
# ---------------------------------------------------------------------------------------------------


def split_layer_name(name: str) -> tuple[str, str]:
    """(block, module) of an adapted layer: cut after the last numeric part of the dotted name.

    ``"layers.0.blocks.1.attn.qkv"`` -> ``("layers.0.blocks.1", "attn.qkv")``; no number -> ``("",
    name)``.
    """
    parts = name.split(".")
    digits = [i for i, p in enumerate(parts) if p.isdigit()]
    if not digits or digits[-1] == len(parts) - 1:
        return "", name
    return ".".join(parts[: digits[-1] + 1]), ".".join(parts[digits[-1] + 1 :])


def _annotate(ax: Axes, values: np.ndarray, fmt: str = "{:.2f}") -> None:
    for (i, j), v in np.ndenumerate(values):
        if not np.isnan(v):
            color = "white" if abs(v) > 0.6 else "black"
            text = fmt.format(v).replace("-0.00", "0.00")
            ax.text(j, i, text, ha="center", va="center", fontsize=6, color=color)


def plot_head_similarity(
    similarity: Mapping[str, float], title: str = "Mean pairwise head cosine"
) -> Figure:
    """Heatmap of ``head_similarity(model)``: one row per block, one column per module type.

    Rows and columns come from ``split_layer_name`` (e.g. rows ``layers.2.blocks.5``, columns
    ``attn.qkv``, ``attn.proj``, ``mlp.fc1``, ``mlp.fc2``); missing or NaN cells stay blank.
    """
    if not similarity:
        raise ValueError("similarity is empty; pass head_similarity(model)")
    cells = {split_layer_name(name): v for name, v in similarity.items()}
    rows = list(dict.fromkeys(r for r, _ in cells))
    cols = list(dict.fromkeys(c for _, c in cells))
    grid = np.full((len(rows), len(cols)), np.nan)
    for (r, c), v in cells.items():
        grid[rows.index(r), cols.index(c)] = v
    fig = Figure(figsize=(1.3 + 0.9 * len(cols), 1.2 + 0.28 * len(rows)), layout="constrained")
    ax = fig.subplots()
    im = ax.imshow(grid, cmap="coolwarm", vmin=-1, vmax=1, aspect="auto")
    _annotate(ax, grid)
    ax.set_xticks(range(len(cols)), cols, fontsize=7)
    ax.set_yticks(range(len(rows)), [r or "(model)" for r in rows], fontsize=7)
    ax.set_xlabel("adapted module")
    ax.set_ylabel("block")
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, label="cosine")
    return fig


def plot_head_cosine_matrix(matrix: Tensor, title: str = "Head cosine similarity") -> Figure:
    """Head x head heatmap of one layer's ``head_cosine_matrix`` (n, n)."""
    values = matrix.detach().double().cpu().numpy()
    n = values.shape[0]
    fig = Figure(figsize=(1.6 + 0.5 * n, 1.2 + 0.45 * n), layout="constrained")
    ax = fig.subplots()
    im = ax.imshow(values, cmap="coolwarm", vmin=-1, vmax=1)
    _annotate(ax, values)
    ax.set_xticks(range(n), [str(j) for j in range(n)])
    ax.set_yticks(range(n), [str(i) for i in range(n)])
    ax.set_xlabel("head j")
    ax.set_ylabel("head i")
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, label="cosine")
    return fig


def plot_head_similarity_curves(
    curves: Mapping[str, tuple[Sequence[int], Sequence[float] | Sequence[Sequence[float]]]],
    title: str = "Head similarity during training",
    ylabel: str = "mean pairwise head cosine",
) -> Figure:
    """One line per variant: ``{variant: (steps, values)}``, e.g. from ``recorder.curve()``.

    ``values`` may also be one sequence per seed (seeds x steps): then the line is the mean and a
    band shows the min-max over seeds. NaN points (e.g. all-zero heads at step 0) are skipped.
    """
    fig = Figure(figsize=(5.5, 3.4), layout="constrained")
    ax = fig.subplots()
    for variant, (steps, values) in curves.items():
        v = np.asarray(values, dtype=float)
        if v.ndim == 2:
            (line,) = ax.plot(steps, np.nanmean(v, 0), label=f"{variant} ({len(v)} seeds)")
            ax.fill_between(
                steps, np.nanmin(v, 0), np.nanmax(v, 0), color=line.get_color(), alpha=0.2
            )
        else:
            ax.plot(steps, v, label=variant)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return fig


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


# ---------------------------------------------------------------------------------------------------
# Comparisons over seeds: every seed as a dot, the mean as a large marker
# ---------------------------------------------------------------------------------------------------

SeedValues = Mapping[int, float]  # {seed: value}


def _mean(values: SeedValues) -> float:
    return float(np.mean(list(values.values())))


def plot_seed_values(
    values: Mapping[str, SeedValues],
    ylabel: str,
    title: str = "",
    x: Mapping[str, float] | None = None,
    xlabel: str = "",
    logx: bool = False,
    connect: Sequence[Sequence[str]] = (),
    connect_label: str = "",
    reference: float | None = None,
) -> Figure:
    """One point per seed and a large marker at the mean, for each label of ``values``
    (``{label: {seed: value}}``).

    ``x``: ``{label: position}`` (e.g. trainable parameters, with ``logx``), else one column per
    label. ``connect``: groups of labels whose means are joined by a dashed line (e.g. the ranks
    of one method), the first named ``connect_label`` in the legend. ``reference``: a horizontal
    line (e.g. 0 for delta_m).
    """
    labels = list(values)
    pos = {label: (x[label] if x else k) for k, label in enumerate(labels)}
    fig = Figure(
        figsize=(6.5 if x else max(4.0, 1.2 * len(labels) + 1.5), 3.8), layout="constrained"
    )
    ax = fig.subplots()
    for k, group in enumerate(connect):
        means = [_mean(values[g]) for g in group]
        name = connect_label if k == 0 and connect_label else None
        ax.plot([pos[g] for g in group], means, "--", color="grey", label=name)
    for k, label in enumerate(labels):
        seeds = list(values[label].values())
        color = f"C{k % 10}"
        ax.plot([pos[label]] * len(seeds), seeds, ".", color=color, alpha=0.6, markersize=6)
        n = len(seeds)
        ax.plot(
            pos[label],
            _mean(values[label]),
            "D",
            color=color,
            markersize=8,
            label=f"{label} (mean of {n} seed{'s' if n > 1 else ''})",
        )
    if reference is not None:
        ax.axhline(reference, color="black", linewidth=0.8)
    if x:
        ax.set_xlabel(xlabel)
        if logx:
            ax.set_xscale("log")
        ax.legend(fontsize=7)
    else:
        ax.set_xticks(range(len(labels)), labels, rotation=20, ha="right", fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    return fig


def plot_knob(
    values: Mapping[str, Mapping[float, SeedValues]],
    xlabel: str,
    ylabel: str,
    title: str = "",
    logx: bool = False,
    reference: float | None = None,
) -> Figure:
    """A measure against a knob for several methods: ``{method: {knob value: {seed: value}}}``.

    Each seed is a dot (methods slightly apart so that they do not hide each other), each method's
    means are joined by a line. ``reference``: a horizontal line (e.g. 0 for delta_m).
    """
    fig = Figure(figsize=(6.0, 3.8), layout="constrained")
    ax = fig.subplots()
    methods = list(values)
    for k, method in enumerate(methods):
        knobs = sorted(values[method])
        shift = 1 + 0.04 * (k - (len(methods) - 1) / 2) if logx else None
        color = f"C{k % 10}"
        for knob in knobs:
            seeds = list(values[method][knob].values())
            where = (
                knob * shift
                if logx
                else knob + 0.02 * (k - (len(methods) - 1) / 2) * ((max(knobs) - min(knobs)) or 1)
            )
            ax.plot([where] * len(seeds), seeds, ".", color=color, alpha=0.6, markersize=6)
        n = max(len(values[method][knob]) for knob in knobs)
        ax.plot(
            knobs,
            [_mean(values[method][kn]) for kn in knobs],
            "D-",
            color=color,
            markersize=7,
            label=f"{method} (mean of {n} seed{'s' if n > 1 else ''}; dots: seeds)",
        )
    if reference is not None:
        ax.axhline(reference, color="black", linewidth=0.8)
    if logx:
        ax.set_xscale("log", base=2)
    all_knobs = sorted({kn for per in values.values() for kn in per})
    ax.set_xticks(all_knobs, [f"{kn:g}" for kn in all_knobs])
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return fig


def plot_lr_sweep(
    values: Mapping[str, Mapping[float, float]],
    chosen: Mapping[str, float],
    ylabels: Mapping[str, str],
    title: str = "Learning-rate sweep",
) -> Figure:
    """One panel per task: the validation metric ``values[task][lr]`` against the learning rate
    (log scale), with the ``chosen[task]`` learning rate circled."""
    tasks = list(values)
    fig = Figure(figsize=(2.8 * len(tasks) + 0.4, 2.9), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(tasks)))
    for ax, task in zip(axes, tasks, strict=True):
        lrs = sorted(values[task])
        ax.plot(lrs, [values[task][lr] for lr in lrs], "o-")
        ax.plot(
            chosen[task],
            values[task][chosen[task]],
            "o",
            markersize=14,
            mfc="none",
            color="C3",
            label="chosen",
        )
        ax.set_xscale("log")
        ax.set_xticks(lrs, [f"{lr:g}" for lr in lrs])
        ax.minorticks_off()
        ax.set_xlabel("learning rate")
        ax.set_ylabel(ylabels.get(task, ""))
        ax.set_title(task, fontsize=9)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    return fig


def plot_trainable_shares(
    breakdowns: Mapping[str, Mapping[str, int]],
    title: str = "Trainable parameters by group",
    order: Sequence[str] = (),
) -> Figure:
    """Horizontal stacked bars, one per model: each group's share of the model's trainable
    parameters (``{model: {group: trainable count}}``), the total at the right. Groups in
    ``order`` come first; groups no model trains are left out."""
    used = {g for counts in breakdowns.values() for g, n in counts.items() if n}
    groups = [g for g in order if g in used] + sorted(used - set(order))
    models = list(breakdowns)
    fig = Figure(figsize=(7.5, 1.4 + 0.42 * len(models)), layout="constrained")
    ax = fig.subplots()
    left = np.zeros(len(models))
    totals = np.array([sum(breakdowns[m].values()) for m in models], dtype=float)
    for k, group in enumerate(groups):
        share = 100 * np.array([breakdowns[m].get(group, 0) for m in models]) / totals
        ax.barh(models, share, left=left, label=group, color=f"C{k % 10}")
        left += share
    for y, total in enumerate(totals):
        ax.text(101, y, f"{int(total):,}", va="center", fontsize=7)
    ax.set_xlim(0, 120)
    ax.set_xlabel("share of the model's trainable parameters (%); total at the right")
    ax.set_title(title, fontsize=9)
    ax.invert_yaxis()
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.25), ncol=4)
    return fig


def plot_cosine_matrices(
    matrices: Mapping[str, Tensor | np.ndarray],
    names: Sequence[str],
    title: str = "",
    scale: float | None = None,
) -> Figure:
    """Task x task cosine heatmaps side by side (``{panel title: (T, T) matrix}``), the diagonal
    (always 1) blank, every other cell annotated. ``scale``: the colour range ±scale (default the
    largest off-diagonal value, at least 0.05)."""
    grids = {}
    for label, m in matrices.items():
        grid = np.array(m.detach().cpu().numpy() if isinstance(m, Tensor) else m, dtype=float)
        np.fill_diagonal(grid, np.nan)
        grids[label] = grid
    if scale is None:
        scale = max(0.05, *(np.nanmax(np.abs(g)) for g in grids.values()))
    fig = Figure(figsize=(3.2 * len(grids) + 1.0, 3.4), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(grids)))
    for ax, (label, grid) in zip(axes, grids.items(), strict=True):
        image = ax.imshow(grid, cmap="coolwarm", vmin=-scale, vmax=scale)
        for (i, j), v in np.ndenumerate(grid):
            if i != j:
                ax.text(j, i, f"{v:+.2f}", ha="center", va="center", fontsize=7)
        ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(len(names)), names, fontsize=8)
        ax.set_title(label, fontsize=9)
    fig.colorbar(image, ax=list(axes), label=f"cosine (colour scale ±{scale:.2f})")
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def plot_adapter_placement(
    has_task_branch: np.ndarray,
    blocks: Sequence[str],
    targets: Sequence[str],
    n_tasks: int,
) -> Figure:
    """Where MTLoRA's adapters sit: a (target, block) grid, task-agnostic LoRA everywhere and
    task-specific branches where ``has_task_branch`` (targets x blocks, bool) is true; blocks are
    named "stage.block" and a thick line separates the stages."""
    fig = Figure(figsize=(8, 2.8), layout="constrained")
    ax = fig.subplots()
    colors = ["#9ecae1", "#e6550d"]
    ax.imshow(np.asarray(has_task_branch, dtype=float), cmap=ListedColormap(colors), vmin=0, vmax=1)
    ax.set_xticks(range(len(blocks)), blocks)
    ax.set_yticks(range(len(targets)), targets)
    stages = [b.split(".")[0] for b in blocks]
    for k in range(1, len(blocks)):
        if stages[k] != stages[k - 1]:
            ax.axvline(k - 0.5, color="black", linewidth=2)
    ax.set_xlabel("block (stage.block)")
    ax.set_ylabel("adapted linear layer")
    ax.set_title("Where MTLoRA's adapters sit in the course Swin")
    labels = ["TA-LoRA only", f"TA-LoRA + TS-LoRA ({n_tasks} task branches)"]
    ax.legend(
        handles=[Patch(color=c, label=s) for c, s in zip(colors, labels, strict=True)],
        loc="upper center",
        bbox_to_anchor=(0.5, -0.35),
        ncol=2,
    )
    return fig
