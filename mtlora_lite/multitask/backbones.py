"""Backbones from timm: any model by name, and the multi-scale feature maps of Swin and ViT.

swin = timm_backbone("swin_tiny_patch4_window7_224", pretrained=True, img_size=448)
maps = stage_features(swin, images)        # [(B, C_i, H_i, W_i)], finest first
"""

from __future__ import annotations

from typing import Any

import timm
from torch import Tensor, nn


def timm_backbone(name: str, *, pretrained: bool = False, **timm_kwargs: Any) -> nn.Module:
    """``timm.create_model(name, pretrained=pretrained, num_classes=0, **timm_kwargs)``: a
    feature backbone without classifier. Hub weights (``pretrained=True``) need internet."""
    return timm.create_model(name, pretrained=pretrained, num_classes=0, **timm_kwargs)


def _feature_indices(model: nn.Module) -> list[int]:
    """Which blocks/stages ``stage_features`` returns: every stage if strides differ, else the last."""
    info = getattr(model, "feature_info", None)
    if not info or not hasattr(model, "forward_intermediates"):
        raise TypeError(
            f"{type(model).__name__} has no feature_info / forward_intermediates; use a timm "
            "Swin or ViT (e.g. load_backbone('course') or 'swin_tiny_patch4_window7_224')."
        )
    reductions = {f["reduction"] for f in info}
    return list(range(len(info))) if len(reductions) > 1 else [len(info) - 1]


def feature_channels(model: nn.Module) -> list[int]:
    """Channels of each map ``stage_features`` returns, e.g. [32, 64, 128, 256] for the course Swin."""
    return [model.feature_info[i]["num_chs"] for i in _feature_indices(model)]


def stage_features(model: nn.Module, x: Tensor) -> list[Tensor]:
    """Feature maps of a timm backbone, finest first, each (B, C_i, H_i, W_i).

    Hierarchical models (Swin) give one map per stage: (B, C_i, H / 2^(i+2), W / 2^(i+2)).
    Plain ViTs are single scale: one map from the last block, (B, C, H / patch, W / patch)
    (class token dropped, no final norm).
    """
    indices = _feature_indices(model)
    return model.forward_intermediates(x, indices=indices, intermediates_only=True)
