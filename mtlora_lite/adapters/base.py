"""The base class of every adapter: a frozen ``nn.Linear`` wrapped by composition.

Freezing, merging, saving and parameter breakdowns treat every adapter of the package alike
through ``AdapterLayer``: the wrapped layer is ``self.base_layer`` (its weights are never copied or
re-initialised), every other parameter belongs to the adapter, and ``delta_weight`` is the dense
update that ``merge`` folds into the base weight.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any, TypeVar

import torch
from torch import Tensor, nn

C = TypeVar("C")


def make_config(cls: type[C], config: C | None = None, **options: Any) -> C:
    """``config`` (default ``cls()``) with ``options`` replacing its fields, checked by ``cls``.

    Every adapter takes its frozen config dataclass and / or the config's fields as keywords:
    ``LoRALinear(linear, rank=8)`` is ``LoRALinear(linear, LoRAConfig(rank=8))``.
    """
    if config is not None and not isinstance(config, cls):
        raise TypeError(
            f"config must be a {cls.__name__}, got {config!r}; pass the options by keyword "
            f"(e.g. rank=8) or as {cls.__name__}(...)"
        )
    fields = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(options) - fields)
    if unknown:
        raise TypeError(f"{cls.__name__} has no options {unknown}; its fields are {sorted(fields)}")
    return dataclasses.replace(config or cls(), **options)  # type: ignore[type-var]


class AdapterLayer(nn.Module):
    """Base class of every adapter: wraps a frozen ``nn.Linear`` as ``self.base_layer``.

    Parameters registered on the adapter itself (not under ``base_layer``) are adapter parameters.
    Subclasses keep their hyper-parameters in ``self.config`` (a frozen dataclass) and implement
    ``forward`` (the base layer alone while ``merged`` or ``disabled``), ``delta_weight`` (for
    merging) and ``adapter_config``.
    """

    adapter_group = "adapter"  # row name in trainable_breakdown

    def __init__(self, base_layer: nn.Linear) -> None:
        super().__init__()
        if not isinstance(base_layer, nn.Linear):
            raise TypeError(f"adapters wrap nn.Linear layers, got {type(base_layer).__name__}")
        self.base_layer = base_layer
        self.merged = False  # the update is in base_layer.weight (merge / unmerge)
        self.disabled = False  # forward is the base layer's (``disable_adapters``)

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
        """Fold the update into ``base_layer.weight``; afterwards forward is the plain base layer
        and the adapter's parameters are frozen (``unmerge`` makes them trainable again if they
        were), so that a merged adapter is never trained by mistake."""
        if self.merged:
            raise RuntimeError("adapter is already merged; call unmerge() first")
        delta = self.delta_weight()
        if not torch.isfinite(delta).all():
            raise ValueError("the update holds NaN or inf; merging it would destroy the weight")
        w = self.base_layer.weight
        w += delta.to(w.dtype)
        self._trainable = {n: p.requires_grad for n, p in self.adapter_parameters()}
        for _, p in self.adapter_parameters():
            p.requires_grad_(False)
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Subtract the update again (exact up to float rounding) and restore which adapter
        parameters were trainable before ``merge``."""
        if not self.merged:
            raise RuntimeError("adapter is not merged; nothing to unmerge")
        w = self.base_layer.weight
        w -= self.delta_weight().to(w.dtype)
        trainable = getattr(self, "_trainable", {})
        for name, p in self.adapter_parameters():
            p.requires_grad_(trainable.get(name, p.requires_grad))
        self.merged = False
