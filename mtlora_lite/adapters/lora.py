"""LoRA: trainable low-rank updates around frozen ``nn.Linear`` layers.

    y = W x + b + s * B A drop(x)        W: (out, in) frozen, A: (r, in), B: (out, r), s = alpha / r

``LoRALinear`` wraps an existing linear layer by composition (the pretrained weight is never copied or
re-initialised), ``inject_lora`` swaps it in by module name, ``mark_only_adapters_trainable`` freezes
by structure, and ``merge_adapters`` folds the update into W for deployment. Every adapter in the
package derives from ``AdapterLayer`` so that freezing, merging, saving and parameter breakdowns treat
all of them alike.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mtlora_lite.adapters.checks import check_count, check_dropout, check_positive
from mtlora_lite.adapters.functional import dropout_mask, fused_lora_linear

Targets = str | Sequence[str] | re.Pattern[str]
# The four Linear layers of every timm ViT and Swin block: what the course adapts by default.
TIMM_TARGETS = ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")


ALPHA_FIX = "alpha is the scale numerator (s = alpha / r); pass None for s = 1, or e.g. 2 * rank"


def lora_scaling(rank: int, alpha: float | None = None, rslora: bool = False) -> float:
    """The LoRA scale s = alpha / r, or alpha / sqrt(r) with ``rslora``; alpha defaults to r.

    ``rank`` must be a positive integer and ``alpha`` (if given) a finite number > 0.
    """
    rank = check_count(rank, "rank")
    alpha = float(rank) if alpha is None else check_positive(alpha, "alpha", ALPHA_FIX)
    return alpha / (math.sqrt(rank) if rslora else rank)


class AdapterLayer(nn.Module):
    """Base class of every adapter: wraps a frozen ``nn.Linear`` as ``self.base_layer``.

    Parameters registered on the adapter itself (not under ``base_layer``) are adapter parameters.
    Subclasses implement ``forward``, ``delta_weight`` (for merging) and ``adapter_config``.
    """

    adapter_group = "adapter"  # row name in trainable_breakdown

    def __init__(self, base_layer: nn.Linear) -> None:
        super().__init__()
        if not isinstance(base_layer, nn.Linear):
            raise TypeError(f"adapters wrap nn.Linear layers, got {type(base_layer).__name__}")
        self.base_layer = base_layer
        self.merged = False

    @property
    def in_features(self) -> int:
        return self.base_layer.in_features

    @property
    def out_features(self) -> int:
        return self.base_layer.out_features

    def adapter_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        """(name, parameter) pairs of this adapter, excluding the wrapped base layer."""
        for name, p in self.named_parameters():
            if not name.startswith("base_layer."):
                yield name, p

    def adapter_config(self) -> dict[str, object]:
        """JSON-serialisable hyper-parameters; saved with the weights and checked on load."""
        return {"type": type(self).__name__}

    @property
    def mergeable(self) -> bool:
        """Whether the update is one fixed matrix (False when it depends on the input)."""
        return True

    def delta_weight(self) -> Tensor:
        """The dense (out, in) update that ``merge`` adds to the base weight."""
        raise NotImplementedError(f"{type(self).__name__} cannot be merged into one weight")

    @torch.no_grad()
    def merge(self) -> None:
        """Fold the update into ``base_layer.weight``; afterwards forward is the plain base layer."""
        if self.merged:
            raise RuntimeError("adapter is already merged; call unmerge() first")
        w = self.base_layer.weight
        w += self.delta_weight().to(w.dtype)
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Subtract the update again (exact up to float rounding)."""
        if not self.merged:
            raise RuntimeError("adapter is not merged; nothing to unmerge")
        w = self.base_layer.weight
        w -= self.delta_weight().to(w.dtype)
        self.merged = False


class LoRALinear(AdapterLayer):
    """``y = base(x) + s * B A drop(x)`` for inputs (..., in) -> outputs (..., out).

    Args:
        base_layer: the frozen layer to wrap (kept as is).
        rank: r > 0, the rank of the update B A (any integer type, e.g. ``np.int64``).
        alpha: scale numerator, finite and > 0; ``s = alpha / r`` (or ``alpha / sqrt(r)`` with
            ``rslora``). Defaults to ``alpha = r``, i.e. s = 1.
        dropout: dropout probability in [0, 1) on the LoRA input only.
        rslora: use the rank-stabilised scale ``alpha / sqrt(r)``.

    A starts kaiming-uniform and B at zero, so the wrapped layer initially equals the base layer.
    """

    adapter_group = "lora"

    def __init__(
        self,
        base_layer: nn.Linear,
        rank: int,
        alpha: float | None = None,
        dropout: float = 0.0,
        rslora: bool = False,
    ) -> None:
        super().__init__(base_layer)
        self.scaling = lora_scaling(rank, alpha, rslora)  # checks rank and alpha
        self.rank = rank = int(rank)  # np.int64 -> int, so that adapter_config is plain JSON
        self.alpha = float(rank if alpha is None else alpha)
        self.rslora = rslora
        self.dropout = check_dropout(dropout)  # p, on the LoRA input while training
        w = base_layer.weight
        self.lora_A = nn.Parameter(
            torch.empty(rank, self.in_features, device=w.device, dtype=w.dtype)
        )
        self.lora_B = nn.Parameter(
            torch.zeros(self.out_features, rank, device=w.device, dtype=w.dtype)
        )
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))

    def forward(self, x: Tensor) -> Tensor:
        """x: (..., in) -> (..., out)."""
        if self.merged:
            return self.base_layer(x)
        p = self.dropout if self.training else 0.0
        return lora_linear(self.base_layer, x, self.lora_A, self.lora_B, self.scaling, p)

    def delta_weight(self) -> Tensor:
        """s * B A: (out, in)."""
        return self.scaling * (self.lora_B @ self.lora_A)

    def adapter_config(self) -> dict[str, object]:
        return {
            "type": "LoRALinear",
            "rank": self.rank,
            "alpha": self.alpha,
            "rslora": self.rslora,
            "in_features": self.in_features,
            "out_features": self.out_features,
        }

    def extra_repr(self) -> str:
        return (
            f"rank={self.rank}, scaling={self.scaling:g}, dropout={self.dropout:g}, "
            f"merged={self.merged}"
        )


# ---------------------------------------------------------------------------------------------------
# Finding modules by name
# ---------------------------------------------------------------------------------------------------


def lora_linear(
    base: nn.Linear, x: Tensor, lora_A: Tensor, lora_B: Tensor, scaling: float, p: float = 0.0
) -> Tensor:
    """``base(x) + s * B A drop(x)`` with inverted dropout of probability ``p`` on the LoRA input.

    Shapes: x (..., in), lora_A (r, in), lora_B (out, r) -> (..., out). With a frozen base it runs
    the fused kernel (one GEMM on [W; A], no weight gradient for W; see functional.py).
    """
    drop = dropout_mask(x.shape, p, x.device) if p > 0.0 else None  # bool, like x
    s = scaling / (1.0 - p)  # inverted dropout's 1 / (1 - p), folded into the scale
    w, b = base.weight, base.bias
    if not w.requires_grad and (b is None or not b.requires_grad):
        return fused_lora_linear(x, w, b, lora_A, lora_B, s, drop)
    x_a = x if drop is None else x.masked_fill(drop, 0.0)
    return base(x) + s * F.linear(F.linear(x_a, lora_A), lora_B)


def name_matches(name: str, targets: Targets) -> bool:
    """Whether a dotted module name matches ``targets``.

    ``targets`` is a compiled regex (full match), or one or several names: a name matches when it
    equals the module path or is a suffix of it on a dot boundary (``"qkv"`` and ``".attn.qkv"``
    both match ``layers.0.blocks.1.attn.qkv``).
    """
    if isinstance(targets, re.Pattern):
        return targets.fullmatch(name) is not None
    for t in [targets] if isinstance(targets, str) else targets:
        t = t.lstrip(".")
        if name == t or name.endswith("." + t):
            return True
    return False


def linear_names(model: nn.Module) -> list[str]:
    """Names of the ``nn.Linear`` modules that can take an adapter (not those already inside one)."""
    return [n for n, m in _named_modules_outside_adapters(model) if isinstance(m, nn.Linear)]


def _named_modules_outside_adapters(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    adapters = [n for n, m in model.named_modules() if isinstance(m, AdapterLayer)]
    for name, module in model.named_modules():
        if not any(name.startswith(a + ".") for a in adapters):
            yield name, module


def _describe_linears(model: nn.Module) -> str:
    names = linear_names(model)
    if not names:
        return "the model has no nn.Linear layers left to adapt"
    suffixes = sorted({n.rsplit(".", 1)[-1] for n in names})
    return (
        f"Linear layer names end with one of {suffixes}; e.g. {names[:4]} ({len(names)} in total)"
    )


def inject_adapters(
    model: nn.Module, targets: Targets, make: Callable[[nn.Linear], AdapterLayer]
) -> list[str]:
    """Replace every ``nn.Linear`` whose name matches ``targets`` by ``make(linear)``, in place.

    Each adapter starts in the training mode of the layer it wraps (after ``model.eval()`` a new
    adapter is in eval mode too, so its dropout is off). Returns the replaced module paths. Raises
    ``ValueError`` if nothing matches (listing the available Linear names), if a match is not an
    ``nn.Linear``, or if it already has an adapter.
    """
    matches = [(n, m) for n, m in model.named_modules() if n and name_matches(n, targets)]
    if not matches:
        raise ValueError(f"no module matches targets {targets!r}. {_describe_linears(model)}")
    if not isinstance(targets, re.Pattern | str):
        unused = [t for t in targets if not any(name_matches(n, t) for n, _ in matches)]
        if unused:
            raise ValueError(f"targets {unused} match no module. {_describe_linears(model)}")
    for name, module in matches:
        if isinstance(module, AdapterLayer) or ".base_layer" in f".{name}":
            raise ValueError(f"{name!r} already has an adapter; inject each layer once")
        if not isinstance(module, nn.Linear):
            raise ValueError(
                f"target {name!r} is a {type(module).__name__}, not nn.Linear; use a more specific "
                f"name (e.g. 'attn.proj' instead of 'proj'). {_describe_linears(model)}"
            )
    for name, module in matches:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, make(module).train(module.training))
    return [n for n, _ in matches]


def inject_lora(
    model: nn.Module,
    targets: Targets,
    rank: int,
    alpha: float | None = None,
    dropout: float = 0.0,
    rslora: bool = False,
) -> list[str]:
    """Wrap the matching ``nn.Linear`` layers of ``model`` in ``LoRALinear`` (in place).

    Example: ``inject_lora(swin, ["qkv", "proj", "fc1", "fc2"], rank=8)``. See ``name_matches`` for
    the target syntax and ``LoRALinear`` for the options. Returns the list of adapted module paths.
    """
    lora_scaling(rank, alpha, rslora)  # check the options before touching the model
    check_dropout(dropout)
    return inject_adapters(
        model,
        targets,
        lambda lin: LoRALinear(lin, rank, alpha=alpha, dropout=dropout, rslora=rslora),
    )


def adapter_layers(model: nn.Module) -> dict[str, AdapterLayer]:
    """All adapters of ``model`` by module path."""
    return {n: m for n, m in model.named_modules() if isinstance(m, AdapterLayer)}


# ---------------------------------------------------------------------------------------------------
# Freezing and merging
# ---------------------------------------------------------------------------------------------------


def mark_only_adapters_trainable(
    model: nn.Module,
    extra: str | type[nn.Module] | Sequence[str | type[nn.Module]] = (),
) -> None:
    """Freeze every parameter except the adapters', then unfreeze the named ``extra`` parts.

    ``extra`` items are module or parameter names (matched like targets, e.g. ``"head"``,
    ``"relative_position_bias_table"``) or module classes (e.g. ``nn.LayerNorm``); a single name
    or class counts as one item. Each item must match something; base layers inside adapters are
    never unfrozen by a class item.
    """
    items = [extra] if isinstance(extra, str | type) else list(extra)
    model.requires_grad_(False)
    for adapter in adapter_layers(model).values():
        for _, p in adapter.adapter_parameters():
            p.requires_grad_(True)
    for item in items:
        found = False
        if isinstance(item, type):
            for _, module in _named_modules_outside_adapters(model):
                if isinstance(module, item):
                    module.requires_grad_(True)
                    found = True
        else:
            for name, module in model.named_modules():
                if name and name_matches(name, item):
                    module.requires_grad_(True)
                    found = True
            for name, p in model.named_parameters():
                if name_matches(name, item):
                    p.requires_grad_(True)
                    found = True
        if not found:
            raise ValueError(f"extra {item!r} matches no module or parameter of the model")


def merge_adapters(model: nn.Module) -> int:
    """Merge every adapter into its base weight; returns how many were merged."""
    layers = adapter_layers(model)
    if any(a.merged for a in layers.values()):
        raise RuntimeError("some adapters are already merged; call unmerge_adapters() first")
    fixed = [n for n, a in layers.items() if not a.mergeable]
    if fixed:  # check all before touching any weight, so a failure never leaves a half-merged model
        raise RuntimeError(
            f"{len(fixed)} adapter(s) cannot be merged because their update depends on the input, "
            f"e.g. {fixed[0]!r}; nothing was merged"
        )
    for a in layers.values():
        a.merge()
    return len(layers)


def unmerge_adapters(model: nn.Module) -> int:
    """Undo ``merge_adapters``; returns how many were unmerged."""
    layers = adapter_layers(model)
    if not all(a.merged for a in layers.values()):
        raise RuntimeError("not all adapters are merged; call merge_adapters() first")
    for a in layers.values():
        a.unmerge()
    return len(layers)
