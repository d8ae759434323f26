"""The TensorBoard callback writes event files that TensorBoard's own reader parses."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mtlora_lite import (
    TensorBoardLogger,
    fit,
    inject_multihead_lora,
    mark_only_adapters_trainable,
)

pytest.importorskip("tensorboard")
from tensorboard.backend.event_processing.event_accumulator import (
    EventAccumulator,
)
from tensorboard.util import tensor_util


class Net(nn.Module):
    """(B, 3, 4, 4) -> {"cls": (B, 3) logits, "reg": (B, 1)}."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(48, 16)
        self.cls, self.reg = nn.Linear(16, 3), nn.Linear(16, 1)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        h = F.relu(self.body(x.flatten(1)))
        return {"cls": self.cls(h), "reg": self.reg(h)}


class Accuracy:
    def __init__(self) -> None:
        self.correct = self.total = 0

    def update(self, pred: Tensor, target: Tensor) -> None:
        self.correct += int((pred.argmax(1) == target).sum())
        self.total += len(target)

    def compute(self) -> dict[str, float]:
        return {"acc": 100 * self.correct / self.total}


class MeanError:
    def __init__(self) -> None:
        self.errors: list[Tensor] = []

    def update(self, pred: Tensor, target: Tensor) -> None:
        self.errors.append((pred - target).abs().flatten())

    def compute(self) -> dict[str, float]:
        return {"mae": torch.cat(self.errors).mean().item()}


class Task:
    def __init__(self, name: str) -> None:
        self.name = name

    def loss(self, pred: Tensor, target: Tensor) -> Tensor:
        return F.cross_entropy(pred, target) if self.name == "cls" else F.mse_loss(pred, target)

    def new_metric(self) -> Accuracy | MeanError:
        return Accuracy() if self.name == "cls" else MeanError()


def batches(n: int, seed: int) -> list[tuple[Tensor, dict[str, Tensor]]]:
    g = torch.Generator().manual_seed(seed)
    return [
        (
            torch.randn(4, 3, 4, 4, generator=g),
            {"cls": torch.randint(0, 3, (4,), generator=g), "reg": torch.randn(4, 1, generator=g)},
        )
        for _ in range(n)
    ]


def read(log_dir: Path) -> EventAccumulator:
    acc = EventAccumulator(str(log_dir))
    acc.Reload()
    return acc


def test_scalars_per_step_and_per_evaluation_and_breakdown_text(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = Net()
    inject_multihead_lora(model, "body", n_heads=2, rank=2, init="rlora")
    mark_only_adapters_trainable(model, extra=["cls", "reg"])
    tasks = {"cls": Task("cls"), "reg": Task("reg")}
    with TensorBoardLogger(tmp_path, heads_every=2) as tb:
        history = fit(
            model,
            tasks,
            batches(3, 0),
            batches(2, 1),
            epochs=2,
            device="cpu",
            progress=False,
            callbacks=[tb],
        )
    acc = read(tmp_path)
    scalars = set(acc.Tags()["scalars"])
    expected = {"train/loss", "train/lr", "train/grad_norm", "train/loss/cls", "train/loss/reg"}
    assert expected | {"val/cls/acc", "val/reg/mae", "heads/mean", "heads/body"} == scalars
    steps, losses = history.curve("loss")
    logged = acc.Scalars("train/loss")
    assert [e.step for e in logged] == steps == list(range(1, 7))
    assert [e.value for e in logged] == pytest.approx(losses)
    assert [e.value for e in acc.Scalars("train/loss/reg")] == pytest.approx(
        history.curve("reg")[1]
    )
    assert [e.value for e in acc.Scalars("train/lr")] == pytest.approx(history.curve("lr")[1])
    evals = acc.Scalars("val/reg/mae")
    assert [e.step for e in evals] == [e["step"] for e in history.evals] == [3, 6]
    assert [e.value for e in evals] == pytest.approx(
        [e["metrics"]["reg"]["mae"] for e in history.evals]
    )
    assert [e.step for e in acc.Scalars("heads/mean")] == [0, 2, 4, 6]
    (text,) = acc.Tensors("trainable_breakdown/text_summary")
    table = tensor_util.make_ndarray(text.tensor_proto).item().decode()
    assert "mh_lora" in table  # the multi-head LoRA row
    assert f"{sum(p.numel() for p in model.parameters() if p.requires_grad):,}" in table


def test_no_head_tags_without_multihead_layers(tmp_path: Path) -> None:
    tasks = {"cls": Task("cls"), "reg": Task("reg")}
    with TensorBoardLogger(tmp_path) as tb:
        fit(Net(), tasks, batches(2, 0), device="cpu", progress=False, callbacks=[tb])
    scalars = read(tmp_path).Tags()["scalars"]
    assert "train/loss/cls" in scalars and not any(
        t.startswith(("heads/", "val/")) for t in scalars
    )


def test_missing_tensorboard_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import now fails
    with pytest.raises(ImportError, match="pip install tensorboard"):
        TensorBoardLogger("unused")


def test_package_imports_without_tensorboard() -> None:
    code = (
        "import sys; sys.modules['tensorboard'] = sys.modules['torch.utils.tensorboard'] = None\n"
        "import mtlora_lite; print(mtlora_lite.TensorBoardLogger.__name__)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "TensorBoardLogger"
