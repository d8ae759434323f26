"""A fused LoRA linear for a frozen base layer: the same maths as ``base(x) + s * B A drop(x)``,
less traffic.

Without dropout, forward reads the input once for both the base weight and A, by one GEMM on the
stacked weight:

    [y0 | u] = x [W; A]^T + [b | 0]        y0: (N, out), u = A x: (N, r)
    y        = y0 + s * u B^T              (addmm: the add happens in the GEMM epilogue)

With dropout, A reads the masked input x_a = m * x instead (m: 0 where dropped, else 1; u = A x_a;
1 / (1 - p) is folded into s by the caller) and the base GEMM is separate. Backward reads the
output gradient g once for both input-gradient paths, and never forms the (out, in) weight
gradient that a frozen W does not need:

    [gx | v] = g [W | s B]                 v = s g B: (N, r)
    dx = gx + m * (v A),   dA = v^T x_a,   dB = s g^T u

Under autocast the GEMMs run in the autocast dtype and only the low-precision input is saved.

``dropout_mask`` draws the masks. On CPU ``bernoulli_`` was the largest single cost of a training
step with dropout 0.05 (benchmarks/RESULTS.md); comparing 31-bit random integers with a threshold
gives the same Bernoulli(p) masks from torch's generator at about a third of its time.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _compute_dtype(x: Tensor) -> torch.dtype:
    device_type = x.device.type
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return x.dtype


def dropout_mask(shape: tuple[int, ...] | torch.Size, p: float, device: torch.device) -> Tensor:
    """A bool tensor of ``shape``, each entry independently True (drop) with probability p.

    On CPU: uniform integers on [0, 2^31) compared with p 2^31. Eager code draws them with
    ``random_`` (about two thirds of the time of ``randint`` here); ``torch.compile`` cannot trace
    ``random_``, so compiled code draws them with ``randint`` (the same distribution, other bits).
    """
    if device.type == "cpu":  # P(bits < p 2^31) = p
        threshold = round(p * 2**31)
        if torch.compiler.is_compiling():
            return torch.randint(0, 2**31, tuple(shape), dtype=torch.int32) < threshold
        return torch.empty(shape, dtype=torch.int32).random_() < threshold
    return torch.empty(shape, dtype=torch.bool, device=device).bernoulli_(p)


def lora_dropout(x: Tensor, p: float) -> Tensor:
    """Inverted dropout with ``dropout_mask``: zero each entry with probability p, scale the rest
    by 1 / (1 - p). Differentiable; x: any shape."""
    if p == 0.0:
        return x
    return x.masked_fill(dropout_mask(x.shape, p, x.device), 0.0) * (1.0 / (1.0 - p))


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
        drop: Tensor | None,
    ) -> Tensor:
        dtype = _compute_dtype(x)
        out_f, in_f, rank = weight.shape[0], weight.shape[1], lora_A.shape[0]
        with torch.autocast(x.device.type, enabled=False):
            x2 = x.reshape(-1, in_f).to(dtype)  # (N, in)
            if drop is None:  # one GEMM on the stacked [W; A]
                stacked = torch.cat([weight, lora_A], 0).to(dtype)  # (out + r, in)
                bias_r = None if bias is None else F.pad(bias, (0, rank)).to(dtype)
                y0_u = x2 @ stacked.t() if bias_r is None else torch.addmm(bias_r, x2, stacked.t())
                y0, u = y0_u.split([out_f, rank], dim=1)  # (N, out), (N, r)
                u, x_a = u.clone(), x2  # clone: a view would keep all of y0_u alive until backward
            else:  # A reads the masked input
                drop = drop.reshape(-1, in_f)
                x_a = x2.masked_fill(drop, 0.0)
                w = weight.to(dtype).t()
                y0 = x2 @ w if bias is None else torch.addmm(bias.to(dtype), x2, w)
                u = x_a @ lora_A.to(dtype).t()
            y = torch.addmm(y0, u, lora_B.to(dtype).t(), alpha=scaling)  # (N, out)
        ctx.save_for_backward(x_a, u, drop, weight, lora_A, lora_B)
        ctx.scaling, ctx.dtype, ctx.x_shape, ctx.x_dtype = scaling, dtype, x.shape, x.dtype
        return y.reshape(*x.shape[:-1], out_f)

    @staticmethod
    def backward(ctx, grad_out: Tensor):  # type: ignore[override]
        x_a, u, drop, weight, lora_A, lora_B = ctx.saved_tensors
        s, dtype = ctx.scaling, ctx.dtype
        in_f, rank = weight.shape[1], lora_A.shape[0]
        with torch.autocast(grad_out.device.type, enabled=False):
            g = grad_out.reshape(-1, weight.shape[0]).to(dtype)  # (N, out)
            sB = (lora_B * s).to(dtype)  # (out, r)
            grad_x = None
            if ctx.needs_input_grad[0]:
                gx, v = (g @ torch.cat([weight.to(dtype), sB], 1)).split([in_f, rank], dim=1)
                A = lora_A.to(dtype)
                if drop is None:
                    grad_x = torch.addmm(gx, v, A)
                else:
                    grad_x = gx + (v @ A).masked_fill_(drop, 0.0)
                grad_x = grad_x.reshape(ctx.x_shape).to(ctx.x_dtype)
            else:
                v = g @ sB  # (N, r)
            grad_A = (v.t() @ x_a).to(lora_A.dtype)  # (r, in)
            grad_B = (g.t() @ u).mul_(s).to(lora_B.dtype)  # (out, r)
        return grad_x, None, None, grad_A, grad_B, None, None


def fused_lora_linear(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    lora_A: Tensor,
    lora_B: Tensor,
    scaling: float,
    drop: Tensor | None = None,
) -> Tensor:
    """``x W^T + b + s * (x_a A^T) B^T`` with no gradient for ``weight`` / ``bias``, where x_a is x
    with the entries where ``drop`` is True set to zero (x itself when ``drop`` is None).

    Shapes: x (..., in), weight (out, in), bias (out,), lora_A (r, in), lora_B (out, r), drop: bool,
    the shape of x -> (..., out). For inverted dropout pass ``scaling = s / (1 - p)``.
    """
    return _FusedLoRALinear.apply(x, weight, bias, lora_A, lora_B, scaling, drop)


def lora_linear(
    base: nn.Linear, x: Tensor, lora_A: Tensor, lora_B: Tensor, scaling: float, p: float = 0.0
) -> Tensor:
    """``base(x) + s * B A drop(x)`` with inverted dropout of probability ``p`` on the LoRA input.

    Shapes: x (..., in), lora_A (r, in), lora_B (out, r) -> (..., out). With a frozen base it runs
    the fused kernel (``fused_lora_linear``: one GEMM on [W; A], no weight gradient for W).
    """
    drop = dropout_mask(x.shape, p, x.device) if p > 0.0 else None  # bool, like x
    s = scaling / (1.0 - p)  # inverted dropout's 1 / (1 - p), folded into the scale
    w, b = base.weight, base.bias
    if not w.requires_grad and (b is None or not b.requires_grad):
        return fused_lora_linear(x, w, b, lora_A, lora_B, s, drop)
    x_a = x if drop is None else x.masked_fill(drop, 0.0)
    return base(x) + s * F.linear(F.linear(x_a, lora_A), lora_B)
