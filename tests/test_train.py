from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset

from mtlora_lite.multitask.evaluation import evaluate
from mtlora_lite.multitask.history import Callback, History
from mtlora_lite.multitask.runtime import resolve_device
from mtlora_lite.multitask.schedule import build_optimizer, lr_factor
from mtlora_lite.multitask.train import fit


class Accuracy:
    def __init__(self) -> None:
        self.correct = self.total = 0

    def update(self, pred: Tensor, target: Tensor) -> None:
        self.correct += int((pred.argmax(1) == target).sum())
        self.total += target.numel()

    def compute(self) -> dict[str, float]:
        return {"acc": self.correct / self.total}


class MeanError:
    def __init__(self) -> None:
        self.sum = self.count = 0.0

    def update(self, pred: Tensor, target: Tensor) -> None:
        self.sum += float((pred - target).abs().sum())
        self.count += target.numel()

    def compute(self) -> dict[str, float]:
        return {"mae": self.sum / self.count}


class FakeTask:
    def __init__(self, name: str, dense: bool) -> None:
        self.name, self.dense = name, dense

    def loss(self, pred: Tensor, target: Tensor) -> Tensor:
        return F.mse_loss(pred, target) if self.dense else F.cross_entropy(pred, target)

    def new_metric(self) -> MeanError | Accuracy:
        return MeanError() if self.dense else Accuracy()


class Scenes(Dataset):
    """Noise images with channel ``class`` brightened; dense target = the mean over channels."""

    def __init__(self, n: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, 3, 8, 8, generator=g)
        self.x[torch.arange(n), torch.arange(n) % 3] += 0.5

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> tuple[Tensor, dict[str, Tensor]]:
        x = self.x[i]
        return x, {"cls": torch.tensor(i % 3), "dense": x.mean(0, keepdim=True)}


class TwoHeads(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.trunk = nn.Conv2d(3, 8, 3, padding=1)
        self.dense = nn.Conv2d(8, 1, 1)
        self.cls = nn.Linear(8, 3)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        h = torch.relu(self.trunk(x))  # (B, 8, H, W)
        return {"dense": self.dense(h), "cls": self.cls(h.mean((2, 3)))}


TASKS = {"cls": FakeTask("cls", dense=False), "dense": FakeTask("dense", dense=True)}


def loaders(seed: int = 0) -> tuple[DataLoader, DataLoader]:
    g = torch.Generator().manual_seed(seed)
    train = DataLoader(Scenes(128, seed), batch_size=16, shuffle=True, generator=g)
    return train, DataLoader(Scenes(64, seed + 1), batch_size=32)


def test_fit_reduces_loss_and_records_history() -> None:
    torch.manual_seed(0)
    model, (train, val) = TwoHeads(), loaders()
    before = evaluate(model, TASKS, val)
    hist = fit(model, TASKS, train, val, epochs=3, lr=3e-2, progress=False)
    assert len(hist.steps) == 3 * len(train) and len(hist.evals) == 3
    losses = hist.curve()[1]
    assert sum(losses[-4:]) < 0.5 * sum(losses[:4])
    assert hist.final["cls"]["acc"] > before["cls"]["acc"]
    assert hist.final["dense"]["mae"] < before["dense"]["mae"]
    steps, values = hist.curve("dense")
    assert (
        steps == list(range(1, 3 * len(train) + 1))
        and values[0] == hist.steps[0]["losses"]["dense"]
    )
    assert hist.metric_curve("cls", "acc")[0] == [8, 16, 24]
    json.dumps(hist.to_dict())
    assert hist.images_per_s > 0 and hist.wall_time_s > 0


def test_max_steps_loops_over_the_loader_and_schedule() -> None:
    torch.manual_seed(0)
    train, _ = loaders()
    hist = fit(TwoHeads(), TASKS, train, max_steps=20, warmup=0.1, lr=1.0, progress=False)
    lrs = hist.curve("lr")[1]
    assert len(lrs) == 20
    assert lrs[0] == pytest.approx(0.5) and lrs[1] == pytest.approx(1.0)  # 2 warmup steps
    assert lrs[2] == pytest.approx(1.0) and lrs[-1] < 0.01
    assert all(a >= b for a, b in itertools.pairwise(lrs[1:]))
    assert lr_factor(11, 20, 2) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5)))


def test_loss_weights_scale_the_total() -> None:
    torch.manual_seed(0)
    train, _ = loaders()
    hist = fit(TwoHeads(), TASKS, train, max_steps=2, loss_weights={"dense": 3.0}, progress=False)
    r = hist.steps[0]
    assert r["loss"] == pytest.approx(r["losses"]["cls"] + 3.0 * r["losses"]["dense"], rel=1e-5)
    with pytest.raises(KeyError, match="unknown tasks"):
        fit(TwoHeads(), TASKS, train, loss_weights={"depth": 1.0}, progress=False)


def test_same_seed_gives_identical_losses() -> None:
    runs = []
    for _ in range(2):
        torch.manual_seed(1)
        model, (train, _) = TwoHeads(), loaders()
        runs.append(fit(model, TASKS, train, max_steps=12, seed=3, progress=False).curve()[1])
    assert runs[0] == runs[1]


def test_nan_loss_raises_with_step_and_task_losses() -> None:
    class Broken(TwoHeads):
        def forward(self, x: Tensor) -> dict[str, Tensor]:
            out = super().forward(x)
            return {**out, "dense": out["dense"] * float("nan")}

    train, _ = loaders()
    with pytest.raises(FloatingPointError, match=r"step 1: .*'dense': nan"):
        fit(Broken(), TASKS, train, max_steps=3, progress=False)


def test_only_trainable_parameters_change() -> None:
    torch.manual_seed(0)
    model, (train, _) = TwoHeads(), loaders()
    model.trunk.requires_grad_(False)
    frozen = {k: v.clone() for k, v in model.trunk.state_dict().items()}
    head = model.cls.weight.detach().clone()
    fit(model, TASKS, train, max_steps=3, progress=False)
    for k, v in model.trunk.state_dict().items():
        assert torch.equal(v, frozen[k])
    assert not torch.equal(model.cls.weight, head)


def test_evaluate_restores_mode_and_uses_eval_mode() -> None:
    class ModeSpy(TwoHeads):
        def __init__(self) -> None:
            super().__init__()
            self.seen: list[bool] = []

        def forward(self, x: Tensor) -> dict[str, Tensor]:
            self.seen.append(self.training)
            return super().forward(x)

    model, (_, val) = ModeSpy(), loaders()
    model.train()
    metrics = evaluate(model, TASKS, val)
    assert model.training and not any(model.seen)
    assert set(metrics) == {"cls", "dense"} and 0 <= metrics["cls"]["acc"] <= 1
    model.eval()
    evaluate(model, TASKS, val)
    assert not model.training


def test_callbacks_are_called() -> None:
    class Recorder(Callback):
        def __init__(self) -> None:
            self.events: list[tuple] = []

        def on_fit_start(self, model: nn.Module, start_step: int = 0) -> None:
            self.events.append(("start",))

        def on_step_end(self, step: int, model: nn.Module, logs: dict) -> None:
            self.events.append(("step", step, logs["loss"]))

        def on_eval_end(self, epoch: int, model: nn.Module, metrics: dict) -> None:
            self.events.append(("eval", epoch, metrics["cls"]["acc"]))

    rec, (train, val) = Recorder(), loaders()
    hist = fit(TwoHeads(), TASKS, train, val, epochs=2, callbacks=[rec], progress=False)
    kinds = [e[0] for e in rec.events]
    assert kinds == ["start"] + ["step"] * 8 + ["eval"] + ["step"] * 8 + ["eval"]
    assert rec.events[1][2] == hist.steps[0]["loss"]
    assert rec.events[-1] == ("eval", 2, hist.final["cls"]["acc"])
    Callback().on_step_end(1, TwoHeads(), {})  # the base class is a no-op


def test_model_must_return_a_dict_of_all_tasks() -> None:
    train, _ = loaders()
    with pytest.raises(TypeError, match="dict"):
        fit(nn.Conv2d(3, 1, 1), TASKS, train, max_steps=1, progress=False)
    with pytest.raises(KeyError, match="cls"):
        fit(TwoHeads(), {**TASKS, "cls2": TASKS["cls"]}, train, max_steps=1, progress=False)


def test_resolve_device_and_history_defaults() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type in {"cuda", "mps", "cpu"}
    assert History().final == {}


def test_loader_errors_are_clear() -> None:
    train, _ = loaders()
    with pytest.raises(TypeError, match="max_steps"):
        fit(TwoHeads(), TASKS, (b for b in train), progress=False)
    with pytest.raises(ValueError, match="no batches"):
        fit(TwoHeads(), TASKS, [], max_steps=2, progress=False)


def test_resolve_device_checks_what_exists_up_front(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match=r"no CUDA GPU here.*device='auto' or 'cpu'"):
        resolve_device("cuda")
    with pytest.raises(ValueError, match="unknown device 'gpu'"):
        resolve_device("gpu")
    assert resolve_device("cpu").type == "cpu" and resolve_device("auto").type in ("cpu", "mps")


def test_fit_refuses_to_run_zero_steps_and_says_why() -> None:
    small = Scenes(8, 0)
    with pytest.raises(ValueError, match=r"8 examples make no full batch of 16 with drop_last"):
        fit(TwoHeads(), TASKS, DataLoader(small, batch_size=16, drop_last=True), progress=False)
    with pytest.raises(ValueError, match="dataset is empty"):
        fit(TwoHeads(), TASKS, DataLoader(Scenes(0, 0), batch_size=4), progress=False)
    train, _ = loaders()
    for kwargs in ({"epochs": 0}, {"max_steps": 0}, {"epochs": 1.5}):
        with pytest.raises(ValueError, match="positive integer"):
            fit(TwoHeads(), TASKS, train, progress=False, **kwargs)


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("lr", 0.0, r"lr must be in \(0"),
        ("lr", float("nan"), "lr must be a finite number"),
        ("min_lr", 1.5, r"min_lr must be in \[0, 1\]"),
        ("warmup", -0.1, "warmup must be in"),
        ("grad_clip", 0.0, "grad_clip must be in"),
        ("seed", 2**40, r"seed must be an integer in \[0, 2\*\*32\)"),
        ("seed", -1, "seed must be an integer"),
    ],
)
def test_fit_checks_its_numbers(option: str, value: float, message: str) -> None:
    train, _ = loaders()
    with pytest.raises(ValueError, match=message):
        fit(TwoHeads(), TASKS, train, max_steps=1, progress=False, **{option: value})
    with pytest.raises(ValueError, match="tasks is empty: pass one task"):
        fit(TwoHeads(), {}, train, max_steps=1, progress=False)


def test_same_seed_on_the_same_loader_object_gives_the_same_run() -> None:
    train, _ = loaders()  # one loader with its own generator, used twice
    runs = []
    for _ in range(2):
        torch.manual_seed(1)
        runs.append(fit(TwoHeads(), TASKS, train, epochs=2, seed=3, progress=False).curve()[1])
    assert runs[0] == runs[1]


def test_fit_refuses_merged_adapters() -> None:
    from mtlora_lite.adapters.lora import inject_lora
    from mtlora_lite.adapters.merging import merge_adapters

    model = TwoHeads()
    inject_lora(model, "cls", rank=2)
    merge_adapters(model)
    train, _ = loaders()
    with pytest.raises(RuntimeError, match=r"merged .*unmerge_adapters\(model\) before fit"):
        fit(model, TASKS, train, max_steps=1, progress=False)


class StopAt(Callback):
    """Raises ``error`` after optimizer step ``step`` (a stand-in for Ctrl-C or a crash)."""

    def __init__(self, step: int, error: BaseException) -> None:
        self.step, self.error = step, error

    def on_step_end(self, step: int, model: nn.Module, logs: dict) -> None:
        if step == self.step:
            raise self.error


@pytest.mark.parametrize("error", [KeyboardInterrupt(), RuntimeError("disk gone")])
def test_an_interrupted_fit_keeps_its_history_and_the_model_mode(error: BaseException) -> None:
    model, (train, val) = TwoHeads().eval(), loaders()
    with pytest.raises(type(error)) as info:
        fit(model, TASKS, train, val, epochs=3, callbacks=[StopAt(11, error)], progress=False)
    history = info.value.history
    assert len(history.steps) == 11 and len(history.evals) == 1  # one pass of 8 steps was done
    assert not model.training  # eval mode, as before fit


def test_nan_loss_carries_the_history_so_far() -> None:
    class LateNaN(TwoHeads):
        calls = 0

        def forward(self, x: Tensor) -> dict[str, Tensor]:
            out = super().forward(x)
            self.calls += 1
            return {**out, "dense": out["dense"] * (float("nan") if self.calls > 3 else 1.0)}

    train, _ = loaders()
    with pytest.raises(FloatingPointError, match="step 4") as info:
        fit(LateNaN(), TASKS, train, max_steps=6, progress=False)
    assert [r["step"] for r in info.value.history.steps] == [1, 2, 3]


def test_min_lr_and_no_weight_decay() -> None:
    train, _ = loaders()
    hist = fit(
        TwoHeads(), TASKS, train, max_steps=10, lr=1.0, min_lr=0.1, warmup=0.0, progress=False
    )
    lrs = hist.curve("lr")[1]
    assert lrs[0] == pytest.approx(1.0) and lrs[-1] == pytest.approx(
        0.1 + 0.9 * lr_factor(9, 10, 0)
    )
    assert lr_factor(10, 10, 0, min_lr=0.01) == pytest.approx(0.01)
    model = TwoHeads()
    groups = build_optimizer(model, 1e-3, 0.05, ["cls.weight"]).param_groups
    decayed = {id(p) for g in groups if g["weight_decay"] > 0 for p in g["params"]}
    assert decayed == {id(model.trunk.weight), id(model.dense.weight)}  # not cls.weight, no biases


def test_a_resumed_run_ends_where_an_uninterrupted_one_does(tmp_path: Path) -> None:
    def run(checkpoint_dir: Path | None, callbacks: list[Callback]) -> tuple[History, TwoHeads]:
        torch.manual_seed(0)
        model, (train, val) = TwoHeads(), loaders()
        kwargs = dict(epochs=3, lr=3e-2, seed=5, progress=False, checkpoint_dir=checkpoint_dir)
        return fit(model, TASKS, train, val, callbacks=callbacks, **kwargs), model

    whole, reference = run(None, [])
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path, [StopAt(13, KeyboardInterrupt())])  # in pass 2: pass 1 is checkpointed
    assert (tmp_path / "checkpoint.safetensors").is_file()
    resumed, model = run(tmp_path, [])
    assert [r["step"] for r in resumed.steps] == list(range(1, 25)) and len(resumed.evals) == 3
    assert resumed.curve()[1] == pytest.approx(whole.curve()[1])
    for (name, p), q in zip(model.named_parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(p, q, msg=name)
    with pytest.raises(ValueError, match="steps: 24 there, 8 here"):
        fit(TwoHeads(), TASKS, loaders()[0], progress=False, checkpoint_dir=tmp_path)
    (tmp_path / "checkpoint.safetensors").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="cannot be read"):
        fit(TwoHeads(), TASKS, loaders()[0], progress=False, checkpoint_dir=tmp_path)
