"""Losses of the usual dense tasks: ``(pred, target) -> scalar``, predictions at the input
resolution (B, C, H, W), invalid target pixels left out."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def normals_loss(pred: Tensor, target: Tensor) -> Tensor:
    """L1 between the L2-normalised prediction (B, 3, H, W) and unit targets, on valid (non-zero)
    target pixels."""
    valid = (target.norm(dim=1) > 0.5).unsqueeze(1)
    diff = (F.normalize(pred, dim=1) - target).abs() * valid
    return diff.sum() / (3 * valid.sum()).clamp_min(1)


def depth_loss(pred: Tensor, target: Tensor) -> Tensor:
    """L1 of pred (B, 1, H, W) against target (B, H, W) on pixels with target > 0."""
    valid = target > 0
    return ((pred[:, 0] - target).abs() * valid).sum() / valid.sum().clamp_min(1)


def binary_loss(pred: Tensor, target: Tensor) -> Tensor:
    """Binary cross-entropy of logits (B, 1, H, W) against a {0, 1} mask (B, H, W)."""
    return F.binary_cross_entropy_with_logits(pred[:, 0], target)


def balanced_binary_loss(pred: Tensor, target: Tensor) -> Tensor:
    """``binary_loss`` with positives weighted by #negatives / #positives of the batch."""
    pos = target.sum()
    pos_weight = (target.numel() - pos) / pos.clamp_min(1)
    return F.binary_cross_entropy_with_logits(pred[:, 0], target, pos_weight=pos_weight)
