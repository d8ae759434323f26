"""Multi-head LoRA (HydraLoRA's structure) with R-LoRA's random head init and multi-head dropout.

    y = W x + b + s * sum_i w_i(x) B_i drop_i(A x) - s * B0 A0 x

A (r, in) is shared, the n heads B_i (out, r) are stored as one (out, n, r) parameter so that the
stacked [B_1 ... B_n] (out, n*r) is a free view, and ``w(x) = softmax(W_r x)`` (n per token) is a
router that reads the undropped input (no top-k, no task id). Without a router every w_i is 1.

Initialisations (``init``):
- ``"hydra"``: A kaiming-uniform, every B_i zero, router kaiming-uniform (as HydraLoRA's code).
  The output equals the base layer, but all heads get nearly the same gradient and stay similar.
- ``"rlora"``: A ~ c N(0, 1/in), each B_i ~ c N(0, 1/out) independently, c = out^(1/4) / sqrt(gamma)
  (R-LoRA), router zero (uniform weights). The initial update s * sum_i w_i B_i A is cancelled by
  the buffers ``offset_A`` = A0 (r, in) and ``offset_B`` = B0 = sum_i w_i B_i (out, r), which are
  saved with the adapter, so a reloaded model reproduces the same function. (Exactly the base
  function without dropout; in training, dropout on the random heads adds zero-mean noise.)
- ``"rlora_centered"``: as "rlora" but each B_i has the head mean subtracted, so the initial update
  is zero without an offset. Trade-off: the heads are no longer independent (with 2 heads they are
  exactly anti-parallel, cosine -1) and their entries shrink by sqrt((n-1)/n).

Dropout (``dropout_mode``, only while training with ``dropout > 0``):
- ``"per_head_ax"`` (R-LoRA multi-head dropout, default): an independent mask per head on the
  r-dimensional ``A x``; computed as u = A x once, then one GEMM of [B_1 ... B_n] with
  concat_i(w_i m_i u) / (1 - p).
- ``"shared"``: one mask on x for all heads (R-LoRA's HydraLoRA baseline).
- ``"per_head_x"``: a mask on x per head (HydraLoRA's code); materialises (N, n, in), slow.

For fair comparisons: ``router=False`` sums the heads (and can then be merged), and
``inject_rank_matched_lora`` injects one plain LoRA of rank n*r with the same scale instead.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mtlora_lite.adapters.base import AdapterLayer, make_config
from mtlora_lite.adapters.checks import check_count, check_dropout, check_positive
from mtlora_lite.adapters.functional import dropout_mask, fused_multihead_linear, softmax_fp32
from mtlora_lite.adapters.lora import ALPHA_FIX, LoRAConfig, LoRALinear, lora_scaling
from mtlora_lite.adapters.targets import Targets, inject_adapters

INITS = ("hydra", "rlora", "rlora_centered")
DROPOUT_MODES = ("per_head_ax", "shared", "per_head_x")


@dataclass(frozen=True)
class MultiHeadConfig:
    """Multi-head LoRA's hyper-parameters, checked when built (integers of any type become
    ``int``). The options are explained in the module docstring."""

    n_heads: int = 4  # n >= 1 heads B_i
    rank: int = 4  # r > 0, the rank of the shared A (and of each head)
    alpha: float | None = None  # scale numerator, finite and > 0: s = alpha / r; None: alpha = r
    dropout: float = 0.0  # probability in [0, 1) of dropping an entry, where dropout_mode says
    dropout_mode: Literal["per_head_ax", "shared", "per_head_x"] = "per_head_ax"  # R-LoRA's
    init: Literal["hydra", "rlora", "rlora_centered"] = "rlora"  # how A and the heads start
    router: bool = True  # a softmax router; False sums the heads (and then the layer can merge)
    rslora: bool = False  # the rank-stabilised scale s = alpha / sqrt(r)
    gamma: float = 64.0  # R-LoRA's init constant: c = out^(1/4) / sqrt(gamma)

    def __post_init__(self) -> None:
        checked = {
            "n_heads": check_count(self.n_heads, "n_heads"),
            "rank": check_count(self.rank, "rank"),
            "alpha": None if self.alpha is None else check_positive(self.alpha, "alpha", ALPHA_FIX),
            "dropout": check_dropout(self.dropout),
            "gamma": check_positive(self.gamma, "gamma", "R-LoRA uses gamma = 64"),
        }
        for name, value in checked.items():  # plain Python numbers (frozen, so via object)
            object.__setattr__(self, name, value)
        if self.dropout_mode not in DROPOUT_MODES:
            raise ValueError(
                f"dropout_mode must be one of {DROPOUT_MODES}, got {self.dropout_mode!r}"
            )
        if self.init not in INITS:
            raise ValueError(f"init must be one of {INITS}, got {self.init!r}")
        if self.init == "rlora_centered" and self.n_heads < 2:
            raise ValueError("init='rlora_centered' needs n_heads >= 2 (one centred head is zero)")

    @property
    def scaling(self) -> float:
        """The scale s of every head (``lora_scaling`` of rank, alpha, rslora)."""
        return lora_scaling(self.rank, self.alpha, self.rslora)


class MultiHeadLoRALinear(AdapterLayer):
    """Multi-head LoRA around a frozen ``nn.Linear``: inputs (..., in) -> outputs (..., out).

    Built from a ``MultiHeadConfig`` and / or its fields as keywords, e.g.
    ``MultiHeadLoRALinear(linear, n_heads=4, rank=8, init="hydra")``.
    """

    adapter_group = "mh_lora"

    def __init__(
        self, base_layer: nn.Linear, config: MultiHeadConfig | None = None, **options: Any
    ) -> None:
        super().__init__(base_layer)
        self.config = cfg = make_config(MultiHeadConfig, config, **options)
        self.scaling = cfg.scaling
        w = base_layer.weight
        kw = {"device": w.device, "dtype": w.dtype}
        d_in, d_out, n_heads, rank = self.in_features, self.out_features, cfg.n_heads, cfg.rank
        self.lora_A = nn.Parameter(torch.empty(rank, d_in, **kw))  # (r, in)
        self.lora_B = nn.Parameter(torch.zeros(d_out, n_heads, rank, **kw))  # (out, n, r)
        self.router = nn.Parameter(torch.zeros(n_heads, d_in, **kw)) if cfg.router else None
        self.register_buffer("offset_A", None)
        self.register_buffer("offset_B", None)
        if cfg.init == "hydra":
            nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
            if self.router is not None:
                nn.init.kaiming_uniform_(self.router, a=math.sqrt(5))
        else:
            self._init_random_heads(cfg.gamma)

    @property
    def n_heads(self) -> int:
        return self.config.n_heads

    @property
    def rank(self) -> int:
        return self.config.rank

    @property
    def dropout(self) -> float:
        return self.config.dropout

    @torch.no_grad()
    def _init_random_heads(self, gamma: float) -> None:
        """R-LoRA init; then cancel the initial update by an offset or by centring the heads."""
        d_in, d_out = self.in_features, self.out_features
        c = d_out**0.25 / math.sqrt(gamma)
        self.lora_A.normal_(0.0, c / math.sqrt(d_in))
        self.lora_B.normal_(0.0, c / math.sqrt(d_out))
        if self.config.init == "rlora_centered":
            self.lora_B -= self.lora_B.mean(1, keepdim=True)
        else:  # initial update s * B0 A0 with B0 = sum_i w_i B_i, w_i = 1/n (router) or 1
            self.offset_A = self.lora_A.detach().clone()  # (r, in)
            self.offset_B = self.lora_B.mean(1) if self.config.router else self.lora_B.sum(1)

    def _dropout_mask(self, shape: tuple[int, ...], like: Tensor) -> Tensor:
        """Keep-mask scaled by 1 / (1 - p), of ``shape``; tests replace it to fix the masks."""
        p = self.dropout
        return dropout_mask(shape, p, like.device).logical_not_().to(like.dtype) / (1 - p)

    def router_weights(self, x: Tensor) -> Tensor:
        """Routing weights w(x): (..., in) -> (..., n), each row sums to 1."""
        if self.router is None:
            raise RuntimeError("this layer has no router (router=False): every head has weight 1")
        return softmax_fp32(F.linear(x, self.router))

    def forward(self, x: Tensor) -> Tensor:
        """x: (..., in) -> (..., out)."""
        if self.merged or self.disabled:
            return self.base_layer(x)
        w, b = self.base_layer.weight, self.base_layer.bias
        base_frozen = not w.requires_grad and (b is None or not b.requires_grad)
        drop = self.training and self.dropout > 0.0
        if base_frozen and (not drop or self.config.dropout_mode == "per_head_ax"):
            n_tokens = x.numel() // x.shape[-1]
            mask = self._dropout_mask((n_tokens, self.n_heads, self.rank), x) if drop else None
            return fused_multihead_linear(
                x, w, b, self.lora_A, self.lora_B, self.router,
                self.offset_A, self.offset_B, mask, self.scaling,
            )  # fmt: skip
        return self._forward_unfused(x, drop)

    def _forward_unfused(self, x: Tensor, drop: bool) -> Tensor:
        """Plain autograd, any dropout mode; used when the base layer is trainable."""
        lead = x.shape[:-1]
        mode = self.config.dropout_mode
        if drop and mode == "shared":
            heads = F.linear(x * self._dropout_mask(x.shape, x), self.lora_A).unsqueeze(-2)
        elif drop and mode == "per_head_x":
            mask = self._dropout_mask((*lead, self.n_heads, x.shape[-1]), x)
            heads = F.linear(x.unsqueeze(-2) * mask, self.lora_A)  # (..., n, r)
        else:
            heads = F.linear(x, self.lora_A).unsqueeze(-2)  # (..., 1, r)
            if drop:
                heads = heads * self._dropout_mask((*lead, self.n_heads, self.rank), x)
        if self.router is not None:
            heads = heads * self.router_weights(x).to(heads.dtype).unsqueeze(-1)
        heads = heads.expand(*lead, self.n_heads, self.rank).flatten(-2)  # (..., n r)
        delta = F.linear(heads, self.lora_B.flatten(1))
        if self.offset_A is not None:
            delta = delta - F.linear(F.linear(x, self.offset_A), self.offset_B)
        return self.base_layer(x) + self.scaling * delta

    @property
    def mergeable(self) -> bool:
        """Only router-free layers are one fixed matrix."""
        return self.router is None

    def delta_weight(self) -> Tensor:
        """Router-free only: s * (sum_i B_i A - B0 A0), (out, in)."""
        if self.router is not None:
            raise RuntimeError(
                "a multi-head LoRA with a router cannot be merged: its update depends on the "
                "input through the routing weights. Build it with router=False to merge."
            )
        delta = self.lora_B.sum(1) @ self.lora_A
        if self.offset_A is not None:
            delta = delta - self.offset_B @ self.offset_A
        return self.scaling * delta

    def adapter_config(self) -> dict[str, object]:
        cfg = self.config
        alpha = float(cfg.rank) if cfg.alpha is None else cfg.alpha  # resolved, as for LoRA
        return {
            "type": type(self).__name__,
            **dataclasses.asdict(cfg),
            "alpha": alpha,
            "scaling": self.scaling,
            "in_features": self.in_features,
            "out_features": self.out_features,
        }

    def extra_repr(self) -> str:
        cfg = self.config
        return (
            f"n_heads={cfg.n_heads}, rank={cfg.rank}, init={cfg.init!r}, router={cfg.router}, "
            f"scaling={self.scaling:g}, dropout={cfg.dropout:g} ({cfg.dropout_mode}), "
            f"merged={self.merged}"
        )


def inject_multihead_lora(
    model: nn.Module, targets: Targets, config: MultiHeadConfig | None = None, **options: Any
) -> list[str]:
    """Wrap the matching ``nn.Linear`` layers in ``MultiHeadLoRALinear`` (in place).

    Example: ``inject_multihead_lora(swin, ["qkv", "proj", "fc1", "fc2"], n_heads=4, rank=8)``:
    a ``MultiHeadConfig`` and/or its fields. Targets work as in ``inject_lora``. Returns the
    adapted module paths.
    """
    cfg = make_config(MultiHeadConfig, config, **options)
    return inject_adapters(model, targets, lambda lin: MultiHeadLoRALinear(lin, cfg))


def inject_rank_matched_lora(
    model: nn.Module, targets: Targets, config: MultiHeadConfig | None = None, **options: Any
) -> list[str]:
    """The plain-LoRA baseline for ``inject_multihead_lora(model, targets, config, **options)``.

    One ``LoRALinear`` of rank n*r per target, with the same scale s as the multi-head layers
    and the same dropout (on x); the other multi-head fields do not apply.
    """
    cfg = make_config(MultiHeadConfig, config, **options)
    big = cfg.n_heads * cfg.rank
    alpha = cfg.scaling * (math.sqrt(big) if cfg.rslora else big)  # lora_scaling(big, alpha) = s
    lora = LoRAConfig(rank=big, alpha=alpha, dropout=cfg.dropout, rslora=cfg.rslora)
    return inject_adapters(model, targets, lambda lin: LoRALinear(lin, lora))
