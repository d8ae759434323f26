"""The runs of the paper's table: each trained, validated and recorded under one output folder.

    results = run_recipe(RECIPES["paper-quick"], "PASCAL_MT", "outputs/paper/paper-quick")

``run_recipe`` checks the archive (``pascal.check``: every file of both splits, so a bad
validation file is found before any training), then trains each run of ``--runs`` that is not
finished (``run_one``) and writes the table of every finished run on disk. Under ``out``:

    recipe.json                        the recipe of the runs here; later calls must match it
    runs/<run>/checkpoint.safetensors  ``fit``'s checkpoint after every epoch: the trained parts
                                       only (adapters, decoders, trainable norms, and their
                                       buffers; never the frozen backbone), optimizer, schedule
    runs/<run>/adapters.safetensors    the trained model's parts (``save_adapters``: checksummed,
                                       with the base's fingerprint); ``load_adapters`` puts them
                                       back into a model built as the run built it
    runs/<run>/log.jsonl               JSON lines: fit starts, steps, validations, the result
    runs/<run>/result.json             the finished run: the last validation's metrics, every
                                       validation, trainable parameters, hours
    results.json, results.md           the table, ours beside the paper's (``paper.table``), at
                                       the last validation and, labelled, at the best

A run validates every ``eval_every`` epochs and after the last; its result is the last
validation. Calling again resumes: finished runs are read back, an interrupted one continues
after its last saved epoch.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from mtlora_lite.adapters.atomic import atomic_write
from mtlora_lite.adapters.breakdown import trainable_breakdown
from mtlora_lite.adapters.saving import save_adapters
from mtlora_lite.multitask.distributed import rank_and_world
from mtlora_lite.multitask.history import Callback, Metrics
from mtlora_lite.multitask.models import build_model
from mtlora_lite.multitask.pascal.check import DataCheckError, check_archive
from mtlora_lite.multitask.pascal.data import PascalContext, split_path
from mtlora_lite.multitask.pascal.tasks import LOSS_WEIGHTS, pascal_tasks
from mtlora_lite.multitask.pascal.transforms import PascalTransform
from mtlora_lite.multitask.precision import AUTOCAST_DEVICES
from mtlora_lite.multitask.runtime import resolve_device, seed_everything
from mtlora_lite.multitask.train import fit
from mtlora_lite.paper.outputs import finished_records, prepare_out, read_record, same_recipe
from mtlora_lite.paper.recipes import RUNS, PaperRecipe, RunSpec
from mtlora_lite.paper.table import PAPER_LORA_DELTA_M, best_rows, markdown, table_rows


def default_workers(device: str = "auto") -> int:
    """DataLoader processes: up to 8 (the official setting's order) on a GPU, none on a CPU,
    where they would compete with training for the same cores."""
    if resolve_device(device).type == "cpu":
        return 0
    return min(8, os.cpu_count() or 1)


def make_loaders(
    train: Dataset, val: Dataset, batch: int, *, workers: int = 0, seed: int = 0
) -> tuple[DataLoader, DataLoader]:
    """Training (shuffled, the last partial batch dropped: 4,998 images make 156 batches of 32)
    and validation (in order, every image) loaders of ``batch`` images each."""
    if len(train) < batch:  # type: ignore[arg-type]
        raise ValueError(
            f"{len(train)} training images make no batch of {batch}: lower --batch-size"  # type: ignore[arg-type]
        )
    options: dict[str, Any] = {"num_workers": workers, "persistent_workers": workers > 0}
    options["pin_memory"] = torch.cuda.is_available()
    shuffle = torch.Generator().manual_seed(seed)  # fit reseeds it every epoch
    return (
        DataLoader(train, batch, shuffle=True, drop_last=True, generator=shuffle, **options),
        DataLoader(val, batch, **options),
    )


def loaders(
    data: Path, recipe: PaperRecipe, tasks: Sequence[str], workers: int = 0
) -> tuple[DataLoader, DataLoader]:
    """The PASCAL-Context loaders of a run (``make_loaders``); each process's batch is
    ``recipe.batch_size`` / world size. Human parts alone trains and validates on the images
    with a person, as the official loader does (``PascalContext``)."""
    _, world = rank_and_world()
    if recipe.batch_size % world:
        raise ValueError(f"batch {recipe.batch_size} does not split over {world} processes")
    train = PascalContext(data, "train", tasks, PascalTransform(recipe.img_size, train=True))
    val = PascalContext(data, "val", tasks, PascalTransform(recipe.img_size))
    batch = recipe.batch_size // world
    return make_loaders(train, val, batch, workers=workers, seed=recipe.seed)


class JsonLog(Callback):
    """Appends one JSON object a line to ``path`` (flushed each time): ``{"event", "run",
    "time", ...}`` for fit starts, every ``every``-th step (and the first), validations and
    whatever ``write`` is given. A crash leaves at most a partial last line; a resumed fit drops
    the lines of the steps and validations it redoes (and a partial line) first."""

    def __init__(self, path: str | Path, run: str, every: int = 10) -> None:
        self.path, self.run, self.every = Path(path), run, every
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.step = 0

    def write(self, event: str, **fields: Any) -> None:
        line = json.dumps({"event": event, "run": self.run, "time": time.time(), **fields})
        with self.path.open("a") as f:
            f.write(line + "\n")

    def _forget_after(self, step: int) -> None:
        """Rewrite the log without step / eval lines after ``step`` and unreadable lines."""
        kept = []
        for line in self.path.read_text().splitlines() if self.path.is_file() else []:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if not (record.get("event") in ("step", "eval") and record.get("step", 0) > step):
                kept.append(line + "\n")
        atomic_write(self.path, "".join(kept))

    def on_fit_start(self, model: nn.Module, start_step: int = 0) -> None:
        self.step = start_step
        if start_step > 0:
            self._forget_after(start_step)
        self.write("fit_start", start_step=start_step)

    def on_step_end(self, step: int, model: nn.Module, logs: dict[str, Any]) -> None:
        self.step = step
        if step == 1 or step % self.every == 0:
            self.write("step", **logs)

    def on_eval_end(self, epoch: int, model: nn.Module, metrics: Metrics) -> None:
        self.write("eval", epoch=epoch, step=self.step, metrics=metrics)


def run_one(
    spec: RunSpec,
    recipe: PaperRecipe,
    data: Path,
    out: Path,
    backbone: nn.Module,
    *,
    device: str = "auto",
    workers: int = 0,
    progress: bool = True,
    callbacks: Sequence[Callback] = (),
) -> dict[str, Any]:
    """Train and validate one run under ``out/runs/<name>`` and return its record; a finished
    run's record is read back instead (``"cached": True``), an interrupted one resumes."""
    run_dir = out / "runs" / spec.name
    done = run_dir / "result.json"
    if done.is_file():
        return {**read_record(done), "cached": True}
    rank, world = rank_and_world()
    tasks = pascal_tasks(spec.tasks)
    train, val = loaders(data, recipe, spec.tasks, workers)
    seed_everything(recipe.seed)
    model = build_model(backbone, tasks, spec.method, **spec.options)
    log = JsonLog(run_dir / "log.jsonl", spec.name, recipe.log_every)
    history = fit(
        model,
        tasks,
        train,
        val,
        **recipe.fit_options(),
        loss_weights={t: LOSS_WEIGHTS[t] for t in spec.tasks},
        device=device,
        callbacks=[log, *callbacks],
        progress=progress,
        checkpoint_dir=run_dir,
    )
    dev, breakdown = resolve_device(device), trainable_breakdown(model)
    record = {
        "name": spec.name,
        "label": spec.label,
        "about": spec.about,
        "method": spec.method,
        "tasks": list(spec.tasks),
        "options": dict(spec.options),
        "single_task": spec.single_task,
        "metrics": history.final,
        "epoch": history.evals[-1]["epoch"],
        "evals": history.evals,
        "trainable": breakdown.trainable,
        "breakdown": breakdown.to_dict(),
        "steps": len(history.steps),
        "skipped_steps": len(history.skipped_steps),
        "final_loss": history.steps[-1]["loss"],
        "images_per_s": history.images_per_s,
        "train_images": len(train.dataset),  # type: ignore[arg-type]
        "seconds": history.wall_time_s,
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else dev.type,
        "processes": world,
        "device_hours": history.wall_time_s * world / 3600,
        "recipe": recipe.name,
        "precision": recipe.precision if dev.type in AUTOCAST_DEVICES else "fp32",  # as trained
    }
    if rank == 0:
        save_adapters(model, run_dir / "adapters.safetensors")
        log.write("result", **{k: record[k] for k in ("metrics", "epoch", "trainable", "seconds")})
        atomic_write(done, json.dumps(record, indent=2) + "\n")
    return {**record, "cached": False}


def run_tasks(runs: Sequence[str]) -> list[str]:
    """The tasks the given runs train, in the benchmark's order."""
    wanted = {t for r in runs for t in RUNS[r].tasks}
    return [t for t in pascal_tasks() if t in wanted]


def run_recipe(
    recipe: PaperRecipe,
    data: str | Path,
    out: str | Path,
    runs: Sequence[str] = tuple(RUNS),
    *,
    device: str = "auto",
    workers: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Check the archive, train every run of ``runs`` (names of ``RUNS``) that is not finished,
    then write the table of every finished run under ``out`` (``results.json``,
    ``results.md``); returns what results.json holds. ``workers``: DataLoader processes
    (default ``default_workers``)."""
    unknown = [r for r in runs if r not in RUNS]
    if unknown or not runs:
        raise ValueError(f"unknown runs {unknown or list(runs)}; choose from {list(RUNS)}")
    data, out = Path(data), Path(out)
    workers = default_workers(device) if workers is None else workers
    main = rank_and_world()[0] == 0
    for split in ("train", "val"):
        split_path(data, split)  # no archive there: MissingDataError before anything is written
    prepare_out(out)
    same_recipe(out, recipe, write=main)
    bad = check_archive(data, ("train", "val"), run_tasks(runs), workers=workers, progress=progress)
    if bad:
        raise DataCheckError(data, bad)
    seed_everything(recipe.seed)
    backbone = recipe.build_backbone()
    for k, name in enumerate(runs):
        if progress and main:
            print(f"[{k + 1}/{len(runs)}] {RUNS[name].label}", flush=True)
        run_one(
            RUNS[name],
            recipe,
            data,
            out,
            backbone,
            device=device,
            workers=workers,
            progress=progress,
        )
    return write_results(recipe, data, out, write=main)


def write_results(recipe: PaperRecipe, data: Path, out: Path, write: bool = True) -> dict[str, Any]:
    """The table of every finished run under ``out`` (``finished_records``), written to
    ``results.json`` and ``results.md`` if ``write``; returns what results.json holds."""
    records = finished_records(out)
    rows, best = table_rows(records), best_rows(records)
    devices = sorted({r["device"] for r in records.values()})
    precisions = sorted({r.get("precision", "?") for r in records.values()}) or [recipe.precision]
    notes = [
        f"recipe {recipe.name}: {recipe.epochs} epochs, batch {recipe.batch_size}, "
        f"{recipe.img_size} x {recipe.img_size}, {'/'.join(precisions)} training, fp32 "
        "evaluation, "
        f"backbone {recipe.backbone} ({'pretrained' if recipe.pretrained else 'random init'}); "
        f"{recipe.estimate}",
        f"data {data}; device {', '.join(devices)}; runs finished: {len(records)} of "
        f"{len(RUNS)}"
        + (
            ""
            if len(records) == len(RUNS)
            else f" (not yet: {', '.join(r for r in RUNS if r not in records)})"
        ),
        f"validated every {recipe.eval_every} epoch(s) and after the last; the result is the "
        "last validation. The second table takes each run at its best validation (single-task "
        "runs: best primary metric; the others: best Δm against those), chosen on the "
        "validation set itself, so it is optimistic",
        "Δm: ours against our single-task runs, the paper's against its own (for MTL full "
        "fine-tuning computed from its per-task numbers); normals: mean angular error in degrees "
        "(lower is better)",
        "shared LoRA r=32 is our own variant; the paper's LoRA row (Δm "
        f"{PAPER_LORA_DELTA_M} %) has no published configuration, so it has no paper column",
    ]
    notes += [f"{RUNS[n].label}: {RUNS[n].about}" for n in RUNS if n in records]
    if recipe.name == "fixture" or not recipe.pretrained:
        notes.append("a plumbing check: these numbers mean nothing about the methods")
    results = {
        "recipe": recipe.to_dict(),
        "data": str(data),
        "runs": records,
        "table": rows,
        "table_best": best,
    }
    if write:
        sections = {
            "At the last validation (the result)": rows,
            "At the best validation (chosen on the validation set: optimistic)": best,
        }
        atomic_write(out / "results.json", json.dumps(results, indent=2) + "\n")
        atomic_write(
            out / "results.md", markdown(sections, f"PASCAL-Context, {recipe.name}", notes)
        )
    return results
