"""mtlora_lite: LoRA, MTLoRA and R-LoRA for timm vision transformers, small enough to read.

The package has three rooms, whose imports point one way (course -> multitask -> adapters):

- ``mtlora_lite.adapters``: the layers (torch only; timm for the Swin parts). Lift them into any
  project: LoRA, multi-head LoRA / R-LoRA, MTLoRA on timm Swin, saving, parameter breakdowns.
- ``mtlora_lite.multitask``: tasks and metrics, decoders, multi-task models, the trainer.
- ``mtlora_lite.course``: what the course needs besides (procedural scenes, the course Swin,
  recipes, run records, figures, widgets). Import it as ``mtlora_lite.course.<module>``.

This module exports the library (the first two rooms) only, grouped by purpose.
"""

# ruff: noqa: I001 (the imports are grouped by purpose, not sorted)
from importlib.metadata import PackageNotFoundError, version

# LoRA on any nn.Linear of any model: inject by name, freeze by structure, merge, inspect;
# LoRA on some blocks of a fused Linear (q and v of timm's attn.qkv)
from mtlora_lite.adapters.base import AdapterLayer
from mtlora_lite.adapters.freezing import mark_only_adapters_trainable
from mtlora_lite.adapters.lora import LoRALinear, inject_lora
from mtlora_lite.adapters.merging import merge_adapters, unmerge_adapters
from mtlora_lite.adapters.targets import adapter_layers, inject_adapters, linear_names
from mtlora_lite.adapters.blocks import BlockLoRALinear, inject_qkv_lora

# Multi-head LoRA (HydraLoRA) and R-LoRA
from mtlora_lite.adapters.multihead import (
    MultiHeadConfig,
    MultiHeadLoRALinear,
    inject_multihead_lora,
    inject_rank_matched_lora,
)

# MTLoRA on a timm Swin
from mtlora_lite.adapters.mtlora import MTLoRAConfig, MTLoRALinear
from mtlora_lite.adapters.swin import SwinTaskEncoder, inject_mtlora, mark_mtlora_trainable

# Adapter files (ours, and Hugging Face PEFT's LoRA format), parameter counts, multi-head diagnostics
from mtlora_lite.adapters.saving import load_adapters, save_adapters
from mtlora_lite.adapters.peft import export_peft, import_peft
from mtlora_lite.adapters.breakdown import Breakdown, count_parameters, trainable_breakdown
from mtlora_lite.adapters.heads import head_similarity, router_statistics

# Multi-task models, tasks and training (and its TensorBoard logs; tensorboard is optional)
from mtlora_lite.multitask.models import MultiTaskNet, build_model, paper_breakdown
from mtlora_lite.multitask.tasks import Task, delta_m, primary_metrics, relative_changes
from mtlora_lite.multitask.train import fit
from mtlora_lite.multitask.evaluation import evaluate
from mtlora_lite.multitask.runtime import resolve_device, seed_everything
from mtlora_lite.multitask.history import Callback, HeadSimilarityRecorder, History
from mtlora_lite.multitask.tensorboard import TensorBoardLogger

try:
    __version__ = version("mtlora-lite")
except PackageNotFoundError:  # a source tree on sys.path that was never installed (PYTHONPATH=.)
    __version__ = "0+source"

__all__ = [  # noqa: RUF022 (grouped as the imports above)
    # LoRA
    "AdapterLayer",
    "BlockLoRALinear",
    "LoRALinear",
    "adapter_layers",
    "inject_adapters",
    "inject_lora",
    "inject_qkv_lora",
    "linear_names",
    "mark_only_adapters_trainable",
    "merge_adapters",
    "unmerge_adapters",
    # multi-head LoRA / R-LoRA
    "MultiHeadConfig",
    "MultiHeadLoRALinear",
    "inject_multihead_lora",
    "inject_rank_matched_lora",
    # MTLoRA
    "MTLoRAConfig",
    "MTLoRALinear",
    "SwinTaskEncoder",
    "inject_mtlora",
    "mark_mtlora_trainable",
    # files, counts, diagnostics
    "Breakdown",
    "count_parameters",
    "export_peft",
    "head_similarity",
    "import_peft",
    "load_adapters",
    "router_statistics",
    "save_adapters",
    "trainable_breakdown",
    # multi-task models, tasks, training
    "Callback",
    "HeadSimilarityRecorder",
    "History",
    "MultiTaskNet",
    "Task",
    "build_model",
    "delta_m",
    "evaluate",
    "fit",
    "paper_breakdown",
    "primary_metrics",
    "relative_changes",
    "resolve_device",
    "seed_everything",
    "TensorBoardLogger",
]
