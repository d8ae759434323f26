"""Multi-task models on a timm backbone: MTLoRA and its baselines behind one builder, and
``TaskHeads`` (one backbone, one linear head per task) for image-level tasks.

    model = build_model(backbone, tasks, "mtlora", shared_rank=16)   # or "full", "decoders", ...
    preds = model(images)                       # {task: (B, C_t, H, W) dense, or (B, C_t) labels}
    print(trainable_breakdown(model))           # decoders / heads / ta_lora / ts_lora / ... rows

Methods (every model gets its own deep copy of the backbone, so models never share weights):
    "full"      multi-task full fine-tuning: shared backbone + decoders all trainable
                (single-task fine-tuning: "full" with one task, one model per task)
    "decoders"  frozen backbone, decoders only
    "shared_lora"  one shared LoRA: MTLoRA without TS-LoRA, same extras (task-agnostic LoRA on
                the blocks' qkv / proj / fc1 / fc2)
    "mtlora"    TA-LoRA + TS-LoRA (``MTLoRAConfig`` options as keyword arguments): a timm Swin

The first three work on any timm backbone with multi-scale features (``FeatureEncoder``: Swin,
ViT, ConvNeXt, ResNet, ...; "shared_lora" needs transformer blocks); MTLoRA's task streams run
through timm's Swin blocks (``SwinTaskEncoder``). timm's classifier is removed and its final norm
(unused by the dense features, absent from the official code) stays frozen, so counts match the
paper.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import timm
import torch
from timm.models.swin_transformer import SwinTransformer
from torch import Tensor, nn

from mtlora_lite.adapters.base import make_config
from mtlora_lite.adapters.breakdown import Breakdown, trainable_breakdown
from mtlora_lite.adapters.freezing import mark_only_adapters_trainable
from mtlora_lite.adapters.mtlora import MTLoRAConfig, MTLoRALinear
from mtlora_lite.adapters.swin import SwinTaskEncoder, inject_mtlora, mark_mtlora_trainable
from mtlora_lite.adapters.targets import (
    TIMM_TARGETS,
    Targets,
    inject_adapters,
    linear_names,
    name_matches,
)
from mtlora_lite.multitask.decoders import DenseDecoder, build_decoder
from mtlora_lite.multitask.encoders import FeatureEncoder, check_images
from mtlora_lite.multitask.pascal.tasks import pascal_tasks
from mtlora_lite.multitask.tasks import TaskLike

Method = Literal["full", "decoders", "shared_lora", "mtlora"]
METHODS: tuple[str, ...] = ("full", "decoders", "shared_lora", "mtlora")


class MultiTaskNet(nn.Module):
    """Encoder (``FeatureEncoder``, or ``SwinTaskEncoder`` for MTLoRA) + one decoder per task:
    images (B, 3, H, W) -> {task: prediction}.

    Dense tasks give (B, C_t, H, W) at input resolution, image-level tasks (B, C_t).
    """

    def __init__(
        self,
        encoder: SwinTaskEncoder | FeatureEncoder,
        decoders: Mapping[str, nn.Module],
        method: str = "custom",
    ) -> None:
        super().__init__()
        if list(decoders) != encoder.tasks:
            raise ValueError(
                f"decoders {list(decoders)} must match the encoder's tasks {encoder.tasks}"
            )
        self.encoder, self.decoders, self.method = encoder, nn.ModuleDict(decoders), method

    @property
    def tasks(self) -> list[str]:
        return self.encoder.tasks

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        """images (B, 3, H, W), float and normalised -> {task: prediction} (class docstring)."""
        check_images(images, self.encoder.backbone)
        feats = self.encoder(images)
        size = images.shape[-2:]
        return {task: self.decoders[task](feats[task], size) for task in self.tasks}

    def breakdown_groups(self) -> dict[str, Targets]:
        """Rows for ``trainable_breakdown``: dense decoders, classification heads, merge reductions.

        Adapters report their own rows (ta_lora, ts_lora, merge_lora).
        """
        dense = [t for t in self.tasks if isinstance(self.decoders[t], DenseDecoder)]
        groups: dict[str, Targets] = {
            "decoders": [f"decoders.{t}" for t in dense],
            "heads": [f"decoders.{t}" for t in self.tasks if t not in dense],
            "merge reductions": "downsample.reduction",
        }
        return {g: targets for g, targets in groups.items() if targets}


def build_model(
    backbone: nn.Module,
    tasks: Sequence[TaskLike] | Mapping[str, TaskLike],
    method: Method = "mtlora",
    *,
    features: Literal["merged", "stage"] | None = None,
    decoder_channels: Sequence[int] | None = None,
    config: MTLoRAConfig | None = None,
    **options: Any,
) -> MultiTaskNet:
    """A ``MultiTaskNet`` for ``tasks`` on a deep copy of a timm ``backbone``.

    Args:
        backbone: a timm model with multi-scale features (left untouched; the model gets a
            copy): a ``SwinTransformer`` for every method, any other (ViT, ConvNeXt, ResNet, a
            ``features_only`` model, ...) for "full", "decoders" and "shared_lora".
        tasks: objects with ``.name``, ``.out_channels`` and ``.dense`` (e.g. ``Task``s, a dict
            of them by name, or a list).
        method: "full", "decoders", "shared_lora" or "mtlora" (module docstring).
        features: "merged" (a Swin's default, as the official decoders read it) or "stage"
            (every other backbone's); see ``SwinTaskEncoder``.
        decoder_channels: 1x1 projection widths of the dense decoders (default 18, 36, 72, ...).
        config, options: ``MTLoRAConfig`` and/or its fields (``shared_rank=32``, ...) for
            "shared_lora" and "mtlora"; options override config fields.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {METHODS}")
    tasks = list(tasks.values()) if isinstance(tasks, Mapping) else list(tasks)
    if method not in ("shared_lora", "mtlora") and (options or config is not None):
        raise TypeError(
            f"method {method!r} takes no MTLoRA options, got {sorted(options) or 'config'}"
        )
    swin = isinstance(backbone, SwinTransformer)
    if method == "mtlora" and not swin:
        raise TypeError(
            f"method 'mtlora' runs MTLoRA's task-specific streams through timm's Swin blocks "
            f"(shifted-window attention, patch merging), so it needs a timm SwinTransformer; got "
            f"{type(backbone).__name__}. On this backbone use 'full', 'decoders' or "
            "'shared_lora' (task-agnostic LoRA without the task streams)."
        )
    model = copy.deepcopy(backbone)
    if hasattr(model, "reset_classifier"):
        model.reset_classifier(0)
    names = [t.name for t in tasks]
    features = features or ("merged" if swin else "stage")
    if method == "mtlora":
        encoder: SwinTaskEncoder | FeatureEncoder = SwinTaskEncoder(model, names, features)
    else:
        encoder = FeatureEncoder(model, names, features)  # checks the backbone and the names
    if method in ("shared_lora", "mtlora"):
        cfg = make_config(MTLoRAConfig, config, **options)
        if method == "shared_lora":
            if cfg.task_stages:
                raise ValueError(
                    "method 'shared_lora' has no TS-LoRA; use 'mtlora' to set task_stages"
                )
            cfg = dataclasses.replace(cfg, task_stages=())
        if swin:
            inject_mtlora(model, encoder.tasks, cfg)
            mark_mtlora_trainable(model, cfg)
        else:
            _inject_shared_lora(model, cfg)
    else:
        model.requires_grad_(method == "full")
    for unused in ("norm", "head"):  # the final norm and what reset_classifier left of the head
        if isinstance(getattr(model, unused, None), nn.Module):
            getattr(model, unused).requires_grad_(False)
    device = next(model.parameters()).device
    decoders = {
        t.name: build_decoder(t, encoder.channels, decoder_channels).to(device) for t in tasks
    }
    return MultiTaskNet(encoder, decoders, method)


def _inject_shared_lora(model: nn.Module, cfg: MTLoRAConfig) -> None:
    """MTLoRA's task-agnostic LoRA on a backbone other than a Swin: on the qkv / proj / fc1 / fc2
    Linear layers of its transformer blocks, with the config's scale, dropout and extras."""
    if not isinstance(cfg.shared_rank, int):
        raise ValueError(
            f"shared_rank={cfg.shared_rank}: ranks per stage need a Swin; give one int"
        )
    names = linear_names(model)
    targets = [t for t in TIMM_TARGETS if any(name_matches(n, t) for n in names)]
    if not targets:
        raise ValueError(
            f"method 'shared_lora' adapts the Linear layers {list(TIMM_TARGETS)} of transformer "
            f"blocks; {type(model).__name__} has none of them: use 'full' or 'decoders'"
        )
    inject_adapters(model, targets, lambda lin: MTLoRALinear(lin, cfg.shared_rank, None, cfg))
    extras: list[str | type[nn.Module]] = []
    if cfg.train_norms and any(isinstance(m, nn.LayerNorm) for m in model.modules()):
        extras.append(nn.LayerNorm)
    if cfg.train_patch_embed and hasattr(model, "patch_embed"):
        extras.append("patch_embed")
    mark_only_adapters_trainable(model, extra=extras)


class TaskHeads(nn.Module):
    """One backbone, one linear head per image-level task: images -> {task: logits (B, C_t)}.

    Args:
        backbone: maps images to pooled features (B, D), e.g. a timm model built with
            ``num_classes=0``; kept as is (inject adapters into it before or after).
        tasks: image-level tasks (``.name``, ``.out_channels``; not dense), a dict or a list.
        in_features: D; default ``backbone.num_features`` (timm's).

    For dense tasks, or several scales of features, use ``build_model``.
    """

    def __init__(
        self,
        backbone: nn.Module,
        tasks: Sequence[TaskLike] | Mapping[str, TaskLike],
        in_features: int | None = None,
    ) -> None:
        super().__init__()
        tasks = list(tasks.values()) if isinstance(tasks, Mapping) else list(tasks)
        dense = [t.name for t in tasks if t.dense]
        if dense:
            raise ValueError(
                f"TaskHeads gives one label per image, but tasks {dense} are dense: build their "
                "model with build_model(backbone, tasks, ...), whose decoders give maps"
            )
        d = in_features or getattr(backbone, "num_features", None)
        if not isinstance(d, int):
            raise ValueError(
                f"{type(backbone).__name__} has no num_features: pass in_features, the width of "
                "its pooled features (B, D)"
            )
        self.backbone = backbone
        self.heads = nn.ModuleDict({t.name: nn.Linear(d, t.out_channels) for t in tasks})

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        """images (B, 3, H, W) -> {task: logits (B, C_t)}."""
        features = self.backbone(images)  # (B, D)
        return {name: head(features) for name, head in self.heads.items()}

    def breakdown_groups(self) -> dict[str, Targets]:
        """The heads' row for ``trainable_breakdown``."""
        return {"heads": "heads"}


def paper_breakdown(method: Method = "mtlora", device: str = "meta", **options: Any) -> Breakdown:
    """Exact trainable-parameter breakdown at paper scale, without weights or training.

    Swin-T (``swin_tiny_patch4_window7_224``, pretrained=False) at 448 x 448 with the paper's
    PASCAL-Context tasks (21 / 7 / 1 / 3 output channels) and official decoders. MTLoRA with
    ``shared_rank`` 16 / 32 / 64 (task rank 4) gives 4.95M / 6.08M / 8.34M trainable, as in the
    paper. Built on the "meta" device by default: instant, and nothing can be run.
    """
    swin = timm.create_model(
        "swin_tiny_patch4_window7_224", pretrained=False, img_size=448, num_classes=0, device=device
    )
    tasks = pascal_tasks()  # semseg 21, human_parts 7, sal 1, normals 3 output channels
    with torch.device(device):
        model = build_model(swin, tasks, method, **options)
    return trainable_breakdown(model)
