"""Inside multi-head LoRA: how similar its heads are, what that costs, how its routers use them.

``head_similarity`` gives the mean pairwise head cosine per layer and ``head_cosine_matrix`` the
head x head cosines of one layer (``HeadSimilarityRecorder`` in ``mtlora_lite.multitask.history``
records them during ``fit``; ``adapters.head_plots`` draws them); ``adapter_spectra`` gives the
singular values of what the heads can write and of the update at uniform routing, so that
``effective_rank`` shows what similar heads cost (n similar heads of rank r write about r
directions: the layer acts like a LoRA of rank r, not n r); ``router_statistics`` says how each
router spreads tokens over its heads, overall and per task, and ``collapsed_head`` names a
router that sends (almost) everything to one head.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from mtlora_lite.adapters.checks import check_number
from mtlora_lite.adapters.lora import LoRALinear
from mtlora_lite.adapters.multihead import MultiHeadLoRALinear

HEAD_MODES = ("B", "delta")
# A router has collapsed when one head gets at least this mean weight over the tokens.
COLLAPSE_WEIGHT = 0.9


def head_cosine_matrix(layer: MultiHeadLoRALinear, mode: str = "B") -> Tensor:
    """(n, n) cosine similarities between the heads of one multi-head layer (float64, CPU).

    ``mode="B"``: of the flattened B_i (out * r values each). ``mode="delta"``: of the per-head
    updates B_i A (out, in), computed from r x r Gram matrices without forming them:
    <B_i A, B_j A> = sum((B_i^T B_j) * (A A^T)). A head that is all zero gives NaN.
    """
    B = layer.lora_B.detach().double().cpu()  # (out, n, r)
    if mode == "B":
        gram = torch.einsum("oir,ojr->ij", B, B)
    elif mode == "delta":
        A = layer.lora_A.detach().double().cpu()  # (r, in)
        gram = torch.einsum("ijrs,rs->ij", torch.einsum("oir,ojs->ijrs", B, B), A @ A.T)
    else:
        raise ValueError(f"mode must be one of {HEAD_MODES}, got {mode!r}")
    norms = gram.diagonal().clamp_min(0).sqrt()
    return (gram / (norms[:, None] * norms[None, :])).clamp(-1.0, 1.0)


def head_similarity(model: nn.Module, mode: str = "B") -> dict[str, float]:
    """Mean pairwise head cosine (over pairs i < j) of every multi-head LoRA layer, by module path.

    1.0 means identical heads (up to scale), 0 orthogonal ones. Single-head layers and layers with
    an all-zero head (e.g. HydraLoRA's init before the first step) give NaN.
    """
    out: dict[str, float] = {}
    for name, layer in model.named_modules():
        if isinstance(layer, MultiHeadLoRALinear):
            cos = head_cosine_matrix(layer, mode)
            i, j = torch.triu_indices(layer.n_heads, layer.n_heads, offset=1)
            out[name] = cos[i, j].mean().item() if len(i) else math.nan
    if not out:
        raise ValueError("the model has no MultiHeadLoRALinear layer; inject_multihead_lora first")
    return out


def nanmean(values: Iterable[float]) -> float:
    """Mean of the values that are not NaN (NaN if none is): e.g. head cosines over layers."""
    finite = [v for v in values if not math.isnan(v)]
    return sum(finite) / len(finite) if finite else math.nan


def effective_rank(singular_values: Tensor) -> float:
    """exp of the entropy of the normalised singular values (Roy and Vetterli, 2007).

    ``singular_values`` (k,), non-negative. The result lies between 1 (one direction carries
    everything) and the number of non-zero values (all equal); NaN if all are zero (e.g.
    HydraLoRA's heads before the first step). Scale-free: it counts directions, not sizes.
    """
    s = singular_values.detach().double().flatten().clamp_min(0)
    total = s.sum()
    if total <= 0:
        return math.nan
    p = s[s > 0] / total
    return math.exp(-(p * p.log()).sum().item())


def _svdvals_of_product(left: Tensor, right: Tensor) -> Tensor:
    """Singular values of ``left @ right`` ((m, k) @ (k, n), k small) without forming it:
    with left = Q1 R1 and right^T = Q2 R2 (reduced QR), they are those of R1 R2^T (k, k)."""
    r1 = torch.linalg.qr(left, mode="r").R
    r2 = torch.linalg.qr(right.T, mode="r").R
    return torch.linalg.svdvals(r1 @ r2.T)


@dataclass
class HeadSpectra:
    """Singular values (descending, float64) of one adapted layer's updates (``head_spectra``).

    ``heads``: of the heads side by side, [s B_1 A | ... | s B_n A] (out, n in): the directions
    the heads can write, whatever the routing; at most n r non-zero, about r if the heads are
    alike. ``update``: of the update at uniform routing weights (the router-free sum, up to a
    factor n), offset included: at most r non-zero (2 r with R-LoRA's offset), since A is shared.
    For a plain LoRA (one head of rank r) both are the singular values of s B A.
    """

    heads: Tensor
    update: Tensor


@torch.no_grad()
def head_spectra(layer: MultiHeadLoRALinear | LoRALinear) -> HeadSpectra:
    """``HeadSpectra`` of one multi-head (or plain) LoRA layer, computed on the CPU in float64.

    Exact and cheap: only QR factors of the rank-r pieces are decomposed, never an (out, in)
    matrix. With a router, the update is s (sum_i B_i A / n - B0 A0); without, s (sum_i B_i A -
    B0 A0), which is what ``delta_weight`` merges (B0 A0: R-LoRA's offset, if any).
    """
    if not isinstance(layer, MultiHeadLoRALinear | LoRALinear):
        raise TypeError(f"expected a MultiHeadLoRALinear or LoRALinear, got {type(layer).__name__}")
    s = float(layer.scaling)
    A = layer.lora_A.detach().double().cpu()  # (r, in)
    if isinstance(layer, LoRALinear):
        sv = _svdvals_of_product(s * layer.lora_B.detach().double().cpu(), A)
        return HeadSpectra(heads=sv, update=sv.clone())
    B = layer.lora_B.detach().double().cpu()  # (out, n, r)
    out_f, n, r = B.shape
    # [B_1 A | ... | B_n A] = [B_1 ... B_n] (I_n kron A), and A^T = Q R: its singular values are
    # those of [B_1 R^T ... B_n R^T] (out, n r).
    r_a = torch.linalg.qr(A.T, mode="r").R  # (r, r)
    heads = torch.linalg.svdvals(s * torch.einsum("onr,sr->ons", B, r_a).reshape(out_f, n * r))
    weight = 1.0 / n if layer.router is not None else 1.0
    left, right = [s * weight * B.sum(1)], [A]
    if layer.offset_A is not None:
        left.append(-s * layer.offset_B.detach().double().cpu())
        right.append(layer.offset_A.detach().double().cpu())
    update = _svdvals_of_product(torch.cat(left, 1), torch.cat(right, 0))
    return HeadSpectra(heads=heads, update=update)


def adapter_spectra(model: nn.Module) -> dict[str, HeadSpectra]:
    """``head_spectra`` of every multi-head LoRA and plain LoRA layer, by module path."""
    out = {
        name: head_spectra(layer)
        for name, layer in model.named_modules()
        if isinstance(layer, MultiHeadLoRALinear | LoRALinear)
    }
    if not out:
        raise ValueError(
            "the model has no MultiHeadLoRALinear or LoRALinear layer; inject_multihead_lora or "
            "inject_lora first"
        )
    return out


@dataclass
class RouterStats:
    """How one layer's router spread the tokens it saw over its heads.

    ``mean_weight``: average routing weight per head (sums to 1); ``entropy``: mean per-token
    entropy in nats (log n_heads = uniform, 0 = one head); ``per_task``: the same by task index.
    """

    mean_weight: list[float]
    entropy: float
    tokens: int
    per_task: dict[int, RouterStats] = field(default_factory=dict)


@torch.no_grad()
def router_statistics(
    model: nn.Module,
    loader: Iterable,
    task_of: Callable[[dict[str, Tensor]], Tensor] | None = None,
    max_batches: int | None = None,
) -> dict[str, RouterStats]:
    """Routing weights and entropy of every routed multi-head layer over ``loader``, eval mode.

    The loader yields ``(images, targets)``; ``task_of(targets)`` may give each image's task index
    (B,), e.g. ``lambda t: t["answer"][:, 1]`` for the mixture data, to split the statistics per
    task. Forward hooks read each layer's input, whose leading dimensions must hold the batch first
    (true for timm ViT and Swin, whose windows are batch-major).
    """
    layers = {
        n: m
        for n, m in model.named_modules()
        if isinstance(m, MultiHeadLoRALinear) and m.router is not None
    }
    if not layers:
        raise ValueError("the model has no multi-head LoRA layer with a router")
    device = next(model.parameters()).device
    sums: dict[str, dict[int | None, list]] = {
        n: {} for n in layers
    }  # [sum w, sum entropy, tokens]
    batch: dict[str, Any] = {}

    def hook(name: str) -> Callable:
        def fn(layer: MultiHeadLoRALinear, inputs: tuple[Tensor, ...], output: Tensor) -> None:
            x, size = inputs[0], batch["size"]
            if x.numel() % (size * x.shape[-1]):
                raise ValueError(f"{name}: input {tuple(x.shape)} does not start with batch {size}")
            w = layer.router_weights(x).double().reshape(size, -1, layer.n_heads)  # (B, T, n)
            ent = -(w * w.clamp_min(1e-30).log()).sum(-1)  # (B, T)
            for key, sel in batch["groups"]:
                acc = sums[name].setdefault(key, [0.0, 0.0, 0])
                acc[0] = acc[0] + w[sel].sum((0, 1))
                acc[1] = acc[1] + ent[sel].sum()
                acc[2] += ent[sel].numel()

        return fn

    handles = [m.register_forward_hook(hook(n)) for n, m in layers.items()]
    was_training = model.training
    model.eval()
    try:
        for k, (images, targets) in enumerate(loader):
            if max_batches is not None and k >= max_batches:
                break
            batch["size"] = images.shape[0]
            batch["groups"] = [(None, slice(None))]  # (task or None for all, images to use)
            if task_of is not None:
                task = task_of(targets).to(device)
                batch["groups"] += [(int(t), task == t) for t in task.unique().tolist()]
            model(images.to(device))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)

    def stats(acc: list) -> RouterStats:
        return RouterStats((acc[0] / acc[2]).tolist(), float(acc[1]) / acc[2], acc[2])

    result = {}
    for name, groups in sums.items():
        if None not in groups:
            raise ValueError("the loader yielded no batches")
        result[name] = stats(groups.pop(None))
        result[name].per_task = {t: stats(groups[t]) for t in sorted(groups)}
    return result


def collapsed_head(mean_weight: Iterable[float], threshold: float = COLLAPSE_WEIGHT) -> int | None:
    """The head a router has collapsed onto, or None: the head whose mean routing weight over the
    tokens (``RouterStats.mean_weight``) is at least ``threshold`` (default ``COLLAPSE_WEIGHT``
    = 0.9). Such a layer sends (almost) every token to one head, so it acts like a single-head
    LoRA of rank r, whatever the other heads learn. ``threshold`` is in (0.5, 1]: only one head
    can pass it.
    """
    threshold = check_number(threshold, "threshold", 0.5, 1.0, open_low=True)
    weights = list(mean_weight)
    if not weights:
        raise ValueError("mean_weight is empty: give one mean routing weight per head")
    head = max(range(len(weights)), key=weights.__getitem__)
    return head if weights[head] >= threshold else None
