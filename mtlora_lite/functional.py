"""A fused LoRA linear for a frozen base layer: the same maths as ``base(x) + s * B A x``, less traffic.

Forward reads the input once for both the base weight and A, by one GEMM on the stacked weight:

    [y0 | u] = x [W; A]^T + [b | 0]        y0: (N, out), u = A x: (N, r)
    y        = y0 + s * u B^T              (addmm: the add happens in the GEMM epilogue)

Backward reads the output gradient g once for both input-gradient paths, and never forms the
(out, in) weight gradient that a frozen W does not need:

    [gx | v] = g [W | s B]                 v = s g B: (N, r)
    dx = gx + v A,   dA = v^T x,   dB = s g^T u

Under autocast the GEMMs run in the autocast dtype and only the low-precision input is saved.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def _compute_dtype(x: Tensor) -> torch.dtype:
    device_type = x.device.type
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return x.dtype


class _FusedLoRALinear(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx,
        x: Tensor,
        weight: Tensor,
        bias: Tensor | None,
        lora_A: Tensor,
        lora_B: Tensor,
        scaling: float,
    ) -> Tensor:
        dtype = _compute_dtype(x)
        out_f, rank = weight.shape[0], lora_A.shape[0]
        with torch.autocast(x.device.type, enabled=False):
            x2 = x.reshape(-1, x.shape[-1]).to(dtype)  # (N, in)
            stacked = torch.cat([weight, lora_A], 0).to(dtype)  # (out + r, in)
            if bias is None:
                y0_u = x2 @ stacked.t()
            else:
                y0_u = torch.addmm(F.pad(bias, (0, rank)).to(dtype), x2, stacked.t())
            y0, u = y0_u.split([out_f, rank], dim=1)  # (N, out), (N, r)
            y = torch.addmm(y0, u, lora_B.to(dtype).t(), alpha=scaling)  # (N, out)
        # u.clone(): a view would keep the whole (N, out + r) GEMM output alive until backward
        ctx.save_for_backward(x2, u.clone(), weight, lora_A, lora_B)
        ctx.scaling, ctx.dtype, ctx.x_shape, ctx.x_dtype = scaling, dtype, x.shape, x.dtype
        return y.reshape(*x.shape[:-1], out_f)

    @staticmethod
    def backward(ctx, grad_out: Tensor):  # type: ignore[override]
        x2, u, weight, lora_A, lora_B = ctx.saved_tensors
        s, dtype = ctx.scaling, ctx.dtype
        in_f, rank = weight.shape[1], lora_A.shape[0]
        need_x = ctx.needs_input_grad[0]
        with torch.autocast(grad_out.device.type, enabled=False):
            g = grad_out.reshape(-1, weight.shape[0]).to(dtype)  # (N, out)
            sB = (lora_B * s).to(dtype)  # (out, r)
            if need_x:
                gx, v = (g @ torch.cat([weight.to(dtype), sB], 1)).split([in_f, rank], dim=1)
                grad_x = torch.addmm(gx, v, lora_A.to(dtype)).reshape(ctx.x_shape).to(ctx.x_dtype)
            else:
                v, grad_x = g @ sB, None  # (N, r)
            grad_A = (v.t() @ x2).to(lora_A.dtype)  # (r, in)
            grad_B = (g.t() @ u).mul_(s).to(lora_B.dtype)  # (out, r)
        return grad_x, None, None, grad_A, grad_B, None


def fused_lora_linear(
    x: Tensor, weight: Tensor, bias: Tensor | None, lora_A: Tensor, lora_B: Tensor, scaling: float
) -> Tensor:
    """``x W^T + b + s * (x A^T) B^T`` with no gradient for ``weight`` / ``bias``.

    Shapes: x (..., in), weight (out, in), bias (out,), lora_A (r, in), lora_B (out, r) -> (..., out).
    """
    return _FusedLoRALinear.apply(x, weight, bias, lora_A, lora_B, scaling)
