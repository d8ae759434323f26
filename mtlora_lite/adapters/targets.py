"""Finding layers by name, and swapping adapters in: what every ``inject_*`` function builds on.

    name_matches("layers.0.blocks.1.attn.qkv", "attn.qkv")        # True: a dot-boundary suffix
    inject_adapters(model, ["qkv", "fc1"], lambda lin: LoRALinear(lin, rank=8))
    adapter_layers(model)                                         # {path: adapter}

Targets are module names: a name matches a module path equal to it or ending with it on a dot
boundary, or a compiled regex matches by ``fullmatch``. A target that matches nothing is an error
that lists the Linear layers which exist.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence

from torch import nn

from mtlora_lite.adapters.base import AdapterLayer

Targets = str | Sequence[str] | re.Pattern[str]
# The four Linear layers of every timm ViT and Swin block: what the course adapts by default.
TIMM_TARGETS = ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")


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


def modules_outside_adapters(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """``model.named_modules()`` without the modules inside adapters (their base layers)."""
    adapters = [n for n, m in model.named_modules() if isinstance(m, AdapterLayer)]
    for name, module in model.named_modules():
        if not any(name.startswith(a + ".") for a in adapters):
            yield name, module


def linear_names(model: nn.Module) -> list[str]:
    """Names of the ``nn.Linear`` modules that can take an adapter (not those already inside one)."""
    return [n for n, m in modules_outside_adapters(model) if isinstance(m, nn.Linear)]


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


def adapter_layers(model: nn.Module) -> dict[str, AdapterLayer]:
    """All adapters of ``model`` by module path."""
    return {n: m for n, m in model.named_modules() if isinstance(m, AdapterLayer)}
