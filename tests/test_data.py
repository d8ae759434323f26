"""Datasets and loaders: targets, normalisation, determinism, the task mixture and its cue."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mtlora_lite.course.data import (
    CUE_WIDTH,
    MEAN,
    STD,
    MixtureDataset,
    SceneDataset,
    denormalize,
    make_loaders,
    make_mixture_loaders,
    mixture_class_names,
    mixture_layout,
    normalize,
    paint_cue,
)
from mtlora_lite.course.scenes import PRETRAIN, generate_scenes


@pytest.fixture(scope="module")
def scenes() -> dict[str, torch.Tensor]:
    return generate_scenes(60, 1)


def test_scene_dataset_serves_only_the_chosen_tasks(scenes: dict[str, torch.Tensor]) -> None:
    ds = SceneDataset(scenes, ["semseg", "normals", "count"])
    image, targets = ds[3]
    assert len(ds) == 60 and image.shape == (3, 64, 64) and image.dtype == torch.float32
    assert set(targets) == {"semseg", "normals", "count"}
    assert targets["count"].shape == () and targets["count"].dtype == torch.int64
    assert torch.equal(targets["semseg"], scenes["semseg"][3])
    assert torch.allclose(denormalize(image), scenes["image"][3] / 255, atol=1e-6)


def test_scene_dataset_rejects_unknown_tasks(scenes: dict[str, torch.Tensor]) -> None:
    with pytest.raises(ValueError, match="choose among"):
        SceneDataset(scenes, ["semseg", "depht"])


def test_normalisation_round_trip_and_statistics(scenes: dict[str, torch.Tensor]) -> None:
    x = normalize(scenes["image"])
    assert torch.allclose(denormalize(x), scenes["image"] / 255, atol=1e-6)
    assert torch.allclose(x.mean((0, 2, 3)), torch.zeros(3), atol=0.15)  # MEAN / STD fit the data
    assert torch.allclose(x.std((0, 2, 3)), torch.ones(3), atol=0.15)
    assert len(MEAN) == len(STD) == 3


def test_loaders_are_seeded_split_and_drop_last() -> None:
    kwargs = dict(n_train=20, n_val=10, seed=3, batch_size=8)
    train, val = make_loaders(["parts", "shape"], **kwargs)
    again, _ = make_loaders(["parts", "shape"], **kwargs)
    epoch = list(train)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(epoch, again, strict=True))
    images, targets = epoch[0]
    assert images.shape == (8, 3, 64, 64) and targets["parts"].shape == (8, 64, 64)
    assert targets["shape"].shape == (8,)
    assert len(train) == 2 and len(val) == 2  # 20 // 8 full batches; 10 -> 8 + 2
    assert not torch.equal(epoch[0][0], next(iter(train))[0])  # each epoch reshuffles
    assert not any(torch.equal(val.dataset.images[0], x) for x in train.dataset.images)


def test_mixture_layout_and_names() -> None:
    assert mixture_layout() == {"count": (0, 4), "shape": (4, 4), "colour": (8, 6)}
    assert mixture_layout(("colour", "count"), PRETRAIN) == {"colour": (0, 7), "count": (7, 4)}
    names = mixture_class_names()
    assert len(names) == 14 and names[0] == "count=1" and names[4] == "shape=sphere"
    assert names[8] == "colour=red"
    with pytest.raises(ValueError, match="mixture tasks"):
        mixture_layout(("count", "semseg"))


def test_mixture_answers_and_cues(scenes: dict[str, torch.Tensor]) -> None:
    ds = MixtureDataset(scenes, seed=0)
    assert torch.bincount(ds.task).tolist() == [20, 20, 20]  # equal shares
    layout = mixture_layout()
    for i in range(len(ds)):
        _, target = ds[i]
        answer, task = target["answer"].tolist()
        name = ("count", "shape", "colour")[task]
        offset, n_classes = layout[name]
        assert answer == offset + scenes[name][i] and offset <= answer < offset + n_classes
        raw = ds.images[i]
        interior = (slice(None), slice(CUE_WIDTH, -CUE_WIDTH), slice(CUE_WIDTH, -CUE_WIDTH))
        assert torch.equal(raw[interior], scenes["image"][i][interior])
        top = raw[:, :CUE_WIDTH]
        if name == "count":
            assert (top == 255).all()
        elif name == "shape":
            assert (top == 0).all()
        else:
            assert set(top.unique().tolist()) == {0, 255}


def test_paint_cue_names_the_task_not_its_position() -> None:
    images = torch.full((2, 3, 16, 16), 100, dtype=torch.uint8)
    a = paint_cue(images, torch.tensor([0, 1]), ("count", "shape"))
    b = paint_cue(images, torch.tensor([1, 0]), ("shape", "count"))
    assert torch.equal(a, b) and (images == 100).all()


def test_mixture_loaders() -> None:
    train, val = make_mixture_loaders(n_train=24, n_val=12, seed=1, batch_size=6)
    images, targets = next(iter(train))
    assert images.shape == (6, 3, 64, 64) and set(targets) == {"answer"}
    assert targets["answer"].shape == (6, 2) and targets["answer"].dtype == torch.int64
    assert len(val.dataset) == 12


def test_seeds_outside_the_generators_range_are_refused() -> None:
    # torch's CPU generator keeps only the low 32 bits: these seeds would repeat seed 0's scenes
    for seed in (2**32, -(2**32), 1.0, True):
        with pytest.raises(ValueError, match="seed must be"):
            generate_scenes(1, seed)  # type: ignore[arg-type]
    assert generate_scenes(1, 2**32 - 1)["image"].shape == (1, 3, 64, 64)  # the top of the range
    with pytest.raises(ValueError, match=r"below 2147483648 .*2 \* seed \+ 1"):
        make_loaders(["count"], n_train=4, n_val=4, seed=2**31, batch_size=2)  # scene seed 2**32
    with pytest.raises(ValueError, match="seed must be"):
        make_mixture_loaders(n_train=6, n_val=6, seed=-1, batch_size=2)
    train, _ = make_loaders(["count"], n_train=4, n_val=4, seed=np.int64(2**31 - 1), batch_size=2)
    assert len(train.dataset) == 4
