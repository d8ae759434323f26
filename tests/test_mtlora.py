"""MTLoRA on timm Swin: zero init, task streams, gradient routing, merging, ranks, errors."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mtlora_lite.adapters.breakdown import trainable_breakdown
from mtlora_lite.adapters.lora import inject_lora
from mtlora_lite.adapters.merging import merge_adapters, unmerge_adapters
from mtlora_lite.adapters.mtlora import MergeLoRALinear, MTLoRAConfig, MTLoRALinear, TaskLoRA
from mtlora_lite.adapters.saving import load_adapters, save_adapters
from mtlora_lite.adapters.swin import (
    SwinTaskEncoder,
    inject_mtlora,
    mark_mtlora_trainable,
    task_streams,
)
from mtlora_lite.adapters.targets import adapter_layers, linear_names
from mtlora_lite.course.backbones import build_course_swin
from mtlora_lite.multitask.backbones import stage_features

TASKS = ["seg", "depth", "cls"]
COURSE_DIMS = [32, 64, 128, 256]
COURSE_DEPTHS = [2, 2, 4, 2]


def course_swin(seed: int = 0, **overrides: object) -> nn.Module:
    torch.manual_seed(seed)
    return build_course_swin(**overrides).eval()


def mtlora_swin(seed: int = 0, tasks: list[str] = TASKS, **options: object) -> nn.Module:
    swin = course_swin(seed)
    cfg = MTLoRAConfig(**{"shared_rank": 4, "task_rank": 2, "dropout": 0.0, **options})
    inject_mtlora(swin, tasks, cfg)
    mark_mtlora_trainable(swin, cfg)
    return swin


@torch.no_grad()
def randomize_b(model: nn.Module, seed: int = 1) -> None:
    """Non-zero B everywhere (shared and task branches), so every branch changes the output."""
    gen = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        if name.endswith("lora_B"):
            p.copy_(0.05 * torch.randn(p.shape, generator=gen))


def plain_features(swin: nn.Module, x: Tensor, features: str) -> list[Tensor]:
    """Stage features of an un-adapted Swin (NCHW), optionally merged by the next stage."""
    maps = [f.permute(0, 2, 3, 1) for f in stage_features(swin, x)]
    if features == "merged":
        maps = [swin.layers[i + 1].downsample(m) for i, m in enumerate(maps[:-1])] + maps[-1:]
    return [m.permute(0, 3, 1, 2) for m in maps]


@pytest.mark.parametrize("features", ["merged", "stage"])
def test_zero_init_gives_the_base_features_for_every_task(features: str) -> None:
    base, swin = course_swin(), mtlora_swin()
    encoder = SwinTaskEncoder(swin, TASKS, features).eval()
    x = torch.randn(2, 3, 64, 64)
    expected = plain_features(base, x, features)
    got = encoder(x)
    assert encoder.task_stages == [0, 1, 2, 3]
    assert [f.shape[1] for f in expected] == encoder.channels
    for task in TASKS:
        for g, e in zip(got[task], expected, strict=True):
            torch.testing.assert_close(g, e)


def official_layer(layer: MTLoRALinear, x: Tensor, x_t: Tensor, task: str) -> Tensor:
    """A TS layer's task output written out: W x + b (+ s B_s A_s x) + s B_t A_t x_t."""
    out = F.linear(x, layer.base_layer.weight, layer.base_layer.bias) + layer.tasks[task](x_t)
    if layer.task_output == "with_shared":
        out = out + layer.scaling * x @ layer.lora_A.T @ layer.lora_B.T
    return out


@pytest.mark.parametrize("mode", ["official", "with_shared"])
@pytest.mark.parametrize("stage", [0, 3])  # stage 0's last block is shifted; stage 3 has one window
def test_task_streams_match_a_block_written_out(mode: str, stage: int) -> None:
    swin = mtlora_swin(task_output=mode)
    randomize_b(swin)
    block = swin.layers[stage].blocks[-1]
    c = COURSE_DIMS[stage]
    x = torch.randn(2, 16 >> stage, 16 >> stage, c)
    with torch.no_grad():
        shared, per_task = task_streams(block, x)
        torch.testing.assert_close(shared, block(x))  # stream 0 is the plain block
        # proj is per token, so it commutes with timm's window reverse / un-shift: take the
        # attention output before proj, in token layout, and apply each task's proj to it.
        proj, fc1, fc2 = block.attn.proj, block.mlp.fc1, block.mlp.fc2
        block.attn.proj = nn.Identity()
        a = block._attn(block.norm1(x))
        block.attn.proj = proj
        x1 = x + proj(a)
        h = F.gelu(fc1(block.norm2(x1)))
        for k, task in enumerate(TASKS):
            t1 = x + official_layer(proj, a, a, task)
            t_h = F.gelu(official_layer(fc1, block.norm2(x1), block.norm2(t1), task))
            expected = t1 + official_layer(fc2, h, t_h, task)
            torch.testing.assert_close(per_task[k], expected, atol=1e-5, rtol=1e-5)
    assert per_task.shape == (len(TASKS), *x.shape)


@pytest.mark.parametrize("task_ranks", [{"a": 2, "b": 2}, {"a": 1, "b": 3}])
@pytest.mark.parametrize("mode", ["official", "with_shared"])
def test_ts_layer_formula_batched_and_looped(task_ranks: dict[str, int], mode: str) -> None:
    torch.manual_seed(0)
    layer = MTLoRALinear(
        nn.Linear(6, 5), 3, task_ranks, MTLoRAConfig(task_output=mode, dropout=0.0)
    ).requires_grad_(False)
    randomize_b(layer)
    x, x_tasks = torch.randn(4, 7, 6), torch.randn(2, 4, 7, 6)
    shared_delta = 4.0 * x @ layer.lora_A.T @ layer.lora_B.T
    for xt in (x_tasks, None):
        shared, tasks = layer.forward_streams(x, xt)
        assert tasks.shape == (2, 4, 7, 5)
        torch.testing.assert_close(shared, layer.base_layer(x) + shared_delta)
        for k, task in enumerate(task_ranks):
            expected = official_layer(layer, x, x if xt is None else xt[k], task)
            torch.testing.assert_close(tasks[k], expected)
        layer.merge()  # W absorbs the shared update; the task outputs stay the same
        merged_shared, merged_tasks = layer.forward_streams(x, xt)
        torch.testing.assert_close(merged_shared, shared, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(merged_tasks, tasks, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(layer(x), shared, atol=1e-6, rtol=1e-5)
        layer.unmerge()


def test_official_task_outputs_ignore_the_shared_update() -> None:
    layers = {
        m: MTLoRALinear(nn.Linear(6, 5), 2, {"a": 2}, MTLoRAConfig(task_output=m, dropout=0.0))
        for m in ("official", "with_shared")
    }
    x = torch.randn(3, 6)
    for mode, layer in layers.items():
        randomize_b(layer)
        before = [t.detach() for t in layer.forward_streams(x)]
        with torch.no_grad():
            layer.lora_B.add_(1.0)
        after = [t.detach() for t in layer.forward_streams(x)]
        assert not torch.allclose(before[0], after[0])
        assert torch.allclose(before[1], after[1]) == (mode == "official")


def test_each_task_gradient_reaches_only_its_branches_and_the_shared_ones() -> None:
    swin = mtlora_swin()
    randomize_b(swin)
    feats = SwinTaskEncoder(swin, TASKS)(torch.randn(2, 3, 64, 64))
    sum(f.square().mean() for f in feats["depth"]).backward()
    for name, module in swin.named_modules():
        if isinstance(module, TaskLoRA):
            own = name.endswith(".depth")
            for p in module.parameters():
                assert (p.grad is not None and p.grad.abs().sum() > 0) == own, name
        elif isinstance(module, MTLoRALinear):
            # The last TS fc2's shared update only feeds the last shared stream, which no decoder
            # reads in official mode (as in the official code): it gets no gradient.
            dead = name == "layers.3.blocks.1.mlp.fc2"
            for p in (module.lora_A, module.lora_B):
                assert (p.grad is not None and p.grad.abs().sum() > 0) != dead, name
            assert module.base_layer.weight.grad is None


def test_without_task_stages_it_is_plain_lora() -> None:
    mt = mtlora_swin(seed=0, task_stages=(), shared_rank=4, scale=4.0)
    plain = course_swin(seed=0)
    inject_lora(plain, ["attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2"], rank=4, alpha=16.0)
    mt_params, plain_params = dict(mt.named_parameters()), dict(plain.named_parameters())
    assert mt_params.keys() == plain_params.keys()  # no task branches, same names
    for name, p in mt_params.items():
        assert torch.equal(p, plain_params[name]), name  # same seed -> same A
    randomize_b(mt), randomize_b(plain)
    x = torch.randn(2, 3, 64, 64)
    encoder = SwinTaskEncoder(mt, TASKS, "stage")
    assert encoder.task_stages == []
    got, expected = encoder(x), stage_features(plain, x)
    for task in TASKS:
        assert all(a is b for a, b in zip(got[task], got[TASKS[0]], strict=True))
        for g, e in zip(got[task], expected, strict=True):
            torch.testing.assert_close(g, e)


@pytest.mark.parametrize("mode", ["official", "with_shared"])
def test_merged_and_unmerged_forward_agree_for_every_task(mode: str) -> None:
    swin = mtlora_swin(task_output=mode, merge_reduction="lora")
    randomize_b(swin)
    encoder = SwinTaskEncoder(swin, TASKS).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        before = encoder(x)
        n = merge_adapters(swin)
        merged = encoder(x)
        unmerge_adapters(swin)
        after = encoder(x)
    assert n == 4 * sum(COURSE_DEPTHS) + 3  # qkv / proj / fc1 / fc2 of every block + 3 reductions
    for task in TASKS:
        assert not torch.allclose(before[task][0], before["seg" if task != "seg" else "cls"][0])
        for b, m, a in zip(before[task], merged[task], after[task], strict=True):
            torch.testing.assert_close(m, b, atol=1e-5, rtol=1e-4)
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_per_stage_and_per_task_ranks_and_counts() -> None:
    shared = (1, 2, 3, 4)
    task_rank = {"seg": (1, 2, 3, 4), "depth": 2, "cls": (4, 3, 2, 1)}
    swin = mtlora_swin(shared_rank=shared, task_rank=task_rank)
    for i, stage in enumerate(swin.layers):
        assert stage.blocks[0].attn.qkv.rank == shared[i]
        assert (
            len(stage.blocks[0].attn.proj.tasks) == 0 and len(stage.blocks[-1].attn.qkv.tasks) == 0
        )
        fc2 = stage.blocks[-1].mlp.fc2
        assert fc2.rank == shared[i]
        assert {t: b.rank for t, b in fc2.tasks.items()} == {"seg": i + 1, "depth": 2, "cls": 4 - i}
    rows = trainable_breakdown(swin).rows
    # Per block 16 C r (qkv 4C r, proj 2C r, fc1 5C r, fc2 5C r); per TS block 12 C r_t per task.
    ta = sum(16 * c * r * d for c, r, d in zip(COURSE_DIMS, shared, COURSE_DEPTHS, strict=True))
    ts = sum(12 * c * (i + 1 + 2 + 4 - i) for i, c in enumerate(COURSE_DIMS))
    assert rows["ta_lora"] == (ta, ta) and rows["ts_lora"] == (ts, ts)
    feats = SwinTaskEncoder(swin, TASKS)(torch.randn(1, 3, 64, 64))  # the looped path runs
    assert [f.shape[1] for f in feats["cls"]] == [64, 128, 256, 256]


def test_scale_rule_dropout_and_config_in_adapter() -> None:
    swin = mtlora_swin(alpha=8.0, task_rank={"seg": 2, "depth": 4, "cls": 8}, dropout=0.05)
    proj = swin.layers[1].blocks[-1].attn.proj
    assert proj.scaling == 8.0 / 4 and proj.dropout == 0.05
    assert {t: b.scaling for t, b in proj.tasks.items()} == {"seg": 4.0, "depth": 2.0, "cls": 1.0}
    fixed = mtlora_swin(shared_rank=64).layers[0].blocks[0].mlp.fc1
    assert fixed.scaling == 4.0 and len(fixed.tasks) == 0
    cfg = proj.adapter_config()
    assert cfg["type"] == "MTLoRALinear" and cfg["task_ranks"] == {"seg": 2, "depth": 4, "cls": 8}


def test_task_stage_subset_and_trainable_extras() -> None:
    swin = mtlora_swin(
        task_stages=(1, 3),
        train_patch_embed=False,
        train_norms=False,
        train_position_bias=False,
        merge_reduction="frozen",
    )
    encoder = SwinTaskEncoder(swin, TASKS)
    assert encoder.task_stages == [1, 3]
    feats = encoder(torch.randn(1, 3, 64, 64))
    assert feats["seg"][0] is feats["cls"][0] and feats["seg"][1] is not feats["cls"][1]
    rows = trainable_breakdown(swin).rows
    assert {g for g, (t, _) in rows.items() if t} == {"ta_lora", "ts_lora"}
    swin = mtlora_swin(merge_reduction="lora")
    assert isinstance(swin.layers[1].downsample.reduction, MergeLoRALinear)
    rows = trainable_breakdown(swin).rows
    assert rows["merge_lora"][0] == sum(4 * (4 * c + 2 * c) for c in COURSE_DIMS[:3])
    assert not swin.norm.weight.requires_grad  # timm's final norm is unused and stays frozen
    assert swin.layers[0].blocks[0].attn.relative_position_bias_table.requires_grad


def test_ta_lora_on_swin_tiny_is_70656_per_unit_of_rank() -> None:
    swin = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, device="meta")
    inject_mtlora(swin, ["a"], MTLoRAConfig(shared_rank=3, task_rank=1))
    mark_mtlora_trainable(swin)
    rows = trainable_breakdown(swin).rows
    assert rows["ta_lora"][0] == 3 * 70_656
    assert rows["ts_lora"][0] == 12 * (96 + 192 + 384 + 768)


def test_a_file_for_other_ranks_or_another_base_is_refused(tmp_path) -> None:
    """(the round trip of every adapter kind: test_adapter_contract.py)"""
    path = save_adapters(mtlora_swin(), tmp_path / "mtlora.safetensors")
    with pytest.raises(ValueError, match="configs differ"):
        load_adapters(mtlora_swin(task_rank=3), path)
    with pytest.raises(ValueError, match="trained on another base model"):
        load_adapters(mtlora_swin(seed=1), path)  # e.g. a randomly initialised backbone


def test_non_square_inputs() -> None:
    base = course_swin(dynamic_img_size=True)
    swin = copy.deepcopy(base)
    inject_mtlora(swin, TASKS, MTLoRAConfig(dropout=0.0))
    x = torch.randn(2, 3, 48, 96)
    feats = SwinTaskEncoder(swin, TASKS)(x)
    assert [tuple(f.shape[-2:]) for f in feats["seg"]] == [(6, 12), (3, 6), (2, 3), (2, 3)]
    for f, e in zip(feats["depth"], plain_features(base, x, "merged"), strict=True):
        torch.testing.assert_close(f, e)


def test_clear_errors() -> None:
    with pytest.raises(ValueError, match="unknown tasks \\['sal'\\]"):
        inject_mtlora(course_swin(), TASKS, MTLoRAConfig(task_rank={"seg": 2, "sal": 2}))
    with pytest.raises(ValueError, match="misses tasks"):
        inject_mtlora(course_swin(), TASKS, MTLoRAConfig(task_rank={"seg": 2}))
    vit = timm.create_model("vit_small_patch16_224", pretrained=False, device="meta")
    with pytest.raises(TypeError, match=r"needs a timm SwinTransformer.*got VisionTransformer"):
        inject_mtlora(vit, TASKS)
    for bad in (
        {"shared_rank": 0},
        {"task_rank": -1},
        {"shared_rank": (4, 0, 4, 4)},
        {"task_rank": {"seg": 0}},
    ):
        with pytest.raises(ValueError, match="positive integers"):
            MTLoRAConfig(**bad)
    with pytest.raises(ValueError, match="3 entries but the backbone has 4 stages"):
        inject_mtlora(course_swin(), TASKS, MTLoRAConfig(shared_rank=(4, 4, 4)))
    with pytest.raises(ValueError, match=r"within 0\.\.3"):
        inject_mtlora(course_swin(), TASKS, MTLoRAConfig(task_stages=(4,)))
    with pytest.raises(ValueError, match="task_output"):
        MTLoRAConfig(task_output="sum")
    with pytest.raises(ValueError, match="unique"):
        inject_mtlora(course_swin(), ["seg", "seg"])
    other_names = SwinTaskEncoder(mtlora_swin(), ["depth", "seg", "cls"])  # read at forward
    with pytest.raises(ValueError, match="same names in the same order"):
        other_names(torch.randn(1, 3, 64, 64))
    assert "layers.0.blocks.0.attn.qkv" in linear_names(course_swin())


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({"scale": 0.0}, ValueError, "scale must be a finite number > 0"),
        ({"scale": -4.0}, ValueError, "scale must be a finite number > 0"),
        ({"scale": math.nan}, ValueError, "scale must be a finite number > 0"),
        ({"scale": math.inf}, ValueError, "scale must be a finite number > 0"),
        ({"alpha": math.nan}, ValueError, "alpha must be a finite number > 0"),
        ({"alpha": 0}, ValueError, "alpha must be a finite number > 0"),
        ({"shared_rank": 4.0}, ValueError, "ranks must be positive integers"),
        ({"task_rank": {"seg": 2.0}}, ValueError, "ranks must be positive integers"),
        ({"dropout": "0.05"}, ValueError, r"dropout must be in \[0, 1\)"),
        ({"task_stages": 3}, TypeError, r"list or tuple .*task_stages=\(3,\)"),
        ({"task_stages": (1.0,)}, ValueError, "a task stage must be an integer >= 0"),
    ],
)
def test_config_refuses_bad_options(options: dict, error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        MTLoRAConfig(**options)


def test_config_takes_integers_of_any_type() -> None:
    cfg = MTLoRAConfig(
        shared_rank=[np.int64(4), 4, 4, np.int32(8)],
        task_rank=np.int64(2),
        task_stages=[np.int64(3)],
    )
    assert cfg.shared_rank == (4, 4, 4, 8) and cfg.task_rank == 2 and cfg.task_stages == (3,)
    swin = course_swin()
    inject_mtlora(swin, TASKS, cfg)
    assert swin.layers[3].blocks[-1].mlp.fc1.rank == 8
    assert SwinTaskEncoder(swin, TASKS).task_stages == [3]


def test_an_empty_task_list_is_refused() -> None:
    with pytest.raises(ValueError, match="task list is empty"):
        inject_mtlora(course_swin(), [])
    with pytest.raises(ValueError, match="task list is empty"):
        SwinTaskEncoder(course_swin(), [])
    with pytest.raises(TypeError, match=r"pass \['seg'\]"):
        SwinTaskEncoder(course_swin(), "seg")


def test_default_config_is_official() -> None:
    cfg = MTLoRAConfig()
    assert (cfg.shared_rank, cfg.task_rank, cfg.scale, cfg.alpha, cfg.dropout) == (
        16,
        4,
        4.0,
        None,
        0.05,
    )
    assert cfg.task_output == "official" and cfg.task_stages is None
    assert cfg.merge_reduction == "trainable" and cfg.train_norms and cfg.train_position_bias
    assert math.isclose(MTLoRALinear(nn.Linear(4, 4), 16).scaling, 4.0)


def test_injection_names_what_a_changed_timm_block_lacks() -> None:
    swin = course_swin()
    swin.layers[1].blocks[-1] = nn.Identity()  # stands in for a timm block without `_attn`
    with pytest.raises(TypeError, match=r"has no \['_attn'.*task_stages=\(\)"):
        inject_mtlora(swin, TASKS)
    assert not adapter_layers(swin)  # checked before any layer was touched


def test_streams_in_batch_is_scoped_to_its_block() -> None:
    proj = mtlora_swin().layers[0].blocks[-1].attn.proj
    x = torch.randn(2, 5, proj.in_features)
    with proj.streams_in_batch():
        assert proj(x).shape == ((1 + len(TASKS)) * 2, 5, proj.out_features)
    with pytest.raises(RuntimeError), proj.streams_in_batch():
        raise RuntimeError("an error inside the block")
    assert proj(x).shape == (2, 5, proj.out_features)  # back to one stream, also after an error
