"""LoRA: a trainable low-rank update around a frozen ``nn.Linear``.

    y = W x + b + s * B A drop(x)        W: (out, in) frozen, A: (r, in), B: (out, r), s = alpha / r

``LoRALinear`` wraps an existing linear layer by composition (the pretrained weight is never copied
or re-initialised) and ``inject_lora`` swaps it in by module name (``adapters.targets``). Freezing
is in ``adapters.freezing``, merging in ``adapters.merging``, the fused forward in
``adapters.functional``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from mtlora_lite.adapters.base import AdapterLayer, make_config
from mtlora_lite.adapters.checks import check_count, check_dropout, check_positive
from mtlora_lite.adapters.functional import lora_linear
from mtlora_lite.adapters.targets import TIMM_TARGETS, Targets, inject_adapters, name_matches

__all__ = [  # TIMM_TARGETS and name_matches live in adapters.targets; importable here too
    "ALPHA_FIX",
    "TIMM_TARGETS",
    "LoRAConfig",
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


@dataclass(frozen=True)
class LoRAConfig:
    """LoRA's hyper-parameters, checked when built (integers of any type, e.g. ``np.int64``,
    become ``int``; a float rank is refused, not truncated)."""

    rank: int = 8  # r > 0, the rank of the update B A
    alpha: float | None = None  # scale numerator, finite and > 0: s = alpha / r; None: alpha = r
    dropout: float = 0.0  # probability in [0, 1) of dropping an entry of the LoRA input (training)
    rslora: bool = False  # the rank-stabilised scale s = alpha / sqrt(r)

    def __post_init__(self) -> None:
        lora_scaling(self.rank, self.alpha, self.rslora)  # raises with the fix
        object.__setattr__(self, "rank", check_count(self.rank, "rank"))  # frozen: via object
        if self.alpha is not None:
            object.__setattr__(self, "alpha", check_positive(self.alpha, "alpha", ALPHA_FIX))
        object.__setattr__(self, "dropout", check_dropout(self.dropout))

    @property
    def scaling(self) -> float:
        """The scale s of the update: alpha / r, or alpha / sqrt(r) with ``rslora``."""
        return lora_scaling(self.rank, self.alpha, self.rslora)

    def adapter_config(self) -> dict[str, object]:
        """The fields as plain JSON, alpha resolved (None -> r), and the scale s they give."""
        alpha = float(self.rank) if self.alpha is None else self.alpha
        fields = {"rank": self.rank, "alpha": alpha, "rslora": self.rslora, "dropout": self.dropout}
        return {**fields, "scaling": self.scaling}


class LoRALinear(AdapterLayer):
    """``y = base(x) + s * B A drop(x)`` for inputs (..., in) -> outputs (..., out).

    Built from a ``LoRAConfig`` and / or its fields as keywords:
    ``LoRALinear(linear, rank=8, alpha=16)`` or ``LoRALinear(linear, LoRAConfig(rank=8))``. The
    base layer is kept as is. A starts kaiming-uniform and B at zero, so the wrapped layer
    initially equals the base layer.
    """

    adapter_group = "lora"

    def __init__(
        self, base_layer: nn.Linear, config: LoRAConfig | None = None, **options: Any
    ) -> None:
        super().__init__(base_layer)
        self.config = cfg = make_config(LoRAConfig, config, **options)
        self.scaling = cfg.scaling
        w = base_layer.weight
        kw = {"device": w.device, "dtype": w.dtype}
        self.lora_A = nn.Parameter(torch.empty(cfg.rank, self.in_features, **kw))  # (r, in)
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, cfg.rank, **kw))  # (out, r)
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))

    @property
    def rank(self) -> int:
        return self.config.rank

    @property
    def alpha(self) -> float:
        """The scale numerator, resolved: r when the config's alpha is None."""
        return float(self.rank) if self.config.alpha is None else self.config.alpha

    @property
    def rslora(self) -> bool:
        return self.config.rslora

    @property
    def dropout(self) -> float:
        return self.config.dropout

    def forward(self, x: Tensor) -> Tensor:
        """x: (..., in) -> (..., out)."""
        if self.merged or self.disabled:
            return self.base_layer(x)
        p = self.dropout if self.training else 0.0
        return lora_linear(self.base_layer, x, self.lora_A, self.lora_B, self.scaling, p)

    def delta_weight(self) -> Tensor:
        """s * B A: (out, in)."""
        return self.scaling * (self.lora_B @ self.lora_A)

    def adapter_config(self) -> dict[str, object]:
        return {
            "type": type(self).__name__,
            **self.config.adapter_config(),
            "in_features": self.in_features,
            "out_features": self.out_features,
        }

    def extra_repr(self) -> str:
        return (
            f"rank={self.rank}, scaling={self.scaling:g}, dropout={self.dropout:g}, "
            f"merged={self.merged}"
        )


def inject_lora(
    model: nn.Module, targets: Targets, config: LoRAConfig | None = None, **options: Any
) -> list[str]:
    """Wrap the matching ``nn.Linear`` layers of ``model`` in ``LoRALinear`` (in place).

    Example: ``inject_lora(swin, ["qkv", "proj", "fc1", "fc2"], rank=8)``: a ``LoRAConfig`` and /
    or its fields. See ``name_matches`` for the target syntax. Returns the adapted module paths;
    the options are checked before the model is touched.
    """
    cfg = make_config(LoRAConfig, config, **options)
    return inject_adapters(model, targets, lambda lin: LoRALinear(lin, cfg))
