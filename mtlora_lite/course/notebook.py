"""Small helpers the course notebooks share: where their files go, environment report, figures,
results on disk, timing, run summaries.

Paths. A notebook's ``OUT_DIR`` / ``CACHE_DIR`` are relative to the course root (``course_path``):
``$MTLORA_LITE_HOME`` if set, else the checkout of this repository that holds the kernel's working
folder (``make course`` runs in its root, JupyterLab in ``notebooks/``: both write the same
``outputs/``), else the working folder itself (Colab: ``/content``, before and after a restart).

Every notebook ends by calling ``save_results``: the JSON it writes is what ``make course`` summarises
and what the smoke tests check, so it only accepts finite numbers.

Set-up. A notebook's first cells are its ``parameters`` cell, the install cell (``INSTALL_CELL``,
copied verbatim: it runs before the package exists) and one call that does the rest::

    nb = setup("01_lora_from_scratch", PROFILE, SEED, DEVICE, OUT_DIR, CACHE_DIR, SOLUTIONS)
    ex = nb.exercises                       # ex.q1.check(...), see course.exercises
    ...
    nb.save_figure(fig, "semseg_finetuning")  # PNG in nb.out_dir
    nb.save({"headline": {...}, ...})        # results.json with profile, seed(s), device added

A notebook that compares methods over seeds passes ``SEEDS`` (a tuple) instead of ``SEED``:
``nb.seeds`` is then every seed in the course profile and the first only in the smoke profile
(which checks that everything runs; its numbers mean nothing), ``nb.seed`` the first.

``setup`` resolves the device, makes the output paths absolute (relative to the course root),
checks that the output folder is writable (before anything trains), prints the environment
report and loads the notebook's exercises.
"""

from __future__ import annotations

import json
import math
import numbers
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from mtlora_lite.adapters.atomic import atomic_path, atomic_write
from mtlora_lite.course.compare import Paired, mean_std
from mtlora_lite.course.exercises import ExerciseSet, load_exercises
from mtlora_lite.course.records import RunResult, check_writable
from mtlora_lite.multitask.evaluation import resolve_device

RESULTS_FILE = "results.json"
HOME_ENV_VAR = "MTLORA_LITE_HOME"
PROJECT_NAME = 'name = "mtlora-lite"'  # how the repository's pyproject.toml names the project


def course_root(start: str | Path | None = None) -> Path:
    """The folder relative course paths start from (module docstring): ``$MTLORA_LITE_HOME``, else
    the mtlora-lite checkout holding ``start`` (default: the working folder), else ``start``."""
    if os.environ.get(HOME_ENV_VAR):
        return Path(os.environ[HOME_ENV_VAR]).expanduser().resolve()
    here = Path(start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        project = folder / "pyproject.toml"
        if project.is_file() and PROJECT_NAME in project.read_text(errors="replace"):
            return folder
    return here


def course_path(path: str | Path | None) -> Path | None:
    """``path`` under ``course_root()`` if relative; absolute paths (and None) as given."""
    if path is None:
        return None
    path = Path(path).expanduser()
    return path if path.is_absolute() else course_root() / path


def for_profile(profile: str, values: Sequence[Any]) -> tuple[Any, ...]:
    """What a notebook runs of ``values`` (its seeds, or the learning rates of a sweep): all of
    them in the course profile, only the first in the smoke profile, which checks that
    everything runs (its numbers mean nothing)."""
    values = tuple(int(v) if isinstance(v, numbers.Integral) else v for v in values)
    if not values:
        raise ValueError("nothing to run: name at least one value, e.g. SEEDS = (0, 1, 2)")
    return values[:1] if profile == "smoke" else values


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
    """Save a matplotlib figure as ``out_dir/name.png`` (atomically) and return the path."""
    path = Path(out_dir) / f"{name}.png"
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight")
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
    """Write ``results`` (JSON-serialisable, finite numbers) to ``out_dir/results.json``,
    atomically: a crash or a full disk leaves the previous file (or none), never half of one.

    By convention ``results["headline"]`` holds the few numbers ``make course`` prints per notebook.
    """
    _check_finite(results, "results")
    return atomic_write(
        Path(out_dir) / RESULTS_FILE, json.dumps(results, indent=2, sort_keys=False) + "\n"
    )


def time_forward(
    models: Mapping[str, Callable[[Tensor], Any]], x: Tensor, repeats: int
) -> dict[str, list[float]]:
    """Milliseconds of ``repeats`` calls ``model(x)`` for each model, without gradients.

    The models take turns (one call each per round), so a slowdown of a shared machine hits them
    alike; one round of warm-up first. On CUDA each call is synchronised.
    """

    def sync() -> None:
        if x.device.type == "cuda":
            torch.cuda.synchronize(x.device)

    times: dict[str, list[float]] = {name: [] for name in models}
    with torch.inference_mode():
        for model in models.values():
            model(x)
        for _ in range(repeats):
            for name, model in models.items():
                sync()
                tic = time.perf_counter()
                model(x)
                sync()
                times[name].append(1000 * (time.perf_counter() - tic))
    return times


def median_times(times: Mapping[str, list[float]]) -> dict[str, float]:
    """The median of each model's ``time_forward`` times."""
    return {name: statistics.median(t) for name, t in times.items()}


def describe_run(result: RunResult) -> str:
    """One line on a run: name, trainable parameters, training time, trained now or cached."""
    source = f"cached, measured {result.measured_on}" if result.cached else "trained now"
    return (
        f"{result.name:<38} {result.trainable:>10,} trainable  {result.seconds:6.1f} s  ({source})"
    )


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


# ---------------------------------------------------------------------------------------------------
# Set-up and saving (module docstring)
# ---------------------------------------------------------------------------------------------------

# The install cell every notebook starts with (after its parameters), verbatim: it cannot import
# the package, since it installs it. tests/test_install_cell.py keeps the notebooks' copies equal.
INSTALL_CELL = """\
# Installs the course's package if it is missing (e.g. in Colab); where it is installed, this
# cell does nothing. REPO_URL: this repository, your fork ("https://github.com/<you>/mtlora-lite"),
# or the path or URL of a wheel (`pip wheel --no-deps .` in a clone makes one).
REPO_URL = "https://github.com/mtlora-lite/mtlora-lite"

import importlib.util
import subprocess
import sys

if importlib.util.find_spec("mtlora_lite") is None:
    as_is = REPO_URL.endswith(".whl") or not REPO_URL.startswith("https://")
    target = REPO_URL if as_is else f"git+{REPO_URL}"
    done = subprocess.run([sys.executable, "-m", "pip", "install", "-q", target])
    if done.returncode != 0:
        raise RuntimeError(
            f"pip could not install {target!r} (see its message above). Point REPO_URL at "
            "your fork, https://github.com/<you>/mtlora-lite, or at a wheel: run `pip wheel "
            "--no-deps .` in a clone, upload the .whl file and set REPO_URL to its path."
        )
    importlib.invalidate_caches()"""


@dataclass
class NotebookRun:
    """What a notebook's cells need, from ``setup``: its settings, the resolved device and
    folders, and its exercises."""

    name: str
    profile: str
    seeds: tuple[int, ...]
    device: torch.device
    out_dir: Path
    cache_dir: Path | None
    exercises: ExerciseSet

    @property
    def seed(self) -> int:
        """The first (or only) seed."""
        return self.seeds[0]

    def save_figure(self, fig: Any, name: str) -> Path:
        """Save ``fig`` as ``out_dir/name.png`` (``save_figure``)."""
        return save_figure(fig, self.out_dir, name)

    def save(self, results: Mapping[str, Any]) -> Path:
        """Write ``results`` (with a non-empty "headline") to ``out_dir/results.json``, adding
        the profile, seed, device and the exercises' outcome; prints where."""
        if not results.get("headline"):
            raise ValueError('results need a non-empty "headline": the numbers make course prints')
        seeds: dict[str, Any] = {"seeds": list(self.seeds)} if len(self.seeds) > 1 else {}
        full = {"profile": self.profile, "seed": self.seed, **seeds, "device": str(self.device)}
        full["exercises"] = self.exercises.summary()
        path = save_results({**full, **results}, self.out_dir)
        print(f"saved {path}")
        return path


def setup(
    notebook: str,
    profile: str,
    seed: int | Sequence[int],
    device: str | torch.device = "auto",
    out_dir: str | Path = "outputs",
    cache_dir: str | Path | None = "outputs/cache",
    solutions: bool = False,
) -> NotebookRun:
    """Resolve the device, make ``out_dir`` / ``cache_dir`` absolute (``course_path``), check
    that ``out_dir`` is writable, print the environment report and load the exercises of
    ``notebook`` (its name, e.g. "00_data_and_backbone"; ``solutions`` as in
    ``course.exercises``). ``seed`` is one seed or a sequence of them (``NotebookRun.seeds``)."""
    if profile not in ("smoke", "course"):
        raise ValueError(f'PROFILE must be "smoke" or "course", got {profile!r}')
    dev = resolve_device(device)
    out = check_writable(
        course_path(out_dir), "set OUT_DIR in the parameters cell to a folder you can write"
    )
    run = NotebookRun(
        name=notebook,
        profile=profile,
        seeds=for_profile(profile, (seed,) if isinstance(seed, numbers.Integral) else seed),
        device=dev,
        out_dir=out,
        cache_dir=course_path(cache_dir),
        exercises=load_exercises(notebook, solutions=solutions),
    )
    print(environment_report(dev))
    print(f"outputs    {out}")
    mode = "reference solutions (SOLUTIONS = True)" if solutions else "yours: fill in the stubs"
    print(f"exercises  {len(run.exercises)}, {mode}")
    return run


def verdict_record(verdict: Paired) -> dict[str, Any]:
    """A paired verdict for results.json: its words, outcome, per-seed gains, mean and spread."""
    return {
        "verdict": str(verdict),
        "outcome": verdict.outcome,
        "gains_by_seed": verdict.gains,
        "mean_gain": verdict.mean,
        "std_gain": verdict.std,
        "unit": verdict.unit,
    }


def seed_summary(values: Mapping[int, float], unit: str = "", digits: int = 1) -> str:
    """``{seed: value}`` in words: "41.2 ± 0.8 % (mean ± std over 3 seeds)", or the one value."""
    mean, std = mean_std(list(values.values()))
    unit = f" {unit}" if unit else ""
    if len(values) == 1:
        return f"{mean:.{digits}f}{unit} (one seed)"
    return f"{mean:.{digits}f} ± {std:.{digits}f}{unit} (mean ± std over {len(values)} seeds)"
