"""Multi-task models on a timm Swin: MTLoRA and its baselines behind one builder.

    model = build_model(backbone, tasks, "mtlora", shared_rank=16)   # or "full", "decoders", "lora"
    preds = model(images)                       # {task: (B, C_t, H, W) dense, or (B, C_t) labels}
    print(trainable_breakdown(model))           # decoders / heads / ta_lora / ts_lora / ... rows

Methods (every model gets its own deep copy of the backbone, so models never share weights):
    "full"      multi-task full fine-tuning: shared backbone + decoders all trainable
                (single-task fine-tuning: "full" with one task, one model per task)
    "decoders"  frozen backbone, decoders only
    "lora"      shared LoRA only: MTLoRA without TS-LoRA (``task_stages=()``), same extras
    "mtlora"    TA-LoRA + TS-LoRA (``MTLoRAConfig`` options as keyword arguments)

timm's classifier is removed and its final norm (unused by the dense features, absent from the
official code) stays frozen, so counts match the paper.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any, Literal, Protocol

import timm
import torch
from torch import Tensor, nn

from mtlora_lite.analysis import Breakdown, trainable_breakdown
from mtlora_lite.decoders import DenseDecoder, build_decoder
from mtlora_lite.lora import Targets
from mtlora_lite.mtlora import (
    MTLoRAConfig,
    check_swin,
    check_task_names,
    inject_mtlora,
    mark_mtlora_trainable,
    task_streams,
    ts_layers,
)

Method = Literal["full", "decoders", "lora", "mtlora"]
METHODS: tuple[str, ...] = ("full", "decoders", "lora", "mtlora")
# PASCAL-Context as in the paper: semantic segmentation, human parts, saliency, surface normals.
PAPER_TASKS: dict[str, int] = {"semseg": 21, "human_parts": 7, "sal": 1, "normals": 3}


class TaskLike(Protocol):
    """What the builder needs from a task (``mtlora_lite.tasks.Task`` satisfies it)."""

    name: str
    out_channels: int
    dense: bool


class SwinTaskEncoder(nn.Module):
    """Multi-scale features of a timm Swin, per task: (B, 3, H, W) -> {task: [(B, C_i, H_i, W_i)]}.

    Stages whose last block holds TS-LoRA give each task its own features (``task_streams``); the
    other stages, and a Swin without TS-LoRA (full fine-tuning, frozen, plain LoRA), give every
    task the same shared tensors. The next stage always continues from the shared stream.

    features="merged" (official): stage i's features pass through stage i + 1's patch merging (the
        shared weights; the last stage as is): Swin-T gives 192 / 384 / 768 / 768 channels at
        strides 8 / 16 / 32 / 32, the course Swin 64 / 128 / 256 / 256.
    features="stage": the stage outputs as they are (Swin-T 96 / 192 / 384 / 768, strides 4 ... 32).
    """

    def __init__(
        self, swin: nn.Module, tasks: Sequence[str], features: Literal["merged", "stage"] = "merged"
    ) -> None:
        super().__init__()
        if features not in ("merged", "stage"):
            raise ValueError(f"features must be 'merged' or 'stage', got {features!r}")
        self.backbone, self.features = check_swin(swin), features
        self.tasks = check_task_names(tasks)
        self.task_stages: list[int] = []
        for i, stage in enumerate(swin.layers):
            layers = ts_layers(stage.blocks[-1])
            if layers is None:
                continue
            if any(list(m.tasks) != self.tasks for m in layers):
                raise ValueError(
                    f"stage {i} has TS-LoRA for tasks {list(layers[0].tasks)}, but the encoder was "
                    f"given {self.tasks}; use the same names in the same order"
                )
            self.task_stages.append(i)

    @property
    def channels(self) -> list[int]:
        """Channels of each feature map, finest first."""
        chs = [info["num_chs"] for info in self.backbone.feature_info]
        return chs[1:] + chs[-1:] if self.features == "merged" else chs

    def forward(self, images: Tensor) -> dict[str, list[Tensor]]:
        x = self.backbone.patch_embed(images)  # (B, H/4, W/4, C), channels last
        shared: list[Tensor] = []  # per stage (B, h, w, c)
        streams: list[Tensor | None] = []  # per stage (T, B, h, w, c), None where shared
        for i, stage in enumerate(self.backbone.layers):
            x = stage.downsample(x)
            if i > 0 and self.features == "merged":  # stage i - 1's features, merged like x
                shared[-1], xt = x, streams[-1]
                if xt is not None:
                    streams[-1] = stage.downsample(xt.flatten(0, 1)).unflatten(0, xt.shape[:2])
            for block in stage.blocks[:-1]:
                x = block(x)
            if i in self.task_stages:
                x, xt = task_streams(stage.blocks[-1], x)
            else:
                x, xt = stage.blocks[-1](x), None
            shared.append(x)
            streams.append(xt)
        nchw = [s.permute(0, 3, 1, 2) for s in shared]  # views, one list for all tasks
        return {
            task: [
                s if t is None else t[k].permute(0, 3, 1, 2)
                for s, t in zip(nchw, streams, strict=True)
            ]
            for k, task in enumerate(self.tasks)
        }


class MultiTaskNet(nn.Module):
    """Encoder + one decoder per task: images (B, 3, H, W) -> {task: prediction}.

    Dense tasks give (B, C_t, H, W) at input resolution, image-level tasks (B, C_t).
    """

    def __init__(
        self, encoder: SwinTaskEncoder, decoders: Mapping[str, nn.Module], method: str = "custom"
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
    features: Literal["merged", "stage"] = "merged",
    decoder_channels: Sequence[int] | None = None,
    config: MTLoRAConfig | None = None,
    **options: Any,
) -> MultiTaskNet:
    """A ``MultiTaskNet`` for ``tasks`` on a deep copy of a timm Swin ``backbone``.

    Args:
        backbone: a timm ``SwinTransformer`` (left untouched; the model gets a copy).
        tasks: objects with ``.name``, ``.out_channels`` and ``.dense`` (e.g. ``build_tasks(...)``,
            a dict by name, or a list).
        method: "full", "decoders", "lora" or "mtlora" (module docstring).
        features: "merged" (official) or "stage" feature maps (see ``SwinTaskEncoder``).
        decoder_channels: 1x1 projection widths of the dense decoders (default 18, 36, 72, 144).
        config, options: ``MTLoRAConfig`` and/or its fields (``shared_rank=32``, ...) for "lora"
            and "mtlora"; options override config fields.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {METHODS}")
    tasks = list(tasks.values()) if isinstance(tasks, Mapping) else list(tasks)
    names = [t.name for t in tasks]
    swin = check_swin(copy.deepcopy(backbone))
    swin.reset_classifier(0)
    if method in ("lora", "mtlora"):
        cfg = dataclasses.replace(config or MTLoRAConfig(), **options)
        if method == "lora":
            if cfg.task_stages:
                raise ValueError("method 'lora' has no TS-LoRA; use 'mtlora' to set task_stages")
            cfg = dataclasses.replace(cfg, task_stages=())
        inject_mtlora(swin, names, cfg)
        mark_mtlora_trainable(swin, cfg)
    elif options or config is not None:
        raise TypeError(
            f"method {method!r} takes no MTLoRA options, got {sorted(options) or 'config'}"
        )
    else:
        swin.requires_grad_(method == "full")
    swin.norm.requires_grad_(False)
    encoder = SwinTaskEncoder(swin, names, features)
    device = next(swin.parameters()).device
    decoders = {
        t.name: build_decoder(t, encoder.channels, decoder_channels).to(device) for t in tasks
    }
    return MultiTaskNet(encoder, decoders, method)


@dataclasses.dataclass
class _Task:
    name: str
    out_channels: int
    dense: bool = True


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
    tasks = [_Task(name, c) for name, c in PAPER_TASKS.items()]
    with torch.device(device):
        model = build_model(swin, tasks, method, **options)
    return trainable_breakdown(model)
