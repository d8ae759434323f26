"""Small helpers the course notebooks share: environment report, figures and results on disk.

Every notebook ends by calling ``save_results``: the JSON it writes is what ``make course`` summarises
and what the smoke tests check, so it only accepts finite numbers.
"""

from __future__ import annotations

import json
import math
import platform
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

RESULTS_FILE = "results.json"


def environment_report(device: torch.device) -> str:
    """One line per library version plus the chosen device, for the notebook's first output."""
    import matplotlib
    import timm

    lines = [
        f"python     {sys.version.split()[0]} ({platform.platform()})",
        f"torch      {torch.__version__}  (threads: {torch.get_num_threads()})",
        f"timm       {timm.__version__}",
        f"matplotlib {matplotlib.__version__}",
        f"device     {device}",
    ]
    if device.type == "cuda":
        lines[-1] += f" ({torch.cuda.get_device_name(device)})"
    return "\n".join(lines)


def save_figure(fig: Any, out_dir: str | Path, name: str, dpi: int = 110) -> Path:
    """Save a matplotlib figure as ``out_dir/name.png`` and return the path."""
    path = Path(out_dir) / f"{name}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    return path


def _check_finite(value: Any, where: str) -> None:
    if isinstance(value, Mapping):
        for k, v in value.items():
            _check_finite(v, f"{where}.{k}")
    elif isinstance(value, list | tuple):
        for i, v in enumerate(value):
            _check_finite(v, f"{where}[{i}]")
    elif isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"results must be finite numbers, got {value} at {where}")


def save_results(results: Mapping[str, Any], out_dir: str | Path) -> Path:
    """Write ``results`` (JSON-serialisable, finite numbers) to ``out_dir/results.json``.

    By convention ``results["headline"]`` holds the few numbers ``make course`` prints per notebook.
    """
    _check_finite(results, "results")
    path = Path(out_dir) / RESULTS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2, sort_keys=False) + "\n")
    return path


def format_table(rows: list[Mapping[str, Any]], floatfmt: str = ".2f") -> str:
    """A plain-text table from a list of dicts with the same keys (for closing cells)."""
    if not rows:
        return "(no rows)"
    cols = list(rows[0])
    cells = [
        [f"{r[c]:{floatfmt}}" if isinstance(r[c], float) else str(r[c]) for c in cols] for r in rows
    ]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    head = "  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True))
    rule = "  ".join("-" * w for w in widths)
    body = ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join([head, rule, *body])
