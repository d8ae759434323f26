"""mtlora_lite: LoRA, MTLoRA and R-LoRA for timm vision transformers, small enough to read."""

from mtlora_lite.analysis import Breakdown, count_parameters, trainable_breakdown
from mtlora_lite.functional import fused_lora_linear
from mtlora_lite.lora import (
    AdapterLayer,
    LoRALinear,
    adapter_layers,
    inject_adapters,
    inject_lora,
    linear_names,
    mark_only_adapters_trainable,
    merge_adapters,
    name_matches,
    unmerge_adapters,
)
from mtlora_lite.saving import adapter_state_dict, load_adapters, save_adapters

__version__ = "0.1.0"

__all__ = [
    "AdapterLayer",
    "Breakdown",
    "LoRALinear",
    "adapter_layers",
    "adapter_state_dict",
    "count_parameters",
    "fused_lora_linear",
    "inject_adapters",
    "inject_lora",
    "linear_names",
    "load_adapters",
    "mark_only_adapters_trainable",
    "merge_adapters",
    "name_matches",
    "save_adapters",
    "trainable_breakdown",
    "unmerge_adapters",
]
