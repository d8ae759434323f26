"""Multi-task learning on top of the adapters.

    from mtlora_lite.multitask import Task, build_model, fit

``tasks`` (``Task`` and its constructors per kind, Delta_m), ``metrics`` (streaming metrics) and
``losses``; ``decoders`` and ``models`` (multi-task models and their baselines, ``build_model``);
``backbones`` (timm backbones and their multi-scale feature maps); ``train`` (``fit``) with
``step`` (one optimizer step), ``schedule``, ``loaders``, ``checkpoint`` and ``resume``;
``evaluation`` (``evaluate``), ``runtime`` (device, seeds), ``precision`` (bf16 / fp16 / fp32),
``history`` (``History``, callbacks), ``distributed`` and ``startup`` (torchrun / DDP) and
``tensorboard``; ``pascal`` (the PASCAL-Context dataset). The names below are imported on first use. Imports
``mtlora_lite.adapters``, never ``mtlora_lite.course``.
"""

from importlib import import_module
from typing import Any

_HOMES = {  # name -> the module of this package that defines it
    "Task": "tasks",
    "TaskLike": "tasks",
    "delta_m": "tasks",
    "primary_metrics": "tasks",
    "relative_changes": "tasks",
    "task_dict": "tasks",
    "Metric": "metrics",
    "AccuracyMetric": "metrics",
    "ConfusionMetric": "metrics",
    "DepthMetric": "metrics",
    "NormalsMetric": "metrics",
    "ThresholdMetric": "metrics",
    "ClassificationHead": "decoders",
    "DenseDecoder": "decoders",
    "MultiTaskNet": "models",
    "build_model": "models",
    "paper_breakdown": "models",
    "stage_features": "backbones",
    "timm_backbone": "backbones",
    "fit": "train",
    "evaluate": "evaluation",
    "autocast": "precision",
    "resolve_device": "runtime",
    "seed_everything": "runtime",
    "Callback": "history",
    "HeadSimilarityRecorder": "history",
    "History": "history",
    "TensorBoardLogger": "tensorboard",
    "is_main_process": "distributed",
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
