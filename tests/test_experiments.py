"""Course experiments: smoke runs record real metrics, and the cache returns exactly what was run."""

from __future__ import annotations

import errno
import math
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

from mtlora_lite.course import experiments
from mtlora_lite.course import seeds as course_seeds
from mtlora_lite.course.experiments import recipe, run_dense, run_mixture
from mtlora_lite.course.notebook import for_profile
from mtlora_lite.course.records import RunResult, load_results
from mtlora_lite.course.scene_tasks import build_tasks
from mtlora_lite.multitask.history import History


def _smoke_dense(method: str, cache_dir: Path | None, **options: object) -> RunResult:
    """A smoke-profile dense semseg run on CPU."""
    return run_dense(
        method,
        ["semseg"],
        profile="smoke",
        device="cpu",
        cache_dir=cache_dir,
        progress=False,
        **options,  # type: ignore[arg-type]
    )


def test_dense_run_is_cached_by_its_spec(tmp_path: Path) -> None:
    first = _smoke_dense("shared_lora", tmp_path, shared_rank=2)
    assert not first.cached and first.tasks == ["semseg"]
    assert set(first.primary) == {"semseg"} and 0.0 <= first.primary["semseg"] <= 100.0  # mIoU in %
    assert 0 < first.trainable < first.total
    again = _smoke_dense("shared_lora", tmp_path, shared_rank=2)
    assert again.cached and again.primary == first.primary and again.loss_curve == first.loss_curve
    other = _smoke_dense("shared_lora", tmp_path, shared_rank=4)
    assert not other.cached  # a different option is a different run
    # the capacity knob of notebooks 02 / 03: the shared rank scales only the TA-LoRA group
    grown = {
        g: other.breakdown[g]["trainable"] - first.breakdown[g]["trainable"]
        for g in first.breakdown
    }
    assert {g for g, d in grown.items() if d} == {"ta_lora"} and grown["ta_lora"] > 0
    assert len(load_results(tmp_path)) == 2


def test_mixture_run_records_similarity_and_router(tmp_path: Path) -> None:
    result = run_mixture(
        "multihead",
        profile="smoke",
        device="cpu",
        cache_dir=None,
        progress=False,
        n_heads=2,
        rank=2,
        init="rlora",
        similarity_every=1,
    )
    assert result.options["n_heads"] == 2 and "answer" in result.primary
    curve = result.extras["similarity"]
    assert curve["steps"][0] == 0 and len(curve["values"]) == len(curve["steps"]) > 1
    assert all(-1.0 <= v <= 1.0 for row in curve["values"] for v in row.values() if v == v)
    layer = next(iter(result.extras["router"].values()))
    assert abs(sum(layer["mean_weight"]) - 1.0) < 1e-4
    lora = run_mixture(
        "lora", profile="smoke", device="cpu", cache_dir=None, progress=False, n_heads=2, rank=2
    )
    assert lora.options["rank"] == 4 and "similarity" not in lora.extras


def test_bad_profile_and_adapter_are_clear_errors() -> None:
    with pytest.raises(ValueError, match="unknown profile"):
        recipe("dense", "huge")
    with pytest.raises(ValueError, match="adapter must be"):
        run_mixture("prefix", profile="smoke")


def test_a_run_does_not_depend_on_earlier_random_state() -> None:
    torch.manual_seed(1)
    first = _smoke_dense("decoders", None)
    torch.manual_seed(2)
    again = _smoke_dense("decoders", None)
    assert again.primary == first.primary and again.loss_curve == first.loss_curve


class FakeFit:
    """Stands in for ``fit`` (no training): records its calls and returns a one-step History."""

    def __init__(self) -> None:
        self.calls: list[dict] = []

    def __call__(self, model: object, tasks: dict, *loaders: object, **kwargs: object) -> History:
        self.calls.append(kwargs)
        metrics = {t: {task.primary: 10.0 + len(self.calls)} for t, task in tasks.items()}
        return History(
            steps=[{"step": 1, "lr": kwargs["lr"], "loss": 1.0, "grad_norm": 1.0, "losses": {}}],
            evals=[{"epoch": 1, "step": 1, "metrics": metrics}],
            wall_time_s=0.1,
        )


@pytest.fixture
def fake_fit(monkeypatch: pytest.MonkeyPatch) -> FakeFit:
    fake = FakeFit()
    monkeypatch.setattr(experiments, "fit", fake)
    return fake


def _entry(cache: Path) -> Path:
    (path,) = cache.glob("*.json")
    return path


def test_an_unreadable_cache_entry_is_named_retrained_and_overwritten(
    tmp_path: Path, fake_fit: FakeFit
) -> None:
    first = _smoke_dense("decoders", tmp_path)
    path = _entry(tmp_path)
    for damage in (path.read_text()[:100], '{"name": "decoders-semseg"}', "[1, 2]"):
        path.write_text(damage)  # cut short by a kill, or fields missing, or not a record
        with pytest.warns(
            UserWarning,
            match=rf"{path.name} is not a .*run record.*ignoring this cache entry, training the run again",
        ):
            again = _smoke_dense("decoders", tmp_path)
        assert not again.cached
        assert _smoke_dense("decoders", tmp_path).cached  # the new result replaced it
    assert len(fake_fit.calls) == 4 and first.trainable == again.trainable


@pytest.mark.parametrize(
    ("err", "strerror"), [(errno.EROFS, "Read-only file system"), (errno.ENOSPC, "No space left")]
)
def test_an_unwritable_cache_fails_before_training(
    tmp_path: Path,
    fake_fit: FakeFit,
    monkeypatch: pytest.MonkeyPatch,
    err: int,
    strerror: str,
) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise OSError(err, strerror)  # what a read-only or full folder answers

    monkeypatch.setattr(tempfile, "TemporaryFile", refuse)
    cache = tmp_path / "cache"
    with pytest.raises(OSError, match=rf"cannot write to {cache}: {strerror}.*cache_dir=None"):
        _smoke_dense("decoders", cache)
    assert not fake_fit.calls  # nothing was trained (and lost)
    (tmp_path / "a-file").touch()
    with pytest.raises(OSError, match=r"cannot write to .*a-file/cache"):  # a real unwritable path
        _smoke_dense("decoders", tmp_path / "a-file" / "cache")


@pytest.mark.parametrize("fault", [KeyboardInterrupt(), OSError(errno.ENOSPC, "No space left")])
def test_a_write_cut_short_leaves_no_half_entry(
    tmp_path: Path, fake_fit: FakeFit, monkeypatch: pytest.MonkeyPatch, fault: BaseException
) -> None:
    real = Path.write_bytes

    def half_then_fault(self: Path, data: bytes) -> int:
        real(self, data[: len(data) // 2])
        raise fault  # a kill, or the disk filling up, in the middle of the record

    monkeypatch.setattr(Path, "write_bytes", half_then_fault)
    if isinstance(fault, OSError):  # the disk filled up during training: the result survives
        with pytest.warns(UserWarning, match="could not be cached.*No space left"):
            result = _smoke_dense("decoders", tmp_path)
        assert not result.cached and result.primary["semseg"] == 11.0
    else:
        with pytest.raises(KeyboardInterrupt):
            _smoke_dense("decoders", tmp_path)
    assert list(tmp_path.iterdir()) == []  # no half-written entry, no temporary file
    monkeypatch.undo()
    monkeypatch.setattr(experiments, "fit", fake_fit)
    assert not _smoke_dense("decoders", tmp_path).cached  # trains again, no JSON error
    assert _smoke_dense("decoders", tmp_path).cached


def test_lr_method_tasks_and_seed_are_checked_before_training(fake_fit: FakeFit) -> None:
    _smoke_dense("decoders", None, lr=1e-3)
    _smoke_dense("decoders", None)
    assert [c["lr"] for c in fake_fit.calls] == [1e-3, recipe("dense", "smoke").lr_for("decoders")]
    assert {c["warmup"] for c in fake_fit.calls} == {recipe("dense", "smoke").warmup}
    for lr in (0.0, -1e-3, math.nan, math.inf):
        with pytest.raises(ValueError, match=r"lr must be a finite number > 0.*lr=None"):
            _smoke_dense("decoders", None, lr=lr)  # 0.0 no longer becomes the recipe's lr
    with pytest.raises(ValueError, match=r"unknown method 'bogus'; choose one of \('full'"):
        _smoke_dense("bogus", None)
    with pytest.raises(ValueError, match=r"\['semseg'\] are named more than once"):
        run_dense("full", ["semseg", "semseg"], profile="smoke", device="cpu", cache_dir=None)
    with pytest.raises(ValueError, match="lr must be a finite number > 0"):
        run_mixture("lora", profile="smoke", device="cpu", cache_dir=None, lr=0.0)
    for seed in (-1, 2**31, 2**32 + 5, 1.0):
        with pytest.raises(ValueError, match="seed must be"):
            run_dense("decoders", ["semseg"], profile="smoke", seed=seed, cache_dir=None)
        with pytest.raises(ValueError, match="seed must be"):
            run_mixture("lora", profile="smoke", seed=seed, cache_dir=None)
    assert len(fake_fit.calls) == 2
    _smoke_dense("decoders", None, seed=np.int64(1))  # any integer type
    assert fake_fit.calls[-1]["seed"] == 1


def test_mixture_stages_choose_the_adapted_blocks_and_spectra_are_recorded(
    tmp_path: Path, fake_fit: FakeFit
) -> None:
    def run(adapter: str = "multihead", **kw: object) -> RunResult:
        return run_mixture(
            adapter, profile="smoke", device="cpu", cache_dir=tmp_path, progress=False, **kw
        )

    late = run(n_heads=2, rank=2, init="rlora", stages=(3, 2))
    assert late.options["stages"] == [2, 3]
    spectra = late.extras["spectra"]
    assert len(spectra) == 4 * (4 + 2)  # qkv / proj / fc1 / fc2 of the 4 + 2 blocks of stages 2, 3
    assert all(".layers.2.blocks." in k or ".layers.3.blocks." in k for k in spectra)
    assert set(spectra) == set(late.extras["router"])
    for sp in spectra.values():  # n r = 4 head directions; the update r = 2, plus R-LoRA's offset
        assert len(sp["heads"]) == 4 and len(sp["update"]) == 4
        assert sp["heads"] == sorted(sp["heads"], reverse=True) and min(sp["heads"]) >= 0
    assert run(n_heads=2, rank=2, init="rlora", stages=[2, 3, 3]).cached  # the same stages
    every = run(n_heads=2, rank=2, init="rlora")
    assert not every.cached and "stages" not in every.options  # keys of earlier runs unchanged
    assert len(every.extras["spectra"]) == 4 * (2 + 2 + 4 + 2)
    lora = run("lora", n_heads=1, rank=3, stages=(3,))
    assert lora.options == {"rank": 3, "dropout": 0.05, "stages": [3]}
    assert [len(sp["heads"]) for sp in lora.extras["spectra"].values()] == [3] * 8
    assert all(sp["heads"] == sp["update"] for sp in lora.extras["spectra"].values())
    calls = len(fake_fit.calls)
    for bad in ((), (4,), (-1,), (True,), (2.0,), "23"):
        with pytest.raises(ValueError, match=r"stages must be stage indices in 0-3.*None"):
            run(stages=bad)
    assert len(fake_fit.calls) == calls  # refused before anything trains


def test_options_of_any_number_type_are_cached_like_plain_ones(
    tmp_path: Path, fake_fit: FakeFit
) -> None:
    first = _smoke_dense("shared_lora", tmp_path, shared_rank=np.int64(2), dropout=np.float32(0.5))
    assert first.options == {"shared_rank": 2, "dropout": 0.5}  # JSON: the run was recorded
    assert _smoke_dense("shared_lora", tmp_path, shared_rank=2, dropout=0.5).cached  # same key
    with pytest.raises(TypeError, match=r"must be JSON values.*cache_dir=None"):
        _smoke_dense("shared_lora", tmp_path, shared_rank=2, task_rank=object())
    assert len(fake_fit.calls) == 1  # refused before training, not after


def test_the_cache_key_changes_with_the_code(tmp_path: Path, monkeypatch) -> None:
    """A change to the package's source makes every run new: the cache never serves a result
    measured by other code under the same version string."""
    tree = tmp_path / "pkg"
    (tree / "course").mkdir(parents=True)
    (tree / "course" / "experiments.py").write_text("x = 1\n")
    before = experiments.tree_digest(tree)
    (tree / "course" / "experiments.py").write_text("x = 2\n")
    edited = experiments.tree_digest(tree)
    (tree / "course" / "experiments.py").rename(tree / "course" / "other.py")
    assert len({before, edited, experiments.tree_digest(tree)}) == 3

    first = _smoke_dense("decoders", tmp_path / "cache")
    assert _smoke_dense("decoders", tmp_path / "cache").cached
    monkeypatch.setattr(experiments, "source_digest", lambda: "0" * 16)  # as after an edit
    again = _smoke_dense("decoders", tmp_path / "cache")
    assert not again.cached and again.primary == first.primary  # retrained: same seed, same run


@pytest.mark.parametrize(
    "name", ["../outside", "/tmp/anywhere", "sub/dir", "a\\b", "..", ".hidden", "a..b", 7]
)
def test_run_names_must_be_safe_file_names(tmp_path: Path, fake_fit: FakeFit, name: object) -> None:
    cache = tmp_path / "cache"
    with pytest.raises(ValueError, match="is not a safe file name"):
        run_dense("decoders", "semseg", profile="smoke", cache_dir=cache, name=name)
    with pytest.raises(ValueError, match="is not a safe file name"):
        run_mixture("lora", profile="smoke", cache_dir=cache, name=name)
    assert not fake_fit.calls and list(tmp_path.rglob("*.json")) == []


def test_a_safe_run_name_is_listed(tmp_path: Path, fake_fit: FakeFit) -> None:
    run_dense("decoders", "semseg", profile="smoke", cache_dir=tmp_path, name="dec_r0.5+x=1,@a")
    assert [r.name for r in load_results(tmp_path)] == ["dec_r0.5+x=1,@a"]


def test_pure_lora_trains_only_lora_factors_and_the_decoder(fake_fit: FakeFit) -> None:
    """run_dense("lora"): plain LoRALinear on the four Linear layers of every block, or q / v
    blocks of attn.qkv, and the task decoder; none of MTLoRA's extras."""
    plain = _smoke_dense("lora", None, rank=2, alpha=4.0)
    rows = {g for g, row in plain.breakdown.items() if row["trainable"]}
    assert rows == {"lora", "decoders"}
    model = experiments.lora_model(list(build_tasks(["semseg"]).values()), rank=2)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_" in n or n.startswith("decoders.") for n in trainable)
    swin = model.encoder.backbone
    assert swin.layers[0].blocks[0].attn.qkv.scaling == 1.0  # alpha = rank by default
    lora_counts = sum(p.numel() for n, p in model.named_parameters() if ".lora_" in n)
    linears = [m.base_layer for m in model.modules() if hasattr(m, "base_layer")]
    assert lora_counts == 2 * sum(m.in_features + m.out_features for m in linears)

    qv = _smoke_dense("lora", None, rank=2, targets=["attn.qkv"], qkv_blocks=["q", "v"])
    assert {g for g, row in qv.breakdown.items() if row["trainable"]} == {"block_lora", "decoders"}
    with pytest.raises(ValueError, match=r"attn\.qkv, which is not among targets"):
        _smoke_dense("lora", None, rank=2, targets=["mlp.fc1"], qkv_blocks=["q", "v"])
    with pytest.raises(TypeError, match=r"method 'lora' takes the options of lora_model.*rank"):
        _smoke_dense("lora", None, shared_rank=2)
    assert len(fake_fit.calls) == 2  # the bad calls were refused before training


def test_references_take_each_tasks_best_lr_on_the_first_seed(fake_fit: FakeFit) -> None:
    """The sweep runs on the first seed only, the chosen learning rate on every other seed; the
    choice follows each task's direction (normals: a lower error is better)."""
    lrs = (1e-3, 2e-3, 3e-3)
    kwargs = dict(profile="smoke", device="cpu", cache_dir=None, progress=False)
    refs = course_seeds.single_task_references(["semseg", "normals"], lrs, (5, 7, 9), **kwargs)
    # fake metrics grow with every call: semseg's best is its last lr, normals' its first
    assert refs.lr == {"semseg": 3e-3, "normals": 1e-3}
    seeds_and_lrs = [(c["seed"], c["lr"]) for c in fake_fit.calls]
    sweeps = [(5, 1e-3), (5, 2e-3), (5, 3e-3)] * 2  # semseg's, then normals'
    assert seeds_and_lrs == [*sweeps, (7, 3e-3), (9, 3e-3), (7, 1e-3), (9, 1e-3)]
    assert refs.runs["semseg"][5] is refs.sweep["semseg"][3e-3] and refs.seeds == [5, 7, 9]
    assert refs.primary(7) == {"semseg": 17.0, "normals": 19.0}
    same = {s: refs.runs["semseg"][s] for s in refs.seeds}  # a "multi-task" run equal to them
    for s, run in same.items():
        run.primary["normals"] = refs.primary(s)["normals"]
    assert refs.delta_m(same) == {5: 0.0, 7: 0.0, 9: 0.0}
    assert refs.relative(same)[7] == {"semseg": 0.0, "normals": 0.0}
    with pytest.raises(ValueError, match="seeds is empty"):
        course_seeds.single_task_references(["semseg"], lrs, (), **kwargs)


def test_for_profile_keeps_the_first_in_smoke() -> None:
    assert for_profile("course", (0, 1, 2)) == (0, 1, 2)
    assert for_profile("smoke", (3, 1, 2)) == (3,)
    assert (
        for_profile("course", [np.int64(4)]) == (4,)
        and type(for_profile("course", [np.int64(4)])[0]) is int
    )
    assert for_profile("smoke", (1e-3, 2e-3)) == (1e-3,)
    with pytest.raises(ValueError, match="nothing to run"):
        for_profile("course", ())


def test_default_mtlora_options_name_the_same_run(tmp_path: Path, fake_fit: FakeFit) -> None:
    """shared_rank=16 (MTLoRAConfig's default) is the run with no options: one cache entry."""
    first = _smoke_dense("shared_lora", tmp_path)
    again = _smoke_dense("shared_lora", tmp_path, shared_rank=16, dropout=0.05)
    assert again.cached and again.options == first.options == {}
    other = _smoke_dense("shared_lora", tmp_path, shared_rank=1, dropout=0.05)
    assert not other.cached and other.options == {"shared_rank": 1}
    assert len(fake_fit.calls) == 2


def test_parallel_workers_give_the_runs_of_one_thread_in_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """workers=2 trains the uncached runs in two processes with one thread each: the same
    results, in the same order, as one after another with one thread; cached runs are read
    without starting any process."""
    kwargs = dict(profile="smoke", device="cpu", progress=False)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        alone = course_seeds.run_dense_seeds(
            "decoders", ["semseg"], (0, 1), cache_dir=None, **kwargs
        )
    finally:
        torch.set_num_threads(threads)
    both = course_seeds.run_dense_seeds(
        "decoders", ["semseg"], (0, 1), workers=2, cache_dir=tmp_path, **kwargs
    )
    assert list(both) == [0, 1] and not any(r.cached for r in both.values())
    for seed in (0, 1):
        assert both[seed].seed == seed and both[seed].primary == alone[seed].primary
        assert both[seed].loss_curve == alone[seed].loss_curve

    def no_processes(*args: object, **kwargs: object) -> None:
        raise AssertionError("a cached run started a process")

    monkeypatch.setattr(course_seeds, "ProcessPoolExecutor", no_processes)
    again = course_seeds.run_dense_seeds(
        "decoders", ["semseg"], (1, 0), workers=2, cache_dir=tmp_path, **kwargs
    )
    assert list(again) == [1, 0] and all(r.cached for r in again.values())
    assert again[0].primary == both[0].primary
    with pytest.raises(ValueError, match="workers"):
        course_seeds.run_dense_seeds("decoders", ["semseg"], (0,), workers=0, cache_dir=None)


def test_auto_workers_use_the_cpu_threads_in_the_course_profile_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(torch, "get_num_threads", lambda: 3)
    assert course_seeds.auto_workers("course", "cpu") == 3
    assert course_seeds.auto_workers("smoke", "cpu") == 1  # too short to pay for processes
    monkeypatch.setattr(course_seeds, "resolve_device", lambda device: torch.device("cuda"))
    assert course_seeds.auto_workers("course", "auto") == 1  # one GPU: one run at a time
