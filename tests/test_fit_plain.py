"""fit and evaluate on a plain nn.Module and a plain (x, y) loader, for one task."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from mtlora_lite.multitask.evaluation import evaluate
from mtlora_lite.multitask.tasks import Task
from mtlora_lite.multitask.train import fit, progress_text


def data(n: int = 64, seed: int = 0) -> TensorDataset:
    """(x (n, 8), y (n,)): the class is the sign of the first feature."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=g)
    return TensorDataset(x, (x[:, 0] > 0).long())


def plain_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))  # returns a tensor


def test_fit_trains_a_plain_model_on_a_plain_loader() -> None:
    model, task = plain_model(), Task.classification("sign", 2)
    train = DataLoader(data(), batch_size=16, shuffle=True, generator=torch.Generator())
    val = DataLoader(data(32, seed=1), batch_size=16)
    before = evaluate(model, task, val, device="cpu")["sign"]["acc"]
    history = fit(model, task, train, val, epochs=8, lr=3e-2, device="cpu", progress=False)
    losses = history.curve()[1]
    assert sum(losses[-4:]) < 0.5 * sum(losses[:4])
    assert set(history.steps[0]["losses"]) == {"sign"}
    assert history.final["sign"]["acc"] > max(before, 80.0)
    assert evaluate(model, task, val, device="cpu") == history.final  # the same, evaluated again
    assert evaluate(model, {"sign": task}, val, device="cpu") == history.final


class TwoHeads(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(8, 2), nn.Linear(8, 2)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        return {"a": self.a(x), "b": self.b(x)}


def test_plain_batches_or_outputs_with_several_tasks_are_refused_with_the_fix() -> None:
    tasks = {"a": Task.classification("a", 2), "b": Task.classification("b", 2)}
    loader = DataLoader(data(), batch_size=16)
    with pytest.raises(TypeError, match=r"a plain \(x, y\) loader serves one task only"):
        fit(TwoHeads(), tasks, loader, epochs=1, device="cpu", progress=False)
    both = [(x, {"a": y, "b": y}) for x, y in loader]  # dict targets, but a plain model
    with pytest.raises(TypeError, match="a plain tensor serves one task only"):
        evaluate(plain_model(), tasks, both, device="cpu")
    with pytest.raises(TypeError, match=r"one task \(e\.g\. Task\.classification"):
        fit(plain_model(), [tasks["a"]], loader, device="cpu", progress=False)  # type: ignore[arg-type]


def test_a_dict_model_may_train_one_task_on_a_plain_loader() -> None:
    task = Task.classification("a", 2)
    history = fit(TwoHeads(), task, DataLoader(data(), batch_size=16), device="cpu", progress=False)
    assert len(history.steps) == 4 and set(history.steps[-1]["losses"]) == {"a"}


def test_the_progress_bar_says_what_its_loss_is() -> None:
    assert progress_text([0.9, 0.5, 0.1]) == "loss 0.1000, mean of last 3 steps 0.5000"
