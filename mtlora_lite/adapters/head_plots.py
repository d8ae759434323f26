"""Figures of multi-head LoRA's heads: how similar they are, per layer, per pair and over training.

    plot_head_similarity(head_similarity(model))                  # one cell per adapted layer
    plot_head_cosine_matrix(head_cosine_matrix(layer))            # head x head, one layer
    plot_head_similarity_curves({"hydra": recorder.curve()})      # over training, per variant

Each function returns a ``matplotlib.figure.Figure`` built without pyplot (no global state): leave
it as the last expression of a notebook cell to show it, ``fig.savefig(path)`` to save it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from torch import Tensor


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
