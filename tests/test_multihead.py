"""Multi-head LoRA: inits equal the base, fused path == naive per-head loop, save/load, merge, errors."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from torch import Tensor, nn

from mtlora_lite.adapters.breakdown import count_parameters, trainable_breakdown
from mtlora_lite.adapters.freezing import mark_only_adapters_trainable
from mtlora_lite.adapters.lora import LoRALinear
from mtlora_lite.adapters.multihead import (
    MultiHeadConfig,
    MultiHeadLoRALinear,
    inject_multihead_lora,
    inject_rank_matched_lora,
)
from mtlora_lite.adapters.saving import load_adapters, save_adapters
from mtlora_lite.adapters.targets import adapter_layers


def frozen_linear(d_in: int = 16, d_out: int = 12, seed: int = 0) -> nn.Linear:
    torch.manual_seed(seed)
    return nn.Linear(d_in, d_out).requires_grad_(False)


def naive(m: MultiHeadLoRALinear, x: Tensor, mask: Tensor | None = None) -> Tensor:
    """y = W x + b + s * sum_i w_i B_i (m_i * A x) - s B0 A0 x, one head at a time."""
    u = x @ m.lora_A.T  # (..., r)
    n = m.n_heads
    w = torch.softmax(x @ m.router.T, -1) if m.router is not None else torch.ones(*x.shape[:-1], n)
    y = m.base_layer(x)
    for i in range(n):
        ui = u if mask is None else u * mask[..., i, :]
        y = y + m.scaling * w[..., i : i + 1] * (ui @ m.lora_B[:, i, :].T)
    if m.offset_A is not None:
        y = y - m.scaling * (x @ m.offset_A.T) @ m.offset_B.T
    return y


def randomize(m: MultiHeadLoRALinear, seed: int = 1) -> None:
    torch.manual_seed(seed)
    with torch.no_grad():
        m.lora_B.normal_(0, 0.5)
        if m.router is not None:
            m.router.normal_()


def fix_masks(m: MultiHeadLoRALinear, seed: int = 2) -> list[Tensor]:
    """Replace the dropout masks by recorded, seeded ones; returns the list they are appended to."""
    gen, made = torch.Generator().manual_seed(seed), []

    def mask(shape: tuple[int, ...], like: Tensor) -> Tensor:
        made.append((torch.rand(shape, generator=gen) > m.dropout).float() / (1 - m.dropout))
        return made[-1]

    m._dropout_mask = mask  # type: ignore[method-assign]
    return made


@pytest.mark.parametrize("router", [True, False])
@pytest.mark.parametrize("init", ["rlora", "rlora_centered"])
def test_rlora_init_equals_base_with_nonzero_heads(init: str, router: bool) -> None:
    base = frozen_linear(64, 48)
    m = MultiHeadLoRALinear(base, n_heads=4, rank=8, alpha=16, init=init, router=router)
    assert (m.lora_B != 0).all() and not torch.equal(m.lora_B[:, 0], m.lora_B[:, 1])
    assert (m.offset_A is None) == (init == "rlora_centered")
    x = torch.randn(3, 7, 64)
    torch.testing.assert_close(m(x), base(x), rtol=0, atol=1e-6)
    torch.testing.assert_close(m._forward_unfused(x, False), base(x), rtol=0, atol=1e-6)
    assert (naive(m, x) - base(x)).abs().max() < 1e-6


def test_rlora_init_scale_and_centering() -> None:
    d_in, d_out, gamma = 256, 512, 64.0
    c = d_out**0.25 / math.sqrt(gamma)
    torch.manual_seed(0)
    m = MultiHeadLoRALinear(nn.Linear(d_in, d_out), n_heads=4, rank=16, init="rlora")
    torch.testing.assert_close(m.lora_A.std().item(), c / math.sqrt(d_in), rtol=0.05, atol=0)
    torch.testing.assert_close(m.lora_B.std().item(), c / math.sqrt(d_out), rtol=0.05, atol=0)
    assert torch.equal(m.offset_A, m.lora_A) and m.offset_A is not m.lora_A
    torch.testing.assert_close(m.offset_B, m.lora_B.mean(1))
    two = MultiHeadLoRALinear(nn.Linear(d_in, d_out), n_heads=2, rank=16, init="rlora_centered")
    torch.testing.assert_close(two.lora_B[:, 0], -two.lora_B[:, 1])  # anti-parallel heads
    torch.testing.assert_close(
        two.lora_B.std().item(), c / math.sqrt(d_out) * math.sqrt(1 / 2), rtol=0.05, atol=0
    )


@pytest.mark.parametrize("router", [True, False])
@pytest.mark.parametrize("init", ["hydra", "rlora"])
def test_one_gemm_dropout_and_gradients_equal_naive_loop(init: str, router: bool) -> None:
    m = MultiHeadLoRALinear(
        frozen_linear(), n_heads=4, rank=3, alpha=6, dropout=0.4, init=init, router=router
    )
    randomize(m)
    masks = fix_masks(m)
    x = torch.randn(2, 5, 16, requires_grad=True)
    y = m.train()(x)  # the fused path: base frozen, per-head dropout on A x
    assert len(masks) == 1 and masks[0].shape == (10, 4, 3) and (masks[0] == 0).any()
    ref = naive(m, x, masks[0].reshape(2, 5, 4, 3))
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-5)
    params = [x, m.lora_A, m.lora_B] + ([m.router] if router else [])
    g = torch.randn_like(y)
    for got, want in zip(
        torch.autograd.grad(y, params, g), torch.autograd.grad(ref, params, g), strict=True
    ):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_fused_gradcheck_in_double() -> None:
    base = nn.Linear(6, 5).double().requires_grad_(False)
    m = MultiHeadLoRALinear(base, n_heads=3, rank=2, dropout=0.3, init="rlora").train()
    randomize(m)
    mask = (torch.rand(4, 3, 2) > 0.3).double() / 0.7
    m._dropout_mask = lambda shape, like: mask  # type: ignore[method-assign]
    x = torch.randn(4, 6, dtype=torch.double, requires_grad=True)
    # gradcheck perturbs the parameters in place, so m(x) sees every perturbation.
    assert torch.autograd.gradcheck(lambda x, a, b, r: m(x), (x, m.lora_A, m.lora_B, m.router))


@pytest.mark.parametrize("mode", ["shared", "per_head_x"])
def test_other_dropout_modes_match_their_definition(mode: str) -> None:
    m = MultiHeadLoRALinear(frozen_linear(), n_heads=3, rank=4, dropout=0.5, dropout_mode=mode)
    randomize(m)
    masks = fix_masks(m)
    x = torch.randn(2, 5, 16)
    y = m.train()(x)
    (mask,) = masks
    xd = x.unsqueeze(-2) * mask if mode == "per_head_x" else (x * mask).unsqueeze(-2)
    u = (xd @ m.lora_A.T).expand(2, 5, 3, 4)  # (..., n, r): each head's A drop_i(x)
    w = torch.softmax(x @ m.router.T, -1)
    delta = sum(w[..., i : i + 1] * u[..., i, :] @ m.lora_B[:, i].T for i in range(3))
    delta = delta - (x @ m.offset_A.T) @ m.offset_B.T
    torch.testing.assert_close(y, m.base_layer(x) + m.scaling * delta, rtol=1e-5, atol=1e-5)
    assert mask.shape == ((2, 5, 3, 16) if mode == "per_head_x" else (2, 5, 16))


def test_no_dropout_work_without_dropout() -> None:
    m = MultiHeadLoRALinear(frozen_linear(), n_heads=2, rank=2, dropout=0.0)
    masks = fix_masks(m)
    m.train()(torch.randn(3, 16))
    m.config = dataclasses.replace(m.config, dropout=0.3)
    m.eval()(torch.randn(3, 16))
    assert masks == []


def test_unfused_path_when_base_trains() -> None:
    m = MultiHeadLoRALinear(frozen_linear(), n_heads=3, rank=4)
    randomize(m)
    x = torch.randn(4, 16)
    fused = m(x)
    m.base_layer.requires_grad_(True)
    y = m(x)
    torch.testing.assert_close(y, fused, rtol=1e-5, atol=1e-5)
    y.sum().backward()
    assert m.base_layer.weight.grad is not None and m.lora_A.grad is not None


def test_router_rows_sum_to_one_and_zero_router_is_uniform() -> None:
    m = MultiHeadLoRALinear(frozen_linear(), n_heads=5, rank=2, init="rlora")
    x = torch.randn(2, 3, 16)
    torch.testing.assert_close(m.router_weights(x), torch.full((2, 3, 5), 0.2))
    randomize(m)
    w = m.router_weights(x)
    assert w.shape == (2, 3, 5) and (w > 0).all()
    torch.testing.assert_close(w.sum(-1), torch.ones(2, 3))
    with pytest.raises(RuntimeError, match="no router"):
        MultiHeadLoRALinear(frozen_linear(), n_heads=2, rank=2, router=False).router_weights(x)


def test_stacked_heads_are_a_free_view() -> None:
    m = MultiHeadLoRALinear(frozen_linear(), n_heads=4, rank=3)
    stacked = m.lora_B.flatten(1)
    assert stacked.shape == (12, 12) and stacked.data_ptr() == m.lora_B.data_ptr()
    assert stacked._base is m.lora_B  # a view, not a copy


def test_router_merge_raises_clear_error() -> None:
    m = MultiHeadLoRALinear(frozen_linear(), n_heads=2, rank=2)
    with pytest.raises(RuntimeError, match="router=False"):
        m.merge()
    assert not m.merged


def make_model(seed: int) -> nn.Module:
    torch.manual_seed(0)  # the same "pretrained" base every time
    model = nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 4))
    torch.manual_seed(seed)  # adapters (and their offsets) differ with the seed
    inject_multihead_lora(model, ["0", "2"], n_heads=3, rank=2, init="rlora", dropout=0.1)
    mark_only_adapters_trainable(model)
    return model


def test_a_reload_keeps_the_offset_and_refuses_another_init(tmp_path: Path) -> None:
    """(the round trip of every adapter kind: test_adapter_contract.py)"""
    path = save_adapters(make_model(seed=1), tmp_path / "mh.safetensors")
    fresh = make_model(seed=2)
    load_adapters(fresh, path)
    assert torch.equal(fresh[0].offset_A, make_model(seed=1)[0].offset_A)
    hydra = nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 4))
    inject_multihead_lora(hydra, ["0", "2"], n_heads=3, rank=2, init="hydra")
    with pytest.raises(ValueError, match="configs differ"):
        load_adapters(hydra, path)


def test_clear_errors() -> None:
    lin = nn.Linear(4, 4)
    with pytest.raises(ValueError, match="n_heads must be a positive integer"):
        MultiHeadLoRALinear(lin, n_heads=0, rank=2)
    with pytest.raises(ValueError, match="rank must be a positive integer"):
        MultiHeadLoRALinear(lin, n_heads=2, rank=0)
    with pytest.raises(ValueError, match=r"init must be one of \('hydra'"):
        MultiHeadLoRALinear(lin, n_heads=2, rank=2, init="pissa")
    with pytest.raises(ValueError, match="dropout_mode must be one of"):
        MultiHeadLoRALinear(lin, n_heads=2, rank=2, dropout_mode="x")
    with pytest.raises(ValueError, match="n_heads >= 2"):
        MultiHeadLoRALinear(lin, n_heads=1, rank=2, init="rlora_centered")
    with pytest.raises(ValueError, match="dropout must be in"):
        MultiHeadLoRALinear(lin, n_heads=2, rank=2, dropout=1.0)
    with pytest.raises(ValueError, match="n_heads must be"):
        inject_multihead_lora(nn.Sequential(lin), "0", n_heads=-1, rank=2)
    with pytest.raises(ValueError, match="no module matches"):
        inject_multihead_lora(nn.Sequential(lin), "qkv", n_heads=2, rank=2)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("alpha", 0, "alpha must be a finite number > 0"),
        ("alpha", -4.0, "alpha must be a finite number > 0"),
        ("alpha", math.nan, "alpha must be a finite number > 0"),
        ("alpha", math.inf, "alpha must be a finite number > 0"),
        ("gamma", math.nan, "gamma must be a finite number > 0"),
        ("n_heads", 2.0, r"n_heads must be a positive integer, got 2\.0"),
        ("rank", True, "rank must be a positive integer"),
        ("dropout", "0.1", r"dropout must be in \[0, 1\)"),
    ],
)
def test_config_refuses_bad_numbers(field: str, value: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        MultiHeadConfig(**{field: value})  # type: ignore[arg-type]


def test_config_takes_integers_of_any_type() -> None:
    cfg = MultiHeadConfig(n_heads=np.int64(3), rank=np.int32(2), alpha=np.float64(4.0))
    assert (type(cfg.n_heads), type(cfg.rank), type(cfg.alpha)) == (int, int, float)
    assert cfg.scaling == 2.0
    layer = MultiHeadLoRALinear(nn.Linear(4, 4), cfg)
    assert layer.lora_B.shape == (4, 3, 2) and layer.adapter_config()["n_heads"] == 3


def test_rank_matched_lora_has_rank_n_r_and_same_scale() -> None:
    model = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 8))
    assert inject_rank_matched_lora(model, ["0", "1"], n_heads=4, rank=2, alpha=6) == ["0", "1"]
    lora = model[0]
    mh = MultiHeadLoRALinear(nn.Linear(8, 8), n_heads=4, rank=2, alpha=6)
    assert isinstance(lora, LoRALinear) and lora.rank == 8 and lora.scaling == mh.scaling == 3.0
    model = nn.Sequential(nn.Linear(8, 8))
    inject_rank_matched_lora(model, "0", n_heads=4, rank=4, alpha=4, rslora=True)
    assert model[0].scaling == pytest.approx(
        MultiHeadLoRALinear(nn.Linear(8, 8), n_heads=4, rank=4, alpha=4, rslora=True).scaling
    )


def test_autocast_bf16_runs_and_backprops() -> None:
    m = MultiHeadLoRALinear(frozen_linear(), n_heads=3, rank=4, dropout=0.1).train()
    randomize(m)
    x = torch.randn(2, 5, 16, requires_grad=True)
    fix_masks(m, seed=3)
    ref = m(x)
    fix_masks(m, seed=3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = m(x)
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), ref, rtol=0.05, atol=0.05)
    y.float().sum().backward()
    assert x.grad.dtype == torch.float32 and m.lora_B.grad.dtype == torch.float32


def test_swin_tiny_injection_and_exact_breakdown() -> None:
    torch.manual_seed(0)
    model = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, num_classes=3)
    model.eval()
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        ref = model(x)
    targets = ["attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2"]
    n, r = 4, 8
    assert len(inject_multihead_lora(model, targets, n_heads=n, rank=r)) == 48
    mark_only_adapters_trainable(model, extra=["head"])
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref, rtol=1e-4, atol=1e-4)  # rlora starts at base
    table = trainable_breakdown(model)
    # Per layer: A r*in + B n*out*r + router n*in; per block over qkv, proj, fc1, fc2 with width C:
    # in = C + C + C + 4C = 7C, out = 3C + C + 4C + C = 9C  ->  (r + n) * 7C + n * r * 9C.
    per_c = (r + n) * 7 + n * r * 9
    expected = per_c * sum(c * d for c, d in [(96, 2), (192, 2), (384, 6), (768, 2)])
    assert table.rows["mh_lora"] == (expected, expected)
    assert (table.trainable, table.total) == count_parameters(model)
    assert len(adapter_layers(model)) == 48
    model.train()(torch.randn(1, 3, 224, 224)).sum().backward()
    grads = {name for name, p in model.named_parameters() if p.grad is not None}
    assert len(grads) == 48 * 3 + 2  # A, B, router per layer + head weight and bias
