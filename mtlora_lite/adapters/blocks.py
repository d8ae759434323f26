"""LoRA on some output blocks of a fused Linear: q and v of timm's ``attn.qkv``, not k.

timm's ViT and Swin compute queries, keys and values with one Linear whose weight stacks
W_q; W_k; W_v along the output dimension, (3 d, in). The original LoRA recipe adapts W_q and W_v
only, which a LoRA on the whole Linear cannot express. ``BlockLoRALinear`` splits the output into
equal named blocks and adapts the chosen ones:

    y = W x + b + s * P B A drop(x)      A: (r, in), B: (n_chosen * d, r), P: (out, n_chosen * d)

P places the rows of B into the chosen blocks and leaves the others at exactly zero. Only the
chosen blocks' rows of B are parameters, so the other blocks' update is zero by construction, at
every step of training and after merging (not by masking gradients). A is shared by the chosen
blocks: the adapter has ``r * (in + n_chosen * d)`` parameters, i.e. it is a rank-r LoRA on the
stacked [W_q; W_v]. ``inject_qkv_lora`` puts it on every ``attn.qkv``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from mtlora_lite.adapters.base import make_config
from mtlora_lite.adapters.functional import lora_linear
from mtlora_lite.adapters.lora import LoRAConfig, LoRALinear
from mtlora_lite.adapters.targets import Targets, inject_adapters, name_matches

QKV = ("q", "k", "v")  # timm's order of the blocks in attn.qkv


def _check_blocks(blocks: Sequence[str], block_names: Sequence[str]) -> tuple[str, ...]:
    """The chosen blocks in the layer's order; ValueError on unknown, repeated or no blocks."""
    if isinstance(blocks, str):
        raise TypeError(f"blocks must be a sequence of names, e.g. ('q', 'v'), got {blocks!r}")
    unknown = [b for b in blocks if b not in block_names]
    if unknown or not blocks or len(set(blocks)) != len(blocks):
        raise ValueError(
            f"blocks must be distinct names out of {tuple(block_names)}, got {tuple(blocks)}"
        )
    return tuple(b for b in block_names if b in blocks)


class BlockLoRALinear(LoRALinear):
    """LoRA on the chosen output blocks of a fused Linear: (..., in) -> (..., out).

    Args:
        base_layer: the frozen fused layer, out = len(block_names) * d (kept as is).
        blocks: the names of the blocks to adapt, e.g. ``("q", "v")``.
        config, options: a ``LoRAConfig`` and / or its fields (rank, alpha, dropout, rslora), as
            for ``LoRALinear``.
        block_names: the blocks of the output, in order; timm's ``("q", "k", "v")`` by default.

    ``lora_A`` (r, in) starts kaiming-uniform; ``lora_B`` (len(blocks) * d, r) starts at zero and
    holds the chosen blocks' rows, in the layer's order. ``full_B()`` gives the (out, r) matrix
    with zero rows elsewhere.
    """

    adapter_group = "block_lora"

    def __init__(
        self,
        base_layer: nn.Linear,
        blocks: Sequence[str] = ("q", "v"),
        config: LoRAConfig | None = None,
        *,
        block_names: Sequence[str] = QKV,
        **options: Any,
    ) -> None:
        cfg = make_config(LoRAConfig, config, **options)  # checked before the blocks
        chosen = _check_blocks(blocks, tuple(block_names))
        if base_layer.out_features % len(block_names):
            raise ValueError(
                f"out_features {base_layer.out_features} does not split into {len(block_names)} "
                f"equal blocks {tuple(block_names)}; is this a fused qkv layer?"
            )
        super().__init__(base_layer, cfg)
        self.block_names, self.blocks = tuple(block_names), chosen
        self.block_size = self.out_features // len(self.block_names)  # d
        n_rows = len(self.blocks) * self.block_size  # only the chosen blocks' rows of B
        self.lora_B = nn.Parameter(self.lora_B.new_zeros(n_rows, cfg.rank))

    def full_B(self) -> Tensor:
        """(out, r): the rows of ``lora_B`` in the chosen blocks, zeros in the others.

        Differentiable: gradients reach ``lora_B`` only through its own rows.
        """
        chosen = iter(self.lora_B.split(self.block_size))
        zero = self.lora_B.new_zeros(self.block_size, self.rank)
        return torch.cat([next(chosen) if b in self.blocks else zero for b in self.block_names])

    def forward(self, x: Tensor) -> Tensor:
        """x: (..., in) -> (..., out)."""
        if self.merged or self.disabled:
            return self.base_layer(x)
        p = self.dropout if self.training else 0.0
        return lora_linear(self.base_layer, x, self.lora_A, self.full_B(), self.scaling, p)

    def delta_weight(self) -> Tensor:
        """s * P B A: (out, in), exactly zero in the rows of the blocks not adapted."""
        return self.scaling * (self.full_B() @ self.lora_A)

    def adapter_config(self) -> dict[str, object]:
        blocks = {"blocks": list(self.blocks), "block_names": list(self.block_names)}
        return {**super().adapter_config(), **blocks}

    def extra_repr(self) -> str:
        return f"blocks={self.blocks} of {self.block_names}, {super().extra_repr()}"


def inject_qkv_lora(
    model: nn.Module,
    blocks: Sequence[str] = ("q", "v"),
    config: LoRAConfig | None = None,
    *,
    targets: Targets = "attn.qkv",
    **options: Any,
) -> list[str]:
    """Wrap every fused qkv Linear matching ``targets`` in a ``BlockLoRALinear`` on ``blocks``.

    Example: ``inject_qkv_lora(vit, ("q", "v"), rank=8)`` adapts W_q and W_v of every block, as in
    the LoRA paper (a ``LoRAConfig`` and / or its fields). Returns the adapted module paths.
    Everything is checked before any layer is replaced, so a bad argument never leaves a
    half-injected model.
    """
    cfg = make_config(LoRAConfig, config, **options)
    _check_blocks(blocks, QKV)
    for name, module in model.named_modules():
        if name and name_matches(name, targets) and isinstance(module, nn.Linear):
            if module.out_features % len(QKV):
                raise ValueError(
                    f"{name!r} has {module.out_features} outputs, not 3 equal q / k / v blocks; "
                    "target only fused qkv layers (e.g. 'attn.qkv')"
                )
    return inject_adapters(model, targets, lambda lin: BlockLoRALinear(lin, blocks, cfg))
