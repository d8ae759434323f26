"""Augmentation and resizing of PASCAL-Context samples: one geometric map for the image and every
label, with normals transformed as vectors.

Training (as the benchmark's recipe): horizontal flip (p = 0.5), rotation by an angle in
[-20, 20] degrees and scaling by a factor in [0.75, 1.25] about the image centre (output the
size of the input), then a resize to ``size`` x ``size`` (the aspect ratio is not kept, as in the
public loaders). Validation: the plain resize. Everything happens in one ``grid_sample`` per map:

    output pixel p (normalised to [-1, 1]) -> offset from the centre in pixels d = (p_x W / 2, p_y H / 2)
    source offset  q = R(angle)^-1 d / scale;  flipped: q_x -> -q_x;  source = (q_x / (W / 2), q_y / (H / 2))

with R(a) the rotation counter-clockwise on screen (rows grow downwards). Resampling: bilinear
for the image and the normals, nearest for the labels. Pixels that come from outside the image
get ``IGNORE`` (255) in every label, zero (invalid) normals and black in the image.

Normals are vectors with x to the right and y down the rows: a flip negates x, the rotation turns
(x, y) by the same R as the pixels, scaling leaves them unchanged; after resampling they are
re-normalised to unit length where valid. The image is ImageNet-normalised last.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from mtlora_lite.multitask.pascal.data import IGNORE

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
LABEL_MAPS = ("semseg", "human_parts", "sal", "edge")  # integer maps: nearest, 255 outside
FLOAT_LABELS = ("sal", "edge")  # binary maps the losses read as floats (255 = ignore)


@dataclass(frozen=True)
class Augment:
    """One draw of the geometric augmentation: flip first, then rotate (degrees, counter-clockwise
    on screen) and scale about the centre. ``Augment()`` is the identity (plain resize)."""

    flip: bool = False
    angle: float = 0.0
    scale: float = 1.0

    def rotation(self) -> Tensor:
        """R (2, 2) acting on (x, y) with y down the rows: counter-clockwise on screen."""
        c, s = math.cos(math.radians(self.angle)), math.sin(math.radians(self.angle))
        return torch.tensor([[c, s], [-s, c]])


def source_grid(height: int, width: int, size: int, aug: Augment) -> Tensor:
    """Where each output pixel reads the source image: (1, size, size, 2) normalised (x, y), as
    ``F.grid_sample`` (align_corners=False) takes it (module docstring)."""
    centres = (2 * torch.arange(size, dtype=torch.float32) + 1) / size - 1  # (S,)
    py, px = torch.meshgrid(centres, centres, indexing="ij")
    d = torch.stack([px * width / 2, py * height / 2], dim=-1)  # (S, S, 2) pixels from centre
    q = d @ aug.rotation() / aug.scale  # row vectors: d @ R == (R^-1 d)^T since R^-1 = R^T
    src = q / torch.tensor([width / 2, height / 2])
    if aug.flip:
        src[..., 0] = -src[..., 0]
    return src.unsqueeze(0)


def _sample(x: Tensor, grid: Tensor, mode: str) -> Tensor:
    """(C, H, W) float -> (C, S, S) read at ``grid``; zero outside the image."""
    return F.grid_sample(x.unsqueeze(0), grid, mode=mode, align_corners=False)[0]


def warp(
    sample: Mapping[str, np.ndarray], size: int, aug: Augment = Augment()
) -> tuple[Tensor, dict[str, Tensor]]:
    """A ``load_sample`` dict -> (image (3, size, size) ImageNet-normalised, targets).

    Targets at ``size`` x ``size``: "semseg" / "human_parts" int64 (255 = ignore), "sal" / "edge"
    float32 in {0, 1, 255}, "normals" float32 (3, S, S) unit vectors or zero (invalid).
    """
    image = torch.from_numpy(np.array(sample["image"])).permute(2, 0, 1).float() / 255
    h, w = image.shape[-2:]
    grid = source_grid(h, w, size, aug)
    inside = (grid[0].abs() <= 1).all(-1)  # (S, S): reads a pixel of the image
    mean, std = (
        torch.tensor(IMAGENET_MEAN)[:, None, None],
        torch.tensor(IMAGENET_STD)[:, None, None],
    )
    out_image = (_sample(image, grid, "bilinear") - mean) / std
    targets: dict[str, Tensor] = {}
    for name in LABEL_MAPS:
        if name in sample:
            label = torch.from_numpy(np.array(sample[name], dtype=np.float32))[None]
            label = _sample(label, grid, "nearest")[0].round()
            label[~inside] = IGNORE
            targets[name] = label if name in FLOAT_LABELS else label.long()
    if "normals" in sample:
        targets["normals"] = _warp_normals(
            torch.from_numpy(np.array(sample["normals"])), grid, inside, aug
        )
    return out_image, targets


def _warp_normals(normals: Tensor, grid: Tensor, inside: Tensor, aug: Augment) -> Tensor:
    """(H, W, 3) normals, zero = invalid -> (3, S, S) resampled and turned as vectors."""
    n = normals.permute(2, 0, 1).float()  # (3, H, W)
    valid = (n.norm(dim=0, keepdim=True) > 0.5).float()
    out = _sample(n, grid, "bilinear")  # invalid neighbours are zero: they do not turn it
    keep = (_sample(valid, grid, "nearest")[0] > 0.5) & inside & (out.norm(dim=0) > 1e-6)
    if aug.flip:
        out[0] = -out[0]
    xy = aug.rotation() @ out[:2].flatten(1)  # (2, S * S): the pixels' rotation, on the vectors
    out = torch.cat([xy.view(2, *out.shape[1:]), out[2:]])
    return F.normalize(out, dim=0) * keep


class PascalTransform:
    """``load_sample`` dict -> (image, targets) at ``size`` x ``size`` (module docstring).

    ``train=True`` draws a fresh ``Augment`` per sample (flip with probability ``flip_p``, angle
    uniform in +-``max_angle``, scale uniform in ``scales``) from torch's random generator (the
    worker's own in a DataLoader); ``train=False`` only resizes.
    """

    def __init__(
        self,
        size: int = 448,
        train: bool = False,
        max_angle: float = 20.0,
        scales: tuple[float, float] = (0.75, 1.25),
        flip_p: float = 0.5,
    ) -> None:
        if size < 1:
            raise ValueError(f"size must be a positive number of pixels, got {size}")
        if not 0 < scales[0] <= scales[1]:
            raise ValueError(f"scales must be (low, high) with 0 < low <= high, got {scales}")
        self.size, self.train = size, train
        self.max_angle, self.scales, self.flip_p = max_angle, scales, flip_p

    def draw(self) -> Augment:
        """A random ``Augment`` (training) or the identity (validation)."""
        if not self.train:
            return Augment()
        u = torch.rand(3).tolist()
        low, high = self.scales
        return Augment(
            flip=u[0] < self.flip_p,
            angle=(2 * u[1] - 1) * self.max_angle,
            scale=low + (high - low) * u[2],
        )

    def __call__(self, sample: Mapping[str, np.ndarray]) -> tuple[Tensor, dict[str, Tensor]]:
        return warp(sample, self.size, self.draw())

    def __repr__(self) -> str:
        if not self.train:
            return f"PascalTransform(size={self.size}, resize only)"
        return (
            f"PascalTransform(size={self.size}, flip p={self.flip_p}, rotation +-{self.max_angle}"
            f" deg, scale {self.scales[0]}-{self.scales[1]})"
        )
