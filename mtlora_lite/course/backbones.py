"""The course backbone: a small Swin (timm's own class) with its bundled checkpoint.

The course Swin is ``timm.models.swin_transformer.SwinTransformer`` built with ``COURSE_SWIN_CONFIG``
(2.7M parameters). For a (B, 3, 64, 64) input its four stages give (B, 32, 16, 16),
(B, 64, 8, 8), (B, 128, 4, 4) and (B, 256, 2, 2) feature maps.

Its pretrained weights ship inside the package, ``mtlora_lite/course/data/course_swin.safetensors``
(fp16, backbone only), next to a card ``course_swin.json`` that records the config, how the weights
were made and their sha256; they are found through ``importlib.resources``, so a plain
``pip install`` has them. Create them with ``python -m mtlora_lite.course.pretrain``. Set the
environment variable ``MTLORA_LITE_DATA`` to read (and by default write) them somewhere else.
"""

from __future__ import annotations

import hashlib
import json
import os
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from timm.models.swin_transformer import SwinTransformer
from torch import nn

from mtlora_lite.adapters.atomic import atomic_path, atomic_write
from mtlora_lite.multitask.backbones import timm_backbone

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
    """The folder holding the course checkpoint: ``$MTLORA_LITE_DATA`` if set, else the package's
    own ``mtlora_lite/course/data`` (wherever the package is installed)."""
    env = os.environ.get(DATA_ENV_VAR)
    return Path(env) if env else Path(str(resources.files("mtlora_lite.course") / "data"))


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
    with atomic_path(path) as tmp:
        save_file(weights, str(tmp))
        digest = _sha256(tmp)
    full_card = {
        **(card or {}),
        "config": _jsonable_config(COURSE_SWIN_CONFIG),
        "dtype": str(dtype).removeprefix("torch."),
        "sha256": digest,
    }
    atomic_write(out / CARD_NAME, json.dumps(full_card, indent=2) + "\n")
    return path


def load_course_card(folder: str | Path | None = None) -> dict[str, Any]:
    """Read ``course_swin.json`` (the checkpoint's card) from ``folder`` (default: ``data_dir()``)."""
    path = Path(folder or data_dir()) / CARD_NAME
    if not path.is_file():
        raise FileNotFoundError(
            f"No checkpoint card at {path}. Create the course checkpoint with "
            "`python -m mtlora_lite.course.pretrain`, or point MTLORA_LITE_DATA at the folder holding it."
        )
    try:
        card = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path} is not a readable checkpoint card ({err}); {_RECREATE}") from err
    if not isinstance(card, dict):
        raise ValueError(f"{path} is not a checkpoint card (a JSON object); {_RECREATE}")
    return card


_RECREATE = (
    "reinstall the package (or git checkout mtlora_lite/course/data) or re-create the checkpoint "
    "with `python -m mtlora_lite.course.pretrain`"
)


def _load_course_weights(model: nn.Module, folder: Path) -> None:
    path = folder / CHECKPOINT_NAME
    if not path.is_file():
        raise FileNotFoundError(
            f"Course checkpoint {path} not found. Create it with `python -m mtlora_lite.course.pretrain` "
            f"(about 10 min on a CPU), set {DATA_ENV_VAR} to the folder holding it, or use "
            "load_backbone('course', pretrained=False) for random weights."
        )
    card = load_course_card(folder)
    if card.get("config") != _jsonable_config(COURSE_SWIN_CONFIG):
        raise ValueError(
            f"{folder / CARD_NAME} describes config {card.get('config')}, but this package builds "
            f"{_jsonable_config(COURSE_SWIN_CONFIG)}. Re-create the checkpoint with "
            "`python -m mtlora_lite.course.pretrain`."
        )
    expected = card.get("sha256")
    if not isinstance(expected, str) or not expected:
        raise ValueError(
            f"the card {folder / CARD_NAME} has no sha256 entry, so {path} cannot be checked; "
            f"{_RECREATE} (it writes the card with the checksum)."
        )
    digest = _sha256(path)
    if digest != expected:
        raise ValueError(
            f"sha256 of {path} is {digest}, but its card says {expected}: the file is corrupt or "
            f"was replaced; {_RECREATE}."
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
    override ``COURSE_SWIN_CONFIG`` entries. Any other name goes to ``timm_backbone``
    (``timm.create_model(name, pretrained=pretrained, num_classes=0, **timm_kwargs)``); hub
    weights need internet, so use ``pretrained=False`` offline.
    """
    if name != "course":
        return timm_backbone(name, pretrained=pretrained, **timm_kwargs)
    model = build_course_swin(**timm_kwargs)
    if pretrained:
        _load_course_weights(model, Path(checkpoint_dir or data_dir()))
    return model
