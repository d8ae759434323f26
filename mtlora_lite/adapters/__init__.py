"""The adapter layers: torch only (timm for the Swin parts); lift them into any project.

    from mtlora_lite.adapters import inject_lora, mark_only_adapters_trainable, save_adapters

``base`` (``AdapterLayer``, the class every adapter derives from); ``targets`` (finding layers by
name, injecting adapters); ``lora`` (the LoRA layer) and ``functional`` (the fused autograd of
LoRA and multi-head LoRA, dropout masks); ``freezing`` (by structure); ``merging`` (merge,
unload, disable); ``blocks`` (LoRA on chosen blocks of a fused Linear: q / v of timm's qkv);
``multihead`` (HydraLoRA / R-LoRA); ``mtlora`` (MTLoRA's config and TA / TS layers) and ``swin``
(MTLoRA on a timm Swin: injection, task streams, ``SwinTaskEncoder``); ``saving`` (adapter-only
safetensors, checksummed) and ``registry`` (re-creating adapters from a file's configs); ``peft`` (Hugging Face PEFT's LoRA folders, both ways); ``breakdown``
(exact parameter counts); ``heads`` (multi-head diagnostics) and ``head_plots`` (their figures,
matplotlib); ``checks`` (numeric options at the
API boundary) and ``atomic`` (files that are never half written).

Importing the package imports torch (and safetensors) only: the Swin names (timm) and the head
figures (matplotlib) are imported on first use. Nothing here imports ``mtlora_lite.multitask`` or
an application.
"""

# ruff: noqa: I001 (in the order of the modules above)
from mtlora_lite.adapters.base import AdapterLayer, make_config
from mtlora_lite.adapters.targets import (
    adapter_layers,
    inject_adapters,
    linear_names,
    name_matches,
    Targets,
    TIMM_TARGETS,
)
from mtlora_lite.adapters.lora import inject_lora, lora_scaling, LoRAConfig, LoRALinear
from mtlora_lite.adapters.freezing import mark_only_adapters_trainable
from mtlora_lite.adapters.merging import (
    disable_adapters,
    merge_adapters,
    unload_adapters,
    unmerge_adapters,
)
from mtlora_lite.adapters.blocks import BlockLoRALinear, inject_qkv_lora
from mtlora_lite.adapters.multihead import (
    inject_multihead_lora,
    inject_rank_matched_lora,
    MultiHeadConfig,
    MultiHeadLoRALinear,
)
from mtlora_lite.adapters.mtlora import MTLoRAConfig, MTLoRALinear
from mtlora_lite.adapters.saving import adapter_state_dict, load_adapters, save_adapters
from mtlora_lite.adapters.peft import export_peft, import_peft
from mtlora_lite.adapters.breakdown import Breakdown, count_parameters, trainable_breakdown
from mtlora_lite.adapters.heads import head_cosine_matrix, head_similarity, router_statistics

_SWIN = ("SwinTaskEncoder", "inject_mtlora", "mark_mtlora_trainable")  # need timm
_PLOTS = (
    "plot_head_cosine_matrix",
    "plot_head_similarity",
    "plot_head_similarity_curves",
)  # need matplotlib

__all__ = [  # noqa: RUF022 (grouped by module, as imported)
    "AdapterLayer",
    "make_config",
    "TIMM_TARGETS",
    "Targets",
    "adapter_layers",
    "inject_adapters",
    "linear_names",
    "name_matches",
    "LoRAConfig",
    "LoRALinear",
    "inject_lora",
    "lora_scaling",
    "mark_only_adapters_trainable",
    "disable_adapters",
    "merge_adapters",
    "unload_adapters",
    "unmerge_adapters",
    "BlockLoRALinear",
    "inject_qkv_lora",
    "MultiHeadConfig",
    "MultiHeadLoRALinear",
    "inject_multihead_lora",
    "inject_rank_matched_lora",
    "MTLoRAConfig",
    "MTLoRALinear",
    "adapter_state_dict",
    "load_adapters",
    "save_adapters",
    "export_peft",
    "import_peft",
    "Breakdown",
    "count_parameters",
    "trainable_breakdown",
    "head_cosine_matrix",
    "head_similarity",
    "router_statistics",
    "SwinTaskEncoder",
    "inject_mtlora",
    "mark_mtlora_trainable",
    "plot_head_cosine_matrix",
    "plot_head_similarity",
    "plot_head_similarity_curves",
]


def __getattr__(name: str) -> object:
    """The Swin names and the head figures, imported on first use (PEP 562)."""
    if name in _SWIN:
        from mtlora_lite.adapters import swin as module
    elif name in _PLOTS:
        from mtlora_lite.adapters import head_plots as module
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(module, name)
