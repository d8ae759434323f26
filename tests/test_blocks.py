"""q / v LoRA on a fused qkv Linear: the update of the other blocks is zero by construction."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import timm
import torch
import torch.nn.functional as F
from torch import nn

from mtlora_lite import (
    BlockLoRALinear,
    adapter_layers,
    inject_qkv_lora,
    load_adapters,
    mark_only_adapters_trainable,
    merge_adapters,
    save_adapters,
    trainable_breakdown,
    unmerge_adapters,
)

D, IN, R = 6, 8, 3  # block size d (out = 3 d), input width, rank


def qkv_layer(seed: int = 0) -> nn.Linear:
    torch.manual_seed(seed)
    return nn.Linear(IN, 3 * D).requires_grad_(False)


def randomize_b(model: nn.Module) -> None:
    """A non-zero B, as after training, so that equivalence checks mean something."""
    with torch.no_grad():
        for a in adapter_layers(model).values():
            a.lora_B.normal_(std=0.5)


def tiny_vit(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, depth=2, num_classes=3
    )


@pytest.mark.parametrize("frozen", [True, False])  # the fused kernel, and the plain formula
def test_forward_equals_reference_built_from_wq_wk_wv(frozen: bool) -> None:
    base = qkv_layer().requires_grad_(not frozen)
    layer = BlockLoRALinear(base, ("q", "v"), rank=R, alpha=6.0)
    randomize_b(layer)
    assert layer.lora_B.shape == (2 * D, R)  # only q's and v's rows are parameters
    (W_q, W_k, W_v), (b_q, b_k, b_v) = base.weight.split(D), base.bias.split(D)
    B_q, B_v = layer.lora_B.split(D)
    A, s = layer.lora_A, 6.0 / R
    x = torch.randn(2, 5, IN)
    expected = torch.cat(
        [
            x @ W_q.T + b_q + s * (x @ A.T) @ B_q.T,
            x @ W_k.T + b_k,
            x @ W_v.T + b_v + s * (x @ A.T) @ B_v.T,
        ],
        dim=-1,
    )
    torch.testing.assert_close(layer(x), expected)


def test_k_block_is_the_base_one_with_dropout_in_training() -> None:
    base = qkv_layer()
    layer = BlockLoRALinear(base, ("q", "v"), rank=R, dropout=0.5).train()
    randomize_b(layer)
    x = torch.randn(16, IN)
    y = layer(x)
    torch.testing.assert_close(y[:, D : 2 * D], base(x)[:, D : 2 * D])
    assert not torch.allclose(y[:, :D], base(x)[:, :D])


def test_delta_weight_is_exactly_zero_outside_the_chosen_blocks_and_merges() -> None:
    base = qkv_layer()
    w0 = base.weight.clone()
    layer = BlockLoRALinear(base, ("k",), rank=R)
    randomize_b(layer)
    delta = layer.delta_weight()
    assert delta.shape == (3 * D, IN)
    assert torch.equal(delta[:D], torch.zeros(D, IN))
    assert torch.equal(delta[2 * D :], torch.zeros(D, IN))
    assert delta[D : 2 * D].abs().min() > 0
    x = torch.randn(4, IN)
    before = layer(x)
    layer.merge()
    torch.testing.assert_close(layer(x), before)
    torch.testing.assert_close(layer(x), base(x))  # merged: the plain base layer
    assert torch.equal(base.weight[:D], w0[:D])  # the q and v weights were not touched at all
    layer.unmerge()
    torch.testing.assert_close(base.weight, w0)


def test_only_chosen_blocks_move_during_training_and_base_stays() -> None:
    model = tiny_vit()
    paths = inject_qkv_lora(model, ("q", "v"), rank=R)
    mark_only_adapters_trainable(model, extra=["head"])
    qkv_weights = {p: model.get_submodule(p).base_layer.weight.clone() for p in paths}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 3, (8,))
    for _ in range(4):
        F.cross_entropy(model(x), y).backward()
        opt.step()
        opt.zero_grad()
    d = model.embed_dim
    for path in paths:
        layer = model.get_submodule(path)
        delta = layer.delta_weight()
        assert torch.equal(delta[d : 2 * d], torch.zeros(d, d)), "k's update must stay exactly zero"
        assert delta[:d].abs().max() > 0 and delta[2 * d :].abs().max() > 0
        assert torch.equal(layer.base_layer.weight, qkv_weights[path])


def test_breakdown_counts_exactly() -> None:
    model = tiny_vit()
    paths = inject_qkv_lora(model, ("q", "v"), rank=R)
    mark_only_adapters_trainable(model)
    d = model.embed_dim
    expected = len(paths) * R * (d + 2 * d)  # r * (in + n_blocks * d) per layer
    assert trainable_breakdown(model).rows["block_lora"] == (expected, expected)


def test_a_file_of_other_blocks_is_refused(tmp_path: Path) -> None:
    """(the round trip of every adapter kind: test_adapter_contract.py)"""
    model = tiny_vit()
    inject_qkv_lora(model, ("q", "v"), rank=R, alpha=2.0)
    path = save_adapters(model, tmp_path / "qv.safetensors")
    wrong = tiny_vit()
    inject_qkv_lora(wrong, ("q", "k"), rank=R, alpha=2.0)
    with pytest.raises(ValueError, match="configs differ"):
        load_adapters(wrong, path)


def test_merge_adapters_on_a_timm_model() -> None:
    model = tiny_vit().eval()
    inject_qkv_lora(model, ("q", "v"), rank=R)
    randomize_b(model)
    merged = copy.deepcopy(model)
    merge_adapters(merged)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(merged(x), model(x), atol=1e-4, rtol=1e-4)
        unmerge_adapters(merged)
        torch.testing.assert_close(merged(x), model(x), atol=1e-4, rtol=1e-4)


def test_errors() -> None:
    with pytest.raises(ValueError, match="distinct names"):
        BlockLoRALinear(qkv_layer(), ("q", "x"), rank=R)
    with pytest.raises(ValueError, match="distinct names"):
        BlockLoRALinear(qkv_layer(), ("q", "q"), rank=R)
    with pytest.raises(TypeError, match="sequence of names"):
        BlockLoRALinear(qkv_layer(), "qv", rank=R)
    with pytest.raises(ValueError, match="equal blocks"):
        BlockLoRALinear(nn.Linear(IN, 3 * D + 1), ("q",), rank=R)
    with pytest.raises(ValueError, match="rank"):
        BlockLoRALinear(qkv_layer(), ("q",), rank=0)
    net = nn.ModuleDict(
        {
            "good": nn.ModuleDict({"qkv": nn.Linear(IN, 3 * D)}),
            "bad": nn.ModuleDict({"qkv": nn.Linear(IN, 10)}),
        }
    )
    with pytest.raises(ValueError, match="not 3 equal"):
        inject_qkv_lora(net, ("q",), rank=R, targets="qkv")
    assert not adapter_layers(net), "nothing is injected when one layer does not fit"
