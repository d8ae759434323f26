"""The adapter layers: torch only (timm for the Swin parts); lift them into any project.

    from mtlora_lite.adapters import inject_lora, mark_only_adapters_trainable, save_adapters

``base`` (``AdapterLayer``, the class every adapter derives from); ``targets`` (finding layers by
name, injecting adapters); ``lora`` (the LoRA layer) and ``functional`` (the fused autograd of
LoRA and multi-head LoRA, dropout masks); ``freezing`` (by structure); ``merging`` (merge,
unload, disable); ``blocks`` (LoRA on chosen blocks of a fused Linear: q / v of timm's qkv);
``multihead`` (HydraLoRA / R-LoRA); ``mtlora`` (MTLoRA's config and TA / TS layers) and ``swin``
(MTLoRA on a timm Swin: injection, task streams, ``SwinTaskEncoder``); ``saving`` (adapter-only
safetensors, checksummed); ``peft`` (Hugging Face PEFT's LoRA folders, both ways); ``breakdown``
(exact parameter counts); ``heads`` (multi-head diagnostics); ``checks`` (numeric options at the
API boundary) and ``atomic`` (files that are never half written).

The names below are imported on first use, so ``import mtlora_lite.adapters`` costs nothing and
timm is imported only with the Swin names. Nothing here imports ``mtlora_lite.multitask`` or
``mtlora_lite.course``.
"""

from importlib import import_module
from typing import Any

_HOMES = {  # name -> the module of this package that defines it
    "AdapterLayer": "base",
    "make_config": "base",
    "TIMM_TARGETS": "targets",
    "Targets": "targets",
    "adapter_layers": "targets",
    "inject_adapters": "targets",
    "linear_names": "targets",
    "name_matches": "targets",
    "LoRAConfig": "lora",
    "LoRALinear": "lora",
    "inject_lora": "lora",
    "lora_scaling": "lora",
    "mark_only_adapters_trainable": "freezing",
    "disable_adapters": "merging",
    "merge_adapters": "merging",
    "unload_adapters": "merging",
    "unmerge_adapters": "merging",
    "BlockLoRALinear": "blocks",
    "inject_qkv_lora": "blocks",
    "MultiHeadConfig": "multihead",
    "MultiHeadLoRALinear": "multihead",
    "inject_multihead_lora": "multihead",
    "inject_rank_matched_lora": "multihead",
    "MTLoRAConfig": "mtlora",
    "MTLoRALinear": "mtlora",
    "SwinTaskEncoder": "swin",
    "inject_mtlora": "swin",
    "mark_mtlora_trainable": "swin",
    "adapter_state_dict": "saving",
    "load_adapters": "saving",
    "save_adapters": "saving",
    "export_peft": "peft",
    "import_peft": "peft",
    "Breakdown": "breakdown",
    "count_parameters": "breakdown",
    "trainable_breakdown": "breakdown",
    "head_cosine_matrix": "heads",
    "head_similarity": "heads",
    "router_statistics": "heads",
}
__all__ = list(_HOMES)


def __getattr__(name: str) -> Any:
    """Import a public name from its module on first use (PEP 562)."""
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(f"{__name__}.{_HOMES[name]}"), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_HOMES])
