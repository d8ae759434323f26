"""Reproduce the MTLoRA paper's PASCAL-Context table: one command runs every model and writes our
numbers beside the paper's.

    python -m mtlora_lite.paper --data /path/to/PASCAL_MT --recipe paper-quick
    make paper DATA=/path/to/PASCAL_MT RECIPE=paper-quick             # the same
    torchrun --nproc_per_node 4 -m mtlora_lite.paper --data ... --recipe paper
    python -m mtlora_lite.paper --recipe fixture            # offline plumbing check

Recipes and runs: ``paper.recipes``; the data: ``pascal`` (without ``--data`` the command says
what to download; the fixture recipe writes its own tiny archive). Under ``--out`` (default
``outputs/paper/<recipe>``) it writes

    recipe.json                        the effective recipe; later calls must use the same
    runs/<run>/checkpoint.safetensors  ``fit``'s checkpoint after every epoch: the trained parts
                                       only (adapters, decoders, trainable norms, and their
                                       buffers; never the frozen backbone), optimizer, schedule
    runs/<run>/adapters.safetensors    the trained model's parts (``save_adapters``: checksummed,
                                       with the base's fingerprint); ``load_adapters`` puts them
                                       back into a model built as the run built it
    runs/<run>/log.jsonl               JSON lines: fit starts, steps, the evaluation, the result
    runs/<run>/result.json             the finished run: metrics, trainable parameters, hours
    results.json, results.md           the table, ours beside the paper's (``paper.table``)

Calling it again resumes: finished runs are read back, an interrupted one continues after its last
saved epoch.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from mtlora_lite.adapters.atomic import atomic_write
from mtlora_lite.adapters.breakdown import trainable_breakdown
from mtlora_lite.adapters.saving import save_adapters
from mtlora_lite.multitask.distributed import rank_and_world
from mtlora_lite.multitask.evaluation import evaluate, resolve_device, seed_everything
from mtlora_lite.multitask.history import Callback, Metrics
from mtlora_lite.multitask.models import build_model
from mtlora_lite.multitask.pascal.data import DOWNLOAD_URL, MissingDataError, PascalContext
from mtlora_lite.multitask.pascal.fixture import write_pascal_fixture
from mtlora_lite.multitask.pascal.tasks import LOSS_WEIGHTS, pascal_tasks
from mtlora_lite.multitask.pascal.transforms import PascalTransform
from mtlora_lite.multitask.train import fit
from mtlora_lite.paper.recipes import NO_WEIGHT_DECAY, RECIPES, RUNS, Recipe, RunSpec
from mtlora_lite.paper.table import markdown, table_rows


def loaders(data: Path, recipe: Recipe, tasks: Sequence[str]) -> tuple[DataLoader, DataLoader]:
    """Training (augmented, shuffled, full batches) and validation (resized) loaders; each
    process's batch is ``recipe.batch_size`` / world size."""
    _, world = rank_and_world()
    if recipe.batch_size % world:
        raise ValueError(f"batch {recipe.batch_size} does not split over {world} processes")
    batch = recipe.batch_size // world
    train = PascalContext(data, "train", tasks, PascalTransform(recipe.img_size, train=True))
    val = PascalContext(data, "val", tasks, PascalTransform(recipe.img_size))
    if len(train) < batch:
        raise ValueError(
            f"{len(train)} training images make no batch of {batch}: lower --batch-size"
        )
    workers = recipe.workers
    options = {"num_workers": workers, "persistent_workers": workers > 0}
    options["pin_memory"] = torch.cuda.is_available()
    shuffle = torch.Generator().manual_seed(recipe.seed)  # fit reseeds it every epoch
    return (
        DataLoader(train, batch, shuffle=True, drop_last=True, generator=shuffle, **options),
        DataLoader(val, batch, **options),
    )


class JsonLog(Callback):
    """Appends one JSON object a line to ``path`` (flushed each time): ``{"event", "run",
    "time", ...}`` for fit starts, every ``every``-th step (and the first), evaluations and
    whatever ``write`` is given. A crash leaves at most a partial last line."""

    def __init__(self, path: str | Path, run: str, every: int = 10) -> None:
        self.path, self.run, self.every = Path(path), run, every
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, event: str, **fields: Any) -> None:
        line = json.dumps({"event": event, "run": self.run, "time": time.time(), **fields})
        with self.path.open("a") as f:
            f.write(line + "\n")

    def on_fit_start(self, model: nn.Module) -> None:
        self.write("fit_start")

    def on_step_end(self, step: int, model: nn.Module, logs: dict[str, Any]) -> None:
        if step == 1 or step % self.every == 0:
            self.write("step", **logs)

    def on_eval_end(self, epoch: int, model: nn.Module, metrics: Metrics) -> None:
        self.write("eval", epoch=epoch, metrics=metrics)


def run_one(
    spec: RunSpec,
    recipe: Recipe,
    data: Path,
    out: Path,
    backbone: nn.Module,
    *,
    device: str = "auto",
    progress: bool = True,
    callbacks: Sequence[Callback] = (),
) -> dict[str, Any]:
    """Train and evaluate one run under ``out/runs/<name>`` and return its record; a finished
    run's record is read back instead (``"cached": True``), an interrupted one resumes."""
    run_dir = out / "runs" / spec.name
    done = run_dir / "result.json"
    if done.is_file():
        return {**json.loads(done.read_text()), "cached": True}
    rank, world = rank_and_world()
    tasks = pascal_tasks(spec.tasks)
    train, val = loaders(data, recipe, spec.tasks)
    seed_everything(recipe.seed)
    model = build_model(backbone, tasks, spec.method, **spec.options)
    log = JsonLog(run_dir / "log.jsonl", spec.name, recipe.log_every)
    history = fit(
        model,
        tasks,
        train,
        epochs=recipe.epochs,
        max_steps=recipe.max_steps,
        lr=recipe.lr,
        min_lr=recipe.min_lr,
        weight_decay=recipe.weight_decay,
        no_weight_decay=NO_WEIGHT_DECAY,
        warmup=recipe.warmup,
        grad_clip=recipe.grad_clip,
        loss_weights={t: LOSS_WEIGHTS[t] for t in spec.tasks},
        device=device,
        precision="bf16" if recipe.amp else "fp32",
        callbacks=[log, *callbacks],
        progress=progress,
        seed=recipe.seed,
        checkpoint_dir=run_dir,
    )
    tic = time.perf_counter()
    metrics = evaluate(model, tasks, val, device=device, progress=progress)
    seconds = history.wall_time_s + time.perf_counter() - tic
    dev, breakdown = resolve_device(device), trainable_breakdown(model)
    record = {
        "name": spec.name,
        "label": spec.label,
        "method": spec.method,
        "tasks": list(spec.tasks),
        "options": dict(spec.options),
        "single_task": spec.single_task,
        "metrics": metrics,
        "trainable": breakdown.trainable,
        "breakdown": breakdown.to_dict(),
        "steps": len(history.steps),
        "final_loss": history.steps[-1]["loss"],
        "images_per_s": history.images_per_s,
        "seconds": seconds,
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else dev.type,
        "processes": world,
        "device_hours": seconds * world / 3600,
        "recipe": recipe.name,
    }
    if rank == 0:
        save_adapters(model, run_dir / "adapters.safetensors")
        log.write("result", **{k: record[k] for k in ("metrics", "trainable", "seconds")})
        atomic_write(done, json.dumps(record, indent=2) + "\n")
    return {**record, "cached": False}


def _same_recipe(out: Path, recipe: Recipe) -> None:
    """Write ``out/recipe.json``, or check that the runs there were made with this recipe."""
    path, wanted = out / "recipe.json", json.loads(json.dumps(recipe.to_dict()))
    if path.is_file():
        saved = json.loads(path.read_text())
        diff = sorted(k for k in saved.keys() | wanted.keys() if saved.get(k) != wanted.get(k))
        if diff:
            raise ValueError(
                f"{out} holds runs of another recipe (differs in {diff}): pass another --out, or "
                "delete that folder to start afresh"
            )
    elif rank_and_world()[0] == 0:
        atomic_write(path, json.dumps(wanted, indent=2) + "\n")


def run_recipe(
    recipe: Recipe,
    data: str | Path,
    out: str | Path,
    runs: Sequence[str] = tuple(RUNS),
    *,
    device: str = "auto",
    progress: bool = True,
) -> dict[str, Any]:
    """Every run of ``runs`` (names of ``RUNS``), then the table (``results.json`` and
    ``results.md`` under ``out``); returns what results.json holds."""
    unknown = [r for r in runs if r not in RUNS]
    if unknown or not runs:
        raise ValueError(f"unknown runs {unknown or list(runs)}; choose from {list(RUNS)}")
    data, out = Path(data), Path(out)
    PascalContext(data, "val")  # a missing or incomplete archive fails here, before any download
    _same_recipe(out, recipe)
    seed_everything(recipe.seed)
    backbone = recipe.build_backbone()
    records = {}
    for name in runs:
        if progress and rank_and_world()[0] == 0:
            print(f"[{len(records) + 1}/{len(runs)}] {RUNS[name].label}", flush=True)
        records[name] = run_one(
            RUNS[name], recipe, data, out, backbone, device=device, progress=progress
        )
    rows = table_rows(records)
    notes = [
        f"recipe {recipe.name}: {recipe.epochs} epochs, batch {recipe.batch_size}, "
        f"{recipe.img_size} x {recipe.img_size}, backbone {recipe.backbone} "
        f"({'pretrained' if recipe.pretrained else 'random init'}); {recipe.estimate}",
        f"data {data}; device {', '.join(sorted({r['device'] for r in records.values()}))}",
        "Δm: ours against our single-task runs, the paper's against its own (for MTL full "
        "fine-tuning computed from its per-task numbers); normals: mean angular error in degrees "
        "(lower is better)",
    ]
    if recipe.name == "fixture" or not recipe.pretrained:
        notes.append("a plumbing check: these numbers mean nothing about the methods")
    results = {"recipe": recipe.to_dict(), "data": str(data), "runs": records, "table": rows}
    if rank_and_world()[0] == 0:
        atomic_write(out / "results.json", json.dumps(results, indent=2) + "\n")
        atomic_write(out / "results.md", markdown(rows, f"PASCAL-Context, {recipe.name}", notes))
    return results


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m mtlora_lite.paper",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--data", type=Path, help="the extracted PASCAL_MT folder (holds JPEGImages/)")
    p.add_argument("--recipe", default="paper-quick", choices=list(RECIPES))
    p.add_argument("--runs", nargs="+", default=list(RUNS), choices=list(RUNS), metavar="RUN")
    p.add_argument("--out", type=Path, help="output folder (default outputs/paper/<recipe>)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    for name in ("epochs", "max-steps", "batch-size", "img-size", "workers", "seed"):
        p.add_argument(f"--{name}", type=int, help="override the recipe's value")
    p.add_argument("--no-pretrained", action="store_true", help="random backbone (no download)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """The command line (module docstring); returns the exit status (2: bad input, with why)."""
    args = _parser().parse_args(argv)
    overrides = {k: getattr(args, k) for k in ("epochs", "max_steps", "batch_size", "img_size")}
    overrides.update(workers=args.workers, seed=args.seed)
    try:
        recipe = RECIPES[args.recipe].replace(
            **overrides, pretrained=False if args.no_pretrained else None
        )
        out = args.out or Path("outputs/paper") / recipe.name
        data = args.data
        if data is None and recipe.name == "fixture":
            data = out / "PASCAL_MT_fixture"
            if not (data / "ImageSets/Context/val.txt").is_file():
                write_pascal_fixture(data)
        if data is None:
            print(
                f"--data is needed: the path of the extracted PASCAL_MT archive. Download it "
                f"(about 3 GB) from {DOWNLOAD_URL}, extract it with `tar xzf PASCAL_MT.tgz`, and "
                "pass the folder that holds JPEGImages/. (`--recipe fixture` runs offline on a "
                "tiny generated archive instead.)",
                file=sys.stderr,
            )
            return 2
        run_recipe(recipe, data, out, args.runs, device=args.device, progress=not args.quiet)
    except (MissingDataError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if rank_and_world()[0] == 0:
        print((out / "results.md").read_text())
        print(f"written: {out / 'results.md'}, {out / 'results.json'}, runs under {out / 'runs'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
