"""Multi-task models: every method through one builder, trainable sets, paper counts, errors."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import timm
import torch
from torch import nn

from mtlora_lite.adapters.breakdown import count_parameters, trainable_breakdown
from mtlora_lite.adapters.merging import merge_adapters
from mtlora_lite.adapters.mtlora import MTLoRAConfig
from mtlora_lite.adapters.targets import adapter_layers
from mtlora_lite.course.backbones import build_course_swin
from mtlora_lite.multitask.models import METHODS, MultiTaskNet, build_model, paper_breakdown


@dataclass
class FakeTask:
    name: str
    out_channels: int
    dense: bool = True


TASKS = [FakeTask("seg", 5), FakeTask("normals", 3), FakeTask("count", 4, dense=False)]


def backbone(**overrides: object) -> nn.Module:
    torch.manual_seed(0)
    return build_course_swin(**overrides)


def trainable_groups(model: nn.Module) -> set[str]:
    return {g for g, (t, _) in trainable_breakdown(model).rows.items() if t}


EXTRAS = {"embedding", "norms", "position bias", "merge reductions"}
TRAINABLE = {  # breakdown rows with trainable parameters, per method
    "full": {"decoders", "heads", "other", *EXTRAS},  # "other": the backbone's linear layers
    "decoders": {"decoders", "heads"},
    "shared_lora": {"decoders", "heads", "ta_lora", *EXTRAS},
    "mtlora": {"decoders", "heads", "ta_lora", "ts_lora", *EXTRAS},
}


@pytest.mark.parametrize("method", METHODS)
def test_every_method_predicts_every_task(method: str) -> None:
    options = {"shared_rank": 4} if method in ("shared_lora", "mtlora") else {}
    model = build_model(backbone(), TASKS, method, **options)
    assert isinstance(model, MultiTaskNet) and model.method == method
    out = model(torch.randn(2, 3, 64, 64))
    assert out.keys() == {"seg", "normals", "count"}
    assert out["seg"].shape == (2, 5, 64, 64) and out["normals"].shape == (2, 3, 64, 64)
    assert out["count"].shape == (2, 4)
    table = trainable_breakdown(model)
    assert (table.trainable, table.total) == count_parameters(model)
    assert trainable_groups(model) == TRAINABLE[method]
    assert not model.encoder.backbone.norm.weight.requires_grad  # unused by the features


def test_models_never_share_weights_with_the_backbone_or_each_other() -> None:
    base = backbone()
    before = {k: v.clone() for k, v in base.state_dict().items()}
    models = [build_model(base, TASKS[:1], "full") for _ in range(2)] + [
        build_model(base, TASKS, "mtlora")
    ]
    pointers = [{p.data_ptr() for p in m.parameters()} for m in models]
    base_pointers = {p.data_ptr() for p in base.parameters()}
    assert all(not (a & base_pointers) for a in pointers)
    assert not (pointers[0] & pointers[1])
    for k, v in base.state_dict().items():  # the given backbone is untouched
        assert torch.equal(v, before[k]), k
    assert not adapter_layers(base)


def test_a_training_step_moves_only_trainable_parameters() -> None:
    model = build_model(backbone(), TASKS, "mtlora", shared_rank=4, dropout=0.0)
    frozen = {n: p.clone() for n, p in model.named_parameters() if not p.requires_grad}
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    images = torch.randn(2, 3, 64, 64)
    out = model(images)
    loss = (
        out["seg"].square().mean() + out["normals"].abs().mean() + out["count"].logsumexp(1).mean()
    )
    loss.backward()
    opt.step()
    for n, p in model.named_parameters():
        if n in frozen:
            assert torch.equal(p, frozen[n]), n
    ts_grads = [p.grad for n, p in model.named_parameters() if ".tasks.count." in n]
    assert ts_grads and all(g is not None for g in ts_grads)


def test_breakdown_groups_and_merge() -> None:
    model = build_model(backbone(), TASKS, "mtlora", shared_rank=4, merge_reduction="lora").eval()
    rows = trainable_breakdown(model).rows
    assert rows["merge_lora"][0] > 0 and rows["merge reductions"][0] == 0
    assert rows["heads"] == (2 * 256 + 256 * 4 + 4,) * 2  # LayerNorm + Linear on the last map
    images = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad and p.dim() == 2:
                p.normal_(0, 0.05)  # non-zero B everywhere
        before = model(images)
        merge_adapters(model)
        after = model(images)
    for task in before:
        torch.testing.assert_close(after[task], before[task], atol=1e-4, rtol=1e-4)


def test_options_and_features() -> None:
    cfg = MTLoRAConfig(shared_rank=2, task_rank=1)
    model = build_model(
        backbone(), TASKS, "mtlora", config=cfg, task_output="with_shared", features="stage"
    )
    proj = model.encoder.backbone.layers[0].blocks[-1].attn.proj
    assert (
        proj.rank == 2
        and proj.task_output == "with_shared"
        and model.encoder.channels == [32, 64, 128, 256]
    )
    by_name = {
        t.name: t for t in TASKS[:1]
    }  # a dict by name, as mtlora_lite.course.scene_tasks.build_tasks gives
    small = build_model(backbone(), by_name, "mtlora", decoder_channels=[4, 4, 4, 4])
    assert small.tasks == ["seg"] and small.decoders["seg"].project[0].out_channels == 4


def test_non_square_images() -> None:
    model = build_model(backbone(dynamic_img_size=True), TASKS, "mtlora", shared_rank=2)
    out = model(torch.randn(1, 3, 48, 96))
    assert out["seg"].shape == (1, 5, 48, 96) and out["count"].shape == (1, 4)


@pytest.mark.parametrize(
    ("rank", "expected", "paper"),
    [(16, 4_953_146, 4.95), (32, 6_083_642, 6.08), (64, 8_344_634, 8.34)],
)
def test_paper_trainable_counts(rank: int, expected: int, paper: float) -> None:
    table = paper_breakdown(shared_rank=rank)
    assert table.trainable == expected and round(table.trainable / 1e6, 2) == paper
    assert table.rows["ta_lora"][0] == 70_656 * rank
    assert table.rows["ts_lora"][0] == 4 * 4 * 12 * (96 + 192 + 384 + 768)


def test_builder_errors() -> None:
    with pytest.raises(ValueError, match="unknown method 'adapters'"):
        build_model(backbone(), TASKS, "adapters")
    with pytest.raises(TypeError, match="takes no MTLoRA options"):
        build_model(backbone(), TASKS, "full", shared_rank=4)
    with pytest.raises(ValueError, match="has no TS-LoRA"):
        build_model(backbone(), TASKS, "shared_lora", task_stages=(0,))
    with pytest.raises(ValueError, match="unknown tasks"):
        build_model(backbone(), TASKS, "mtlora", task_rank={"seg": 2, "depth": 2})
    with pytest.raises(TypeError, match="SwinTransformer"):
        build_model(timm.create_model("vit_small_patch16_224", device="meta"), TASKS, "decoders")
    with pytest.raises(ValueError, match="unique"):
        build_model(backbone(), [TASKS[0], TASKS[0]], "full")
    with pytest.raises(ValueError, match="task list is empty"):
        build_model(backbone(), [], "decoders")  # not a model that predicts {}


@pytest.mark.parametrize(
    ("images", "message"),
    [
        (torch.randn(3, 64, 64), r"add the batch dimension with images\.unsqueeze\(0\)"),
        (torch.randn(2, 1, 3, 64, 64), r"must be a batch \(B, C, H, W\)"),
        (torch.zeros(2, 3, 64, 64, dtype=torch.uint8), r"floating point.*course\.data\.normalize"),
        (torch.randn(0, 3, 64, 64), "empty batch"),
        (torch.randn(2, 64, 64, 3), r"expects 3; channels-last.*permute\(0, 3, 1, 2\)"),
        (torch.randn(2, 3, 32, 48), r"built for 64 x 64.*dynamic_img_size=True.*set_input_size"),
    ],
)
def test_bad_inputs_get_the_fix(images: torch.Tensor, message: str) -> None:
    model = build_model(backbone(), TASKS[:1], "decoders")
    with pytest.raises(ValueError, match=message):
        model(images)


def test_other_sizes_work_with_a_dynamic_swin() -> None:
    model = build_model(backbone(dynamic_img_size=True), TASKS, "decoders").eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 32, 48))
    assert out["seg"].shape == (1, 5, 32, 48) and out["count"].shape == (1, 4)
    with pytest.raises(ValueError, match=r"not a multiple of the patch size \(4, 4\)"):
        model(torch.randn(1, 3, 30, 48))
