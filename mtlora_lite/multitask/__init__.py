"""Multi-task learning on top of the adapters.

    from mtlora_lite.multitask import Task, build_model, fit

``tasks`` (``Task`` and its constructors per kind, Delta_m), ``metrics`` (streaming metrics) and
``losses``; ``decoders``, ``encoders`` and ``models`` (multi-task models and their baselines on any timm
backbone, ``build_model``; ``TaskHeads``);
``backbones`` (timm backbones and their multi-scale feature maps); ``train`` (``fit``) with
``step`` (one optimizer step), ``schedule``, ``loaders``, ``checkpoint`` and ``resume``;
``evaluation`` (``evaluate``), ``runtime`` (device, seeds), ``precision`` (bf16 / fp16 / fp32),
``history`` (``History``, callbacks), ``distributed`` and ``startup`` (torchrun / DDP) and
``tensorboard``; ``pascal`` (the PASCAL-Context dataset). Imports ``mtlora_lite.adapters``, never
an application.
"""

# ruff: noqa: I001 (grouped by purpose, as the docstring)
from mtlora_lite.multitask.tasks import (
    delta_m,
    primary_metrics,
    relative_changes,
    Task,
    task_dict,
    TaskLike,
)
from mtlora_lite.multitask.metrics import (
    AccuracyMetric,
    ConfusionMetric,
    DepthMetric,
    Metric,
    NormalsMetric,
    ThresholdMetric,
)
from mtlora_lite.multitask.decoders import ClassificationHead, DenseDecoder
from mtlora_lite.multitask.models import build_model, MultiTaskNet, paper_breakdown, TaskHeads
from mtlora_lite.multitask.encoders import FeatureEncoder
from mtlora_lite.multitask.backbones import stage_features, timm_backbone
from mtlora_lite.multitask.train import fit
from mtlora_lite.multitask.evaluation import evaluate
from mtlora_lite.multitask.precision import autocast
from mtlora_lite.multitask.runtime import resolve_device, seed_everything
from mtlora_lite.multitask.history import Callback, HeadSimilarityRecorder, History
from mtlora_lite.multitask.tensorboard import TensorBoardLogger
from mtlora_lite.multitask.distributed import is_main_process

__all__ = [  # noqa: RUF022 (grouped by module, as imported)
    "Task",
    "TaskLike",
    "delta_m",
    "primary_metrics",
    "relative_changes",
    "task_dict",
    "Metric",
    "AccuracyMetric",
    "ConfusionMetric",
    "DepthMetric",
    "NormalsMetric",
    "ThresholdMetric",
    "ClassificationHead",
    "DenseDecoder",
    "MultiTaskNet",
    "TaskHeads",
    "build_model",
    "paper_breakdown",
    "FeatureEncoder",
    "stage_features",
    "timm_backbone",
    "fit",
    "evaluate",
    "autocast",
    "resolve_device",
    "seed_everything",
    "Callback",
    "HeadSimilarityRecorder",
    "History",
    "TensorBoardLogger",
    "is_main_process",
]
