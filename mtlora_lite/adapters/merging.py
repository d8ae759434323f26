"""Merging, unloading and disabling: what an adapted model computes, and with which modules.

    merge_adapters(model)          # the updates folded into the base weights, adapters kept
    unmerge_adapters(model)        # the adapters again, exact up to float rounding
    plain = unload_adapters(model) # merged, and the adapters replaced by their base layers
    with disable_adapters(model):  # the base function, same modules, nothing copied
        ...

Merging is explicit: ``.eval()`` never merges. It refuses adapters whose update depends on the
input (a routed multi-head LoRA) and updates that are not finite, before touching any weight.
Merged adapters are frozen (``requires_grad=False``); unmerging makes trainable again those that
were.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
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
    with torch.no_grad():  # all checked before any weight changes
        bad = [n for n, a in layers.items() if not torch.isfinite(a.delta_weight()).all()]
    if bad:
        raise ValueError(
            f"the updates of {len(bad)} adapter(s) hold NaN or inf (e.g. {bad[0]!r}), which would "
            "destroy the base weights; nothing was merged. Find where training diverged (a lower "
            "learning rate, grad_clip) or reload good adapters"
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


def unload_adapters(model: nn.Module) -> nn.Module:
    """Merge every adapter into its base weight and put the plain base layer back in its place:
    the returned model (``model`` itself, changed in place) has no adapter left, so its state
    dict has the keys of the model before injection (a timm model's loads into a stock one with
    ``strict=True``). Already merged adapters are only unwrapped.

    Refuses, before changing anything, adapters that cannot be folded into one weight: a routed
    multi-head LoRA (its update depends on the input) and MTLoRA layers with task-specific
    branches (a plain layer has one output, not one per task).
    """
    layers = adapter_layers(model)
    tasks = [n for n, a in layers.items() if len(getattr(a, "tasks", ())) > 0]
    if tasks:
        raise RuntimeError(
            f"{len(tasks)} MTLoRA layer(s) hold task-specific branches (e.g. {tasks[0]!r}), which "
            "a plain layer cannot express; nothing was unloaded. Merge them with merge_adapters "
            "and keep the adapters, or unload a model without TS-LoRA (task_stages=())"
        )
    if not all(a.merged for a in layers.values()):
        if any(a.merged for a in layers.values()):
            raise RuntimeError("some adapters are merged, others not; unmerge_adapters() first")
        merge_adapters(model)
    for name, adapter in layers.items():
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, adapter.base_layer)
    return model


@contextlib.contextmanager
def disable_adapters(model: nn.Module) -> Iterator[nn.Module]:
    """Within this block every adapter of ``model`` is bypassed: the model computes its base
    function, with the same modules and weights (no copy), e.g. to compare with the base model
    or to compute a reference output. Parameters trained outside the adapters (a head, unfrozen
    norms) keep their values. Adapters must be unmerged (their update is in the weights
    otherwise); on exit each adapter is as before, also after an error.

        with disable_adapters(model):
            reference = model(x)
    """
    layers = adapter_layers(model)
    if not layers:
        raise ValueError("the model has no adapters to disable; inject some first")
    if any(a.merged for a in layers.values()):
        raise RuntimeError(
            "adapters are merged into the base weights, so bypassing them would not give the base "
            "function; unmerge_adapters(model) first"
        )
    before = {name: a.disabled for name, a in layers.items()}
    for a in layers.values():
        a.disabled = True
    try:
        yield model
    finally:
        for name, a in layers.items():
            a.disabled = before[name]
