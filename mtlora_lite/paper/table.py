"""The results table of ``python -m mtlora_lite.paper``: our runs beside the paper's.

``PAPER`` holds the MTLoRA paper's PASCAL-Context numbers for Swin-T (Agiza, Neseem, Reda, CVPR
2024): semseg / human_parts / saliency mIoU (%) and the normals' mean angular error (degrees; the
paper's column says "rmse", the official evaluation code computes the mean), Delta_m (%) against
single-task full fine-tuning, and trainable parameters (M) where the paper states them. Where
the paper gives per-task numbers but no Delta_m (multi-task full fine-tuning), ``paper_delta_m``
computes it from them. The paper's LoRA row (Delta_m -2.17 %) has no published configuration, so
no run of ours stands beside it: our shared-LoRA run is our own variant and has no paper column.

``table_rows`` turns run records (``paper.run.run_one``) into one row per model at each run's last
validation (the result); ``best_rows`` the same at each run's best validation, labelled as such
(chosen on the validation set itself, so optimistic). ``markdown`` prints them. Delta_m is ours
against our own single-task runs, as the paper's is against its own. Each task's primary metric
and direction come from its ``Task`` (``pascal.tasks``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from mtlora_lite.multitask.history import History, Metrics
from mtlora_lite.multitask.pascal.data import TASKS
from mtlora_lite.multitask.pascal.tasks import pascal_tasks
from mtlora_lite.multitask.tasks import delta_m

PRIMARY = {name: task.primary for name, task in pascal_tasks().items()}
HIGHER_IS_BETTER = {name: task.higher_is_better for name, task in pascal_tasks().items()}
COLUMNS = {"semseg": "semseg mIoU", "human_parts": "parts mIoU", "sal": "sal mIoU"}
COLUMNS["normals"] = "normals mean°"
PAPER_LORA_DELTA_M = -2.17  # the paper's LoRA row, whose configuration is not published

PAPER: dict[str, dict[str, float]] = {
    "single": {"semseg": 67.21, "human_parts": 61.93, "sal": 62.35, "normals": 17.97},
    "mtl-full": {"semseg": 67.56, "human_parts": 60.24, "sal": 65.21, "normals": 16.64},
    "decoders": {
        **{"semseg": 65.09, "human_parts": 53.48, "sal": 57.46, "normals": 20.69},
        "delta_m": -9.95,
    },
    "mtlora-r16": {
        **{"semseg": 68.19, "human_parts": 58.99, "sal": 64.48, "normals": 17.03},
        **{"delta_m": 1.35, "trainable_M": 4.95},
    },
    "mtlora-r32": {
        **{"semseg": 67.74, "human_parts": 59.46, "sal": 64.90, "normals": 16.59},
        **{"delta_m": 2.16, "trainable_M": 6.08},
    },
    "mtlora-r64": {
        **{"semseg": 67.90, "human_parts": 59.84, "sal": 65.40, "normals": 16.60},
        **{"delta_m": 2.55, "trainable_M": 8.34},
    },
}


def paper_delta_m(name: str) -> float | None:
    """The paper's Delta_m of a run: as reported, else computed from its per-task numbers."""
    row = PAPER.get(name, {})
    if "delta_m" in row:
        return row["delta_m"]
    if all(t in row for t in TASKS):
        return delta_m({t: row[t] for t in TASKS}, PAPER["single"], HIGHER_IS_BETTER)
    return None


def primary(metrics: Metrics, tasks: Sequence[str]) -> dict[str, float]:
    """{task: primary metric} of one validation's metrics."""
    return {t: metrics[t][PRIMARY[t]] for t in tasks}


def references(records: Mapping[str, Mapping[str, Any]]) -> dict[str, float]:
    """Each task's single-task reference value, from the records of the single-task runs."""
    refs: dict[str, float] = {}
    for record in records.values():
        if record["single_task"]:
            refs.update(primary(record["metrics"], record["tasks"]))
    return refs


def _delta_m(ours: Mapping[str, float], refs: Mapping[str, float]) -> float | None:
    """Delta_m of ``ours`` against ``refs``; None without a (non-zero) reference for each task."""
    if not all(refs.get(t) for t in ours):
        return None
    return delta_m(ours, {t: refs[t] for t in ours}, {t: HIGHER_IS_BETTER[t] for t in ours})


def _row(label: str, values: Mapping[str, float], paper: Mapping[str, float]) -> dict[str, Any]:
    row: dict[str, Any] = {"model": label}
    for t in TASKS:
        row[COLUMNS[t]] = values.get(t)
        row[f"{COLUMNS[t]} (paper)"] = paper.get(t)
    return row


def table_rows(records: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per model at its record's "metrics" (its last validation): per-task primary
    metrics (ours, paper), saliency maxF, the epoch validated (the single-task row: each
    model's, "/"-joined where they differ), Delta_m in % (ours against our
    single-task runs, None without a non-zero reference for each of the model's tasks; the
    paper's), trainable parameters in M (ours; the paper's where stated) and device-hours.

    The single-task runs form one row (``"single-task (4 models)"``, Delta_m 0 by definition).
    """
    refs = references(records)
    singles = [r for r in records.values() if r["single_task"]]
    rows = []
    if singles:
        row = _row(f"single-task ({len(singles)} models)", refs, PAPER["single"])
        sal = [r["metrics"]["sal"]["maxF"] for r in singles if "sal" in r["tasks"]]
        row["sal maxF"] = sal[0] if sal else None
        epochs = [r.get("epoch") for r in singles]
        row["epoch"] = epochs[0] if len(set(epochs)) == 1 else "/".join(map(str, epochs))
        row["Δm %"] = 0.0 if set(refs) == set(TASKS) else None
        row["Δm % (paper)"] = 0.0
        row["trainable M"] = sum(r["trainable"] for r in singles) / 1e6
        row["trainable M (paper)"] = None
        row["device-hours"] = sum(r["device_hours"] for r in singles)
        rows.append(row)
    for name, record in records.items():
        if record["single_task"]:
            continue
        ours = primary(record["metrics"], record["tasks"])
        row = _row(record["label"], ours, PAPER.get(name, {}))
        row["sal maxF"] = record["metrics"]["sal"]["maxF"] if "sal" in ours else None
        row["epoch"] = record.get("epoch")
        row["Δm %"] = _delta_m(ours, refs)
        row["Δm % (paper)"] = paper_delta_m(name)
        row["trainable M"] = record["trainable"] / 1e6
        row["trainable M (paper)"] = PAPER.get(name, {}).get("trainable_M")
        row["device-hours"] = record["device_hours"]
        rows.append(row)
    return rows


def at_best(records: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """The records with "metrics" and "epoch" of each run's best validation (``History.best``):
    a single-task run's best primary metric, then each other run's best Delta_m against those
    best references. Runs without a validation history, or with no reference for one of their
    tasks, are left out."""

    def best(record: Mapping[str, Any], score: Any) -> dict[str, Any]:
        chosen = History(evals=list(record["evals"])).best(score)
        return {**record, "metrics": chosen.metrics, "epoch": chosen.epoch}

    chosen = {}
    for name, record in records.items():
        if record["single_task"] and record.get("evals"):
            (task,) = record["tasks"]
            sign = 1.0 if HIGHER_IS_BETTER[task] else -1.0
            chosen[name] = best(record, lambda m, t=task, s=sign: s * m[t][PRIMARY[t]])
    refs = references(chosen)
    for name, record in records.items():
        tasks = record["tasks"]
        if not record["single_task"] and record.get("evals") and all(refs.get(t) for t in tasks):
            chosen[name] = best(record, lambda m, ts=tasks: _delta_m(primary(m, ts), refs))
    return chosen


def best_rows(records: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """``table_rows`` at each run's best validation (``at_best``), labelled as such."""
    return table_rows(at_best(records))


def _cell(value: Any, column: str) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "—"
    if isinstance(value, float):
        return f"{value:.3g}" if "hours" in column else f"{value:.2f}"
    return str(value)


def markdown_table(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """The lines of one markdown table, "ours" and "paper" side by side for every column that
    has both."""
    if not rows:
        return ["(no runs)"]
    paired = [c for c in rows[0] if not c.endswith("(paper)")]
    header = []
    for column in paired:
        header.append(column)
        if f"{column} (paper)" in rows[0]:
            header.append("paper")
    lines = ["| " + " | ".join(header) + " |"]
    lines.append("|" + "|".join("---" if h == "model" else "---:" for h in header) + "|")
    for row in rows:
        cells = []
        for column in paired:
            cells.append(_cell(row[column], column))
            if f"{column} (paper)" in row:
                cells.append(_cell(row[f"{column} (paper)"], column))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def markdown(
    sections: Mapping[str, Sequence[Mapping[str, Any]]], title: str, notes: Sequence[str] = ()
) -> str:
    """A markdown report: ``title``, ``notes`` (one bullet each), then one table per section
    (heading -> rows)."""
    lines = [f"# {title}", "", *(f"- {n}" for n in notes)]
    for heading, rows in sections.items():
        lines += ["", f"## {heading}", "", *markdown_table(rows)]
    return "\n".join(lines) + "\n"
