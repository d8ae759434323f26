"""Task decoders: fuse multi-scale features into a dense prediction, or pool them into a label.

``DenseDecoder`` is the decoder of the official MTLoRA code (its per-task "downsampler" followed by
the HRNet-style head), so parameter counts match the paper. The official code feeds it each stage's
features after the next stage's patch merging (``SwinTaskEncoder(features="merged")``):

    f_i (B, C_i, H_i, W_i) -> 1x1 conv, no bias -> (B, c_i, H_i, W_i)   per map, c = 18, 36, 72, 144
    upsample each to the finest (largest) map, concat                    (B, sum c, H_0, W_0)
    1x1 conv -> BN -> ReLU -> 1x1 conv                                   hidden = 4 * sum c
    bilinear upsample to the input size                                  (B, out, H, W)

``ClassificationHead`` handles image-level tasks: pool the last map -> LayerNorm -> Linear.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mtlora_lite.multitask.tasks import TaskLike


def default_channels(n: int) -> list[int]:
    """The official projection widths 18, 36, 72, 144, ... for ``n`` feature maps."""
    return [18 * 2**i for i in range(n)]


class DenseDecoder(nn.Module):
    """Multi-scale features [(B, C_i, H_i, W_i)] -> dense prediction (B, out_channels, H, W).

    Args:
        in_channels: channels C_i of each feature map.
        out_channels: the task's channels (classes, or 1 / 3 for regression targets).
        channels: 1x1 projection width per map (default ``default_channels``).
        expansion: hidden width of the fusion head, as a multiple of ``sum(channels)`` (official 4).
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        out_channels: int,
        channels: Sequence[int] | None = None,
        expansion: int = 4,
    ) -> None:
        super().__init__()
        channels = list(channels or default_channels(len(in_channels)))
        if not in_channels or len(channels) != len(in_channels):
            raise ValueError(
                f"need one projection width per feature map: {len(in_channels)} maps "
                f"(in_channels={list(in_channels)}), got channels={channels}"
            )
        fused, hidden = sum(channels), expansion * sum(channels)
        self.project = nn.ModuleList(
            nn.Conv2d(c_in, c, 1, bias=False) for c_in, c in zip(in_channels, channels, strict=True)
        )
        self.head = nn.Sequential(
            nn.Conv2d(fused, hidden, 1),
            nn.BatchNorm2d(hidden),
            nn.ReLU(),
            nn.Conv2d(hidden, out_channels, 1),
        )

    def forward(self, features: Sequence[Tensor], size: Sequence[int]) -> Tensor:
        """features: [(B, C_i, H_i, W_i)]; size: (H, W) of the input -> (B, out_channels, H, W)."""
        if len(features) != len(self.project):
            raise ValueError(f"expected {len(self.project)} feature maps, got {len(features)}")
        maps = [proj(f) for proj, f in zip(self.project, features, strict=True)]
        finest = max((m.shape[-2:] for m in maps), key=lambda s: s[0] * s[1])
        maps = [
            m if m.shape[-2:] == finest else F.interpolate(m, finest, mode="bilinear") for m in maps
        ]
        out = self.head(torch.cat(maps, dim=1))  # (B, out_channels, H_0, W_0)
        return F.interpolate(out, tuple(size), mode="bilinear")


class ClassificationHead(nn.Module):
    """Image-level head: last map (B, C, h, w) -> spatial mean -> LayerNorm -> Linear: (B, out)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(in_channels)
        self.fc = nn.Linear(in_channels, out_channels)

    def forward(self, features: Sequence[Tensor], size: Sequence[int] | None = None) -> Tensor:
        """features: [..., (B, C, h, w)] (only the last is used); size is ignored -> (B, out)."""
        return self.fc(self.norm(features[-1].mean(dim=(-2, -1))))


def build_decoder(
    task: TaskLike, in_channels: Sequence[int], channels: Sequence[int] | None = None
) -> DenseDecoder | ClassificationHead:
    """A ``DenseDecoder`` for a dense task (``task.dense``), else a ``ClassificationHead``."""
    if task.dense:
        return DenseDecoder(in_channels, task.out_channels, channels)
    return ClassificationHead(in_channels[-1], task.out_channels)
