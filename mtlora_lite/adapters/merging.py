"""Merging: fold every adapter's update into its base weight for deployment, and back.

    merge_adapters(model)      # forward is now the plain base layers (with the updates in W)
    unmerge_adapters(model)    # the adapters again, exact up to float rounding

Merging is explicit: ``.eval()`` never merges. It refuses adapters whose update depends on the
input (a routed multi-head LoRA) before touching any weight.
"""

from __future__ import annotations

from torch import nn

from mtlora_lite.adapters.targets import adapter_layers


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
