"""Freezing by structure: everything but the adapters, then the extras you name.

    mark_only_adapters_trainable(model, extra=["head", nn.LayerNorm])

Adapters are found by type (``AdapterLayer``), never by a name substring such as ``"lora_"``, so
a layer of your own called ``lora_gate`` is not unfrozen by accident.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from mtlora_lite.adapters.targets import adapter_layers, modules_outside_adapters, name_matches


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
            for _, module in modules_outside_adapters(model):
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
