"""The course part of the GPU check: the notebooks that train (01-05) run as plain Python scripts,
so the check needs no Jupyter and times exactly what the course runs, read from the notebooks
themselves (there is no second copy of their training plan to keep in step).

A notebook becomes a script as papermill would run it: its code cells in order, the given
parameters assigned right after the cell tagged ``parameters``, and IPython's own lines (``%``
magics, ``!`` shell commands) left out. Each notebook runs in its own process, with matplotlib's
file-only backend, its figures and results.json under the work folder and one run cache shared by
all of them (as in ``make course``, a later notebook reads the runs an earlier one recorded).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from gpu_check_runner import ROOT
from gpu_check_summary import write_json

TRAINING_NOTEBOOKS = ("01", "02", "03", "04", "05")  # the notebooks that train models
DRY_NOTEBOOKS = ("04",)  # the dry run: one notebook, smoke profile
PEAK_MARK = "gpu_check peak_mib="  # the line a script prints last, with its peak GPU memory


def notebook_script(path: Path, parameters: Mapping[str, Any]) -> str:
    """The code of the notebook at ``path`` as one script (module docstring): ``parameters``
    (name -> a value whose ``repr`` is Python) are assigned after the ``parameters`` cell."""
    cells = json.loads(path.read_text())["cells"]
    pieces, injected = [], False
    for cell in cells:
        if cell["cell_type"] != "code":
            continue
        lines = "".join(cell["source"]).splitlines()
        pieces.append("\n".join(ln for ln in lines if not ln.lstrip().startswith(("%", "!"))))
        if "parameters" in cell.get("metadata", {}).get("tags", []):
            pieces.append("\n".join(f"{name} = {value!r}" for name, value in parameters.items()))
            injected = True
    if not injected:
        raise ValueError(f"{path.name} has no code cell tagged 'parameters'")
    return "\n\n".join(pieces) + "\n"


def notebook_paths(prefixes: tuple[str, ...]) -> list[Path]:
    """The notebooks whose names start with ``prefixes``, in course order."""
    found = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    chosen = [p for p in found if p.name[:2] in prefixes]
    missing = sorted(set(prefixes) - {p.name[:2] for p in chosen})
    if missing:
        raise SystemExit(f"no notebook {missing} in {ROOT / 'notebooks'}")
    return chosen


def _peak_line(device: str) -> str:
    """Script code that prints the process's peak GPU memory (CUDA only)."""
    if device != "cuda":
        return ""
    return (
        f"\nimport torch as _t\nprint('{PEAK_MARK}' + str(_t.cuda.max_memory_allocated() >> 20))\n"
    )


def _run_notebook(path: Path, args: argparse.Namespace, cache: Path) -> dict[str, Any]:
    """Run one notebook as a script; what it took, trained and printed last."""
    parameters = {
        "PROFILE": args.profile,
        "DEVICE": args.device,
        "SOLUTIONS": True,
        "OUT_DIR": str(args.work / "course" / path.stem),
        "CACHE_DIR": str(cache),
    }
    script = args.work / "course" / f"{path.stem}.py"
    script.parent.mkdir(parents=True, exist_ok=True)
    script.write_text(notebook_script(path, parameters) + _peak_line(args.device))
    before = {p.name for p in cache.glob("*.json")}
    env = dict(os.environ, MPLBACKEND="Agg", PYTHONUNBUFFERED="1")
    tic = time.perf_counter()
    done = subprocess.run(
        [sys.executable, str(script)], cwd=ROOT, env=env, capture_output=True, text=True
    )
    entry: dict[str, Any] = {"notebook": path.stem, "rc": done.returncode}
    entry["seconds"] = round(time.perf_counter() - tic, 1)
    new = [p for p in cache.glob("*.json") if p.name not in before]
    entry["trained"] = len(new)
    entry["train_s"] = round(sum(json.loads(p.read_text())["seconds"] for p in new), 1)
    peaks = [ln for ln in done.stdout.splitlines() if ln.startswith(PEAK_MARK)]
    if peaks:
        entry["peak_mib"] = int(peaks[-1][len(PEAK_MARK) :])
    if done.returncode:
        entry["error"] = (done.stderr.strip().splitlines() or ["(no message)"])[-1]
        print(done.stderr[-4000:], file=sys.stderr, flush=True)
    return entry


def course_worker(args: argparse.Namespace) -> int:
    """Run the training notebooks (``args.notebooks``, or 01-05; the dry run: 04) as scripts on
    ``args.device``, recording each into course_runs.json as it finishes; a notebook that fails is
    recorded and the next one run. Exit code 1 if any failed."""
    import torch

    prefixes = args.notebooks or (DRY_NOTEBOOKS if args.dry_run else TRAINING_NOTEBOOKS)
    paths = notebook_paths(tuple(prefixes))
    cache = args.work / "course_cache"
    cache.mkdir(parents=True, exist_ok=True)
    cuda = args.device == "cuda"
    record: dict[str, Any] = {
        "profile": args.profile,
        "device": args.device,
        "device_name": torch.cuda.get_device_name() if cuda else platform.machine(),
        "torch": torch.__version__,
        "date": dt.date.today().isoformat(),
        "planned": [p.stem for p in paths],
        "notebooks": [],
    }
    start, failed = time.perf_counter(), 0
    for i, path in enumerate(paths, 1):
        entry = _run_notebook(path, args, cache)
        failed += bool(entry["rc"])
        record["notebooks"].append(entry)
        record["total_s"] = round(time.perf_counter() - start, 1)
        write_json(args.out / "course_runs.json", record)
        how = f"failed: {entry['error']}" if entry["rc"] else f"{entry['trained']} runs trained"
        print(
            f"{i}/{len(paths)} {path.stem:<28} {entry['seconds']:7.1f} s, {how} "
            f"(total {record['total_s']:.0f} s)",
            flush=True,
        )
    return 1 if failed else 0
