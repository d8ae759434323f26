"""Run explorer: flat rows, the static scatter and the ipywidgets explorer, on hand-made runs."""

from __future__ import annotations

import importlib
import math
import sys
import types
from typing import Any

import pytest
from matplotlib.figure import Figure

from mtlora_lite.course import widgets
from mtlora_lite.course.notebook import format_table
from mtlora_lite.course.records import RunResult

METRIC = {"semseg": "mIoU", "normals": "mean_angle", "mine": "f1"}
HIGHER = {"semseg": True, "normals": False, "mine": True}


def make_run(
    name: str, method: str, primary: dict[str, float], trainable: int, **extras: Any
) -> RunResult:
    """A RunResult as ``records.run_record`` makes it: metric names and directions recorded."""
    metrics = {t: {METRIC[t]: v, "other": v + 1.0} for t, v in primary.items()}
    return RunResult(
        name=name,
        method=method,
        tasks=list(primary),
        seed=0,
        options={"rank": 4, "targets": ["qkv"]},
        metrics=metrics,
        primary=primary,
        primary_metric={t: METRIC[t] for t in primary},
        higher_is_better={t: HIGHER[t] for t in primary},
        trainable=trainable,
        total=10_000,
        breakdown={},
        seconds=3.0,
        images_per_s=100.0,
        loss_curve=[(1, 2.0), (2, 1.5)],
        extras=extras,
    )


SIMILARITY = {
    "mode": "B",
    "every": 1,
    "steps": [0, 1, 2],
    "values": [{"a": math.nan, "b": math.nan}, {"a": 0.9, "b": 0.7}, {"a": 0.5, "b": math.nan}],
}


@pytest.fixture
def runs() -> list[RunResult]:
    return [
        make_run("full-semseg", "full", {"semseg": 40.0}, 5000),
        make_run("lora-both", "lora", {"semseg": 35.0, "normals": 20.0}, 300),
        make_run("mtlora-both", "mtlora", {"semseg": 38.0, "normals": 18.0}, 900),
        make_run("heads", "multihead", {"normals": 25.0}, 200, similarity=SIMILARITY),
    ]


def _points(fig: Figure) -> int:
    return sum(len(c.get_offsets()) for c in fig.axes[0].collections)


def test_run_table_gives_flat_rows_with_the_same_keys(runs: list[RunResult]) -> None:
    rows = widgets.run_table(runs)
    assert len(rows) == 4 and all(list(r) == list(rows[0]) for r in rows)
    assert list(rows[0]) == [
        *("name", "method", "tasks", "options", "seed"),
        *("semseg mIoU", "normals mean_angle", "trainable", "cached"),
    ]
    lora = rows[1]
    assert lora["tasks"] == "semseg+normals" and lora["options"] == "rank=4"  # no list
    assert lora["semseg mIoU"] == 35.0 and lora["normals mean_angle"] == 20.0
    assert rows[0]["normals mean_angle"] == "-" and rows[3]["semseg mIoU"] == "-"
    assert lora["trainable"] == 300 and lora["cached"] is False
    assert "lora-both" in format_table(rows)
    assert widgets.run_table([]) == []


def test_metric_name_and_direction_come_from_the_record() -> None:
    run = make_run("x", "lora", {"semseg": 1.0, "mine": 2.0}, 10)
    assert widgets.metric_name(run, "semseg") == "mIoU"
    assert widgets.metric_name(run, "mine") == "f1"  # a task of your own: recorded with the run
    assert "higher is better" in widgets.plot_runs([run], "mine").axes[0].get_ylabel()
    run.primary_metric.pop("mine")  # e.g. a record written by hand without it
    assert widgets.metric_name(run, "mine") == "primary"


def test_plot_runs_draws_one_point_per_run_with_the_task(runs: list[RunResult]) -> None:
    fig = widgets.plot_runs(runs, "normals", highlight=runs[1])
    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    assert _points(fig) == 3 and len(ax.collections) == 3  # one scatter per method
    assert ax.get_xscale() == "log" and "lower is better" in ax.get_ylabel()
    assert len(ax.lines) == 1  # the ring around the highlighted run
    ring = ax.lines[0].get_xydata()[0]
    assert tuple(ring) == (300.0, 20.0)
    default = widgets.plot_runs(runs)  # the task measured by the most runs (ties: first seen)
    assert "semseg" in default.axes[0].get_title() and _points(default) == 3
    assert not default.axes[0].lines  # no highlight


def test_plot_runs_errors_say_what_to_do(runs: list[RunResult]) -> None:
    with pytest.raises(ValueError, match=r"no recorded runs.*Run notebooks"):
        widgets.plot_runs([])
    with pytest.raises(ValueError, match=r"no run measured task 'depth'.*'semseg', 'normals'"):
        widgets.plot_runs(runs, "depth")


def test_similarity_curve_averages_layers_and_skips_nan(runs: list[RunResult]) -> None:
    steps, values = widgets.similarity_curve(runs[3])
    assert steps == [0, 1, 2] and math.isnan(values[0])
    assert values[1:] == pytest.approx([0.8, 0.5])
    assert widgets.similarity_curve(runs[0]) is None


def test_explorer_rerenders_when_a_dropdown_changes(runs: list[RunResult]) -> None:
    pytest.importorskip("ipywidgets")
    box = widgets.explore_runs(runs)
    method, task, run = box.children[0].children
    info, (scatter, curve) = box.children[1], box.children[2].children
    assert method.options == ("all", "full", "lora", "mtlora", "multihead")
    assert task.options == ("semseg", "normals") and task.value == "semseg"
    assert [v for _, v in run.options] == [0, 1, 2] and "full-semseg" in info.value
    assert bytes(scatter.value).startswith(b"\x89PNG") and curve.layout.display == "none"

    first = bytes(scatter.value)
    task.value = "normals"
    assert [v for _, v in run.options] == [1, 2, 3] and run.value == 1
    assert bytes(scatter.value) != first and "lora-both" in info.value

    run.value = 3  # the multi-head run: its head-similarity curve appears
    assert curve.layout.display is None and bytes(curve.value).startswith(b"\x89PNG")
    assert "heads" in info.value and "No head-similarity" not in info.value

    method.value = "full"  # only semseg runs remain
    assert task.options == ("semseg",) and [v for _, v in run.options] == [0]
    assert curve.layout.display == "none" and "full-semseg" in info.value


def test_explorer_without_runs_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="no recorded runs"):
        widgets.explore_runs([])


def test_package_imports_without_ipywidgets(
    monkeypatch: pytest.MonkeyPatch, runs: list[RunResult]
) -> None:
    monkeypatch.setitem(sys.modules, "ipywidgets", None)  # makes `import ipywidgets` fail
    module = importlib.reload(widgets)
    assert isinstance(module.plot_runs(runs), Figure)
    with pytest.raises(ImportError):
        module.explore_runs(runs)


def test_explorer_enables_colabs_widget_manager_in_colab(
    monkeypatch: pytest.MonkeyPatch, runs: list[RunResult]
) -> None:
    """Colab needs its custom widget manager for ipywidgets 8: a fake google.colab records it."""
    pytest.importorskip("ipywidgets")
    calls = []
    output = types.ModuleType("google.colab.output")
    output.enable_custom_widget_manager = lambda: calls.append("enabled")
    colab = types.ModuleType("google.colab")
    colab.output = output
    assert widgets.enable_colab_widgets() is False and not calls  # not in Colab: nothing
    monkeypatch.setitem(sys.modules, "google", types.ModuleType("google"))
    monkeypatch.setitem(sys.modules, "google.colab", colab)
    monkeypatch.setitem(sys.modules, "google.colab.output", output)
    widgets.explore_runs(runs)
    assert calls == ["enabled"]
