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
from mtlora_lite.adapters.heads import COLLAPSE_WEIGHT
from mtlora_lite.course.compare import Paired
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


def plot_router_collapse(
    max_weight: Mapping[str, Sequence[float]],
    threshold: float = COLLAPSE_WEIGHT,
    title: str = "Largest mean routing weight of each layer's router",
) -> Figure:
    """One column per adapted layer: ``{layer: [largest mean routing weight, per seed]}``.

    Dots at or above the dashed ``threshold`` (the rule of ``adapters.heads.collapsed_head``) are
    collapsed routers, drawn in red. Layer names are shortened to "stage.block module".
    """
    if not max_weight:
        raise ValueError("max_weight is empty; pass {layer: [largest mean weight per seed]}")
    layers = list(max_weight)
    fig = Figure(figsize=(max(5.0, 0.3 * len(layers) + 1.5), 3.4), layout="constrained")
    ax = fig.subplots()
    for i, layer in enumerate(layers):
        w = np.asarray(max_weight[layer], dtype=float)
        ax.scatter(np.full(len(w), i), w, s=14, c=np.where(w >= threshold, "tab:red", "tab:blue"))
    ax.axhline(threshold, color="tab:red", ls="--", lw=1, label=f"collapse: {threshold:g}")
    ax.set_xticks(range(len(layers)), [_short_layer(n) for n in layers], rotation=90, fontsize=6)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("adapted layer")
    ax.set_ylabel("largest mean routing weight")
    ax.set_title(title, fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7)
    return fig


def _short_layer(name: str) -> str:
    """``"encoder.backbone.layers.2.blocks.3.mlp.fc1"`` -> ``"2.3 mlp.fc1"``."""
    block, module = split_layer_name(name)
    numbers = [p for p in block.split(".") if p.isdigit()]
    return f"{'.'.join(numbers)} {module}".strip()


def plot_head_spectra(
    singular_values: Mapping[str, Sequence[float]],
    effective_ranks: Mapping[str, Mapping[str, Sequence[float]]],
    references: Mapping[str, float] | None = None,
    layer: str = "",
) -> Figure:
    """What the heads can write, two panels.

    Left: ``{variant: singular values}`` of one layer, each divided by its largest (a fast drop
    means few directions). Right: ``{variant: {measure: [effective rank per seed]}}``, e.g.
    measures "heads" and "update" of ``head_spectra``: a bar per measure at the mean, a dot per
    seed. ``references`` draws dashed horizontal lines, e.g. ``{"r": 4, "n r": 16}``.
    """
    if not singular_values or not effective_ranks:
        raise ValueError("pass singular values and effective ranks of at least one variant")
    fig = Figure(figsize=(10.5, 3.6), layout="constrained")
    ax_sv, ax_er = fig.subplots(1, 2, width_ratios=(1, 1.3))
    for variant, values in singular_values.items():
        s = np.asarray(values, dtype=float)
        if s.size and s[0] > 0:
            ax_sv.plot(np.arange(1, len(s) + 1), s / s[0], ".-", label=variant)
    ax_sv.set_xlabel("index k of the singular value")
    ax_sv.set_ylabel("singular value / largest")
    ax_sv.set_title(
        f"Singular values of the stacked heads{f', {layer}' if layer else ''}", fontsize=9
    )
    ax_sv.grid(alpha=0.3)
    ax_sv.legend(fontsize=7)
    variants = list(effective_ranks)
    measures = list(dict.fromkeys(m for per in effective_ranks.values() for m in per))
    width = 0.8 / max(len(measures), 1)
    for k, measure in enumerate(measures):
        x = np.arange(len(variants)) + (k - (len(measures) - 1) / 2) * width
        runs = [
            np.asarray(effective_ranks[v].get(measure, [np.nan]), dtype=float) for v in variants
        ]
        means = [r[np.isfinite(r)].mean() if np.isfinite(r).any() else np.nan for r in runs]
        ax_er.bar(x, means, width, label=measure, alpha=0.8)
        for xi, r in zip(x, runs, strict=True):
            ax_er.plot(np.full(len(r), xi), r, ".", color="black", markersize=3)
    for i, (label, value) in enumerate((references or {}).items()):
        ax_er.axhline(value, color="grey", ls="--" if i % 2 == 0 else ":", lw=1)
        ax_er.annotate(label, (len(variants) - 0.5, value), fontsize=7, va="bottom", ha="right")
    ax_er.set_xticks(range(len(variants)), variants, rotation=20, ha="right", fontsize=7)
    ax_er.set_ylabel("effective rank (mean over layers)")
    ax_er.set_title("Effective rank: bars mean over seeds, dots single seeds", fontsize=9)
    ax_er.grid(axis="y", alpha=0.3)
    ax_er.legend(fontsize=7)
    return fig


def plot_paired_gains(verdicts: Sequence[Paired], title: str = "Paired differences") -> Figure:
    """One row per comparison (``course.compare.paired``): a dot per seed at the gain of A over
    B, a bar at their mean; green if A is better on every seed beyond the spread, red if worse,
    grey within noise. The row label says "A vs B" and the verdict's counts."""
    if not verdicts:
        raise ValueError("verdicts is empty; pass paired(...) results")
    colour = {"better": "tab:green", "worse": "tab:red", "within noise": "tab:grey"}
    fig = Figure(figsize=(7.5, 0.9 + 0.42 * len(verdicts)), layout="constrained")
    ax = fig.subplots()
    for i, v in enumerate(verdicts):
        y = len(verdicts) - 1 - i
        gains = list(v.gains.values())
        ax.barh(y, v.mean, height=0.6, color=colour[v.outcome], alpha=0.35)
        ax.plot(gains, np.full(len(gains), y), "o", color=colour[v.outcome], markersize=4)
    ax.axvline(0, color="black", lw=0.8)
    labels = [f"{v.a} vs {v.b} ({v.wins} of {v.n} seeds higher)" for v in verdicts]
    ax.set_yticks(range(len(verdicts)), labels[::-1], fontsize=7)
    unit = verdicts[0].unit
    ax.set_xlabel(f"gain of the first over the second ({unit}); dots: seeds, bar: mean")
    ax.set_title(title, fontsize=9)
    ax.grid(axis="x", alpha=0.3)
    return fig


def plot_seed_scatter(
    x: Mapping[str, Sequence[float]],
    y: Mapping[str, Sequence[float]],
    xlabel: str,
    ylabel: str,
    title: str = "",
) -> Figure:
    """One colour per variant, a dot per seed at ``(x[variant][k], y[variant][k])`` and a cross
    at the variant's means: e.g. accuracy against the effective rank of the adapter's update."""
    variants = [v for v in x if v in y]
    if not variants:
        raise ValueError("x and y share no variant")
    fig = Figure(figsize=(5.8, 3.8), layout="constrained")
    ax = fig.subplots()
    for variant in variants:
        xs, ys = np.asarray(x[variant], dtype=float), np.asarray(y[variant], dtype=float)
        if xs.shape != ys.shape:
            raise ValueError(f"{variant}: {len(xs)} x values but {len(ys)} y values, one per seed")
        (dots,) = ax.plot(xs, ys, "o", markersize=4, alpha=0.7, label=variant)
        ax.plot(xs.mean(), ys.mean(), "x", color=dots.get_color(), markersize=9, mew=2)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title or f"{ylabel} against {xlabel} (dots: seeds, crosses: means)", fontsize=9)
    ax.grid(alpha=0.3)
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
