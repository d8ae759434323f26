"""The paper command: recipes as the official code's, the table beside the paper's (last and best
validation), and the whole command end to end on the fixture on a CPU (checkpoints, log,
periodic validation, resume, reload)."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch.utils.data import TensorDataset

from mtlora_lite.adapters.saving import load_adapters
from mtlora_lite.multitask.distributed import Launch, shard_train
from mtlora_lite.multitask.evaluation import evaluate
from mtlora_lite.multitask.history import Callback
from mtlora_lite.multitask.models import build_model
from mtlora_lite.multitask.pascal.data import DOWNLOAD_URL, TASKS
from mtlora_lite.multitask.pascal.fixture import write_pascal_fixture
from mtlora_lite.multitask.pascal.tasks import pascal_tasks
from mtlora_lite.multitask.runtime import seed_everything
from mtlora_lite.multitask.schedule import build_optimizer
from mtlora_lite.multitask.tasks import delta_m
from mtlora_lite.paper.command import main
from mtlora_lite.paper.recipes import RECIPES, RUNS
from mtlora_lite.paper.run import loaders, make_loaders, run_one, run_recipe
from mtlora_lite.paper.table import (
    HIGHER_IS_BETTER,
    PAPER,
    PRIMARY,
    at_best,
    markdown,
    paper_delta_m,
    table_rows,
)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_pascal_fixture(tmp_path_factory.mktemp("pascal") / "PASCAL_MT", n=6)


@pytest.fixture(scope="module")
def done(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The whole fixture recipe, every run, through the command line."""
    out = tmp_path_factory.mktemp("paper") / "fixture"
    assert main(["--recipe", "fixture", "--data", str(data), "--out", str(out), "--quiet"]) == 0
    return out


def test_the_paper_recipe_is_the_official_schedule() -> None:
    paper = RECIPES["paper"]
    assert (paper.epochs, paper.warmup_epochs, paper.batch_size, paper.img_size) == (
        300,
        20,
        32,
        448,
    )
    assert paper.lr == pytest.approx(3.125e-5) and paper.min_lr == 0.01
    assert (paper.weight_decay, paper.grad_clip, paper.pretrained) == (0.05, 5.0, True)
    # the official code trains with fp16 autocast and a GradScaler and validates every 5 epochs
    assert (paper.precision, paper.eval_every) == ("fp16", 5)
    options = paper.fit_options()
    assert options["warmup_start_lr"] == pytest.approx(5e-7 * 32 / 512)  # WARMUP_LR, scaled
    assert options["warmup"] == pytest.approx(20 / 300) and "no_weight_decay" not in options
    assert paper.backbone == "swin_tiny_patch4_window7_224" and "estimate" in paper.estimate
    swin = paper.replace(pretrained=False).build_backbone()  # no download
    assert swin.patch_embed.img_size == (448, 448)
    assert swin.layers[-1].blocks[-1].drop_path1.drop_prob == pytest.approx(0.2)  # drop path
    quick = RECIPES["paper-quick"]
    assert quick.lr == paper.lr and quick.epochs < paper.epochs and quick.precision == "fp16"
    assert RECIPES["fixture"].precision == "fp32"  # a CPU has no fp16 autocast
    assert paper.replace(epochs=None, max_steps=3).max_steps == 3  # None: keep the recipe's
    with pytest.raises(ValueError, match="warmup_epochs"):
        paper.replace(epochs=10)
    with pytest.raises(ValueError, match="precision"):
        paper.replace(precision="fp8")


def test_relative_position_tables_decay_as_in_the_official_optimizer() -> None:
    """The official optimizer exempts only 1-D parameters and biases (its multi-task model
    names no no_weight_decay_keywords): the position tables decay."""
    recipe = RECIPES["fixture"]
    model = build_model(recipe.build_backbone(), pascal_tasks(), "mtlora")
    options = recipe.fit_options()
    optimizer = build_optimizer(model, options["lr"], options["weight_decay"])
    decayed = {id(p) for g in optimizer.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    named = dict(model.named_parameters())
    tables = [n for n in named if "relative_position_bias_table" in n and named[n].requires_grad]
    assert tables and all(id(named[n]) in decayed for n in tables)
    assert not any(id(p) in decayed for p in named.values() if p.ndim == 1)


def test_an_epoch_is_156_steps_at_batch_32_with_drop_last() -> None:
    """4,998 training images: 156 full batches of 32 (the official loader drops the last
    partial batch), in one process and split over 2 or 4."""
    train, val = TensorDataset(torch.zeros(4998)), TensorDataset(torch.zeros(5105))
    loader, val_loader = make_loaders(train, val, 32)
    assert len(loader) == 156 and len(val_loader) == math.ceil(5105 / 32)
    for world in (2, 4):
        per_rank, _ = make_loaders(train, val, 32 // world)
        shards = [shard_train(per_rank, Launch(r, world), seed=0) for r in range(world)]
        assert [len(s) for s in shards] == [156] * world


def test_runs_cover_the_paper_table() -> None:
    singles = [r for r in RUNS.values() if r.single_task]
    assert [r.tasks for r in singles] == [(t,) for t in TASKS]
    assert {r.options.get("shared_rank") for r in RUNS.values() if r.method == "mtlora"} == {
        16,
        32,
        64,
    }
    assert {"mtl-full", "decoders", "shared-lora"} <= set(RUNS) and len(RUNS) == 10
    assert "our variant" in RUNS["shared-lora"].label and all(r.about for r in RUNS.values())


def test_primary_metrics_and_directions_come_from_the_tasks() -> None:
    tasks = pascal_tasks()
    assert PRIMARY == {n: t.primary for n, t in tasks.items()}
    assert HIGHER_IS_BETTER == {n: t.higher_is_better for n, t in tasks.items()}


def test_paper_delta_m_follows_from_its_per_task_numbers() -> None:
    for name in ("decoders", "mtlora-r16", "mtlora-r32", "mtlora-r64"):
        row = {t: PAPER[name][t] for t in TASKS}
        computed = delta_m(row, PAPER["single"], HIGHER_IS_BETTER)
        assert computed == pytest.approx(PAPER[name]["delta_m"], abs=0.02)  # rounding only
    assert paper_delta_m("mtl-full") == pytest.approx(2.45, abs=0.01)
    # the paper's LoRA row has no published configuration: nothing beside our variant
    assert paper_delta_m("shared-lora") is None and paper_delta_m("unknown") is None


def _metrics(tasks: tuple[str, ...], values: dict[str, float]) -> dict:
    return {t: {"mIoU": values[t], "maxF": 50.0, "mean_angle": values[t]} for t in tasks}


def _record(name: str, tasks: tuple[str, ...], *evals: dict[str, float]) -> dict:
    """A run record whose validations (epochs 1, 2, ...) had the primary values ``evals``."""
    history = [
        {"epoch": k + 1, "step": 10 * (k + 1), "metrics": _metrics(tasks, v)}
        for k, v in enumerate(evals)
    ]
    return {
        **{"name": name, "label": name, "tasks": list(tasks), "metrics": history[-1]["metrics"]},
        **{"single_task": len(tasks) == 1, "trainable": 2_000_000, "device_hours": 0.5},
        **{"evals": history, "epoch": len(evals)},
    }


REFS = {"semseg": 60.0, "human_parts": 50.0, "sal": 40.0, "normals": 20.0}


def test_table_rows_measure_delta_m_against_our_single_task_runs() -> None:
    records = {f"single-{t}": _record(f"single-{t}", (t,), REFS) for t in TASKS}
    better = {"semseg": 66.0, "human_parts": 50.0, "sal": 40.0, "normals": 18.0}  # +10 %, +10 %
    records["mtlora-r64"] = _record("MTLoRA r=64", TASKS, better)
    records["shared-lora"] = _record("shared LoRA r=32 (our variant)", TASKS, better)
    single, mtlora, shared = table_rows(records)
    assert single["Δm %"] == 0.0 and single["trainable M"] == pytest.approx(8.0)
    assert single["device-hours"] == pytest.approx(2.0)
    assert mtlora["Δm %"] == pytest.approx((10 + 0 + 0 + 10) / 4)
    assert mtlora["Δm % (paper)"] == 2.55 and mtlora["trainable M (paper)"] == 8.34
    assert mtlora["semseg mIoU (paper)"] == 67.90
    assert shared["Δm %"] == mtlora["Δm %"] and shared["Δm % (paper)"] is None
    assert shared["semseg mIoU (paper)"] is None
    records["single-normals"]["metrics"]["normals"]["mean_angle"] = 0.0  # undefined change
    assert table_rows(records)[1]["Δm %"] is None
    del records["single-sal"]  # no reference for saliency: no Delta_m
    assert table_rows(records)[1]["Δm %"] is None
    records["semseg-only"] = _record("semseg only", ("semseg",), better) | {"single_task": False}
    assert table_rows(records)[-1]["Δm %"] == pytest.approx(10.0)  # on its own tasks
    text = markdown({"last": table_rows(records)}, "title", ["a note"])
    assert text.startswith("# title\n\n- a note\n\n## last\n")
    assert "| model | semseg mIoU | paper |" in text and "| — |" in text


def test_the_best_validation_is_chosen_by_delta_m_and_labelled_apart() -> None:
    """The last validation is the result; the best (the one public rerun of the official code
    reported it) is each run at its best validation: single-task runs by their primary metric,
    the others by Delta_m against those."""
    records = {f"single-{t}": _record(f"single-{t}", (t,), REFS, REFS) for t in TASKS}
    worse_normals = {**REFS, "normals": 25.0}
    records["single-normals"] = _record("single-normals", ("normals",), REFS, worse_normals)
    good = {**REFS, "semseg": 66.0}
    late = {**REFS, "sal": 38.0, "normals": 26.0}
    records["mtlora-r16"] = _record("MTLoRA r=16", TASKS, good, REFS, late)
    last = {r["model"]: r for r in table_rows(records)}
    best = {r["model"]: r for r in table_rows(at_best(records))}
    assert last["MTLoRA r=16"]["epoch"] == 3 and best["MTLoRA r=16"]["epoch"] == 1
    assert best["MTLoRA r=16"]["Δm %"] == pytest.approx(10 / 4)
    assert last["MTLoRA r=16"]["Δm %"] < 0 < best["MTLoRA r=16"]["Δm %"]
    assert last["single-task (4 models)"]["normals mean°"] == 25.0
    assert best["single-task (4 models)"]["normals mean°"] == 20.0  # lower is better
    assert best["single-task (4 models)"]["epoch"] == 1  # ties: the earliest
    del records["single-sal"]["evals"]  # a run without a history: no best for it nor its users
    assert set(at_best(records)) == {"single-semseg", "single-human_parts", "single-normals"}


def test_without_data_the_command_says_what_to_download(capsys, tmp_path: Path) -> None:
    assert main(["--recipe", "paper-quick", "--out", str(tmp_path)]) == 2
    assert DOWNLOAD_URL in capsys.readouterr().err
    assert main(["--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "JPEGImages" in err and DOWNLOAD_URL in err
    assert not list(tmp_path.rglob("*.json"))  # nothing recorded, nothing downloaded
    assert main(["--recipe", "paper", "--epochs", "10", "--out", str(tmp_path)]) == 2
    assert "warmup_epochs" in capsys.readouterr().err  # 20 warm-up epochs do not fit in 10


def test_the_fixture_recipe_runs_end_to_end(done: Path) -> None:
    results = json.loads((done / "results.json").read_text())
    recipe = RECIPES["fixture"]
    assert list(results["runs"]) == list(RUNS)
    for name, record in results["runs"].items():
        assert set(record["metrics"]) == set(RUNS[name].tasks)
        values = [v for m in record["metrics"].values() for v in m.values()]
        assert values and all(math.isfinite(v) for v in values)
        # 2 epochs of 2 batches; human parts alone trains on the 3 images with a person: 1 batch
        steps = 2 if name == "single-human_parts" else 4
        assert record["trainable"] > 0 and record["steps"] == steps
        assert [e["epoch"] for e in record["evals"]] == [1, 2]  # validated every epoch
        assert record["metrics"] == record["evals"][-1]["metrics"] and record["epoch"] == 2
        run_dir = done / "runs" / name
        lines = [json.loads(s) for s in (run_dir / "log.jsonl").read_text().splitlines()]
        step_lines = [e for e in lines if e["event"] == "step"]
        assert [e["step"] for e in step_lines] == list(range(1, steps + 1))
        if steps == 4:  # a warm-up of one step (human parts alone: round(0.5) = 0 steps)
            assert step_lines[0]["lr"] == pytest.approx(recipe.warmup_start_lr)  # 5e-7 B / 512
        assert [e["epoch"] for e in lines if e["event"] == "eval"] == [1, 2]
        assert lines[-1]["event"] == "result"
    assert results["runs"]["single-human_parts"]["train_images"] == 3
    assert len(results["table"]) == len(results["table_best"]) == 7  # single-task row + 6
    assert all(row["Δm %"] is not None for row in results["table"])
    shared = next(r for r in results["table"] if "shared LoRA" in r["model"])
    assert shared["Δm % (paper)"] is None and "our variant" in shared["model"]
    text = (done / "results.md").read_text()
    assert "MTLoRA r=64" in text and "8.34" in text and "plumbing check" in text
    assert "## At the last validation (the result)" in text and "## At the best validation" in text
    assert "no published configuration" in text
    assert json.loads((done / "recipe.json").read_text())["name"] == "fixture"


def test_checkpoints_hold_the_trained_parts_only(done: Path) -> None:
    saved = load_file(str(done / "runs/mtlora-r16/checkpoint.safetensors"))
    model_keys = [k for k in saved if k.startswith("model/")]
    assert any("lora_A" in k for k in model_keys) and any("decoders" in k for k in model_keys)
    assert any("running_mean" in k for k in model_keys)  # the decoders' BatchNorm statistics
    assert not [k for k in model_keys if "base_layer.weight" in k]  # never the frozen backbone
    full = load_file(str(done / "runs/mtl-full/checkpoint.safetensors"))
    assert any("base_layer" not in k and "qkv.weight" in k for k in full)  # full FT: all of it


def test_a_second_call_reads_finished_runs_back(done: Path, data: Path) -> None:
    log = done / "runs/mtlora-r16/log.jsonl"
    before = log.read_text()
    results = run_recipe(RECIPES["fixture"], data, done, ["mtlora-r16"], progress=False)
    assert log.read_text() == before  # finished: nothing trained again
    assert len(results["runs"]) == len(RUNS)  # the table holds every finished run
    with pytest.raises(ValueError, match="another recipe"):
        run_recipe(RECIPES["fixture"].replace(epochs=3), data, done, progress=False)
    with pytest.raises(ValueError, match=r"another recipe \(differs in \['precision'\]\)"):
        run_recipe(RECIPES["fixture"].replace(precision="bf16"), data, done, progress=False)


def test_the_saved_adapters_rebuild_the_evaluated_model(done: Path, data: Path) -> None:
    recipe, spec = RECIPES["fixture"], RUNS["mtlora-r32"]
    seed_everything(recipe.seed)
    model = build_model(
        recipe.build_backbone(), pascal_tasks(spec.tasks), spec.method, **spec.options
    )
    load_adapters(model, done / "runs" / spec.name / "adapters.safetensors")
    _, val = loaders(data, recipe, spec.tasks)
    metrics = evaluate(model, pascal_tasks(spec.tasks), val, device="cpu")
    record = json.loads((done / "runs" / spec.name / "result.json").read_text())
    for task, values in record["metrics"].items():
        for key, value in values.items():
            assert metrics[task][key] == pytest.approx(value, rel=1e-4, abs=1e-4)
    other = build_model(recipe.build_backbone(), pascal_tasks(spec.tasks), "mtlora", shared_rank=8)
    with pytest.raises(ValueError, match="adapter configs differ"):
        load_adapters(other, done / "runs" / spec.name / "adapters.safetensors")


class Interrupt(Callback):
    def on_step_end(self, step: int, model: torch.nn.Module, logs: dict) -> None:
        if step == 3:  # after the checkpoint of epoch 1
            raise KeyboardInterrupt


def test_an_interrupted_run_resumes_to_the_same_result(data: Path, tmp_path: Path) -> None:
    recipe, spec = RECIPES["fixture"], RUNS["mtlora-r16"]
    seed_everything(recipe.seed)
    backbone = recipe.build_backbone()
    whole = run_one(spec, recipe, data, tmp_path / "whole", backbone, progress=False)
    with pytest.raises(KeyboardInterrupt):
        run_one(
            spec, recipe, data, tmp_path / "cut", backbone, progress=False, callbacks=[Interrupt()]
        )
    assert not (tmp_path / "cut/runs" / spec.name / "result.json").exists()
    resumed = run_one(spec, recipe, data, tmp_path / "cut", backbone, progress=False)
    assert resumed["steps"] == whole["steps"] == 4 and not resumed["cached"]
    assert [e["epoch"] for e in resumed["evals"]] == [1, 2]  # the first from the checkpoint
    log = [json.loads(s) for s in (tmp_path / "cut/runs" / spec.name / "log.jsonl").open()]
    assert [e["start_step"] for e in log if e["event"] == "fit_start"] == [0, 2]  # from epoch 1
    assert [e["step"] for e in log if e["event"] == "step"] == [1, 2, 3, 4]  # step 3 once
    for task, values in whole["metrics"].items():
        for key, value in values.items():
            assert resumed["metrics"][task][key] == pytest.approx(value, rel=1e-4, abs=1e-4)


def test_the_command_runs_under_torchrun(data: Path, tmp_path: Path, run_python: Callable) -> None:
    """Two gloo processes on the CPU: each takes half of every batch, rank 0 writes the table."""
    command = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node"]
    command += ["2", "-m", "mtlora_lite.paper", "--recipe", "fixture", "--quiet"]
    command += ["--data", str(data), "--out", str(tmp_path), "--runs", "mtl-full", "mtlora-r16"]
    command += ["--device", "cpu"]
    done = run_python(command, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    assert {r["processes"] for r in results["runs"].values()} == {2}
    assert (tmp_path / "runs" / "mtlora-r16" / "adapters.safetensors").is_file()
