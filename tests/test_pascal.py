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

from mtlora_lite.multitask.pascal.data import DOWNLOAD_URL, MissingDataError, PascalContext
from mtlora_lite.multitask.pascal.fixture import CONTEXT, PERSONS, SIZES, write_pascal_fixture
from mtlora_lite.multitask.pascal.readers import (
    HUMAN_PARTS,
    IGNORE,
    NORMALS_CLASSES,
    has_person,
    read_edges,
)
from mtlora_lite.multitask.pascal.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Augment,
    PascalTransform,
    warp,
)


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


def test_parts_alone_train_on_the_images_with_a_person(root: Path) -> None:
    """The public loaders keep, when human parts is the only task, only the images whose
    PASCAL-Part file has a person (class 15) with a non-empty mask; with other tasks, all."""
    ids = [f"2008_{k + 1:06d}" for k in range(6)]
    kinds = dict(zip(ids, PERSONS, strict=True))
    assert [has_person(root / "human_parts" / f"{i}.mat") for i in ids] == [
        kind in ("parts", "no parts") for kind in PERSONS
    ]
    alone = PascalContext(root, "train", tasks=("human_parts",))
    assert [kinds[i] for i in alone.ids] == ["parts", "parts", "no parts"]  # no "none"
    assert [kinds[i] for i in PascalContext(root, "val", ("human_parts",)).ids] == ["parts"]
    assert len(PascalContext(root, "train", ("semseg", "human_parts"))) == 4
    assert len(PascalContext(root, "train", ("human_parts",), person_only=False)) == 4
    assert len(PascalContext(root, "train", ("semseg",), person_only=True)) == 3
    unannotated = alone[alone.ids.index(ids[3])]["human_parts"]  # a person without parts
    assert (unannotated == IGNORE).all()


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


def test_flip_comes_first_at_the_image_size_and_negates_the_normals_x(root: Path) -> None:
    """The public loaders flip the full-size image and labels (exactly), negate normals' x,
    and only then resize: the same as resizing a mirrored sample."""
    sample = PascalContext(root, "train")[1]  # non-square
    mirrored = {k: np.ascontiguousarray(v[:, ::-1]) for k, v in sample.items()}
    mirrored["normals"][..., 0] *= -1
    image, plain = warp(mirrored, 40)
    flipped_image, flipped = warp(sample, 40, Augment(flip=True))
    torch.testing.assert_close(flipped_image, image)
    for name in ("semseg", "human_parts", "sal"):
        assert torch.equal(flipped[name], plain[name])
    torch.testing.assert_close(flipped["normals"], plain["normals"])


def _inside(sample: dict[str, np.ndarray], size: int, aug: Augment, margin: int) -> torch.Tensor:
    """(S, S) bool: output pixels that read the image, ``margin`` pixels or more from outside."""
    ones = {"image": sample["image"], "edge": np.ones(sample["image"].shape[:2], np.uint8)}
    inside = warp(ones, size, aug)[1]["edge"][None, None]
    return -torch.nn.functional.max_pool2d(-inside, 2 * margin + 1, 1, margin)[0, 0] > 0


def test_rotation_turns_the_normals_with_the_pixels() -> None:
    sample = _radial(64)
    for angle in (20.0, -20.0):
        aug = Augment(angle=angle, scale=0.9)
        _, targets = warp(sample, 64, aug)
        n = targets["normals"]
        c = torch.arange(64) + 0.5 - 32
        y, x = torch.meshgrid(c, c, indexing="ij")
        far = (x**2 + y**2 > 10**2) & _inside(sample, 64, aug, margin=2)
        # a radial field stays radial only if vectors turn exactly as the pixels do
        cos = (n[0] * x + n[1] * y) / (n[:2].norm(dim=0) * (x**2 + y**2).sqrt())
        assert cos[far].min() > math.cos(math.radians(4))
        assert torch.allclose(n.norm(dim=0)[n.norm(dim=0) > 0], torch.tensor(1.0), atol=1e-5)


def test_rotation_is_counter_clockwise_about_opencvs_pivot() -> None:
    sample = _radial(32)
    _, targets = warp(sample, 32, Augment(angle=90.0))
    semseg, normals = targets["semseg"], targets["normals"]
    assert semseg[4, 16] == 1 and semseg[28, 16] == 0  # the right half went to the top
    assert normals[1, 2, 16] < -0.9 * normals[:2, 2, 16].norm()  # and its normals point up
    # getRotationMatrix2D((W / 2, H / 2), ...) turns about pixel index (2, 2) of a 4 x 4 map:
    # the pixel one to its right (index x 3, y 2) goes one above it (x 2, y 1)
    dot = np.zeros((4, 4), np.uint8)
    dot[2, 3] = 1
    marked = {"image": np.zeros((4, 4, 3), np.uint8), "semseg": dot}
    turned = warp(marked, 4, Augment(angle=90.0))[1]["semseg"]
    assert turned.nonzero().tolist() == [[1, 2]]


def test_pixels_from_outside_the_image_are_zero_as_warpaffine_fills_them() -> None:
    """OpenCV's warpAffine fills with 0: background in semseg and parts, not salient, zero
    (invalid) normals, a black image; nothing outside is ignored (255)."""
    sample = _radial(32)
    sample["human_parts"] = (sample["semseg"] * 3).astype(np.uint8)  # a part on the right
    image, tilted = warp(sample, 32, Augment(angle=45.0))
    for name in ("semseg", "sal", "human_parts"):
        assert tilted[name][0, 0] == 0 and (tilted[name] != IGNORE).all()
        assert tilted[name][16, 20] != 0  # the right half is still there
    assert tilted["normals"][:, 0, 0].abs().sum() == 0
    black = (torch.zeros(3) - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    torch.testing.assert_close(image[:, 0, 0], black)


def test_parts_without_a_part_in_view_after_the_warp_are_ignored() -> None:
    """The loaders' AddIgnoreRegions runs after the warp: a parts map that is all background
    then (here the person left the frame) is ignored as a whole."""
    sample = _radial(32)
    parts = np.zeros((32, 32), np.uint8)
    parts[:3, :3] = 2  # a torso in the top-left corner
    sample["human_parts"] = parts
    _, kept = warp(sample, 32)
    assert set(kept["human_parts"].unique().tolist()) == {0, 2}  # background stays background
    _, zoomed = warp(sample, 32, Augment(scale=1.25))  # the corner leaves the frame
    assert (zoomed["human_parts"] == IGNORE).all()
    _, smaller = warp(sample, 32, Augment(scale=0.8))  # zoomed out: the torso stays in view
    assert set(smaller["human_parts"].unique().tolist()) == {0, 2}


def test_normals_are_bicubic_renormalised_and_invalid_only_where_zero() -> None:
    """As the loaders: bicubic resampling, unit length after it, and invalid (255 there, zero
    here) only where the resampled vector is exactly zero, so pixels next to a valid region
    count; the kernel's negative lobe even turns the ring just beyond it round."""
    normals = np.zeros((8, 8, 3), np.float32)
    normals[:, :4] = (0.6, 0.0, 0.8)  # valid left half, invalid right half
    sample = {"image": np.zeros((8, 8, 3), np.uint8), "normals": normals}
    n = warp(sample, 32)[1]["normals"]  # 4x upsampling
    norm = n.norm(dim=0)
    assert torch.allclose(norm[norm > 0], torch.tensor(1.0), atol=1e-6)
    valid_columns = (norm > 0).all(0).nonzero().flatten().tolist()
    assert valid_columns == list(range(22))  # 16 columns of the left half, 6 within reach
    torch.testing.assert_close(n[:, 5, 10], torch.tensor([0.6, 0.0, 0.8]))
    assert (n[0, :, 18:22] < 0).all()  # the negative lobe: renormalised, pointing away


def test_the_image_is_resampled_bicubically_in_whole_grey_levels() -> None:
    """The loaders resize the image with bicubic interpolation (the border replicated) and cast
    it to uint8, which truncates."""
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (12, 10, 3), dtype=np.uint8)
    image, _ = warp({"image": pixels}, 20)
    grey = (
        image * torch.tensor(IMAGENET_STD)[:, None, None]
        + torch.tensor(IMAGENET_MEAN)[:, None, None]
    )
    source = torch.from_numpy(pixels).permute(2, 0, 1).float()[None]
    bicubic = torch.nn.functional.interpolate(source, (20, 20), mode="bicubic")[0]
    torch.testing.assert_close(grey * 255, bicubic.clamp(0, 255).floor(), atol=1e-3, rtol=0)


def test_scale_zooms_about_the_pivot_and_keeps_the_vectors() -> None:
    sample = _radial(32)
    _, plain = warp(sample, 32)
    _, zoomed = warp(sample, 32, Augment(scale=2.0))
    # output index i reads source index 16 + (i - 16) / 2 about the pivot (index 16)
    assert torch.equal(zoomed["semseg"][::2, ::2], plain["semseg"][8:24, 8:24])
    torch.testing.assert_close(zoomed["normals"][:, 16, 20], plain["normals"][:, 16, 18])


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
