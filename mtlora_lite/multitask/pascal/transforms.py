"""Augmentation and resizing of PASCAL-Context samples as the benchmark's public loaders do them:
one geometric map for the image and every label, with normals transformed as vectors.

Training (as the benchmark's recipe): horizontal flip (p = 0.5), then rotation by an angle in
[-20, 20] degrees and scaling by a factor in [0.75, 1.25] about the image centre, at the image's
own size; then a resize to ``size`` x ``size`` (the aspect ratio is not kept). Validation: the
resize alone. Two resamplings, as in the public loaders (OpenCV's ``warpAffine``, then
``resize``):

1. the flip (exact), then the warp, one ``grid_sample`` per map at the input size: an output
   pixel at offset d (pixels) from the pivot reads the source at R(angle)^-1 d / scale from it,
   with R(a) the rotation counter-clockwise on screen (rows grow downwards) and the pivot at
   pixel index (W / 2, H / 2) (``PIVOT_SHIFT``: half a pixel right of and below the centre, as
   OpenCV's ``getRotationMatrix2D`` there). Bicubic for the image and the normals, nearest for
   the label maps; what comes from outside the image is 0 in every map: black in the image,
   background in semseg and human parts, not salient in saliency, zero (invalid) normals.
2. the resize: bicubic for the image and the normals, nearest (index floor(i * in / out), as
   OpenCV's) for the label maps; the border is replicated.

Then, as the loaders' ``AddIgnoreRegions``: a human-parts map without any part pixel (its
person left the frame, or the image has no person with parts) is ignored as a whole (255); the
normals are re-normalised to unit length, and a normal is invalid (zero) where the resampled
vector is exactly zero, i.e. no valid normal within the bicubic kernels' reach. The image is
cut to whole grey levels in [0, 255] (the loaders cast it to uint8, which truncates; where
bicubic overshoot passes 0 or 255 by a level or more, that cast wraps around, and we clip) and
ImageNet-normalised last.

Normals are vectors with x to the right and y down the rows: a flip negates x, the rotation turns
(x, y) by the same R as the pixels, scaling leaves them unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from mtlora_lite.multitask.pascal.readers import IGNORE

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
LABEL_MAPS = ("semseg", "human_parts", "sal", "edge")  # integer maps: nearest, 0 outside
FLOAT_LABELS = ("sal", "edge")  # binary maps the losses read as floats (255 = ignore)
PARTS = range(1, 7)  # the part labels of "human_parts" (0 is background)
# The public loaders rotate and scale about pixel index (W / 2, H / 2) (OpenCV's
# getRotationMatrix2D), which lies half a pixel right of and below the image's centre.
PIVOT_SHIFT = 0.5


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


def source_grid(height: int, width: int, aug: Augment) -> Tensor:
    """Where each pixel of the rotated and scaled (height, width) map reads the source: (1, H, W,
    2) normalised (x, y), as ``F.grid_sample`` (align_corners=False) takes it (module docstring;
    the flip is not part of it)."""
    ys = (2 * torch.arange(height, dtype=torch.float32) + 1) / height - 1  # (H,)
    xs = (2 * torch.arange(width, dtype=torch.float32) + 1) / width - 1  # (W,)
    py, px = torch.meshgrid(ys, xs, indexing="ij")
    half = torch.tensor([width / 2, height / 2])
    d = torch.stack([px, py], dim=-1) * half - PIVOT_SHIFT  # (H, W, 2) pixels from the pivot
    q = d @ aug.rotation() / aug.scale + PIVOT_SHIFT  # d @ R == (R^-1 d)^T since R^-1 = R^T
    return (q / half).unsqueeze(0)  # pixels from the centre, normalised


def _warp(x: Tensor, grid: Tensor, mode: str) -> Tensor:
    """(C, H, W) float read at ``grid`` (1, H, W, 2); zero outside the image."""
    return F.grid_sample(x.unsqueeze(0), grid, mode=mode, align_corners=False)[0]


def _resize(x: Tensor, size: int, mode: str) -> Tensor:
    """(C, H, W) float -> (C, size, size), the border replicated."""
    return F.interpolate(x.unsqueeze(0), (size, size), mode=mode)[0]


def warp(
    sample: Mapping[str, np.ndarray], size: int, aug: Augment = Augment()
) -> tuple[Tensor, dict[str, Tensor]]:
    """A ``load_sample`` dict -> (image (3, size, size) ImageNet-normalised, targets).

    Targets at ``size`` x ``size``: "semseg" / "human_parts" int64 (255 = ignore), "sal" / "edge"
    float32 in {0, 1, 255}, "normals" float32 (3, S, S) unit vectors or zero (invalid).
    ``Augment()`` resizes only; any other draw warps first (module docstring).
    """
    maps = {"image": torch.from_numpy(np.array(sample["image"])).permute(2, 0, 1).float()}
    for name in LABEL_MAPS:
        if name in sample:
            maps[name] = torch.from_numpy(np.array(sample[name], dtype=np.float32))[None]
    if "normals" in sample:
        maps["normals"] = torch.from_numpy(np.array(sample["normals"])).permute(2, 0, 1).float()
    if aug.flip:  # exact, before anything else
        maps = {k: v.flip(-1) for k, v in maps.items()}
        if "normals" in maps:
            maps["normals"][0] = -maps["normals"][0]
    if (aug.angle, aug.scale) != (0.0, 1.0):
        grid = source_grid(*maps["image"].shape[-2:], aug)
        maps = {
            k: _warp(v, grid, "nearest" if k in LABEL_MAPS else "bicubic") for k, v in maps.items()
        }
        if "normals" in maps:
            maps["normals"] = _turn(maps["normals"], aug)
    maps = {
        k: _resize(v, size, "nearest" if k in LABEL_MAPS else "bicubic") for k, v in maps.items()
    }

    mean = torch.tensor(IMAGENET_MEAN)[:, None, None]
    std = torch.tensor(IMAGENET_STD)[:, None, None]
    image = (maps.pop("image").clamp(0, 255).floor() / 255 - mean) / std  # whole grey levels
    targets: dict[str, Tensor] = {}
    for name, value in maps.items():
        if name == "normals":
            norm = value.square().sum(0).sqrt()  # (S, S); zero: invalid
            targets[name] = value / norm.clamp_min(1e-12)
            continue
        label = value[0].round()
        if name == "human_parts" and not torch.isin(label, torch.tensor(PARTS)).any():
            label.fill_(IGNORE)  # no part in view: the whole map is ignored
        targets[name] = label if name in FLOAT_LABELS else label.long()
    return image, targets


def _turn(normals: Tensor, aug: Augment) -> Tensor:
    """(3, H, W) normals turned by the pixels' rotation."""
    xy = aug.rotation() @ normals[:2].flatten(1)  # (2, H * W)
    return torch.cat([xy.view(2, *normals.shape[1:]), normals[2:]])


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
