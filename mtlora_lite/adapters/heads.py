"""Inside multi-head LoRA: how similar its heads are, and how its routers use them.

``head_similarity`` gives the mean pairwise head cosine per layer and ``head_cosine_matrix`` the
head x head cosines of one layer (``HeadSimilarityRecorder`` in ``mtlora_lite.multitask.history``
records them during ``fit``; ``adapters.head_plots`` draws them); ``router_statistics`` says how
each router spreads tokens over its heads, overall and per task.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from mtlora_lite.adapters.multihead import MultiHeadLoRALinear

HEAD_MODES = ("B", "delta")


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
