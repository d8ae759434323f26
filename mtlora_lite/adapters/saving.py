"""Save and load only what fine-tuning changed: adapter weights (+ any trainable extras), as safetensors.

The file holds the tensors and, in its metadata, each adapter's config. Loading checks both against
the model and refuses partial or mismatched loads with a message that says what differs.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, safe_open, save_file
from torch import Tensor, nn

from mtlora_lite.adapters.lora import adapter_layers

FORMAT = "mtlora_lite.adapters/1"


def adapter_state_dict(model: nn.Module, include_trainable: bool = True) -> dict[str, Tensor]:
    """Adapter parameters and buffers by full name, plus every other trainable parameter.

    With ``include_trainable`` (default) parameters outside adapters that have ``requires_grad``
    (task heads, norms you unfroze) are included, so the file restores the whole fine-tuned model
    on top of the same pretrained base.
    """
    state: dict[str, Tensor] = {}
    for path, adapter in adapter_layers(model).items():
        tensors = [*adapter.named_parameters(), *adapter.named_buffers()]
        for name, t in tensors:
            if not name.startswith("base_layer."):
                state[f"{path}.{name}"] = t.detach()
    if include_trainable:
        for name, p in model.named_parameters():
            if p.requires_grad and name not in state:
                state[name] = p.detach()
    return state


def _configs(model: nn.Module) -> dict[str, dict[str, object]]:
    return {path: a.adapter_config() for path, a in adapter_layers(model).items()}


def save_adapters(model: nn.Module, path: str | Path, include_trainable: bool = True) -> Path:
    """Write ``adapter_state_dict(model)`` and the adapter configs to a ``.safetensors`` file."""
    if any(a.merged for a in adapter_layers(model).values()):
        raise RuntimeError("adapters are merged into the base weights; unmerge_adapters() first")
    state = {
        k: v.contiguous().cpu() for k, v in adapter_state_dict(model, include_trainable).items()
    }
    if not state:
        raise ValueError("the model has no adapters and no trainable parameters to save")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"format": FORMAT, "adapters": json.dumps(_configs(model), sort_keys=True)}
    save_file(state, str(path), metadata=meta)
    return path


def load_adapters(model: nn.Module, path: str | Path) -> None:
    """Load a file written by ``save_adapters`` into a model injected the same way.

    Raises ``ValueError`` if the adapter configs, the tensor names or their shapes differ, and
    ``RuntimeError`` if the model's adapters are merged. Nothing is loaded unless everything fits.
    """
    if any(a.merged for a in adapter_layers(model).values()):
        raise RuntimeError("adapters are merged into the base weights; unmerge_adapters() first")
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    if meta.get("format") != FORMAT:
        raise ValueError(
            f"{path} is not an mtlora_lite adapter file (format {meta.get('format')!r})"
        )
    saved_cfg = json.loads(meta["adapters"])
    model_cfg = _configs(model)
    if saved_cfg != model_cfg:
        diff = sorted(
            k for k in saved_cfg.keys() | model_cfg.keys() if saved_cfg.get(k) != model_cfg.get(k)
        )
        raise ValueError(
            f"adapter configs differ at {len(diff)} layer(s), e.g. {diff[0]!r}: file has "
            f"{saved_cfg.get(diff[0])}, model has {model_cfg.get(diff[0])}. Inject the model with "
            "the same targets and hyper-parameters before loading."
        )
    saved = load_file(str(path))
    tensors = {**dict(model.named_parameters()), **dict(model.named_buffers())}
    missing = sorted(adapter_state_dict(model, include_trainable=False).keys() - saved.keys())
    unexpected = sorted(saved.keys() - tensors.keys())
    if missing or unexpected:
        raise ValueError(f"tensor names differ: missing {missing[:5]}, unexpected {unexpected[:5]}")
    bad = [k for k, v in saved.items() if v.shape != tensors[k].shape]
    if bad:
        raise ValueError(
            f"shape mismatch for {bad[0]!r}: file {tuple(saved[bad[0]].shape)}, model "
            f"{tuple(tensors[bad[0]].shape)}"
        )
    with torch.no_grad():
        for k, v in saved.items():
            tensors[k].copy_(v)
