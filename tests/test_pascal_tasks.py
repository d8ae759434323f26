"""PASCAL-Context tasks: losses and metrics on hand-computed cases, and one MTLoRA training step
on the fixture with a small random Swin."""

from __future__ import annotations

import math

import pytest
import timm
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from mtlora_lite.multitask.evaluation import evaluate
from mtlora_lite.multitask.models import build_model
from mtlora_lite.multitask.pascal.data import TASKS, PascalContext
from mtlora_lite.multitask.pascal.fixture import write_pascal_fixture
from mtlora_lite.multitask.pascal.readers import IGNORE
from mtlora_lite.multitask.pascal.tasks import (
    LOSS_WEIGHTS,
    SaliencyMetric,
    SegmentationIoU,
    pascal_tasks,
    saliency_loss,
    segmentation_loss,
)
from mtlora_lite.multitask.pascal.transforms import PascalTransform
from mtlora_lite.multitask.tasks import NormalsMetric
from mtlora_lite.multitask.train import fit


def one_hot_logits(labels: torch.Tensor, n: int) -> torch.Tensor:
    """(B, H, W) labels in [0, n) -> (B, n, H, W) logits whose argmax is the label."""
    return F.one_hot(labels, n).movedim(-1, 1).float() * 10


def test_tasks_have_the_benchmark_heads_weights_and_directions() -> None:
    tasks = pascal_tasks()
    assert list(tasks) == list(TASKS) == list(LOSS_WEIGHTS)
    assert {n: t.out_channels for n, t in tasks.items()} == {
        "semseg": 21,
        "human_parts": 7,
        "sal": 1,
        "normals": 3,
    }
    assert LOSS_WEIGHTS == {"semseg": 1.0, "human_parts": 2.0, "sal": 5.0, "normals": 10.0}
    assert [t.higher_is_better for t in tasks.values()] == [True, True, True, False]
    assert tasks["normals"].primary == "mean_angle"
    assert list(pascal_tasks(["normals", "sal"])) == ["normals", "sal"]
    with pytest.raises(ValueError, match="unknown PASCAL-Context tasks"):
        pascal_tasks(["depth"])


def test_segmentation_loss_ignores_255_and_survives_an_all_ignore_batch() -> None:
    logits = torch.randn(2, 7, 4, 4, requires_grad=True)
    target = torch.randint(0, 7, (2, 4, 4))
    target[0, :2] = IGNORE
    keep = target != IGNORE
    by_hand = F.cross_entropy(logits.movedim(1, -1)[keep], target[keep])
    torch.testing.assert_close(segmentation_loss(logits, target), by_hand)
    nobody = segmentation_loss(logits, torch.full_like(target, IGNORE))
    nobody.backward()
    assert nobody.item() == 0.0 and torch.isfinite(logits.grad).all()


def test_saliency_loss_is_the_balanced_bce_on_labelled_pixels() -> None:
    pred = torch.tensor([[[[2.0, -1.0, 0.5, 3.0]]]])  # (1, 1, 1, 4)
    target = torch.tensor([[[1.0, 0.0, 0.0, IGNORE]]])
    w = 2 / 3  # share of negatives among the 3 labelled pixels
    bce = [math.log1p(math.exp(-2.0)), math.log1p(math.exp(-1.0)), math.log1p(math.exp(0.5))]
    by_hand = (w * bce[0] + (1 - w) * (bce[1] + bce[2])) / 3
    assert saliency_loss(pred, target).item() == pytest.approx(by_hand, rel=1e-6)


def test_segmentation_iou_perfect_known_confusion_and_absent_classes() -> None:
    truth = torch.tensor([[[0, 0, 1, 1], [2, 2, 2, IGNORE]]])
    perfect = SegmentationIoU(3)
    perfect.update(one_hot_logits(truth.clamp(max=2), 3), truth)
    assert perfect.compute()["mIoU"] == pytest.approx(100.0)
    # predict class 2 for one true 1: IoU 0 = 2/2, 1 = 1/2, 2 = 3/4 -> mean 75%
    wrong = truth.clamp(max=2).clone()
    wrong[0, 0, 3] = 2
    metric = SegmentationIoU(3)
    metric.update(one_hot_logits(wrong, 3), truth)
    assert metric.compute()["mIoU"] == pytest.approx(100 * (1 + 0.5 + 0.75) / 3)
    assert metric.compute()["pixel_acc"] == pytest.approx(100 * 6 / 7)  # 7 labelled pixels
    wide = SegmentationIoU(21)  # classes that never occur count as 0, as in the benchmark
    wide.update(one_hot_logits(truth.clamp(max=2), 21), truth)
    assert wide.compute()["mIoU"] == pytest.approx(100 * 3 / 21)


def test_saliency_miou_averages_images_and_takes_the_best_threshold() -> None:
    truth = torch.tensor([[[1, 1, 0, 0]], [[1, 0, 0, IGNORE]], [[0, 0, 0, 0]]]).float()
    p = torch.tensor([[[0.95, 0.95, 0.1, 0.1]], [[0.95, 0.58, 0.1, 0.95]], [[0.1, 0.1, 0.1, 0.1]]])
    metric = SaliencyMetric()
    metric.update(torch.logit(p).unsqueeze(1), truth)
    # up to 0.55 image 2 predicts {0, 1} for truth {0} (IoU 1/2); image 1 scores 1, image 3
    # (empty truth, empty prediction) 1. From 0.6 image 2 scores 1 too: best mean IoU 1.
    out = metric.compute()
    assert out["mIoU"] == pytest.approx(100.0)
    # there, mean precision = mean recall = (1 + 1 + 0) / 3 (image 3 has no true positive)
    assert out["maxF"] == pytest.approx(100 * 2 / 3, rel=1e-6)
    low = SaliencyMetric()
    low.update(torch.logit(torch.tensor([[[0.5, 0.1, 0.1, 0.1]]])).unsqueeze(1), truth[:1])
    assert low.compute()["mIoU"] == pytest.approx(50.0)  # 0.5 > 0.2 ... 0.45: IoU 1 / 2


def test_normals_metric_measures_a_known_angle() -> None:
    target = torch.zeros(1, 3, 1, 2)
    target[0, :, 0, 0] = torch.tensor([math.cos(math.radians(30)), math.sin(math.radians(30)), 0])
    pred = torch.zeros(1, 3, 1, 2)
    pred[0, 0] = 5.0  # along x everywhere; pixel 1 has no valid target
    metric = NormalsMetric()
    metric.update(pred, target)
    assert metric.compute()["mean_angle"] == pytest.approx(30.0, abs=1e-4)


@pytest.mark.parametrize("factory", [lambda: SegmentationIoU(4), SaliencyMetric, NormalsMetric])
def test_merged_metrics_equal_one_metric_over_all_batches(factory) -> None:
    torch.manual_seed(0)
    channels = {SaliencyMetric: 1, NormalsMetric: 3}.get(factory, 4)
    preds = [torch.randn(2, channels, 4, 4) for _ in range(2)]
    if channels == 4:
        targets = [torch.randint(0, 4, (2, 4, 4)) for _ in range(2)]
    elif channels == 1:
        targets = [torch.randint(0, 2, (2, 4, 4)).float() for _ in range(2)]
    else:
        targets = [F.normalize(torch.randn(2, 3, 4, 4), dim=1) for _ in range(2)]
    whole, a, b = factory(), factory(), factory()
    for p, t in zip(preds, targets, strict=True):
        whole.update(p, t)
    a.update(preds[0], targets[0])
    b.update(preds[1], targets[1])
    a.merge(b)
    for key, value in whole.compute().items():
        assert a.compute()[key] == pytest.approx(value)


def test_one_mtlora_step_on_the_fixture_with_a_random_swin(tmp_path) -> None:
    root = write_pascal_fixture(tmp_path / "PASCAL_MT", n=6)
    train = PascalContext(root, "train", transform=PascalTransform(32, train=True))
    val = PascalContext(root, "val", transform=PascalTransform(32))
    swin = timm.create_model(
        "swin_tiny_patch4_window7_224",
        pretrained=False,
        num_classes=0,
        img_size=32,
        embed_dim=16,
        depths=(1, 1, 1, 1),
        num_heads=(1, 1, 1, 1),
        window_size=2,
    )
    tasks = pascal_tasks()
    model = build_model(swin, tasks, "mtlora", shared_rank=4)
    frozen = {n: p.clone() for n, p in model.named_parameters() if not p.requires_grad}
    before = {n: p.clone() for n, p in model.named_parameters() if p.requires_grad}
    history = fit(
        model,
        tasks,
        DataLoader(train, batch_size=2),
        max_steps=1,
        lr=1e-2,
        loss_weights=LOSS_WEIGHTS,
        device="cpu",
        progress=False,
    )
    record = history.steps[0]
    assert set(record["losses"]) == set(TASKS) and math.isfinite(record["loss"])
    weighted = sum(LOSS_WEIGHTS[t] * v for t, v in record["losses"].items())
    assert record["loss"] == pytest.approx(weighted, rel=1e-5)
    changed = {
        n for n, p in model.named_parameters() if p.requires_grad and not torch.equal(p, before[n])
    }
    assert any(".lora_A" in n for n in changed) and any(
        n.startswith("decoders.sal") for n in changed
    )
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if n in frozen)
    metrics = evaluate(model, tasks, DataLoader(val, batch_size=2), device="cpu")
    assert all(math.isfinite(v) for m in metrics.values() for v in m.values())
