"""Scene generator: determinism, exact label consistency, geometry, configs, gallery plot."""

from __future__ import annotations

import dataclasses
import math

import matplotlib
import pytest
import torch
import torch.nn.functional as F

from mtlora_lite import primitives, scenes
from mtlora_lite.plots import show_scenes
from mtlora_lite.primitives import PRIMITIVES
from mtlora_lite.scenes import (
    DOWNSTREAM,
    FAR,
    PRETRAIN,
    SceneConfig,
    class_names,
    generate_scenes,
)


@pytest.fixture(scope="module", params=[DOWNSTREAM, PRETRAIN], ids=["downstream", "pretrain"])
def batch(request: pytest.FixtureRequest) -> tuple[SceneConfig, dict[str, torch.Tensor]]:
    return request.param, generate_scenes(200, 7, request.param)


def test_shapes_and_dtypes() -> None:
    s = generate_scenes(5, 0)
    assert s["image"].shape == (5, 3, 64, 64) and s["image"].dtype == torch.uint8
    assert s["normals"].shape == (5, 3, 64, 64) and s["normals"].dtype == torch.float32
    for key in ("semseg", "parts"):
        assert s[key].shape == (5, 64, 64) and s[key].dtype == torch.int64
    for key in ("saliency", "depth", "edges"):
        assert s[key].shape == (5, 64, 64) and s[key].dtype == torch.float32
    for key in ("count", "shape", "colour"):
        assert s[key].shape == (5,) and s[key].dtype == torch.int64


def test_same_seed_is_bit_identical_and_seeds_differ() -> None:
    a, b, c = generate_scenes(20, 3), generate_scenes(20, 3), generate_scenes(20, 4)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["image"], c["image"])


def test_chunking_never_changes_a_scene(monkeypatch: pytest.MonkeyPatch) -> None:
    whole = generate_scenes(50, 11)
    monkeypatch.setattr(scenes, "_CHUNK", 16)
    chunked = generate_scenes(50, 11)
    assert all(torch.equal(whole[k], chunked[k]) for k in whole)


def test_labels_are_consistent(batch: tuple[SceneConfig, dict[str, torch.Tensor]]) -> None:
    config, s = batch
    fg = s["semseg"] > 0
    assert s["semseg"].max() <= len(config.shapes) and s["semseg"].min() >= 0
    assert torch.equal(s["parts"] > 0, fg) and s["parts"].max() <= 3
    # normals: unit vectors facing the camera on objects, exactly zero on the background
    length = s["normals"].norm(dim=1)
    assert torch.allclose(length[fg], torch.ones(()), atol=1e-5)
    assert (s["normals"].permute(0, 2, 3, 1)[~fg] == 0).all()
    assert (s["normals"][:, 2][fg] > -1e-4).all()
    # depth: the far plane exactly on the background, nearer on objects
    assert (s["depth"][~fg] == FAR).all() and (s["depth"][fg] < FAR).all()
    assert (s["depth"][fg] > 0).all()
    # edges: object pixels only, and every object pixel next to the background is one
    assert (s["edges"][~fg] == 0).all() and set(s["edges"].unique().tolist()) <= {0.0, 1.0}
    bg_right = F.pad(~fg, (0, 1), value=False)[:, :, 1:]  # right neighbour is background
    assert (s["edges"][fg & bg_right] == 1).all()
    # saliency: a non-empty part of the foreground, all of it the largest object's shape
    sal = s["saliency"] > 0
    assert set(s["saliency"].unique().tolist()) == {0.0, 1.0}
    assert sal.flatten(1).any(1).all() and not (sal & ~fg).any()
    shape_on_sal = torch.where(sal, s["semseg"], s["shape"][:, None, None] + 1)
    assert torch.equal(shape_on_sal, (s["shape"][:, None, None] + 1).expand_as(shape_on_sal))
    # colour: shaded pixels of the salient object are multiples of its palette colour
    palette = torch.tensor([rgb for _, rgb in config.palette])
    pixels = s["image"].permute(0, 2, 3, 1).float()
    lit = sal & (pixels.sum(-1) > 90)
    expected = palette[s["colour"]][:, None, None, :].expand_as(pixels)
    assert (F.cosine_similarity(pixels[lit], expected[lit], dim=-1) > 0.99).all()


def test_every_object_stays_visible(batch: tuple[SceneConfig, dict[str, torch.Tensor]]) -> None:
    config, s = batch
    placed = scenes._sample(200, config, torch.Generator().manual_seed(7))["n_obj"]
    assert torch.equal(s["count"] + config.min_objects, placed)
    assert set(s["count"].tolist()) == set(range(config.max_objects - config.min_objects + 1))


def test_single_object_is_salient_everywhere() -> None:
    config = dataclasses.replace(DOWNSTREAM, min_objects=1, max_objects=1)
    s = generate_scenes(20, 2, config)
    assert torch.equal(s["saliency"] > 0, s["semseg"] > 0)
    assert (s["count"] == 0).all()


def test_sphere_footprint_matches_its_radius() -> None:
    config = dataclasses.replace(DOWNSTREAM, shapes=("sphere",), max_objects=1, grid=1)
    s = generate_scenes(20, 5, config)
    width = scenes._sample(20, config, torch.Generator().manual_seed(5))["scale"][:, 0, 0]
    area = (s["semseg"] > 0).sum((1, 2)).float()
    expected = math.pi * (width * config.image_size / 2) ** 2  # orthographic disk in pixels
    assert torch.allclose(area, expected, rtol=0.12)


def test_ray_hits_by_hand() -> None:
    """Rays straight down the unit frame's -z hit z = 1 at t = 4 for the cube, cylinder and
    sphere centre; a ray through x = 0.5 hits the sphere at z = sqrt(0.75)."""
    names = ("cube", "sphere", "cylinder", "sphere")
    quadric = torch.tensor([PRIMITIVES[n].quadric for n in names])
    pad = ((0.0, 0.0, 0.0),)
    normals = torch.tensor(
        [PRIMITIVES[n].normals + pad * (6 - len(PRIMITIVES[n].normals)) for n in names]
    )
    across = torch.tensor([[0.0, 0.0, 5.0]] * 3 + [[0.5, 0.0, 5.0]])[:, None, None, :]
    down = torch.zeros(4, 1, 1, 3)
    d = torch.tensor([[0.0, 0.0, -1.0]] * 4)
    _, t, face, on_face = primitives.intersect(across, down, d, quadric, normals)
    expected = torch.tensor([4.0, 4.0, 4.0, 5 - math.sqrt(0.75)])
    assert torch.allclose(t.flatten(), expected, atol=1e-5)
    assert on_face.flatten()[0] and not on_face.flatten()[1]
    assert torch.equal(normals[0, face.flatten()[0]], torch.tensor([0.0, 0.0, 1.0]))
    miss = torch.tensor([[1.5, 0.0, 5.0]])[:, None, None, :]
    assert primitives.intersect(miss, down[:1], d[:1], quadric[1:2], normals[1:2])[1].isinf().all()


def test_pretrain_distribution_differs() -> None:
    assert not set(PRETRAIN.backgrounds) & set(DOWNSTREAM.backgrounds)
    assert not {c for c, _ in PRETRAIN.palette} & {c for c, _ in DOWNSTREAM.palette}
    assert len(set(PRETRAIN.shapes) - set(DOWNSTREAM.shapes)) >= 2


def test_class_names() -> None:
    assert class_names(DOWNSTREAM, "semseg") == ["background", "sphere", "cube", "cylinder", "cone"]
    assert class_names(DOWNSTREAM, "parts") == ["background", "top", "lit body", "shadowed body"]
    assert class_names(DOWNSTREAM, "count") == ["1", "2", "3", "4"]
    assert len(class_names(DOWNSTREAM, "colour")) == 6 and len(class_names(PRETRAIN, "colour")) == 7
    with pytest.raises(ValueError, match="tasks with classes"):
        class_names(DOWNSTREAM, "normals")


def test_config_errors_say_how_to_fix() -> None:
    with pytest.raises(ValueError, match="unknown shapes"):
        SceneConfig(shapes=("torus",))
    with pytest.raises(ValueError, match="unknown backgrounds"):
        SceneConfig(backgrounds=("plasma",))
    with pytest.raises(ValueError, match="grid"):
        SceneConfig(max_objects=10)
    with pytest.raises(ValueError, match="out of the image"):
        SceneConfig(shift=0.3)
    with pytest.raises(ValueError, match="lower size_range"):
        SceneConfig(size_range=(0.2, 0.4))
    with pytest.raises(ValueError, match="positive"):
        generate_scenes(0, 0)


def test_show_scenes_builds_a_figure_without_pyplot() -> None:
    s = generate_scenes(3, 0)
    fig = show_scenes(s["image"], s, n=2)
    assert isinstance(fig, matplotlib.figure.Figure)
    assert len(fig.axes) == 2 * 7  # image + 6 dense labels per row
    assert "count=" in fig.axes[0].get_title()
    assert fig.canvas.manager is None  # not registered with pyplot
    with pytest.raises(KeyError, match="no targets"):
        show_scenes(s["image"], s, tasks=["answer"])
