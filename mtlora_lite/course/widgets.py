"""Browse recorded training runs (``RunResult``, from ``records.load_results`` or your own):

    rows = run_table(results)            # one flat dict per run (format_table or pandas)
    fig = plot_runs(results, "semseg")   # primary metric vs trainable parameters, a dot per run
    explore_runs(results)                # dropdowns method / task / run, redrawn on change

``ipywidgets`` is imported inside ``explore_runs`` only, so the package imports without it; the
explorer shows figures as PNG images, which look the same in JupyterLab, Colab and VS Code. In
Colab, ``explore_runs`` first turns on Colab's custom widget manager, which ipywidgets 8 need
there (``enable_colab_widgets``).
"""

from __future__ import annotations

import html
import io
import sys
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from matplotlib import colormaps
from matplotlib.figure import Figure

from mtlora_lite.adapters.heads import nanmean
from mtlora_lite.course.plots import plot_head_similarity_curves, split_layer_name
from mtlora_lite.course.records import RunResult

if TYPE_CHECKING:
    import ipywidgets

NO_RUNS = (
    "no recorded runs to show: load_results(cache_dir) found none. Run notebooks 02-05 first "
    "(they record every training run in the cache), or pass RunResult objects of your own."
)


def run_tasks(results: Sequence[RunResult]) -> list[str]:
    """Tasks with a primary metric in any run, the most often measured first (ties: first seen)."""
    return [t for t, _ in Counter(t for r in results for t in r.primary).most_common()]


def metric_name(result: RunResult, task: str) -> str:
    """Name of ``task``'s primary metric in ``result``, e.g. "mIoU" ("primary" if unrecorded)."""
    return result.primary_metric.get(task, "primary")


def _direction(result: RunResult, task: str) -> str:
    if task not in result.higher_is_better:
        return ""
    return f" ({'higher' if result.higher_is_better[task] else 'lower'} is better)"


def _options_text(options: Mapping[str, Any]) -> str:
    """ "rank=4, init=rlora": a run's scalar options."""
    pairs = [(k, v) for k, v in options.items() if isinstance(v, bool | int | float | str)]
    return ", ".join(f"{k}={v}" for k, v in pairs)


def run_table(results: Sequence[RunResult]) -> list[dict[str, Any]]:
    """One flat row per run, every row with the same keys (ready for ``format_table``).

    Keys: name, method, tasks ("a+b"), options ("rank=4, ..."), seed, one column per task named
    "<task> <primary metric>" (a float; "-" where the run lacks the task), trainable (parameter
    count) and cached (read from the cache or not). Empty input gives [].
    """
    firsts = {t: next(r for r in results if t in r.primary) for t in run_tasks(results)}
    columns = {t: f"{t} {metric_name(r, t)}" for t, r in firsts.items()}
    rows = []
    for r in results:
        row: dict[str, Any] = {"name": r.name, "method": r.method, "tasks": "+".join(r.tasks)}
        row.update(options=_options_text(r.options), seed=r.seed)
        row.update({col: r.primary.get(task, "-") for task, col in columns.items()})
        row.update(trainable=r.trainable, cached=r.cached)
        rows.append(row)
    return rows


def similarity_curve(
    result: RunResult, module: str | None = None
) -> tuple[list[int], list[float]] | None:
    """(steps, mean head cosine over layers) recorded by a multi-head run, else None.

    ``module`` (e.g. "attn.qkv") averages only over the layers of that type (``split_layer_name``).
    Layers whose heads are all zero (NaN) are skipped; a step with none left gives NaN.
    """
    record = result.extras.get("similarity")
    if not record:
        return None
    values = [
        nanmean(v for name, v in layers.items() if module in (None, split_layer_name(name)[1]))
        for layers in record["values"]
    ]
    return list(record["steps"]), values


def plot_runs(
    results: Sequence[RunResult], task: str | None = None, highlight: RunResult | None = None
) -> Figure:
    """Primary metric of ``task`` against trainable parameters: one dot per run, colour = method.

    ``task`` defaults to the task measured by the most runs; ``highlight`` (one of ``results``) is
    ringed. Raises ``ValueError`` for no runs or a task that no run measured.
    """
    if not results:
        raise ValueError(NO_RUNS)
    task = task or run_tasks(results)[0]
    runs = [r for r in results if task in r.primary]
    if not runs:
        raise ValueError(f"no run measured task {task!r}; recorded tasks: {run_tasks(results)}")
    fig = Figure(figsize=(5.8, 3.8), layout="constrained")
    ax = fig.subplots()
    colors = colormaps["tab10"].colors
    for k, method in enumerate(dict.fromkeys(r.method for r in runs)):
        mine = [r for r in runs if r.method == method]
        x, y = [r.trainable for r in mine], [r.primary[task] for r in mine]
        ax.scatter(x, y, color=colors[k % len(colors)], alpha=0.8, label=f"{method} ({len(mine)})")
    if highlight is not None and task in highlight.primary:
        point = (highlight.trainable, highlight.primary[task])
        ax.plot(*point, "o", ms=14, mfc="none", mec="black")
        ax.annotate(highlight.name, point, xytext=(9, 9), textcoords="offset points", fontsize=7)
    if min(r.trainable for r in runs) > 0:
        ax.set_xscale("log")
    metric = metric_name(runs[0], task)
    ax.set_xlabel("trainable parameters (count, log scale)")
    ax.set_ylabel(f"{task} {metric}{_direction(runs[0], task)}", fontsize=8)
    ax.set_title(f"{task}: {metric} vs trainable parameters ({len(runs)} runs)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(title="method (runs)", fontsize=7, title_fontsize=7)
    return fig


def _png(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90)
    return buffer.getvalue()


def _describe(result: RunResult) -> str:
    """An HTML summary of one run for the explorer."""
    r, source = result, "read from the cache" if result.cached else "trained in this session"
    primary = ", ".join(f"{t} {metric_name(r, t)} = {v:.2f}" for t, v in r.primary.items())
    lines = [
        f"{r.method} on {'+'.join(r.tasks)}, seed {r.seed}; "
        f"options: {_options_text(r.options) or 'none'}",
        f"primary metrics: {primary}",
        f"trainable {r.trainable:,} of {r.total:,} parameters; {r.seconds:.0f} s of training "
        f"({source}; measured {r.measured_on or 'at an unknown date'})",
    ]
    return f"<b>{html.escape(result.name)}</b>: " + "<br>".join(html.escape(x) for x in lines)


def enable_colab_widgets() -> bool:
    """In Colab (``google.colab`` imported, as Colab's kernel does), enable its custom widget
    manager so that ipywidgets render; elsewhere do nothing. Returns whether it was enabled."""
    if "google.colab" not in sys.modules:
        return False
    from google.colab import output  # type: ignore[import-not-found]

    output.enable_custom_widget_manager()
    return True


def explore_runs(results: Sequence[RunResult]) -> ipywidgets.Widget:
    """Pick a method, task and run; see its summary, the metric-vs-trainable scatter with it ringed
    and its head-similarity curve if it has one. A VBox whose children[0] holds the dropdowns;
    ``ValueError`` for no runs (the message says how to record some).
    """
    import ipywidgets as w

    if not results:
        raise ValueError(NO_RUNS)
    enable_colab_widgets()
    method = w.Dropdown(options=["all", *dict.fromkeys(r.method for r in results)])
    task, run = w.Dropdown(), w.Dropdown(layout=w.Layout(width="320px"))
    method.description, task.description, run.description = "method", "task", "run"
    info, scatter, curve = w.HTML(), w.Image(format="png"), w.Image(format="png")

    def runs(by_task: bool = True) -> list[int]:
        """Indices of the runs of the chosen method (and, ``by_task``, with the chosen task)."""
        ok = [i for i, r in enumerate(results) if method.value in ("all", r.method)]
        return [i for i in ok if task.value in results[i].primary] if by_task else ok

    def render() -> None:
        r = results[run.value]
        info.value, steps_values = _describe(r), similarity_curve(r)
        scatter.value = _png(plot_runs(results, task.value, highlight=r))
        curve.layout.display = "none" if steps_values is None else None
        if steps_values is None:
            info.value += "<br><i>No head-similarity record: only multi-head runs record one.</i>"
        else:
            curve.value = _png(plot_head_similarity_curves({r.name: steps_values}))  # legend: name

    busy = False

    def refresh(change: Mapping[str, Any] | None = None) -> None:
        """Refill the task and run lists after a dropdown changed, then redraw once."""
        nonlocal busy
        if busy:  # our own updates of the options below
            return
        busy = True
        try:
            owner = None if change is None else change["owner"]
            if owner in (None, method):
                task.options = run_tasks([results[i] for i in runs(by_task=False)])
                task.index = task.index or 0  # a dropdown made without options starts at None
            if owner is not run:
                names = [(i, results[i].name, results[i].seed) for i in runs()]
                run.options = [(f"{i}: {name} (seed {seed})", i) for i, name, seed in names]
                run.index = run.index or 0
        finally:
            busy = False
        render()

    refresh()
    for dropdown in (method, task, run):
        dropdown.observe(refresh, names="value")
    return w.VBox([w.HBox([method, task, run]), info, w.HBox([scatter, curve])])
