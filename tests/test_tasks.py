"""Tasks: channel counts, losses and metrics on hand-computed cases, Delta_m conventions."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F

from mtlora_lite.course.data import make_loaders, make_mixture_loaders
from mtlora_lite.course.scene_tasks import TASK_NAMES, build_tasks
from mtlora_lite.course.scenes import PRETRAIN
from mtlora_lite.multitask.losses import (
    balanced_binary_loss,
    binary_loss,
    depth_loss,
    normals_loss,
)
from mtlora_lite.multitask.metrics import (
    AccuracyMetric,
    ConfusionMetric,
    DepthMetric,
    NormalsMetric,
    ThresholdMetric,
)
from mtlora_lite.multitask.tasks import Task, delta_m, primary_metrics

CHANNELS = {
    "semseg": 5,
    "parts": 4,
    "saliency": 1,
    "normals": 3,
    "depth": 1,
    "edges": 1,
    "count": 4,
    "shape": 4,
    "colour": 6,
    "answer": 14,
}


def logits_for(labels: torch.Tensor, n_classes: int) -> torch.Tensor:
    """(B, ...) labels -> (B, C, ...) logits whose argmax is the label."""
    return torch.nn.functional.one_hot(labels, n_classes).movedim(-1, 1).float() * 10


def logit(p: list[float]) -> torch.Tensor:
    p_ = torch.tensor(p)
    return torch.log(p_ / (1 - p_))


def test_registry_channels_and_kinds() -> None:
    tasks = build_tasks(TASK_NAMES)
    assert list(tasks) == list(TASK_NAMES)
    assert {n: t.out_channels for n, t in tasks.items()} == CHANNELS
    assert [n for n, t in tasks.items() if t.dense] == list(TASK_NAMES[:6])
    assert not tasks["normals"].higher_is_better and not tasks["depth"].higher_is_better
    assert tasks["semseg"].primary == "mIoU" and tasks["saliency"].primary == "maxF"
    pre = build_tasks(["semseg", "shape", "colour", "answer"], PRETRAIN)
    assert [t.out_channels for t in pre.values()] == [6, 5, 7, 16]
    with pytest.raises(ValueError, match="choose from"):
        build_tasks(["semseg", "segm"])
    with pytest.raises(ValueError, match=r"tasks \['semseg'\] are named more than once"):
        build_tasks(["semseg", "count", "semseg"])  # not silently one semseg
    with pytest.raises(ValueError, match="no tasks given"):
        build_tasks([])
    assert list(build_tasks("semseg")) == ["semseg"]  # one name, not its letters


def test_loss_rejects_wrong_head_shapes() -> None:
    tasks = build_tasks(["semseg", "count"])
    with pytest.raises(ValueError, match="C = 5"):
        tasks["semseg"].loss(torch.zeros(2, 4, 8, 8), torch.zeros(2, 8, 8, dtype=torch.long))
    with pytest.raises(ValueError, match="input resolution"):
        tasks["semseg"].loss(torch.zeros(2, 5, 4, 4), torch.zeros(2, 8, 8, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\(B, C\)"):
        tasks["count"].loss(torch.zeros(2, 4, 1, 1), torch.zeros(2, dtype=torch.long))


def test_miou_two_by_two_by_hand() -> None:
    # truth [[0, 1], [1, 1]], prediction [[0, 0], [1, 1]]:
    # class 0: TP 1, FP 1, FN 0 -> IoU 1/2; class 1: TP 2, FP 0, FN 1 -> IoU 2/3
    metric = ConfusionMetric(2)
    metric.update(logits_for(torch.tensor([[[0, 0], [1, 1]]]), 2), torch.tensor([[[0, 1], [1, 1]]]))
    out = metric.compute()
    assert out["mIoU"] == pytest.approx(100 * (1 / 2 + 2 / 3) / 2)
    assert out["pixel_acc"] == pytest.approx(75.0)


def test_miou_perfect_worst_empty_and_streaming() -> None:
    truth = torch.tensor([[[0, 1], [1, 0]]])
    perfect, worst = ConfusionMetric(3), ConfusionMetric(3)
    perfect.update(logits_for(truth, 3), truth)  # class 2 never appears: left out of the mean
    worst.update(logits_for(1 - truth, 3), truth)
    assert perfect.compute()["mIoU"] == pytest.approx(100.0)
    assert worst.compute() == {"mIoU": 0.0, "pixel_acc": 0.0}
    split = ConfusionMetric(2)  # two batches give the same result as one
    split.update(logits_for(torch.tensor([[[0, 0]]]), 2), torch.tensor([[[0, 1]]]))
    split.update(logits_for(torch.tensor([[[1, 1]]]), 2), torch.tensor([[[1, 1]]]))
    assert split.compute()["mIoU"] == pytest.approx(100 * (1 / 2 + 2 / 3) / 2)
    with pytest.raises(RuntimeError, match="before any update"):
        ConfusionMetric(2).compute()


def test_saliency_thresholds_by_hand() -> None:
    # probabilities 0.82, 0.42, 0.72 for truth 1, 1, 0:
    # t <= 0.42: TP 2 FP 1 FN 0 -> P 2/3, R 1, IoU 2/3; 0.42 < t <= 0.72: P = R = 1/2, IoU 1/3;
    # 0.72 < t <= 0.82: TP 1 FP 0 FN 1 -> P 1, R 1/2, F(0.3) = 1.3 * 0.5 / 0.8, IoU 1/2
    metric = build_tasks(["saliency"])["saliency"].new_metric()
    metric.update(logit([0.82, 0.42, 0.72]).view(1, 1, 1, 3), torch.tensor([[[1.0, 1.0, 0.0]]]))
    out = metric.compute()
    f_low = 1.3 * (2 / 3) / (0.3 * 2 / 3 + 1)
    assert f_low < 1.3 * 0.5 / 0.8
    assert out["maxF"] == pytest.approx(100 * 1.3 * 0.5 / 0.8)
    assert out["IoU"] == pytest.approx(100 * 2 / 3)


def test_saliency_perfect_and_loss() -> None:
    task = build_tasks(["saliency"])["saliency"]
    truth = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    pred = (truth * 2 - 1).unsqueeze(1) * 10
    metric = task.new_metric()
    metric.update(pred, truth)
    assert metric.compute() == {"maxF": pytest.approx(100.0), "IoU": pytest.approx(100.0)}
    assert task.loss(pred, truth).item() < 1e-3
    assert task.loss(-pred, truth).item() > 5


def test_edges_f_score_and_weighted_loss() -> None:
    task = build_tasks(["edges"])["edges"]
    truth = torch.tensor([[[1.0, 0.0, 0.0, 0.0]]])
    pred = torch.zeros(1, 1, 1, 4)  # probability 0.5 everywhere
    metric = task.new_metric()
    metric.update(pred, truth)  # all predicted positive: P 1/4, R 1 -> F1 = 2/5
    assert metric.compute()["odsF"] == pytest.approx(100 * 2 / 5)
    # positives weighted by #neg / #pos = 3: loss = (3 + 3) * log 2 / 4
    assert task.loss(pred, truth).item() == pytest.approx(6 * math.log(2) / 4, rel=1e-5)


def test_normals_angles_by_hand() -> None:
    target = torch.zeros(1, 3, 1, 3)
    target[0, :, 0, 0] = torch.tensor([0.0, 1.0, 0.0])
    target[0, :, 0, 1] = torch.tensor([0.0, 0.0, 1.0])  # pixel 2 stays zero: invalid
    pred = torch.zeros(1, 3, 1, 3)
    pred[0, :, 0, 0] = torch.tensor([2.0, 0.0, 0.0])  # 90 degrees off
    pred[0, :, 0, 1] = torch.tensor([0.0, 0.0, 5.0])  # right, scale ignored
    pred[0, :, 0, 2] = torch.tensor([1.0, 1.0, 1.0])  # ignored
    metric = NormalsMetric()
    metric.update(pred, target)
    out = metric.compute()
    assert out["mean_angle"] == pytest.approx(45.0, abs=1e-3)
    assert out["rmse_angle"] == pytest.approx(math.sqrt(90**2 / 2), abs=1e-3)
    assert out["within_11.25"] == pytest.approx(50.0)
    assert out["median_angle"] == pytest.approx(0.05)  # lower of the two, bin centre
    task = build_tasks(["normals"])["normals"]
    assert task.loss(pred, target).item() == pytest.approx((1 + 1) / 6)  # |(1,-1,0)| summed / 6
    assert task.loss(target * 3, target).item() == pytest.approx(0.0)


def test_depth_rmse_on_valid_pixels() -> None:
    task = build_tasks(["depth"])["depth"]
    target = torch.tensor([[[2.0, 3.0, 0.0]]])  # last pixel invalid
    pred = torch.tensor([[[[3.0, 0.0, 9.0]]]])  # errors 1, -3
    metric = task.new_metric()
    metric.update(pred, target)
    assert metric.compute() == {"rmse": pytest.approx(math.sqrt(5)), "mae": pytest.approx(2.0)}
    assert task.loss(pred, target).item() == pytest.approx(2.0)


def test_accuracy_and_mixture_per_task() -> None:
    plain = AccuracyMetric()
    plain.update(logits_for(torch.tensor([0, 1, 2, 2]), 3), torch.tensor([0, 1, 1, 2]))
    assert plain.compute() == {"acc": 75.0}
    task = build_tasks(["answer"])["answer"]
    target = torch.tensor([[1, 0], [5, 1], [9, 2], [10, 2]])  # [answer, task]
    pred = logits_for(torch.tensor([1, 6, 9, 2]), 14)  # last: a count answer for a colour image
    metric = task.new_metric()
    metric.update(pred, target)
    assert metric.compute() == {
        "acc": 50.0,
        "acc/count": 100.0,
        "acc/shape": 0.0,
        "acc/colour": 50.0,
    }
    assert task.loss(logits_for(target[:, 0], 14), target).item() < 1e-3
    unseen = AccuracyMetric(["count", "shape"])
    unseen.update(logits_for(torch.tensor([1]), 4), torch.tensor([[1, 0]]))
    assert math.isnan(unseen.compute()["acc/shape"])


def test_delta_m_sign_conventions() -> None:
    higher = {"seg": True, "err": False}
    assert delta_m({"seg": 55.0}, {"seg": 50.0}, {"seg": True}) == pytest.approx(10.0)
    assert delta_m({"err": 9.0}, {"err": 10.0}, {"err": False}) == pytest.approx(10.0)
    assert delta_m({"seg": 45.0, "err": 9.0}, {"seg": 50.0, "err": 10.0}, higher) == pytest.approx(
        0.0
    )
    assert delta_m({"seg": 50.0, "err": 12.0}, {"seg": 50.0, "err": 10.0}, higher) == pytest.approx(
        -10.0
    )
    with pytest.raises(ValueError, match="same non-empty task set"):
        delta_m({"seg": 1.0}, {"seg": 1.0, "err": 1.0}, higher)
    with pytest.raises(ValueError, match="are 0"):
        delta_m({"seg": 1.0}, {"seg": 0.0}, {"seg": True})


def test_every_task_on_real_batches() -> None:
    """Losses are finite scalars with gradients and metrics report their primary."""
    names = [n for n in TASK_NAMES if n != "answer"]
    tasks = build_tasks(names)
    batches = [next(iter(make_loaders(names, n_train=4, n_val=4, seed=0, batch_size=4)[0]))]
    batches.append(next(iter(make_mixture_loaders(n_train=4, n_val=4, seed=0, batch_size=4)[0])))
    tasks |= build_tasks(["answer"])
    results = {}
    for _, targets in batches:
        for name, target in targets.items():
            task = tasks[name]
            shape = (4, task.out_channels, 64, 64) if task.dense else (4, task.out_channels)
            pred = torch.randn(shape, requires_grad=True)
            loss = task.loss(pred, target)
            loss.backward()
            assert loss.ndim == 0 and torch.isfinite(loss) and pred.grad.abs().sum() > 0
            metric = task.new_metric()
            metric.update(pred.detach(), target)
            results[name] = metric.compute()
    primary = primary_metrics(results, tasks)
    assert set(primary) == set(TASK_NAMES) and all(math.isfinite(v) for v in primary.values())


@pytest.mark.parametrize(
    "make, kind, channels, primary, higher, loss, metric",
    [
        (lambda: Task.classification("c", 7), "classification", 7, "acc", True, F.cross_entropy,
         AccuracyMetric),
        (lambda: Task.segmentation("s", 5), "segmentation", 5, "mIoU", True, F.cross_entropy,
         ConfusionMetric),
        (lambda: Task.saliency(), "saliency", 1, "maxF", True, binary_loss, ThresholdMetric),
        (lambda: Task.edges(), "edges", 1, "odsF", True, balanced_binary_loss, ThresholdMetric),
        (lambda: Task.normals(), "normals", 3, "mean_angle", False, normals_loss, NormalsMetric),
        (lambda: Task.depth(), "depth", 1, "rmse", False, depth_loss, DepthMetric),
    ],
)  # fmt: skip
def test_a_constructor_per_kind(
    make: Callable[[], Task],
    kind: str,
    channels: int,
    primary: str,
    higher: bool,
    loss: Callable,
    metric: type,
) -> None:
    task = make()
    assert (task.kind, task.out_channels, task.primary, task.higher_is_better) == (
        kind,
        channels,
        primary,
        higher,
    )
    assert task.loss_fn is loss and isinstance(task.new_metric(), metric)
    assert task.dense == (kind != "classification")
    if kind == "segmentation":
        assert task.new_metric().matrix.shape == (5, 5)  # one row per class


def test_constructors_take_any_field_as_an_override() -> None:
    own = Task.saliency("sal", primary="IoU", loss_fn=balanced_binary_loss)
    assert (own.name, own.primary, own.loss_fn) == ("sal", "IoU", balanced_binary_loss)
    by_hand = Task(
        name="count",
        kind="classification",
        out_channels=4,
        dense=False,
        primary="acc",
        higher_is_better=True,
        loss_fn=F.cross_entropy,
        metric_factory=AccuracyMetric,
    )
    assert Task.classification("count", 4) == by_hand  # the constructor is the long form


class NoMerge:
    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None: ...

    def compute(self) -> dict[str, float]:
        return {}


def test_a_metric_without_merge_is_refused_when_the_task_is_built() -> None:
    with pytest.raises(TypeError, match=r"task 'c': its metric NoMerge has no \['merge'\]"):
        Task.classification("c", 3, metric_factory=NoMerge)
    with pytest.raises(ValueError, match="out_channels must be a positive integer"):
        Task.classification("c", 0)
    with pytest.raises(ValueError, match=r"without '\.'"):
        Task.segmentation("a.b", 3)


def test_delta_m_takes_the_tasks_for_their_directions() -> None:
    tasks = {"seg": Task.segmentation("seg", 3), "normals": Task.normals()}
    multi, single = {"seg": 55.0, "normals": 18.0}, {"seg": 50.0, "normals": 20.0}
    by_hand = delta_m(multi, single, {"seg": True, "normals": False})
    assert delta_m(multi, single, tasks) == by_hand == pytest.approx((10.0 + 10.0) / 2)
