"""mtlora_lite: LoRA, MTLoRA and R-LoRA for timm vision transformers, small enough to read.

The package has four rooms; imports point from the applications to the library, never back:

- ``mtlora_lite.adapters``: the layers (torch only; timm for the Swin parts). Lift them into any
  project: LoRA, multi-head LoRA / R-LoRA, MTLoRA on timm Swin, saving, parameter breakdowns.
- ``mtlora_lite.multitask``: tasks and metrics, decoders, multi-task models, the trainer, the
  PASCAL-Context dataset.
- ``mtlora_lite.course`` and ``mtlora_lite.paper``: the applications, the course's helpers and
  the paper's table. Import them as ``mtlora_lite.course.<module>``.

This module exports the library (the first two rooms) only, grouped by purpose; each name is
imported on first use, so ``import mtlora_lite`` imports neither torch nor timm by itself.
"""

from importlib import import_module
from importlib.metadata import PackageNotFoundError, version
from typing import Any

_A, _M = "mtlora_lite.adapters", "mtlora_lite.multitask"
_HOMES = {  # name -> the module that defines it
    # LoRA on any nn.Linear of any model: inject by name, freeze by structure, merge, inspect;
    # LoRA on some blocks of a fused Linear (q and v of timm's attn.qkv)
    "AdapterLayer": f"{_A}.base",
    "LoRAConfig": f"{_A}.lora",
    "LoRALinear": f"{_A}.lora",
    "inject_lora": f"{_A}.lora",
    "BlockLoRALinear": f"{_A}.blocks",
    "inject_qkv_lora": f"{_A}.blocks",
    "adapter_layers": f"{_A}.targets",
    "inject_adapters": f"{_A}.targets",
    "linear_names": f"{_A}.targets",
    "mark_only_adapters_trainable": f"{_A}.freezing",
    "merge_adapters": f"{_A}.merging",
    "unmerge_adapters": f"{_A}.merging",
    "unload_adapters": f"{_A}.merging",
    "disable_adapters": f"{_A}.merging",
    # multi-head LoRA (HydraLoRA) and R-LoRA
    "MultiHeadConfig": f"{_A}.multihead",
    "MultiHeadLoRALinear": f"{_A}.multihead",
    "inject_multihead_lora": f"{_A}.multihead",
    "inject_rank_matched_lora": f"{_A}.multihead",
    # MTLoRA on a timm Swin
    "MTLoRAConfig": f"{_A}.mtlora",
    "MTLoRALinear": f"{_A}.mtlora",
    "SwinTaskEncoder": f"{_A}.swin",
    "inject_mtlora": f"{_A}.swin",
    "mark_mtlora_trainable": f"{_A}.swin",
    # adapter files (ours, and Hugging Face PEFT's LoRA format), parameter counts, diagnostics
    "load_adapters": f"{_A}.saving",
    "save_adapters": f"{_A}.saving",
    "export_peft": f"{_A}.peft",
    "import_peft": f"{_A}.peft",
    "Breakdown": f"{_A}.breakdown",
    "count_parameters": f"{_A}.breakdown",
    "trainable_breakdown": f"{_A}.breakdown",
    "head_cosine_matrix": f"{_A}.heads",
    "head_similarity": f"{_A}.heads",
    "router_statistics": f"{_A}.heads",
    # multi-task models, tasks and training (its TensorBoard logs need tensorboard)
    "MultiTaskNet": f"{_M}.models",
    "build_model": f"{_M}.models",
    "paper_breakdown": f"{_M}.models",
    "Task": f"{_M}.tasks",
    "delta_m": f"{_M}.tasks",
    "primary_metrics": f"{_M}.tasks",
    "relative_changes": f"{_M}.tasks",
    "fit": f"{_M}.train",
    "evaluate": f"{_M}.evaluation",
    "resolve_device": f"{_M}.runtime",
    "seed_everything": f"{_M}.runtime",
    "Callback": f"{_M}.history",
    "HeadSimilarityRecorder": f"{_M}.history",
    "History": f"{_M}.history",
    "TensorBoardLogger": f"{_M}.tensorboard",
    "is_main_process": f"{_M}.distributed",
}
__all__ = list(_HOMES)

try:
    __version__ = version("mtlora-lite")
except PackageNotFoundError:  # a source tree on sys.path that was never installed (PYTHONPATH=.)
    __version__ = "0+source"


def __getattr__(name: str) -> Any:
    """Import a public name from its module on first use (PEP 562)."""
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(_HOMES[name]), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_HOMES])
