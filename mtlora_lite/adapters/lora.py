"""LoRA: a trainable low-rank update around a frozen ``nn.Linear``.

    y = W x + b + s * B A drop(x)        W: (out, in) frozen, A: (r, in), B: (out, r), s = alpha / r

``LoRALinear`` wraps an existing linear layer by composition (the pretrained weight is never copied
or re-initialised) and ``inject_lora`` swaps it in by module name (``adapters.targets``). Freezing
is in ``adapters.freezing``, merging in ``adapters.merging``, the fused forward in
``adapters.functional``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from mtlora_lite.adapters.base import AdapterLayer
from mtlora_lite.adapters.checks import check_count, check_dropout, check_positive
from mtlora_lite.adapters.functional import lora_linear
from mtlora_lite.adapters.targets import TIMM_TARGETS, Targets, inject_adapters, name_matches

__all__ = [  # TIMM_TARGETS and name_matches live in adapters.targets; importable here too
    "ALPHA_FIX",
    "TIMM_TARGETS",
    "LoRALinear",
    "inject_lora",
    "lora_scaling",
    "name_matches",
]

ALPHA_FIX = "alpha is the scale numerator (s = alpha / r); pass None for s = 1, or e.g. 2 * rank"


def lora_scaling(rank: int, alpha: float | None = None, rslora: bool = False) -> float:
    """The LoRA scale s = alpha / r, or alpha / sqrt(r) with ``rslora``; alpha defaults to r.

    ``rank`` must be a positive integer and ``alpha`` (if given) a finite number > 0.
    """
    rank = check_count(rank, "rank")
    alpha = float(rank) if alpha is None else check_positive(alpha, "alpha", ALPHA_FIX)
    return alpha / (math.sqrt(rank) if rslora else rank)


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
