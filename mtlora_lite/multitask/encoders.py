"""Encoders of multi-task models: images (B, 3, H, W) -> {task: [(B, C_i, H_i, W_i)]}, finest first.

``FeatureEncoder`` gives every task the same multi-scale maps of any timm backbone
(``backbones.stage_features``: Swin, ViT, ConvNeXt, ResNet, a ``features_only`` model, ...);
``adapters.swin.SwinTaskEncoder`` gives each task its own maps where MTLoRA's task-specific
streams run (a timm Swin). Both keep the backbone as ``.backbone`` and report ``.tasks`` and
``.channels``, which is all ``MultiTaskNet`` and its decoders need. ``check_images`` says what is
wrong with a batch before the backbone fails on it.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from mtlora_lite.adapters.swin import check_task_names
from mtlora_lite.multitask.backbones import feature_channels, stage_features


class FeatureEncoder(nn.Module):
    """The multi-scale maps of a timm backbone, the same for every task.

    Args:
        backbone: a timm model with multi-scale features (``stage_features``), kept as is.
        tasks: the task names, in order.
        features: "stage" (any backbone) or "merged" (a timm Swin: each stage's maps after the
            next stage's patch merging, as MTLoRA's decoders read them).
    """

    def __init__(self, backbone: nn.Module, tasks: Sequence[str], features: str = "stage") -> None:
        super().__init__()
        self.channels = feature_channels(backbone, features)  # checks backbone and features
        self.backbone, self.features, self.tasks = backbone, features, check_task_names(tasks)

    def forward(self, images: Tensor) -> dict[str, list[Tensor]]:
        """images (B, 3, H, W) -> {task: [(B, C_i, H_i, W_i)]}: one list, shared by the tasks."""
        maps = stage_features(self.backbone, images, self.features)
        return {task: maps for task in self.tasks}


def _in_channels(backbone: nn.Module) -> int | None:
    """The channels the backbone's first convolution reads (None without one)."""
    first = next((m for m in backbone.modules() if isinstance(m, nn.Conv2d)), None)
    return None if first is None else first.in_channels


def check_images(images: object, backbone: nn.Module) -> None:
    """Raise ``ValueError`` (``TypeError`` for a non-tensor) with the fix unless ``images`` is a
    non-empty float batch (B, C, H, W) with the channels the backbone reads and, for a
    patch-embedding backbone (Swin, ViT), a size it accepts. Shape and dtype checks only."""
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
    channels = _in_channels(backbone)
    if channels is not None and shape[1] != channels:
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
    embed = getattr(backbone, "patch_embed", None)
    if embed is None or not hasattr(embed, "patch_size"):
        return
    size, patch = shape[-2:], tuple(embed.patch_size)
    if embed.img_size is not None and embed.strict_img_size and size != tuple(embed.img_size):
        raise ValueError(
            f"images are {size[0]} x {size[1]}, but the backbone was built for "
            f"{embed.img_size[0]} x {embed.img_size[1]}: resize them, or make the backbone accept "
            "other sizes: build it with dynamic_img_size=True (e.g. load_backbone(..., "
            "dynamic_img_size=True)) or call its set_input_size(img_size=(H, W)) before "
            "build_model"
        )
    if not getattr(embed, "dynamic_img_pad", False) and (size[0] % patch[0] or size[1] % patch[1]):
        raise ValueError(
            f"images are {size[0]} x {size[1]}, not a multiple of the patch size {patch}: "
            "resize or pad them to a multiple of it"
        )
