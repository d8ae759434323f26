"""The fused LoRA path must equal the plain reference: forward and every gradient, with and without
a dropout mask on the LoRA input; the masks must be Bernoulli(p)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mtlora_lite.adapters.functional import dropout_mask, fused_lora_linear, lora_dropout


def reference(x, weight, bias, a, b, s, drop=None):
    x_a = x if drop is None else x.masked_fill(drop, 0.0)
    out = x @ weight.T + s * (x_a @ a.T @ b.T)
    return out if bias is None else out + bias


@pytest.mark.parametrize("with_drop", [False, True])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(7, 33), (2, 5, 33), (2, 3, 4, 33)])
def test_fused_matches_reference_fp32(with_drop: bool, bias: bool, shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    drop = torch.rand(shape) < 0.3 if with_drop else None
    lin = nn.Linear(33, 19, bias=bias).requires_grad_(False)
    a = torch.randn(5, 33, requires_grad=True)
    b = torch.randn(19, 5, requires_grad=True)
    x = torch.randn(*shape, requires_grad=True)
    g = torch.randn(*shape[:-1], 19)

    out = fused_lora_linear(x, lin.weight, lin.bias, a, b, 0.7, drop)
    grads = torch.autograd.grad(out, (x, a, b), g)
    ref = reference(x, lin.weight, lin.bias, a, b, 0.7, drop)
    ref_grads = torch.autograd.grad(ref, (x, a, b), g)

    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    for got, want in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("with_drop", [False, True])
def test_fused_without_input_grad(with_drop: bool) -> None:
    torch.manual_seed(0)
    w, a, b = torch.randn(6, 4), torch.randn(2, 4, requires_grad=True), torch.randn(6, 2)
    b.requires_grad_(True)
    x = torch.randn(3, 4)  # no grad needed for the input (e.g. the first layer)
    drop = torch.rand(3, 4) < 0.5 if with_drop else None
    out = fused_lora_linear(x, w, None, a, b, 2.0, drop)
    ga, gb = torch.autograd.grad(out.sum(), (a, b))
    ra, rb = torch.autograd.grad(reference(x, w, None, a, b, 2.0, drop).sum(), (a, b))
    torch.testing.assert_close(ga, ra)
    torch.testing.assert_close(gb, rb)


@pytest.mark.parametrize("with_drop", [False, True])
def test_fused_under_bf16_autocast_close_to_fp32(with_drop: bool) -> None:
    torch.manual_seed(0)
    drop = torch.rand(16, 64) < 0.2 if with_drop else None
    w, bias = torch.randn(32, 64) / 8, torch.randn(32)
    a = (torch.randn(8, 64) / 8).requires_grad_(True)
    b = (torch.randn(32, 8) / 8).requires_grad_(True)
    x = torch.randn(16, 64, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = fused_lora_linear(x, w, bias, a, b, 2.0, drop)
    assert out.dtype == torch.bfloat16
    gx, ga, gb = torch.autograd.grad(out.float().sum(), (x, a, b))
    assert (gx.dtype, ga.dtype, gb.dtype) == (torch.float32,) * 3  # grads match the inputs' dtypes
    ref = reference(x, w, bias, a, b, 2.0, drop)
    rx, ra, rb = torch.autograd.grad(ref.sum(), (x, a, b))
    torch.testing.assert_close(out.float(), ref, rtol=2e-2, atol=5e-2)
    for got, want in ((gx, rx), (ga, ra), (gb, rb)):
        torch.testing.assert_close(got, want, rtol=2e-2, atol=1e-1)


@pytest.mark.parametrize("p", [0.05, 0.5])
def test_dropout_mask_is_bernoulli_p_and_seeded(p: float) -> None:
    torch.manual_seed(0)
    mask = dropout_mask((400, 500), p, torch.device("cpu"))
    assert mask.dtype == torch.bool and mask.shape == (400, 500)
    assert abs(mask.float().mean().item() - p) < 4 * (p * (1 - p) / mask.numel()) ** 0.5
    assert abs(mask[:, :250].float().mean() - mask[:, 250:].float().mean()) < 0.01  # no pattern
    torch.manual_seed(0)
    assert torch.equal(dropout_mask((400, 500), p, torch.device("cpu")), mask)
    assert not dropout_mask((10,), 0.0, torch.device("cpu")).any()


def test_lora_dropout_zeroes_and_rescales() -> None:
    x = torch.randn(300, 200, requires_grad=True)
    torch.manual_seed(1)
    y = lora_dropout(x, 0.25)
    torch.manual_seed(1)
    drop = dropout_mask(x.shape, 0.25, x.device)
    torch.testing.assert_close(y, x.masked_fill(drop, 0.0) / 0.75)
    (gx,) = torch.autograd.grad(y.sum(), x)
    torch.testing.assert_close(gx, (~drop).float() / 0.75)
    assert lora_dropout(x, 0.0) is x
