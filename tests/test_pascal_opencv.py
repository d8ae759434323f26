"""Our PASCAL-Context transform against the benchmark's public loaders, step by step in OpenCV.

The public loaders (ASTMT, Multi-Task-Learning-PyTorch, MTLoRA) augment with OpenCV: flip, then
``warpAffine`` about pixel index (W / 2, H / 2) with bicubic (image, normals) or nearest (labels)
interpolation and 0 outside, then ``resize`` to the input size, then ``AddIgnoreRegions`` (parts
without a part pixel and zero-norm normals ignored), then a uint8 cast of the image. This file
writes that chain with OpenCV and checks that ``warp`` gives the same maps on the fixture. It
runs where OpenCV is installed (``pip install opencv-python-headless``) and is skipped otherwise.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from mtlora_lite.multitask.pascal.data import PascalContext
from mtlora_lite.multitask.pascal.fixture import write_pascal_fixture
from mtlora_lite.multitask.pascal.readers import IGNORE
from mtlora_lite.multitask.pascal.transforms import IMAGENET_MEAN, IMAGENET_STD, Augment, warp

cv2 = pytest.importorskip("cv2")

LABELS = ("semseg", "human_parts", "sal")


def loaders_chain(sample: dict[str, np.ndarray], size: int, aug: Augment) -> dict[str, np.ndarray]:
    """The public loaders' training (or, for ``Augment()``, validation) transform in OpenCV."""
    maps = {k: np.array(v, dtype=np.float64) for k, v in sample.items()}
    if (maps["human_parts"] == IGNORE).all():
        maps["human_parts"][:] = 0  # their reader gives zeros where ours gives IGNORE already
    cubic = {"image", "normals"}
    if aug.flip:
        maps = {k: cv2.flip(v, flipCode=1) for k, v in maps.items()}
        maps["normals"][..., 0] *= -1
    if (aug.angle, aug.scale) != (0.0, 1.0):
        for name, value in maps.items():
            h, w = value.shape[:2]
            matrix = cv2.getRotationMatrix2D((w / 2, h / 2), aug.angle, aug.scale)
            if name == "normals":  # the in-plane angle turned by the rotation
                in_plane = np.arctan2(value[..., 0], value[..., 1])
                length = np.hypot(value[..., 0], value[..., 1])
                value[..., 0] = np.sin(in_plane + math.radians(aug.angle)) * length
                value[..., 1] = np.cos(in_plane + math.radians(aug.angle)) * length
            flag = cv2.INTER_CUBIC if name in cubic else cv2.INTER_NEAREST
            maps[name] = cv2.warpAffine(value, matrix, (w, h), flags=flag)
    for name, value in maps.items():
        flag = cv2.INTER_CUBIC if name in cubic else cv2.INTER_NEAREST
        maps[name] = cv2.resize(value, (size, size), interpolation=flag)
    normals = maps["normals"]
    normals /= np.linalg.norm(normals, axis=-1, keepdims=True) + np.finfo(float).eps
    if (maps["human_parts"] == 0).all():
        maps["human_parts"][:] = IGNORE
    maps["image"] = np.trunc(np.clip(maps["image"], 0, 255))  # uint8 cast, without wrapping
    return maps


@pytest.fixture(scope="module")
def samples(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, np.ndarray]]:
    root = write_pascal_fixture(Path(tmp_path_factory.mktemp("pascal")) / "PASCAL_MT", n=6)
    data = PascalContext(root, "train")
    return [data[k] for k in range(len(data))]


@pytest.mark.parametrize(
    "aug",
    [Augment(), Augment(flip=True, angle=17.3, scale=1.18), Augment(angle=-12.0, scale=0.8)],
    ids=["validation", "flip-rotate-zoom-in", "rotate-zoom-out"],
)
def test_warp_equals_the_public_loaders_opencv_chain(samples: list, aug: Augment) -> None:
    mean = torch.tensor(IMAGENET_MEAN)[:, None, None]
    std = torch.tensor(IMAGENET_STD)[:, None, None]
    for sample in samples:
        ref = loaders_chain(sample, 48, aug)
        image, ours = warp(sample, 48, aug)
        grey = ((image * std + mean) * 255).permute(1, 2, 0).numpy()
        diff = np.abs(grey - ref["image"])
        assert diff.max() <= 1.0 + 1e-3 and diff.mean() < 0.02  # a level where rounding differs
        for name in LABELS:
            np.testing.assert_array_equal(ours[name].numpy(), ref[name])
        normals = ours["normals"].permute(1, 2, 0).numpy()
        valid = np.linalg.norm(ref["normals"], axis=-1) > 0
        np.testing.assert_array_equal(np.linalg.norm(normals, axis=-1) > 0, valid)
        np.testing.assert_allclose(normals[valid], ref["normals"][valid], atol=2e-3)
