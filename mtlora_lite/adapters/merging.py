"""Merging: fold every adapter's update into its base weight for deployment, and back.

    merge_adapters(model)      # forward is now the plain base layers (with the updates in W)
    unmerge_adapters(model)    # the adapters again, exact up to float rounding

Merging is explicit: ``.eval()`` never merges. It refuses adapters whose update depends on the
input (a routed multi-head LoRA) before touching any weight. Merged adapters are frozen
(``requires_grad=False``); unmerging makes trainable again those that were.
"""

from __future__ import annotations

from torch import nn

from mtlora_lite.adapters.targets import adapter_layers


def merge_adapters(model: nn.Module) -> int:
    """Merge every adapter into its base weight; returns how many were merged."""
    layers = adapter_layers(model)
    merged = [n for n, a in layers.items() if a.merged]
    if merged:
        shown = ", ".join(repr(n) for n in merged[:4]) + (", ..." if len(merged) > 4 else "")
        if len(merged) == len(layers):
            raise RuntimeError(
                f"all {len(layers)} adapters are already merged ({shown}): call "
                "unmerge_adapters(model) first"
            )
        raise RuntimeError(
            f"the model is half-merged: {len(merged)} of {len(layers)} adapters are merged "
            f"({shown}), the others not (e.g. after .merge() on single layers). Call "
            "unmerge_adapters(model) (it unmerges the merged ones), then merge_adapters(model)"
        )
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
    """Undo ``merge_adapters``: unmerge every merged adapter (also on a half-merged model, e.g.
    after ``.merge()`` on single layers); returns how many were unmerged."""
    layers = adapter_layers(model)
    merged = [a for a in layers.values() if a.merged]
    if not merged:
        raise RuntimeError(
            f"none of the {len(layers)} adapters is merged: nothing to unmerge "
            "(merge_adapters(model) merges them)"
        )
    for a in merged:
        a.unmerge()
    return len(merged)
