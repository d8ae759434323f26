"""The fused LoRA path must equal the plain reference: forward and every gradient."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mtlora_lite.functional import fused_lora_linear


def reference(x, weight, bias, a, b, s):
    out = x @ weight.T + s * (x @ a.T @ b.T)
    return out if bias is None else out + bias


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(7, 33), (2, 5, 33), (2, 3, 4, 33)])
def test_fused_matches_reference_fp32(bias: bool, shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    lin = nn.Linear(33, 19, bias=bias).requires_grad_(False)
    a = torch.randn(5, 33, requires_grad=True)
    b = torch.randn(19, 5, requires_grad=True)
    x = torch.randn(*shape, requires_grad=True)
    g = torch.randn(*shape[:-1], 19)

    out = fused_lora_linear(x, lin.weight, lin.bias, a, b, 0.7)
    grads = torch.autograd.grad(out, (x, a, b), g)
    ref = reference(x, lin.weight, lin.bias, a, b, 0.7)
    ref_grads = torch.autograd.grad(ref, (x, a, b), g)

    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    for got, want in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_fused_without_input_grad() -> None:
    torch.manual_seed(0)
    w, a, b = torch.randn(6, 4), torch.randn(2, 4, requires_grad=True), torch.randn(6, 2)
    b.requires_grad_(True)
    x = torch.randn(3, 4)  # no grad needed for the input (e.g. the first layer)
    out = fused_lora_linear(x, w, None, a, b, 2.0)
    ga, gb = torch.autograd.grad(out.sum(), (a, b))
    ra, rb = torch.autograd.grad(reference(x, w, None, a, b, 2.0).sum(), (a, b))
    torch.testing.assert_close(ga, ra)
    torch.testing.assert_close(gb, rb)


def test_fused_under_bf16_autocast_close_to_fp32() -> None:
    torch.manual_seed(0)
    w, bias = torch.randn(32, 64) / 8, torch.randn(32)
    a = (torch.randn(8, 64) / 8).requires_grad_(True)
    b = (torch.randn(32, 8) / 8).requires_grad_(True)
    x = torch.randn(16, 64, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = fused_lora_linear(x, w, bias, a, b, 2.0)
    assert out.dtype == torch.bfloat16
    gx, ga, gb = torch.autograd.grad(out.float().sum(), (x, a, b))
    assert (gx.dtype, ga.dtype, gb.dtype) == (torch.float32,) * 3  # grads match the inputs' dtypes
    ref = reference(x, w, bias, a, b, 2.0)
    rx, ra, rb = torch.autograd.grad(ref.sum(), (x, a, b))
    torch.testing.assert_close(out.float(), ref, rtol=2e-2, atol=5e-2)
    for got, want in ((gx, rx), (ga, ra), (gb, rb)):
        torch.testing.assert_close(got, want, rtol=2e-2, atol=1e-1)
