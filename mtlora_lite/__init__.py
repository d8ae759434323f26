"""mtlora_lite: LoRA, MTLoRA and R-LoRA for timm vision transformers, small enough to read.

Adapters (need only torch and, for MTLoRA, timm's Swin): ``lora``, ``functional``, ``mtlora``,
``multihead``, ``saving``. Models: ``backbones``, ``decoders``, ``models``. Data and tasks:
``scenes``, ``data``, ``tasks``. Training: ``train``, ``pretrain``. Reading results: ``analysis``,
``plots``, ``notebook``.
"""

from mtlora_lite.analysis import (
    Breakdown,
    HeadSimilarityRecorder,
    count_parameters,
    head_cosine_matrix,
    head_similarity,
    router_statistics,
    trainable_breakdown,
)
from mtlora_lite.backbones import (
    COURSE_SWIN_CONFIG,
    build_course_swin,
    feature_channels,
    load_backbone,
    load_course_card,
    stage_features,
)
from mtlora_lite.data import make_loaders, make_mixture_loaders, mixture_layout
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
from mtlora_lite.models import MultiTaskNet, build_model, paper_breakdown
from mtlora_lite.mtlora import MTLoRAConfig, MTLoRALinear, inject_mtlora, mark_mtlora_trainable
from mtlora_lite.multihead import (
    MultiHeadLoRALinear,
    inject_multihead_lora,
    inject_rank_matched_lora,
)
from mtlora_lite.saving import adapter_state_dict, load_adapters, save_adapters
from mtlora_lite.scenes import DOWNSTREAM, PRETRAIN, SceneConfig, generate_scenes
from mtlora_lite.tasks import Task, build_tasks, delta_m, primary_metrics
from mtlora_lite.train import Callback, History, evaluate, fit, resolve_device, seed_everything

__version__ = "0.2.0"

__all__ = [
    "COURSE_SWIN_CONFIG",
    "DOWNSTREAM",
    "PRETRAIN",
    "AdapterLayer",
    "Breakdown",
    "Callback",
    "HeadSimilarityRecorder",
    "History",
    "LoRALinear",
    "MTLoRAConfig",
    "MTLoRALinear",
    "MultiHeadLoRALinear",
    "MultiTaskNet",
    "SceneConfig",
    "Task",
    "adapter_layers",
    "adapter_state_dict",
    "build_course_swin",
    "build_model",
    "build_tasks",
    "count_parameters",
    "delta_m",
    "evaluate",
    "feature_channels",
    "fit",
    "fused_lora_linear",
    "generate_scenes",
    "head_cosine_matrix",
    "head_similarity",
    "inject_adapters",
    "inject_lora",
    "inject_mtlora",
    "inject_multihead_lora",
    "inject_rank_matched_lora",
    "linear_names",
    "load_adapters",
    "load_backbone",
    "load_course_card",
    "make_loaders",
    "make_mixture_loaders",
    "mark_mtlora_trainable",
    "mark_only_adapters_trainable",
    "merge_adapters",
    "mixture_layout",
    "name_matches",
    "paper_breakdown",
    "primary_metrics",
    "resolve_device",
    "router_statistics",
    "save_adapters",
    "seed_everything",
    "stage_features",
    "trainable_breakdown",
    "unmerge_adapters",
]
