"""mtlora_lite: LoRA, MTLoRA and R-LoRA for timm vision transformers, small enough to read.

The package has four rooms; imports point from the applications to the library, never back:

- ``mtlora_lite.adapters``: the layers (torch only; timm for the Swin parts). Lift them into any
  project: LoRA, multi-head LoRA / R-LoRA, MTLoRA on timm Swin, saving, parameter breakdowns.
- ``mtlora_lite.multitask``: tasks and metrics, decoders, multi-task models, the trainer, the
  PASCAL-Context dataset.
- ``mtlora_lite.course`` and ``mtlora_lite.paper``: the applications, the course's helpers and
  the paper's table. Import them as ``mtlora_lite.course.<module>``.

This module exports the library (the first two rooms) only, grouped by purpose; each name comes
from its room on first use, so ``import mtlora_lite`` imports neither torch nor timm by itself.
"""

from importlib.metadata import PackageNotFoundError, version

__all__ = [  # noqa: RUF022 (grouped by purpose)
    # LoRA on any nn.Linear of any model: inject by name, freeze by structure, merge, inspect;
    # LoRA on some blocks of a fused Linear (q and v of timm's attn.qkv)
    "AdapterLayer",
    "LoRAConfig",
    "LoRALinear",
    "inject_lora",
    "BlockLoRALinear",
    "inject_qkv_lora",
    "adapter_layers",
    "inject_adapters",
    "linear_names",
    "mark_only_adapters_trainable",
    "merge_adapters",
    "unmerge_adapters",
    "unload_adapters",
    "disable_adapters",
    # multi-head LoRA (HydraLoRA) and R-LoRA
    "MultiHeadConfig",
    "MultiHeadLoRALinear",
    "inject_multihead_lora",
    "inject_rank_matched_lora",
    # MTLoRA on a timm Swin
    "MTLoRAConfig",
    "MTLoRALinear",
    "SwinTaskEncoder",
    "inject_mtlora",
    "mark_mtlora_trainable",
    # adapter files (ours, and Hugging Face PEFT's LoRA format), parameter counts, diagnostics
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
    "plot_head_similarity",
    "plot_head_similarity_curves",
    # multi-task models, tasks and training (its TensorBoard logs need tensorboard)
    "MultiTaskNet",
    "TaskHeads",
    "build_model",
    "paper_breakdown",
    "Task",
    "delta_m",
    "primary_metrics",
    "relative_changes",
    "fit",
    "evaluate",
    "resolve_device",
    "seed_everything",
    "Callback",
    "HeadSimilarityRecorder",
    "History",
    "TensorBoardLogger",
    "is_main_process",
]

try:
    __version__ = version("mtlora-lite")
except PackageNotFoundError:  # a source tree on sys.path that was never installed (PYTHONPATH=.)
    __version__ = "0+source"


def __getattr__(name: str) -> object:
    """A name of the API, from its room on first use (PEP 562): the adapters' are imported
    without the rest."""
    if name not in __all__:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from mtlora_lite import adapters

    if name in adapters.__all__:
        return getattr(adapters, name)
    from mtlora_lite import multitask

    return getattr(multitask, name)


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
