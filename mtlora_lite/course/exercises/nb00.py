"""Exercises of notebook 00 (data and backbone): the segmentation metric, Delta_m, and the shapes
of the course Swin's stage features.

1. ``mean_iou(pred, target, n_classes)``: mIoU in % over the classes present in the target or the
   prediction (section 2, before the perfect / constant / worst table).
2. ``delta_m_by_hand(multi, single, higher_is_better)``: Delta_m in % (section 2, the worked
   example).
3. ``STAGE_SHAPES``: predict the (C, H, W) of each stage's feature map for a 64 x 64 image
   (section 4, before ``stage_features`` prints them).
"""

from __future__ import annotations

import torch
from torch import Tensor

from mtlora_lite.course.backbones import COURSE_SWIN_CONFIG
from mtlora_lite.course.exercises.core import Exercise, Wrong, call, compare_number

# ------------------------------------------------------------------------------------------------
# 1. mean IoU
# ------------------------------------------------------------------------------------------------


def mean_iou(pred: Tensor, target: Tensor, n_classes: int) -> float:
    """Mean intersection over union in %: pred, target (N, H, W) class indices in [0, n_classes).

    Averages TP / (TP + FP + FN) over the classes present in the target or the prediction.
    """
    ious = []
    for c in range(n_classes):
        predicted, true = pred == c, target == c
        union = (predicted | true).sum()
        if union > 0:  # a class absent from both is left out
            ious.append((predicted & true).sum() / union)
    return 100 * torch.stack(ious).float().mean().item()


def _iou_cases() -> list[tuple[Tensor, Tensor, int]]:
    g = torch.Generator().manual_seed(0)
    target = torch.randint(0, 3, (2, 6, 6), generator=g)  # classes 0-2 of 5: 3 and 4 absent
    pred = target.clone()
    pred[0, :2] = (pred[0, :2] + 1) % 3  # some pixels wrong
    pred[1, 0, :3] = 1
    return [(pred, target, 5), (target.clone(), target, 5)]


def _iou_variants(pred: Tensor, target: Tensor, n: int) -> dict[str, float]:
    ious_all, precision = [], []
    for c in range(n):
        p, t = pred == c, target == c
        union = (p | t).sum()
        ious_all.append(((p & t).sum() / union).item() if union > 0 else 0.0)
        if union > 0:
            precision.append(((p & t).sum() / p.sum().clamp_min(1)).item())
    pixel_acc = 100 * (pred == target).float().mean().item()
    present = mean_iou(pred, target, n)
    without_bg = [
        i for c, i in enumerate(ious_all) if c > 0 and ((pred == c) | (target == c)).any()
    ]
    return {
        "that is pixel accuracy (the share of correct pixels), not the mean IoU over classes": (
            pixel_acc
        ),
        "classes absent from both the target and the prediction count as IoU 0 here: leave them "
        "out (their union is empty)": 100 * sum(ious_all) / n,
        "the result should be in percent: multiply by 100": present / 100,
        "TP / (TP + FP) is the precision: the IoU divides by the union TP + FP + FN": (
            100 * sum(precision) / len(precision)
        ),
        "the background (class 0) is a class too: include it": 100
        * sum(without_bg)
        / len(without_bg),
    }


def _check_iou(answer: object) -> None:
    for pred, target, n in _iou_cases():
        got = call(answer, pred.clone(), target.clone(), n)
        want = mean_iou(pred, target, n)
        variants = {m: v for m, v in _iou_variants(pred, target, n).items() if abs(v - want) > 1e-6}
        compare_number(got, want, "mean_iou", variants, rel=1e-4)


# ------------------------------------------------------------------------------------------------
# 2. Delta_m
# ------------------------------------------------------------------------------------------------


def delta_m_by_hand(
    multi: dict[str, float], single: dict[str, float], higher_is_better: dict[str, bool]
) -> float:
    """Delta_m in %: the mean over tasks of (-1)^l_t (M_mt,t - M_st,t) / M_st,t * 100, where
    l_t = 1 for tasks whose metric is better when lower."""
    terms = []
    for t in single:
        sign = 1 if higher_is_better[t] else -1
        terms.append(sign * (multi[t] - single[t]) / single[t] * 100)
    return sum(terms) / len(terms)


DELTA_CASE = (
    {"semseg": 63.0, "saliency": 78.0, "normals": 19.0},
    {"semseg": 60.0, "saliency": 80.0, "normals": 20.0},
    {"semseg": True, "saliency": True, "normals": False},
)


def _check_delta_m(answer: object) -> None:
    multi, single, higher = DELTA_CASE
    want = delta_m_by_hand(multi, single, higher)
    same_sign = {t: True for t in single}
    terms = [(multi[t] - single[t]) / single[t] * 100 for t in single]
    signs = [1 if higher[t] else -1 for t in single]
    mistakes = {
        "normals is better when lower: its term needs the sign flip (-1)^l_t, so that a smaller "
        "error counts as a gain": delta_m_by_hand(multi, single, same_sign),
        "the result should be in percent: multiply each relative change by 100": want / 100,
        "divide each change by the single-task reference M_st,t, not by the multi-task value": (
            sum(
                s * (multi[t] - single[t]) / multi[t] * 100
                for s, t in zip(signs, single, strict=True)
            )
            / len(single)
        ),
        "Delta_m is the mean of the terms, not their sum": sum(
            s * d for s, d in zip(signs, terms, strict=True)
        ),
        "the sign is flipped for the wrong tasks: (-1)^l_t is -1 only where lower is better": -want,
    }
    got = call(answer, dict(multi), dict(single), dict(higher))
    compare_number(got, want, "delta_m_by_hand", mistakes, rel=1e-6)


# ------------------------------------------------------------------------------------------------
# 3. stage shapes
# ------------------------------------------------------------------------------------------------


def _stage_shapes(image: int = 64) -> list[tuple[int, int, int]]:
    cfg = COURSE_SWIN_CONFIG
    first = image // cfg["patch_size"]
    return [
        (cfg["embed_dim"] * 2**i, first // 2**i, first // 2**i) for i in range(len(cfg["depths"]))
    ]


STAGE_SHAPES = _stage_shapes()  # the reference answer: [(32, 16, 16), (64, 8, 8), ...]


def _check_stage_shapes(answer: object) -> None:
    want = _stage_shapes()
    try:
        got = [tuple(int(v) for v in shape) for shape in answer]  # type: ignore[union-attr]
    except (TypeError, ValueError):
        raise Wrong("write a list with one (C, H, W) tuple of integers per stage") from None
    if len(got) != len(want):
        raise Wrong(
            f"the course Swin has {len(want)} stages: give {len(want)} shapes, not {len(got)}"
        )
    patch = COURSE_SWIN_CONFIG["patch_size"]
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        if g == w:
            continue
        if g == (w[1], w[2], w[0]):
            raise Wrong(f"stage {i}: write (C, H, W), channels first as PyTorch does: {w}")
        if g[1:] == (64 // 2**i, 64 // 2**i):
            raise Wrong(
                f"stage {i}: the patch embedding first cuts the image into {patch} x {patch} "
                f"patches, so stage 0 already works on a {64 // patch} x {64 // patch} grid"
            )
        if g[0] == w[0] and g[1] != w[1]:
            raise Wrong(f"stage {i}: the channels are right; each later stage halves H and W")
        if g[0] != w[0] and g[1:] == w[1:]:
            raise Wrong(
                f"stage {i}: H and W are right; the width starts at {w[0] // 2**i} and each "
                "patch merging doubles it"
            )
        raise Wrong(f"stage {i}: {g} is not its feature map shape")


# The learner's starting cells (Exercise.stub), one per exercise.
STUBS = {
    "mean_iou": '''\
def mean_iou(pred: torch.Tensor, target: torch.Tensor, n_classes: int) -> float:
    """Mean IoU in %: pred, target (N, H, W) class indices in [0, n_classes)."""
    raise NotImplementedError  # your code here''',
    "delta_m_by_hand": '''\
def delta_m_by_hand(multi: dict, single: dict, higher_is_better: dict) -> float:
    """Delta_m in %: the mean over tasks of the signed relative changes vs single-task."""
    raise NotImplementedError  # your code here''',
    "STAGE_SHAPES": """\
STAGE_SHAPES = ...  # your prediction: [(C, H, W) of stage 0, (C, H, W) of stage 1, ...]""",
}

EXERCISES = (
    Exercise(
        "mean_iou",
        _check_iou,
        mean_iou,
        hints=(
            "For each class c: predicted = pred == c and true = target == c are boolean maps. "
            "The intersection is (predicted & true).sum(), the union (predicted | true).sum().",
            "Skip a class whose union is 0 (absent from both), average the others' IoU, and "
            "return a float in percent (100 * ...).",
        ),
        stub=STUBS["mean_iou"],
    ),
    Exercise(
        "delta_m_by_hand",
        _check_delta_m,
        delta_m_by_hand,
        hints=(
            "One term per task: (multi[t] - single[t]) / single[t] * 100, then the mean of the "
            "terms.",
            "For a task whose metric is better when lower (higher_is_better[t] is False), flip "
            "the term's sign.",
        ),
        stub=STUBS["delta_m_by_hand"],
    ),
    Exercise(
        "STAGE_SHAPES",
        _check_stage_shapes,
        STAGE_SHAPES,
        hints=(
            "COURSE_SWIN_CONFIG has patch_size 4 and embed_dim 32: stage 0 sees a 16 x 16 grid "
            "of 32-channel tokens.",
            "Between stages, patch merging joins 2 x 2 neighbours: H and W halve, C doubles.",
        ),
        explanation=(
            "A 64 x 64 image becomes 16 x 16 tokens of 32 channels (4 x 4 patches); each of the "
            "three patch mergings halves the grid and doubles the width."
        ),
        stub=STUBS["STAGE_SHAPES"],
    ),
)
