"""Looking inside adapted models: exact parameter breakdowns.

``trainable_breakdown`` assigns every parameter to one group, by structure rather than by name
substrings: adapters report their own group (``lora``, ``ta_lora``, ``ts_lora``, ...), norms are
found by module type, and anything else can be grouped by module name (e.g. ``{"decoders":
"decoders"}``). Totals are exact, so the table can be checked against a paper's count.

For multi-head LoRA: ``head_similarity`` (mean pairwise head cosine per layer), the trainer callback
``HeadSimilarityRecorder`` that records it over training, and ``router_statistics`` (how each router
spreads tokens over heads, overall and per task).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from mtlora_lite.lora import AdapterLayer, Targets, name_matches
from mtlora_lite.multihead import MultiHeadLoRALinear
from mtlora_lite.train import Callback

NORM_TYPES: tuple[type[nn.Module], ...] = (
    nn.LayerNorm,
    nn.GroupNorm,
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.RMSNorm,
)


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) number of parameters."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, total


@dataclass
class Breakdown:
    """Parameter counts per group: ``rows[group] = (trainable, total)``."""

    rows: dict[str, tuple[int, int]] = field(default_factory=dict)

    @property
    def trainable(self) -> int:
        return sum(t for t, _ in self.rows.values())

    @property
    def total(self) -> int:
        return sum(n for _, n in self.rows.values())

    def to_dict(self) -> dict[str, dict[str, int]]:
        return {g: {"trainable": t, "total": n} for g, (t, n) in self.rows.items()}

    def __str__(self) -> str:
        width = max([len(g) for g in self.rows] + [5])
        lines = [f"{'group':<{width}}  {'trainable':>12}  {'total':>12}"]
        for g, (t, n) in self.rows.items():
            lines.append(f"{g:<{width}}  {t:>12,}  {n:>12,}")
        share = 100 * self.trainable / max(self.total, 1)
        lines.append(
            f"{'all':<{width}}  {self.trainable:>12,}  {self.total:>12,}  ({share:.2f}% trainable)"
        )
        return "\n".join(lines)

    def _repr_html_(self) -> str:  # pretty in notebooks
        rows = "".join(
            f"<tr><td>{g}</td><td align=right>{t:,}</td><td align=right>{n:,}</td></tr>"
            for g, (t, n) in self.rows.items()
        )
        tail = f"<tr><th>all</th><th align=right>{self.trainable:,}</th><th align=right>{self.total:,}</th></tr>"
        return f"<table><tr><th>group</th><th>trainable</th><th>total</th></tr>{rows}{tail}</table>"


def _group_of(
    param_name: str, owner: nn.Module, owner_name: str, groups: Mapping[str, Targets]
) -> str:
    for group, targets in groups.items():
        parts = owner_name.split(".") if owner_name else []
        prefixes = [".".join(parts[: i + 1]) for i in range(len(parts))]
        if any(name_matches(p, targets) for p in prefixes):
            return group
    leaf = param_name.rsplit(".", 1)[-1]
    if isinstance(owner, NORM_TYPES):
        return "norms"
    if leaf == "relative_position_bias_table":
        return "position bias"
    if leaf in ("pos_embed", "cls_token", "reg_token") or "patch_embed" in owner_name.split("."):
        return "embedding"
    return "other"


def trainable_breakdown(model: nn.Module, groups: Mapping[str, Targets] | None = None) -> Breakdown:
    """Exact (trainable, total) parameter counts per group.

    Args:
        model: any module; adapters are recognised by type (``AdapterLayer``).
        groups: extra groups by module name, checked first, e.g. ``{"head": "head"}``. A module
            may define ``breakdown_groups() -> dict`` to provide defaults (merged under ``groups``).

    Groups: each adapter's ``adapter_group`` for its own parameters (a sub-module of an adapter may
    declare its own ``adapter_group``, e.g. MTLoRA's task branches); then ``groups``; then
    ``norms`` (by module type), ``position bias``, ``embedding``; else ``other``. The base weights
    inside an adapter are grouped like any other frozen layer (``other``).
    """
    merged_groups: dict[str, Targets] = {}
    if hasattr(model, "breakdown_groups"):
        merged_groups.update(model.breakdown_groups())
    merged_groups.update(groups or {})

    adapters = {n: m for n, m in model.named_modules() if isinstance(m, AdapterLayer)}

    def adapter_group(mod_name: str, module: nn.Module) -> str | None:
        """Group of the adapter enclosing ``mod_name`` (not counting its base layer), if any."""
        for path, adapter in adapters.items():
            inside = mod_name == path or mod_name.startswith(path + ".")
            in_base = (mod_name + ".").startswith(path + ".base_layer.")
            if inside and not in_base:
                return getattr(module, "adapter_group", adapter.adapter_group)
        return None

    rows: dict[str, tuple[int, int]] = {}
    seen: set[int] = set()  # a tied parameter counts once, as in model.parameters()
    for mod_name, module in model.named_modules():
        for p_name, p in module.named_parameters(recurse=False):
            if id(p) in seen:
                continue
            seen.add(id(p))
            full = f"{mod_name}.{p_name}" if mod_name else p_name
            group = adapter_group(mod_name, module) or _group_of(
                full, module, mod_name, merged_groups
            )
            t, n = rows.get(group, (0, 0))
            rows[group] = (t + (p.numel() if p.requires_grad else 0), n + p.numel())
    return Breakdown(rows)


# ---------------------------------------------------------------------------------------------------
# Multi-head LoRA: how similar the heads are, and how the router uses them
# ---------------------------------------------------------------------------------------------------

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


class HeadSimilarityRecorder(Callback):
    """Trainer callback: ``head_similarity(model, mode)`` before training and every ``every`` steps.

    ``steps[k]`` is the optimizer step (0 = before training) of the record ``values[k]`` (layer ->
    mean head cosine). ``curve()`` gives what to plot; ``to_dict()`` what to save as JSON.
    """

    def __init__(self, every: int = 10, mode: str = "B") -> None:
        if every < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        if mode not in HEAD_MODES:
            raise ValueError(f"mode must be one of {HEAD_MODES}, got {mode!r}")
        self.every, self.mode = every, mode
        self.steps: list[int] = []
        self.values: list[dict[str, float]] = []

    def _record(self, step: int, model: nn.Module) -> None:
        self.steps.append(step)
        self.values.append(head_similarity(model, self.mode))

    def on_fit_start(self, model: nn.Module) -> None:
        self._record(0, model)

    def on_step_end(self, step: int, model: nn.Module, logs: dict[str, Any]) -> None:
        if step % self.every == 0:
            self._record(step, model)

    def curve(self, layer: str | None = None) -> tuple[list[int], list[float]]:
        """(steps, similarity) of one layer, or averaged over layers (NaNs skipped) by default."""
        if layer is None:
            return self.steps, [nanmean(v.values()) for v in self.values]
        return self.steps, [v[layer] for v in self.values]

    def to_dict(self) -> dict[str, Any]:
        return {"mode": self.mode, "every": self.every, "steps": self.steps, "values": self.values}


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
