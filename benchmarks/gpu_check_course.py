"""The course part of the GPU check: every training call notebooks 01-05 make, and the worker
that makes them."""

from __future__ import annotations

import argparse
import datetime as dt
import platform
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from gpu_check_summary import write_json

# The dry run's course calls (seed 0 only): full fine-tuning, MTLoRA, HydraLoRA and R-LoRA, and
# the notebooks' repeated calls of them, which read the first call's record.
DRY_RUNS = ("full-semseg", "mtlora-semseg+parts+saliency+normals", "hydra", "rlora")


@dataclass(frozen=True)
class CourseCall:
    """One ``run_dense`` / ``run_mixture`` call of a notebook; ``name`` is the run's name."""

    notebook: str
    kind: str  # "dense" or "mixture"
    name: str
    kwargs: dict[str, Any]


# The parameters-cell values of the notebooks that the course calls below depend on (with their
# default SEED 0); tests/test_gpu_check.py checks them against the notebooks.
NOTEBOOK_PARAMETERS: dict[str, dict[str, Any]] = {
    "01": {"RANKS": (2, 8, 32)},
    "03": {"ABLATIONS": {"mtlora-ts-last-stage": {"task_stages": [3]}}},
    "04": {"N_HEADS": 4, "RANK": 4, "SIMILARITY_POINTS": 32},
    "05": {"N_SEEDS": None, "N_HEADS": 4, "RANK": 4, "SIMILARITY_POINTS": 32},
}
MIXTURE_VARIANTS: dict[str, dict[str, Any]] = {  # notebook 05's VARIANTS (run_mixture options)
    "hydra": dict(init="hydra", dropout_mode="shared"),
    "hydra+mh-dropout": dict(init="hydra", dropout_mode="per_head_ax"),
    "rlora-init": dict(init="rlora", dropout_mode="shared"),
    "rlora": dict(init="rlora", dropout_mode="per_head_ax"),
    "rlora-no-router": dict(init="rlora", dropout_mode="per_head_ax", router=False),
    "lora-r16": dict(adapter="lora"),  # lora-r{N_HEADS * RANK}
}


def course_calls(profile: str) -> list[CourseCall]:
    """Every training call notebooks 01-05 make, in their order, with their options (profile,
    device and cache are added by the caller). Mirrors the notebooks' cells; repeated calls are
    kept, since the course makes them too (they read the first call's record)."""
    from mtlora_lite.course.experiments import DENSE_TASKS, recipe

    def dense(
        notebook: str, method: str, tasks: Sequence[str] = DENSE_TASKS, **options: Any
    ) -> CourseCall:
        name = options.get("name") or f"{method}-{'+'.join(tasks)}"
        kwargs = dict(method=method, tasks=list(tasks), **options)
        return CourseCall(notebook, "dense", name, kwargs)

    def mixture(notebook: str, name: str, **options: Any) -> CourseCall:
        params = NOTEBOOK_PARAMETERS[notebook]
        rec = recipe("mixture", profile)
        steps = rec.epochs * (rec.n_train // rec.batch_size)  # the notebooks' rule
        every = max(1, steps // params["SIMILARITY_POINTS"])
        heads = dict(n_heads=params["N_HEADS"], rank=params["RANK"], similarity_every=every)
        return CourseCall(notebook, "mixture", name, dict(name=name, **options, **heads))

    calls = [dense("01", "full", ["semseg"]), dense("01", "decoders", ["semseg"])]
    calls += [
        dense("01", "shared_lora", ["semseg"], shared_rank=r, name=f"lora-r{r}-semseg")
        for r in NOTEBOOK_PARAMETERS["01"]["RANKS"]
    ]
    for notebook in ("02", "03"):  # 03 repeats 02's single-task references and baselines
        calls += [dense(notebook, "full", [task]) for task in DENSE_TASKS]
        calls += [dense(notebook, method) for method in ("full", "decoders", "shared_lora")]
    calls += [dense("03", "mtlora")]
    for name, options in NOTEBOOK_PARAMETERS["03"]["ABLATIONS"].items():
        calls += [dense("03", "mtlora", name=name, **options)]
    calls += [mixture("04", "hydra", adapter="multihead", init="hydra", dropout_mode="shared")]
    n_seeds = NOTEBOOK_PARAMETERS["05"]["N_SEEDS"] or (2 if profile == "smoke" else 3)
    for name, options in MIXTURE_VARIANTS.items():
        options = {"adapter": "multihead", **options}
        calls += [mixture("05", name, seed=seed, **options) for seed in range(n_seeds)]
    return calls


def course_worker(args: argparse.Namespace) -> int:
    """Make the course calls on ``args.device``, recording each into course_runs.json as it
    finishes; a call that fails is recorded and the next one made. Exit code 1 if any failed."""
    import torch

    from mtlora_lite.course.experiments import run_dense, run_mixture

    calls = course_calls(args.profile)
    if args.dry_run:
        calls = [c for c in calls if c.name in DRY_RUNS and c.kwargs.get("seed", 0) == 0]
    calls = calls[: args.course_runs]
    cache = args.work / "course_cache"
    cuda = args.device == "cuda"
    record: dict[str, Any] = {
        "profile": args.profile,
        "device": args.device,
        "device_name": torch.cuda.get_device_name() if cuda else platform.machine(),
        "torch": torch.__version__,
        "date": dt.date.today().isoformat(),
        "planned": len(calls),
        "runs": [],
    }
    start, failed = time.perf_counter(), 0
    for i, call in enumerate(calls, 1):
        tic = time.perf_counter()
        entry: dict[str, Any] = {"notebook": call.notebook, "kind": call.kind, "name": call.name}
        entry["seed"] = call.kwargs.get("seed", 0)
        run = run_dense if call.kind == "dense" else run_mixture
        try:
            result = run(
                **call.kwargs,
                profile=args.profile,
                device=args.device,
                cache_dir=cache,
                progress=False,
            )
            entry.update(cached=result.cached, train_s=round(result.seconds, 2))
            entry.update(images_per_s=round(result.images_per_s, 1), primary=result.primary)
        except Exception as err:  # recorded; the next call still runs
            failed += 1
            entry["error"] = f"{type(err).__name__}: {err}"
            traceback.print_exc()
        entry["wall_s"] = round(time.perf_counter() - tic, 2)
        record["runs"].append(entry)
        record["total_s"] = round(time.perf_counter() - start, 1)
        if cuda:
            record["peak_mib"] = round(torch.cuda.max_memory_allocated() / 2**20)
        write_json(args.out / "course_runs.json", record)
        how = "cached" if entry.get("cached") else "error" if "error" in entry else "trained"
        print(
            f"{i:>2}/{len(calls)} {call.notebook} {call.name:<40} seed {entry['seed']}: "
            f"{how:<7} {entry['wall_s']:7.1f} s (total {record['total_s']:.0f} s)",
            flush=True,
        )
    return 1 if failed else 0
