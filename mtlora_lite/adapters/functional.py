"""The fused autograd functions of the adapters on a frozen base layer: the same maths as the
plain forward, less memory traffic. ``lora_linear`` (LoRA: ``fused_lora_linear``) and
``fused_multihead_linear`` (multi-head LoRA, whose equations are in ``_FusedMultiHead``).

LoRA, ``base(x) + s * B A drop(x)``.

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


def softmax_fp32(logits: Tensor) -> Tensor:
    """Softmax over the last dim in at least float32 (bf16 logits are upcast)."""
    return torch.softmax(logits, -1, dtype=torch.promote_types(logits.dtype, torch.float32))


def _effective_weight(
    weight: Tensor, offset_A: Tensor | None, offset_B: Tensor | None, s: float
) -> Tensor:
    """W - s B0 A0 (out, in): the base weight with the R-LoRA offset folded in."""
    return weight if offset_A is None else torch.addmm(weight, offset_B, offset_A, alpha=-s)


class _FusedMultiHead(torch.autograd.Function):
    """Multi-head LoRA on a frozen base layer: two GEMMs forward, four backward (as plain LoRA).

    The offset is folded into the base weight, W' = W - s B0 A0, so it costs no per-token work.

    Forward:  [y0 | u | l] = x [W'; A; W_r]^T + [b | 0]
              y = y0 + s z [B_1 ... B_n]^T,   z = concat_i(w_i m_i u),  w = softmax(l)
    Backward: [gx | dz] = g [W' | s B_1 ... s B_n],   dB = s g^T z
              du = sum_i w_i m_i dz_i,  dl = a - w sum_i a_i  with a_i = dz_i . z_i
              [dA; dW_r] = [du | dl]^T x,   dx = gx + [du | dl] [A; W_r]
    """

    @staticmethod
    def forward(ctx, x, weight, bias, lora_A, lora_B, router, offset_A, offset_B, mask, scaling):
        dtype = _compute_dtype(x)
        out_f, n, r = lora_B.shape
        with torch.autocast(x.device.type, enabled=False):
            x2 = x.reshape(-1, x.shape[-1]).to(dtype)  # (N, in)
            mask = None if mask is None else mask.to(dtype)  # (N, n, r)
            w_eff = _effective_weight(weight, offset_A, offset_B, scaling)
            rows = [w_eff, lora_A] if router is None else [w_eff, lora_A, router]
            stacked = torch.cat(rows, 0).to(dtype)  # (out + r [+ n], in)
            if bias is None:
                h = x2 @ stacked.t()
            else:
                pad = F.pad(bias, (0, stacked.shape[0] - out_f)).to(dtype)
                h = torch.addmm(pad, x2, stacked.t())
            y0, u, logits = h.split([out_f, r, h.shape[1] - out_f - r], dim=1)
            w = None if router is None else softmax_fp32(logits).to(dtype)  # (N, n)
            gate = None if w is None else w.unsqueeze(2)  # (N, n, 1): w_i
            if mask is not None:
                gate = mask if gate is None else gate * mask  # (N, n, r): w_i m_i
            z = u.unsqueeze(1).expand(-1, n, -1) if gate is None else u.unsqueeze(1) * gate
            z = z.reshape(-1, n * r)  # (N, n r) = concat_i(w_i m_i u)
            y = torch.addmm(y0, z, lora_B.reshape(out_f, n * r).to(dtype).t(), alpha=scaling)
        ctx.save_for_backward(x2, w, gate, z, weight, lora_A, lora_B, router, offset_A, offset_B)
        ctx.scaling, ctx.dtype, ctx.x_shape, ctx.x_dtype = scaling, dtype, x.shape, x.dtype
        return y.reshape(*x.shape[:-1], out_f)

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        x2, w, gate, z, weight, lora_A, lora_B, router, offset_A, offset_B = ctx.saved_tensors
        s, dtype = ctx.scaling, ctx.dtype
        out_f, n, r = lora_B.shape
        in_f = weight.shape[1]
        with torch.autocast(grad_out.device.type, enabled=False):
            g = grad_out.reshape(-1, out_f).to(dtype)  # (N, out)
            s_heads = (lora_B.reshape(out_f, n * r) * s).to(dtype)  # (out, n r)
            gx = None
            if ctx.needs_input_grad[0]:
                w_eff = _effective_weight(weight, offset_A, offset_B, s).to(dtype)
                gx_dz = g @ torch.cat([w_eff, s_heads], 1)  # (N, in + n r)
                gx, dz = gx_dz[:, :in_f], gx_dz[:, in_f:]
            else:
                dz = g @ s_heads
            grad_B = (g.t() @ z).mul_(s).view_as(lora_B).to(lora_B.dtype)
            dzh = dz.reshape(-1, n, r)  # (N, n, r)
            du = dzh.sum(1) if gate is None else (dzh * gate).sum(1)  # (N, r)
            if w is None:
                dh, in_rows = du, [lora_A]
            else:  # softmax backward with a_i = w_i dL/dw_i = dz_i . z_i
                a = (dzh * z.view(-1, n, r)).sum(2)  # (N, n)
                dh = torch.cat([du, a - w * a.sum(1, keepdim=True)], 1)  # (N, r + n)
                in_rows = [lora_A, router]
            grad_AR = dh.t() @ x2  # (r [+ n], in)
            grad_x = None
            if gx is not None:
                grad_x = torch.addmm(gx, dh, torch.cat(in_rows, 0).to(dtype))
                grad_x = grad_x.reshape(ctx.x_shape).to(ctx.x_dtype)
        grad_A = grad_AR[:r].to(lora_A.dtype)
        grad_R = None if router is None else grad_AR[r:].to(router.dtype)
        return grad_x, None, None, grad_A, grad_B, grad_R, None, None, None, None


def fused_multihead_linear(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    lora_A: Tensor,
    lora_B: Tensor,
    router: Tensor | None,
    offset_A: Tensor | None,
    offset_B: Tensor | None,
    mask: Tensor | None,
    scaling: float,
) -> Tensor:
    """Multi-head LoRA on a frozen base layer, no gradient for ``weight`` / ``bias``:
    ``x W'^T + b + s * sum_i w_i(x) B_i (m_i * A x)`` with W' = W - s B0 A0 (``_FusedMultiHead``).

    Shapes: x (..., in), weight (out, in), bias (out,), lora_A (r, in), lora_B (out, n, r),
    router (n, in) or None (every w_i = 1), offset_A (r, in) and offset_B (out, r) or None,
    mask (N, n, r) keep-mask already scaled by 1 / (1 - p), N = x.numel() // in, or None
    -> (..., out).
    """
    return _FusedMultiHead.apply(
        x, weight, bias, lora_A, lora_B, router, offset_A, offset_B, mask, scaling
    )
