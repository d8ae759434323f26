"""Backbones: the small course Swin (timm's own class) with its bundled checkpoint, or any timm model.

The course Swin is ``timm.models.swin_transformer.SwinTransformer`` built with ``COURSE_SWIN_CONFIG``
(2.7M parameters). For a (B, 3, 64, 64) input its four stages give (B, 32, 16, 16),
(B, 64, 8, 8), (B, 128, 4, 4) and (B, 256, 2, 2) feature maps.

Its pretrained weights live in ``data/course_swin.safetensors`` (fp16, backbone only) next to a card
``data/course_swin.json`` that records the config, how the weights were made and their sha256.
Create them with ``python -m mtlora_lite.pretrain``. Set the environment variable
``MTLORA_LITE_DATA`` to read (and by default write) them somewhere other than the repo's ``data/``.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import timm
import torch
from safetensors.torch import load_file, save_file
from timm.models.swin_transformer import SwinTransformer
from torch import Tensor, nn

COURSE_SWIN_CONFIG: dict[str, Any] = {
    "img_size": 64,
    "patch_size": 4,
    "embed_dim": 32,
    "depths": (2, 2, 4, 2),
    "num_heads": (1, 2, 4, 8),
    "window_size": 4,
    "mlp_ratio": 4.0,
    "drop_path_rate": 0.0,
    "num_classes": 0,
}
CHECKPOINT_NAME = "course_swin.safetensors"
CARD_NAME = "course_swin.json"
DATA_ENV_VAR = "MTLORA_LITE_DATA"


def data_dir() -> Path:
    """The folder holding bundled data: ``$MTLORA_LITE_DATA`` if set, else the repo's ``data/``."""
    env = os.environ.get(DATA_ENV_VAR)
    return Path(env) if env else Path(__file__).resolve().parents[1] / "data"


def build_course_swin(**overrides: Any) -> SwinTransformer:
    """A randomly initialised course Swin; ``overrides`` replace entries of ``COURSE_SWIN_CONFIG``."""
    return SwinTransformer(**{**COURSE_SWIN_CONFIG, **overrides})


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _jsonable_config(config: dict[str, Any]) -> dict[str, Any]:
    """Tuples -> lists, so a config compares equal to its JSON round trip."""
    return json.loads(json.dumps(config))


def save_course_checkpoint(
    model: nn.Module,
    out_dir: str | Path | None = None,
    card: dict[str, Any] | None = None,
    *,
    dtype: torch.dtype = torch.float16,
) -> Path:
    """Write ``model``'s weights (cast to ``dtype``) and a JSON card with config and sha256.

    ``card`` holds extra entries (training settings, metrics, ...). Returns the safetensors path.
    """
    out = Path(out_dir) if out_dir is not None else data_dir()
    out.mkdir(parents=True, exist_ok=True)
    weights = {
        k: (v.to(dtype) if v.is_floating_point() else v).detach().cpu().contiguous()
        for k, v in model.state_dict().items()
    }
    path = out / CHECKPOINT_NAME
    save_file(weights, str(path))
    full_card = {
        **(card or {}),
        "config": _jsonable_config(COURSE_SWIN_CONFIG),
        "dtype": str(dtype).removeprefix("torch."),
        "sha256": _sha256(path),
    }
    (out / CARD_NAME).write_text(json.dumps(full_card, indent=2) + "\n")
    return path


def load_course_card(folder: str | Path | None = None) -> dict[str, Any]:
    """Read ``course_swin.json`` (the checkpoint's card) from ``folder`` (default: ``data_dir()``)."""
    path = Path(folder or data_dir()) / CARD_NAME
    if not path.is_file():
        raise FileNotFoundError(
            f"No checkpoint card at {path}. Create the course checkpoint with "
            "`python -m mtlora_lite.pretrain`, or point MTLORA_LITE_DATA at the folder holding it."
        )
    return json.loads(path.read_text())


def _load_course_weights(model: nn.Module, folder: Path) -> None:
    path = folder / CHECKPOINT_NAME
    if not path.is_file():
        raise FileNotFoundError(
            f"Course checkpoint {path} not found. Create it with `python -m mtlora_lite.pretrain` "
            f"(about 10 min on a CPU), set {DATA_ENV_VAR} to the folder holding it, or use "
            "load_backbone('course', pretrained=False) for random weights."
        )
    card = load_course_card(folder)
    if card.get("config") != _jsonable_config(COURSE_SWIN_CONFIG):
        raise ValueError(
            f"{folder / CARD_NAME} describes config {card.get('config')}, but this package builds "
            f"{_jsonable_config(COURSE_SWIN_CONFIG)}. Re-create the checkpoint with "
            "`python -m mtlora_lite.pretrain`."
        )
    digest = _sha256(path)
    if digest != card.get("sha256"):
        raise ValueError(
            f"sha256 of {path} is {digest}, but its card says {card.get('sha256')}: the file is "
            "corrupt or was replaced. Restore it (git checkout data/) or re-create it with "
            "`python -m mtlora_lite.pretrain`."
        )
    state = {k: v.float() for k, v in load_file(str(path)).items()}
    model.load_state_dict(state, strict=True)


def load_backbone(
    name: str = "course",
    *,
    pretrained: bool = True,
    checkpoint_dir: str | Path | None = None,
    **timm_kwargs: Any,
) -> nn.Module:
    """Build a feature backbone (no classifier head).

    ``"course"``: the course Swin, loading the bundled checkpoint when ``pretrained`` (checked against
    its card's sha256 and config; read from ``checkpoint_dir`` or ``data_dir()``); ``timm_kwargs``
    override ``COURSE_SWIN_CONFIG`` entries. Any other name goes to
    ``timm.create_model(name, pretrained=pretrained, num_classes=0, **timm_kwargs)``; hub weights
    need internet, so use ``pretrained=False`` offline.
    """
    if name != "course":
        return timm.create_model(name, pretrained=pretrained, num_classes=0, **timm_kwargs)
    model = build_course_swin(**timm_kwargs)
    if pretrained:
        _load_course_weights(model, Path(checkpoint_dir or data_dir()))
    return model


def _feature_indices(model: nn.Module) -> list[int]:
    """Which blocks/stages ``stage_features`` returns: every stage if strides differ, else the last."""
    info = getattr(model, "feature_info", None)
    if not info or not hasattr(model, "forward_intermediates"):
        raise TypeError(
            f"{type(model).__name__} has no feature_info / forward_intermediates; use a timm "
            "Swin or ViT (e.g. load_backbone('course') or 'swin_tiny_patch4_window7_224')."
        )
    reductions = {f["reduction"] for f in info}
    return list(range(len(info))) if len(reductions) > 1 else [len(info) - 1]


def feature_channels(model: nn.Module) -> list[int]:
    """Channels of each map ``stage_features`` returns, e.g. [32, 64, 128, 256] for the course Swin."""
    return [model.feature_info[i]["num_chs"] for i in _feature_indices(model)]


def stage_features(model: nn.Module, x: Tensor) -> list[Tensor]:
    """Feature maps of a timm backbone, finest first, each (B, C_i, H_i, W_i).

    Hierarchical models (Swin) give one map per stage: (B, C_i, H / 2^(i+2), W / 2^(i+2)).
    Plain ViTs are single scale: one map from the last block, (B, C, H / patch, W / patch)
    (class token dropped, no final norm).
    """
    indices = _feature_indices(model)
    return model.forward_intermediates(x, indices=indices, intermediates_only=True)
