"""Multi-task models on a timm Swin: MTLoRA and its baselines behind one builder.

    model = build_model(backbone, tasks, "mtlora", shared_rank=16)   # or "full", "decoders", ...
    preds = model(images)                       # {task: (B, C_t, H, W) dense, or (B, C_t) labels}
    print(trainable_breakdown(model))           # decoders / heads / ta_lora / ts_lora / ... rows

Methods (every model gets its own deep copy of the backbone, so models never share weights):
    "full"      multi-task full fine-tuning: shared backbone + decoders all trainable
                (single-task fine-tuning: "full" with one task, one model per task)
    "decoders"  frozen backbone, decoders only
    "shared_lora"  one shared LoRA: MTLoRA without TS-LoRA (``task_stages=()``), same extras
    "mtlora"    TA-LoRA + TS-LoRA (``MTLoRAConfig`` options as keyword arguments)

timm's classifier is removed and its final norm (unused by the dense features, absent from the
official code) stays frozen, so counts match the paper.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import timm
import torch
from torch import Tensor, nn

from mtlora_lite.adapters.base import make_config
from mtlora_lite.adapters.breakdown import Breakdown, trainable_breakdown
from mtlora_lite.adapters.mtlora import MTLoRAConfig
from mtlora_lite.adapters.swin import (
    SwinTaskEncoder,
    check_swin,
    inject_mtlora,
    mark_mtlora_trainable,
)
from mtlora_lite.adapters.targets import Targets
from mtlora_lite.multitask.decoders import DenseDecoder, build_decoder
from mtlora_lite.multitask.pascal.tasks import pascal_tasks
from mtlora_lite.multitask.tasks import TaskLike

Method = Literal["full", "decoders", "shared_lora", "mtlora"]
METHODS: tuple[str, ...] = ("full", "decoders", "shared_lora", "mtlora")


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


def check_images(images: object, swin: nn.Module) -> None:
    """Raise ``ValueError`` (``TypeError`` for a non-tensor) with the fix unless ``images`` is a
    non-empty float batch (B, C, H, W) with the channels and a size the timm Swin accepts.

    Shape and dtype checks only, so it costs nothing next to the forward pass.
    """
    if not isinstance(images, Tensor):
        raise TypeError(f"images must be a torch.Tensor (B, 3, H, W), got {type(images).__name__}")
    shape = tuple(images.shape)
    if images.ndim == 3:
        raise ValueError(
            f"images must be a batch (B, C, H, W), got one image of shape {shape}; add the batch "
            "dimension with images.unsqueeze(0) (or images[None])"
        )
    if images.ndim != 4:
        raise ValueError(f"images must be a batch (B, C, H, W), got shape {shape}")
    if not images.is_floating_point():
        raise ValueError(
            f"images must be floating point and normalised, got dtype {images.dtype}; uint8 "
            "scenes (course.scenes.generate_scenes) go through mtlora_lite.course.data.normalize, "
            "other images e.g. images.float() / 255 then your mean / std"
        )
    if shape[0] == 0:
        raise ValueError(f"images is an empty batch (shape {shape}); pass at least one image")
    embed = swin.patch_embed
    channels = embed.proj.in_channels
    if shape[1] != channels:
        hint = (
            "; channels-last images (B, H, W, C) become (B, C, H, W) with "
            "images.permute(0, 3, 1, 2)"
            if shape[-1] == channels
            else ""
        )
        raise ValueError(
            f"images have {shape[1]} channels (shape {shape}), the backbone expects "
            f"{channels}{hint}"
        )
    size, patch = shape[-2:], tuple(embed.patch_size)
    if embed.img_size is not None and embed.strict_img_size and size != tuple(embed.img_size):
        raise ValueError(
            f"images are {size[0]} x {size[1]}, but the backbone was built for "
            f"{embed.img_size[0]} x {embed.img_size[1]}: resize them, or make the Swin accept "
            "other sizes: build it with dynamic_img_size=True (e.g. load_backbone(..., "
            "dynamic_img_size=True)) or call its set_input_size(img_size=(H, W)) before "
            "build_model"
        )
    if not getattr(embed, "dynamic_img_pad", False) and (size[0] % patch[0] or size[1] % patch[1]):
        raise ValueError(
            f"images are {size[0]} x {size[1]}, not a multiple of the patch size {patch}: "
            "resize or pad them to a multiple of it"
        )


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
        tasks: objects with ``.name``, ``.out_channels`` and ``.dense`` (e.g. ``Task``s, a dict
            of them by name, or a list).
        method: "full", "decoders", "shared_lora" or "mtlora" (module docstring).
        features: "merged" (official) or "stage" feature maps (see ``SwinTaskEncoder``).
        decoder_channels: 1x1 projection widths of the dense decoders (default 18, 36, 72, 144).
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
    swin = check_swin(copy.deepcopy(backbone))
    swin.reset_classifier(0)
    encoder = SwinTaskEncoder(swin, [t.name for t in tasks], features)  # checks the names
    if method in ("shared_lora", "mtlora"):
        cfg = make_config(MTLoRAConfig, config, **options)
        if method == "shared_lora":
            if cfg.task_stages:
                raise ValueError(
                    "method 'shared_lora' has no TS-LoRA; use 'mtlora' to set task_stages"
                )
            cfg = dataclasses.replace(cfg, task_stages=())
        inject_mtlora(swin, encoder.tasks, cfg)
        mark_mtlora_trainable(swin, cfg)
    else:
        swin.requires_grad_(method == "full")
    swin.norm.requires_grad_(False)
    device = next(swin.parameters()).device
    decoders = {
        t.name: build_decoder(t, encoder.channels, decoder_channels).to(device) for t in tasks
    }
    return MultiTaskNet(encoder, decoders, method)


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
