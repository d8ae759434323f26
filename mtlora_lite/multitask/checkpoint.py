"""Training checkpoints: what ``fit`` needs to resume, in one safetensors file written atomically.

The file holds only what training changes (``adapter_state_dict``: the adapters, the parameters
that train and the buffers of the modules that own them, e.g. a decoder's BatchNorm statistics;
never the frozen backbone), the optimizer's per-parameter state, and the torch RNG
states as tensors; its metadata holds the epoch, step, schedule position and the History so far.

    save_checkpoint(path, model, optimizer, scheduler, progress)
    progress = load_checkpoint(path, model, optimizer, scheduler)   # None if there is no file
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file
from torch import nn

from mtlora_lite.adapters.atomic import atomic_path
from mtlora_lite.adapters.saving import adapter_state_dict

FORMAT = "mtlora_lite.checkpoint/1"
CHECKPOINT_NAME = "checkpoint.safetensors"


def save_checkpoint(
    path: str | Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    progress: Mapping[str, Any],
) -> Path:
    """Write model state, optimizer state, RNG states and ``progress`` (JSON-serialisable: epoch,
    step, History, ...) to ``path`` in one atomic step."""
    names = {id(p): n for n, p in model.named_parameters()}
    tensors = {f"model/{k}": v.detach() for k, v in adapter_state_dict(model).items()}
    for p, state in optimizer.state.items():
        for key, value in state.items():
            tensors[f"optim/{names[id(p)]}/{key}"] = torch.as_tensor(value).detach()
    tensors["rng/torch"] = torch.get_rng_state()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        tensors["rng/cuda"] = torch.cuda.get_rng_state()
    tensors = {k: v.contiguous().cpu() for k, v in tensors.items()}
    meta = {
        "format": FORMAT,
        "progress": json.dumps(dict(progress)),
        "scheduler": json.dumps(scheduler.state_dict()),
    }
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)
    return Path(path)


def load_checkpoint(
    path: str | Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
) -> dict[str, Any] | None:
    """Restore what ``save_checkpoint`` wrote into the same model / optimizer / scheduler and
    return its ``progress``; None if ``path`` does not exist. Raises ``ValueError`` (naming the
    file) if it is unreadable or was written for other trainable parameters."""
    path = Path(path)
    if not path.is_file():
        return None
    fix = f"delete {path} (or pass another checkpoint_dir, or resume=False) to start afresh"
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        saved = load_file(str(path))
    except (SafetensorError, OSError) as err:
        raise ValueError(f"checkpoint {path} cannot be read ({err}); {fix}") from err
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path} is not a training checkpoint of fit ({FORMAT}); {fix}")
    state = adapter_state_dict(model)
    ours = {k.removeprefix("model/"): v for k, v in saved.items() if k.startswith("model/")}
    both = ours.keys() & state.keys()
    wrong = sorted(
        (ours.keys() ^ state.keys()) | {k for k in both if ours[k].shape != state[k].shape}
    )
    if wrong:
        raise ValueError(
            f"checkpoint {path} was written for other trainable parameters ({len(wrong)} differ, "
            f"e.g. {wrong[0]!r}): same model, same trainable parts, or {fix}"
        )
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in ours.items():
            state[name].copy_(value)
        for key, value in saved.items():
            if key.startswith("optim/"):
                name, _, slot = key.removeprefix("optim/").rpartition("/")
                p = params[name]
                optimizer.state[p][slot] = value.to(p.device) if slot != "step" else value
    scheduler.load_state_dict(json.loads(meta["scheduler"]))  # keeps its own lr function
    for group, lr in zip(optimizer.param_groups, scheduler.get_last_lr(), strict=True):
        group["lr"] = lr
    torch.set_rng_state(saved["rng/torch"])
    if "rng/cuda" in saved and torch.cuda.is_available():
        torch.cuda.set_rng_state(saved["rng/cuda"])
    return json.loads(meta["progress"])
