"""PASCAL-Context: the fixture is in the archive's formats, the dataset reads it like the archive,
and the augmentation moves the image and every label together, normals as vectors."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.io import loadmat

from mtlora_lite.multitask.pascal.data import (
    DOWNLOAD_URL,
    HUMAN_PARTS,
    IGNORE,
    NORMALS_CLASSES,
    MissingDataError,
    PascalContext,
    read_edges,
)
from mtlora_lite.multitask.pascal.fixture import CONTEXT, SIZES, write_pascal_fixture
from mtlora_lite.multitask.pascal.transforms import Augment, PascalTransform, warp


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_pascal_fixture(tmp_path_factory.mktemp("pascal") / "PASCAL_MT", n=6)


def test_fixture_files_are_in_the_archive_formats(root: Path) -> None:
    train = (root / "ImageSets/Context/train.txt").read_text().split()
    val = (root / "ImageSets/Context/val.txt").read_text().split()
    assert (len(train), len(val)) == (4, 2) and not set(train) & set(val)
    first = train[0]
    with Image.open(root / "JPEGImages" / f"{first}.jpg") as im:
        assert (im.format, im.mode, im.size) == ("JPEG", "RGB", SIZES[0][::-1])  # non-square
    with Image.open(root / "semseg/VOC12" / f"{first}.png") as im:
        assert im.mode == "P" and set(np.unique(np.asarray(im))) == {0, 9, 15, IGNORE}
    with Image.open(root / "normals_distill" / f"{first}.png") as im:
        assert im.mode == "RGB"
    with Image.open(root / "sal_distill" / f"{first}.png") as im:
        assert im.mode == "L"
    # the PASCAL-Part struct as scipy.io.loadmat returns it (same call as the reader)
    objects = loadmat(str(root / "human_parts" / f"{first}.mat"))["anno"][0, 0][1][0]
    assert [str(o[0][0]) for o in objects] == ["person", "chair"]
    person, chair = objects
    assert int(person[1][0, 0]) == 15 and len(chair[3]) == 0
    assert {str(p[0][0]) for p in person[3][0]} <= set(HUMAN_PARTS)
    assert person[2].shape == SIZES[0]
    labelmap = loadmat(str(root / "pascal-context/trainval" / f"{first}.mat"))["LabelMap"]
    assert labelmap.shape == SIZES[0] and CONTEXT["sky"] not in NORMALS_CLASSES


def test_dataset_reads_every_label_at_the_image_size(root: Path) -> None:
    train = PascalContext(root, "train")
    assert len(train) == 4 and len(PascalContext(root, "val")) == 2
    for k in range(len(train)):
        sample = train[k]
        h, w = SIZES[k % len(SIZES)]
        assert sample["image"].shape == (h, w, 3)
        assert sample["semseg"].shape == sample["human_parts"].shape == (h, w)
        assert set(np.unique(sample["sal"])) <= {0, 1}
        norm = np.linalg.norm(sample["normals"], axis=-1)
        assert np.all((norm == 0) | (np.abs(norm - 1) < 0.02))  # unit where valid (8-bit PNG)
        assert np.all(norm[:3] == 0)  # the sky (top rows) is not a normals class
        assert np.allclose(sample["normals"][h // 2, 2], [0, 0, 1], atol=0.01)  # the wall


def test_semseg_prefers_voc12_and_parts_follow_the_persons(root: Path) -> None:
    train = PascalContext(root, "train", tasks=("semseg", "human_parts"))
    assert set(np.unique(train[0]["semseg"])) == {0, 9, 15, IGNORE}  # VOC12, not the blank decoy
    assert set(np.unique(train[0]["human_parts"])) == set(range(7))
    person = train[0]["semseg"] == 15
    assert np.all(train[0]["human_parts"][person] > 0)
    no_person = train[2]  # every third image has no person: all ignore
    assert 15 not in no_person["semseg"] and np.all(no_person["human_parts"] == IGNORE)


def test_missing_parts_of_the_archive_name_themselves_and_the_download(
    root: Path, tmp_path: Path
) -> None:
    with pytest.raises(MissingDataError, match="JPEGImages") as err:
        PascalContext(tmp_path / "nowhere")
    assert DOWNLOAD_URL in str(err.value)
    with pytest.raises(MissingDataError, match=r"test\.txt"):
        PascalContext(root, "test")
    broken = shutil.copytree(root, tmp_path / "broken")
    shutil.rmtree(broken / "sal_distill")
    with pytest.raises(MissingDataError, match="sal_distill") as err:
        PascalContext(broken, "train")
    assert DOWNLOAD_URL in str(err.value) and "4 files missing" in str(err.value)
    assert len(PascalContext(broken, "train", tasks=("semseg", "normals"))) == 4
    with pytest.raises(ValueError, match="unknown tasks"):
        PascalContext(root, tasks=("depth",))


def test_edges_are_the_labelmap_borders(root: Path) -> None:
    labels = np.zeros((4, 6), dtype=np.uint16)
    labels[:, 3:] = 7
    edges = read_edges(labels)
    assert edges[:, 2:4].all() and edges.sum() == 8
    sample = PascalContext(root, "train", tasks=("edge",))[0]
    assert set(np.unique(sample["edge"])) == {0, 1}


def test_validation_transform_resizes_everything(root: Path) -> None:
    val = PascalContext(root, "val", transform=PascalTransform(32))
    image, targets = val[0]
    assert image.shape == (3, 32, 32) and image.dtype == torch.float32
    assert targets["semseg"].shape == targets["human_parts"].shape == (32, 32)
    assert targets["semseg"].dtype == torch.int64 and targets["sal"].dtype == torch.float32
    assert set(targets["sal"].unique().tolist()) <= {0.0, 1.0}  # no ignore without rotation
    norm = targets["normals"].norm(dim=0)
    assert torch.all((norm == 0) | ((norm - 1).abs() < 1e-5))
    assert torch.equal(val[0][0], image)  # no randomness when not training


def _radial(size: int) -> dict[str, np.ndarray]:
    """A square sample whose normals point away from the centre in the image plane, and whose
    labels mark the right half."""
    c = (np.arange(size) + 0.5) - size / 2
    y, x = np.meshgrid(c, c, indexing="ij")
    normals = np.stack([x, y, np.full_like(x, size / 4)], -1)
    normals /= np.linalg.norm(normals, axis=-1, keepdims=True)
    right = (x > 0).astype(np.uint8)
    image = np.repeat((right * 200)[..., None], 3, -1).astype(np.uint8)
    return {"image": image, "semseg": right, "sal": right, "normals": normals.astype(np.float32)}


def test_flip_mirrors_every_map_and_negates_the_normals_x(root: Path) -> None:
    sample = PascalContext(root, "train")[1]  # non-square
    image, plain = warp(sample, 40)
    flipped_image, flipped = warp(sample, 40, Augment(flip=True))
    torch.testing.assert_close(flipped_image, image.flip(-1))
    for name in ("semseg", "human_parts", "sal"):
        assert torch.equal(flipped[name], plain[name].flip(-1))
    mirrored = plain["normals"].flip(-1)
    mirrored[0] = -mirrored[0]
    torch.testing.assert_close(flipped["normals"], mirrored)


def test_rotation_turns_the_normals_with_the_pixels() -> None:
    sample = _radial(64)
    for angle in (20.0, -20.0):
        _, targets = warp(sample, 64, Augment(angle=angle, scale=0.9))
        n = targets["normals"]
        c = torch.arange(64) + 0.5 - 32
        y, x = torch.meshgrid(c, c, indexing="ij")
        far = (x**2 + y**2 > 10**2) & (n.norm(dim=0) > 0)
        # a radial field stays radial only if vectors turn exactly as the pixels do
        cos = (n[0] * x + n[1] * y) / (n[:2].norm(dim=0) * (x**2 + y**2).sqrt())
        assert cos[far].min() > math.cos(math.radians(4))
        assert torch.allclose(n.norm(dim=0)[n.norm(dim=0) > 0], torch.tensor(1.0), atol=1e-5)


def test_rotation_is_counter_clockwise_and_fills_ignore_outside() -> None:
    sample = _radial(32)
    _, targets = warp(sample, 32, Augment(angle=90.0))
    semseg, normals = targets["semseg"], targets["normals"]
    assert semseg[4, 16] == 1 and semseg[28, 16] == 0  # the right half went to the top
    assert normals[1, 2, 16] < -0.9 * normals[:2, 2, 16].norm()  # and its normals point up
    _, tilted = warp(sample, 32, Augment(angle=45.0))
    for name in ("semseg", "sal"):
        assert tilted[name][0, 0] == IGNORE and tilted[name][16, 16] != IGNORE
    assert tilted["normals"][:, 0, 0].abs().sum() == 0  # invalid outside the image


def test_scale_zooms_about_the_centre_and_keeps_the_vectors() -> None:
    sample = _radial(32)
    _, plain = warp(sample, 32)
    _, zoomed = warp(sample, 32, Augment(scale=2.0))
    assert torch.equal(zoomed["semseg"][8:24, 8:24][::2, ::2], plain["semseg"][12:20, 12:20])
    centre = zoomed["normals"][:, 15, 20]
    torch.testing.assert_close(centre, plain["normals"][:, 15, 18], atol=0.05, rtol=0)


def test_training_transform_draws_within_the_recipe_ranges() -> None:
    transform = PascalTransform(16, train=True)
    torch.manual_seed(0)
    draws = [transform.draw() for _ in range(200)]
    assert all(-20 <= d.angle <= 20 and 0.75 <= d.scale <= 1.25 for d in draws)
    assert 60 < sum(d.flip for d in draws) < 140
    torch.manual_seed(0)
    assert [transform.draw() for _ in range(200)] == draws  # seeded: reproducible
    with pytest.raises(ValueError, match="scales"):
        PascalTransform(16, train=True, scales=(1.2, 0.8))
