"""Every adapter type by name, for files: re-creating adapters from their saved configs, and
comparing a file's configs with a model's.

``adapter_config()`` of each layer holds its type and every hyper-parameter (its config's fields
and the real scale it gives). ``recreate`` builds a file's adapters in a model that has none
(``load_adapters`` then loads their weights); ``check_configs`` refuses a file whose adapters
differ from the model's in anything but the training-only options (dropout), which do not change
the function the weights compute.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from torch import nn

from mtlora_lite.adapters.base import AdapterLayer
from mtlora_lite.adapters.blocks import BlockLoRALinear
from mtlora_lite.adapters.lora import LoRALinear
from mtlora_lite.adapters.mtlora import MergeLoRALinear, MTLoRALinear
from mtlora_lite.adapters.multihead import MultiHeadLoRALinear

TYPES: dict[str, type[AdapterLayer]] = {  # what a file's configs can re-create
    cls.__name__: cls
    for cls in (LoRALinear, BlockLoRALinear, MultiHeadLoRALinear, MTLoRALinear, MergeLoRALinear)
}
TRAINING_ONLY = ("dropout", "dropout_mode", "gamma")  # not compared: the saved function is the same


def comparable(config: Mapping[str, object], current: bool) -> dict[str, object]:
    """What of a saved layer config must equal the model's: all but ``TRAINING_ONLY``; in an older
    file (not ``current``) an MTLoRA config's alpha was the scale times the rank."""
    config = {k: v for k, v in config.items() if k not in TRAINING_ONLY}
    if not current and config.get("type") in ("MTLoRALinear", "MergeLoRALinear"):
        config["scaling"] = config.pop("alpha") / config["rank"]  # type: ignore[operator]
        config.pop("rslora", None)
    return config


def check_configs(
    path: Path, current: bool, saved: Mapping[str, dict], ours: Mapping[str, dict]
) -> None:
    """Refuse a file (``path``, of the current format or not) whose layers or hyper-parameters
    (``saved``, by layer path) differ from the model's adapters' (``ours``)."""
    diff = sorted(
        k
        for k in saved.keys() | ours.keys()
        if k not in saved
        or k not in ours
        or any(ours[k].get(f) != v for f, v in comparable(saved[k], current).items())
    )
    if diff:
        raise ValueError(
            f"adapter configs differ at {len(diff)} layer(s), e.g. {diff[0]!r}: {path} has "
            f"{saved.get(diff[0])}, model has {ours.get(diff[0])}. Inject the model with "
            "the same targets and hyper-parameters before loading, or load into a model "
            "without adapters: the file re-creates its own."
        )


def recreate(
    path: Path, current: bool, saved: Mapping[str, dict], model: nn.Module
) -> dict[str, nn.Linear]:
    """Put the file's adapters into ``model``, which has none: each built from its saved config
    around the Linear at its path; everything is checked before the model is touched. Returns
    the Linear layers they replaced, by path (``put_modules`` puts them back)."""
    if not current:
        raise ValueError(
            f"{path} has an older format, whose configs cannot re-create the adapters: "
            "inject the model as when the file was saved, then load it (saving it again upgrades "
            "it)"
        )
    made: dict[str, AdapterLayer] = {}
    for name, config in saved.items():
        try:
            layer = model.get_submodule(name)
        except AttributeError:
            layer = None
        if (
            not isinstance(layer, nn.Linear)
            or layer.in_features != config.get("in_features")
            or layer.out_features != config.get("out_features")
        ):
            raise ValueError(
                f"{path} holds an adapter for {name!r}, a Linear {config.get('in_features')} -> "
                f"{config.get('out_features')}, but the model has {type(layer).__name__} there: "
                "load it into the architecture the adapters were trained on"
            )
        if config.get("type") not in TYPES:
            raise ValueError(f"{path}: unknown adapter type {config.get('type')!r} at {name!r}")
        made[name] = TYPES[config["type"]].from_adapter_config(layer, config).train(layer.training)
    put_modules(model, made)
    return {name: adapter.base_layer for name, adapter in made.items()}


def put_modules(model: nn.Module, modules: Mapping[str, nn.Module]) -> None:
    """Set each module of ``modules`` at its path in ``model``."""
    for name, module in modules.items():
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, module)
