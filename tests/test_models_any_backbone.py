"""Multi-task models on any timm backbone with multi-scale features ("full", "decoders",
"shared_lora"), the one loop that gives a Swin's maps, and TaskHeads."""

from __future__ import annotations

import copy

import pytest
import timm
import torch
from torch import nn

from mtlora_lite.adapters.breakdown import trainable_breakdown
from mtlora_lite.adapters.mtlora import MTLoRALinear
from mtlora_lite.adapters.swin import SwinTaskEncoder, inject_mtlora
from mtlora_lite.adapters.targets import adapter_layers
from mtlora_lite.course.backbones import build_course_swin
from mtlora_lite.multitask.backbones import feature_channels, stage_features
from mtlora_lite.multitask.encoders import FeatureEncoder
from mtlora_lite.multitask.models import TaskHeads, build_model
from mtlora_lite.multitask.tasks import Task

TASKS = [Task.segmentation("seg", 5), Task.normals(), Task.classification("count", 4)]
SIZE = 64


def backbones() -> dict[str, nn.Module]:
    torch.manual_seed(0)
    return {
        "vit": timm.create_model(
            "vit_tiny_patch16_224", pretrained=False, img_size=SIZE, patch_size=8, depth=2
        ),
        "convnext": timm.create_model("convnext_atto", pretrained=False),
        "resnet_features_only": timm.create_model("resnet18", pretrained=False, features_only=True),
    }


@pytest.mark.parametrize("name", ["vit", "convnext", "resnet_features_only"])
@pytest.mark.parametrize("method", ["full", "decoders", "shared_lora"])
def test_every_baseline_on_other_backbones(name: str, method: str) -> None:
    backbone = backbones()[name]
    if method == "shared_lora" and name != "vit":  # no transformer blocks to put LoRA on
        with pytest.raises(ValueError, match=r"adapts the Linear layers.*'full' or 'decoders'"):
            build_model(backbone, TASKS, method, shared_rank=2)
        return
    options = {"shared_rank": 2} if method == "shared_lora" else {}
    model = build_model(backbone, TASKS, method, **options)
    x = torch.randn(2, 3, SIZE, SIZE)
    out = model(x)
    assert out["seg"].shape == (2, 5, SIZE, SIZE) and out["normals"].shape == (2, 3, SIZE, SIZE)
    assert out["count"].shape == (2, 4)
    sum(o.float().mean() for o in out.values()).backward()
    rows = {g for g, (t, _) in trainable_breakdown(model).rows.items() if t}
    assert {"decoders", "heads"} <= rows
    backbone_trains = any(p.requires_grad for p in model.encoder.backbone.parameters())
    assert backbone_trains == (method != "decoders")
    if method == "shared_lora":
        assert "ta_lora" in rows and "norms" in rows and "other" not in rows
        layers = adapter_layers(model.encoder.backbone).values()
        assert layers and all(isinstance(a, MTLoRALinear) and not a.tasks for a in layers)
    for p in model.parameters():  # every trainable parameter but the unused final norm learns
        if p.requires_grad:
            assert p.grad is not None


def test_mtlora_is_refused_off_a_swin_saying_why() -> None:
    with pytest.raises(TypeError, match=r"task-specific streams through timm's Swin blocks"):
        build_model(backbones()["vit"], TASKS, "mtlora")


@pytest.mark.parametrize("features", ["stage", "merged"])
def test_a_swins_maps_come_from_one_loop(features: str) -> None:
    """stage_features, FeatureEncoder and SwinTaskEncoder give a Swin the same maps; "stage" is
    also what timm's own forward_intermediates gives."""
    torch.manual_seed(0)
    swin = build_course_swin().eval()
    x = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        maps = stage_features(swin, x, features)
        shared = FeatureEncoder(swin, ["a"], features)(x)["a"]
        streams = SwinTaskEncoder(swin, ["a"], features)(x)["a"]
        if features == "stage":
            timm_maps = swin.forward_intermediates(x, intermediates_only=True)
            for ours, theirs in zip(maps, timm_maps, strict=True):
                torch.testing.assert_close(ours, theirs)
    for a, b, c in zip(maps, shared, streams, strict=True):
        assert torch.equal(a, b) and torch.equal(a, c)
    assert [m.shape[1] for m in maps] == feature_channels(swin, features)
    with pytest.raises(ValueError, match="needs a timm Swin"):
        stage_features(backbones()["vit"], x, "merged")


def test_swin_baselines_use_the_shared_encoder_and_mtlora_the_task_streams() -> None:
    swin = build_course_swin()
    assert isinstance(build_model(swin, TASKS, "shared_lora").encoder, FeatureEncoder)
    assert isinstance(build_model(swin, TASKS, "mtlora").encoder, SwinTaskEncoder)
    ts = copy.deepcopy(swin)
    inject_mtlora(ts, ["a"], shared_rank=2)
    assert [m.shape[1] for m in stage_features(ts, torch.randn(1, 3, SIZE, SIZE))] == [
        32,
        64,
        128,
        256,
    ]  # a Swin holding TS-LoRA: its shared stream


def test_task_heads_one_backbone_several_heads() -> None:
    torch.manual_seed(0)
    vit = timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, depth=2, num_classes=0
    )
    tasks = {"shape": Task.classification("shape", 4), "colour": Task.classification("colour", 6)}
    model = TaskHeads(vit, tasks)
    out = model(torch.randn(3, 3, 32, 32))
    assert {k: v.shape for k, v in out.items()} == {"shape": (3, 4), "colour": (3, 6)}
    assert model.backbone is vit and list(model.heads) == ["shape", "colour"]
    assert trainable_breakdown(model).rows["heads"] == (192 * 10 + 10,) * 2
    with pytest.raises(ValueError, match=r"tasks \['seg'\] are dense.*build_model"):
        TaskHeads(vit, [Task.segmentation("seg", 3)])
    with pytest.raises(ValueError, match="pass in_features"):
        TaskHeads(nn.Flatten(), tasks)
