"""The course's comparison figures: every seed drawn, means where they belong, labels readable."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

from mtlora_lite.course.plots import (
    plot_adapter_placement,
    plot_cosine_matrices,
    plot_knob,
    plot_lr_sweep,
    plot_seed_values,
    plot_trainable_shares,
)


def _points(fig: Figure, marker: str) -> list[tuple[float, float]]:
    """(x, y) of every point drawn with ``marker`` on the first axes."""
    return [
        (float(x), float(y))
        for line in fig.axes[0].lines
        if line.get_marker() == marker
        for x, y in zip(line.get_xdata(), line.get_ydata(), strict=True)
    ]


def _renders(fig: Figure) -> None:
    fig.savefig(io.BytesIO(), format="png")


def test_seed_values_draw_each_seed_and_the_mean() -> None:
    values = {"full": {0: 40.0, 1: 42.0, 2: 44.0}, "LoRA r=4": {0: 41.0, 1: 43.0, 2: 39.0}}
    fig = plot_seed_values(
        values,
        "mIoU",
        x={"full": 1e6, "LoRA r=4": 1e5},
        logx=True,
        connect=[["LoRA r=4", "full"]],
        connect_label="a line",
        reference=0.0,
    )
    assert sorted(_points(fig, ".")) == sorted(
        [(1e6, 40.0), (1e6, 42.0), (1e6, 44.0), (1e5, 41.0), (1e5, 43.0), (1e5, 39.0)]
    )
    assert sorted(_points(fig, "D")) == [(1e5, 41.0), (1e6, 42.0)]  # the means
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert legend == ["a line", "full (mean of 3 seeds)", "LoRA r=4 (mean of 3 seeds)"]
    assert fig.axes[0].get_xscale() == "log" and fig.axes[0].get_ylabel() == "mIoU"
    _renders(fig)
    fig = plot_seed_values({"a": {0: 1.0}, "b": {0: 2.0}}, "Δm")  # no x: one column per label
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["a", "b"]
    assert sorted(_points(fig, "D")) == [(0.0, 1.0), (1.0, 2.0)]


def test_knob_joins_the_means_and_keeps_every_seed() -> None:
    values = {
        "shared": {1: {0: -5.0, 1: -7.0}, 16: {0: 1.0, 1: 3.0}},
        "MTLoRA": {1: {0: -1.0, 1: -3.0}, 16: {0: 2.0, 1: 2.0}},
    }
    fig = plot_knob(values, "shared rank", "Δm (%)", logx=True, reference=0.0)
    ax = fig.axes[0]
    means = [line for line in ax.lines if line.get_marker() == "D"]
    assert [list(line.get_ydata()) for line in means] == [[-6.0, 2.0], [-2.0, 2.0]]
    assert [list(line.get_xdata()) for line in means] == [[1, 16], [1, 16]]
    seeds = sorted(y for _, y in _points(fig, "."))
    assert seeds == sorted([-5.0, -7.0, 1.0, 3.0, -1.0, -3.0, 2.0, 2.0])
    assert [t.get_text() for t in ax.get_xticklabels()] == ["1", "16"]
    assert "mean of 2 seeds" in ax.get_legend().get_texts()[0].get_text()
    _renders(fig)


def test_lr_sweep_circles_the_chosen_rate_of_each_task() -> None:
    values = {"semseg": {1e-3: 30.0, 2e-3: 35.0}, "normals": {1e-3: 20.0, 2e-3: 25.0}}
    fig = plot_lr_sweep(values, {"semseg": 2e-3, "normals": 1e-3}, {"semseg": "mIoU (%)"})
    assert [ax.get_title() for ax in fig.axes] == ["semseg", "normals"]
    chosen = [
        (float(line.get_xdata()[0]), float(line.get_ydata()[0]))
        for ax in fig.axes
        for line in ax.lines
        if line.get_label() == "chosen"
    ]
    assert chosen == [(2e-3, 35.0), (1e-3, 20.0)]
    _renders(fig)


def test_trainable_shares_sum_to_each_models_total() -> None:
    shares = {"full": {"other": 90, "decoders": 10}, "LoRA": {"lora": 30, "decoders": 10}}
    fig = plot_trainable_shares(shares, order=["decoders"])
    ax = fig.axes[0]
    widths = {}
    for bar in ax.patches:
        widths.setdefault(round(bar.get_y() + bar.get_height() / 2), []).append(bar.get_width())
    assert [pytest.approx(sum(w)) for w in widths.values()] == [100.0, 100.0]
    assert [t.get_text() for t in ax.texts] == ["100", "40"]  # totals at the right
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend == ["decoders", "lora", "other"]  # ordered groups first, then by name
    _renders(fig)


def test_cosine_matrices_leave_the_diagonal_blank() -> None:
    m = torch.tensor([[1.0, -0.3], [-0.3, 1.0]])
    fig = plot_cosine_matrices({"before": m, "after": m.numpy() * 0.5}, ["a", "b"])
    grids = [ax.images[0].get_array() for ax in fig.axes[:2]]
    assert grids[0].mask[0, 0] and grids[0][0, 1] == pytest.approx(-0.3)  # the diagonal: blank
    assert fig.axes[0].images[0].get_clim() == pytest.approx((-0.3, 0.3))  # the largest value
    assert [t.get_text() for t in fig.axes[0].texts] == ["-0.30", "-0.30"]
    _renders(fig)


def test_adapter_placement_marks_the_task_branches() -> None:
    has = np.array([[False, True], [False, False]])
    fig = plot_adapter_placement(has, ["0.0", "0.1"], ["attn.qkv", "attn.proj"], n_tasks=4)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0.0", "0.1"]
    assert "4 task branches" in ax.get_legend().get_texts()[1].get_text()
    _renders(fig)
