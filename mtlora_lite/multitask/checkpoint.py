"""Training checkpoints: what ``fit`` needs to resume, in one safetensors file written atomically.

The file holds only what training changes (``adapter_state_dict``: the adapters, the parameters
that train and the buffers of the modules that own them, e.g. a decoder's BatchNorm statistics;
never the frozen backbone), the optimizer's per-parameter state, and the torch RNG states as
tensors. Its metadata holds, as JSON:

- ``progress``: the passes done and the History so far;
- ``settings``: every setting that shapes the run (lr, schedule, seed, precision, ...), and
  ``identity``: the frozen base's fingerprint and the data's identity (``multitask.resume``),
  which ``fit`` compares with its own before resuming;
- ``scheduler`` and ``scaler``: the schedule's position and the fp16 loss scale;
- ``sha256``: a checksum of all of the above and of every tensor's name, dtype, shape and bytes
  (``tensor_digest``, as adapter files have), so that changed bytes are found on load.

    save_checkpoint(path, model, optimizer, scheduler, scaler, progress, settings, identity)
    saved = read_checkpoint(path)       # None if there is no file; checks format and checksum
    restore_checkpoint(saved, model, optimizer, scheduler, scaler)    # after comparing settings
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import safe_open, save_file
from torch import Tensor, nn

from mtlora_lite.adapters.atomic import atomic_path
from mtlora_lite.adapters.fingerprint import tensor_digest
from mtlora_lite.adapters.saving import adapter_state_dict

FORMAT = "mtlora_lite.checkpoint/2"
CHECKPOINT_NAME = "checkpoint.safetensors"
_JSON_KEYS = ("progress", "settings", "identity", "scheduler", "scaler")


@dataclass
class Checkpoint:
    """A checkpoint file read back and verified: its ``path``, ``tensors`` and JSON ``meta``
    (``progress``, ``settings``, ``identity``, ``scheduler``, ``scaler``)."""

    path: Path
    tensors: dict[str, Tensor]
    meta: dict[str, Any]

    @property
    def progress(self) -> dict[str, Any]:
        return self.meta["progress"]

    @property
    def settings(self) -> dict[str, Any]:
        return self.meta["settings"]

    @property
    def identity(self) -> dict[str, Any]:
        return self.meta["identity"]

    def fix(self) -> str:
        """How to start afresh instead of resuming from this file."""
        return (
            f"pass another checkpoint_dir (or resume=False, or delete {self.path}) to start afresh"
        )


def _checksum(tensors: Mapping[str, Tensor], meta: Mapping[str, str]) -> str:
    header = json.dumps({k: meta[k] for k in _JSON_KEYS}, sort_keys=True)
    return tensor_digest(sorted(tensors.items()), header)


def save_checkpoint(
    path: str | Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler,
    progress: Mapping[str, Any],
    settings: Mapping[str, Any],
    identity: Mapping[str, Any],
) -> Path:
    """Write model state, optimizer state, RNG states, the schedule, the loss scale,
    ``progress``, ``settings`` and ``identity`` (JSON-serialisable) to ``path`` atomically."""
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
        "progress": json.dumps(dict(progress)),
        "settings": json.dumps(dict(settings), sort_keys=True),
        "identity": json.dumps(dict(identity), sort_keys=True),
        "scheduler": json.dumps(scheduler.state_dict()),
        "scaler": json.dumps(scaler.state_dict()),
    }
    meta.update(format=FORMAT, sha256=_checksum(tensors, meta))
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)
    return Path(path)


def read_checkpoint(path: str | Path) -> Checkpoint | None:
    """The checkpoint at ``path``, its format and checksum verified; None if there is no file.
    Raises ``ValueError`` naming the file (and how to start afresh) if it is unreadable, of
    another format or corrupt."""
    path = Path(path)
    if not path.is_file():
        return None
    fix = Checkpoint(path, {}, {}).fix()
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError) as err:
        raise ValueError(f"checkpoint {path} cannot be read ({err}); {fix}") from err
    if meta.get("format") != FORMAT:
        older = str(meta.get("format", "")).startswith("mtlora_lite.checkpoint/")
        what = (
            "was written by another version of mtlora_lite (without the settings and checksum "
            "that resuming checks)"
            if older
            else f"is not a training checkpoint of fit ({FORMAT})"
        )
        raise ValueError(f"{path} {what}; {fix}")
    if any(k not in meta for k in (*_JSON_KEYS, "sha256")) or _checksum(tensors, meta) != meta.get(
        "sha256"
    ):
        raise ValueError(
            f"the data of checkpoint {path} do not match its sha256 checksum: the file is corrupt "
            f"(changed bytes or a partial copy); {fix}"
        )
    return Checkpoint(path, tensors, {k: json.loads(meta[k]) for k in _JSON_KEYS})


def restore_checkpoint(
    saved: Checkpoint,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler,
) -> None:
    """Put a checkpoint's state into the same model / optimizer / scheduler / scaler. Raises
    ``ValueError`` before changing anything if it was written for other trainable parameters."""
    state = adapter_state_dict(model)
    tensors = saved.tensors
    ours = {k.removeprefix("model/"): v for k, v in tensors.items() if k.startswith("model/")}
    both = ours.keys() & state.keys()
    wrong = sorted(
        (ours.keys() ^ state.keys()) | {k for k in both if ours[k].shape != state[k].shape}
    )
    if wrong:
        raise ValueError(
            f"checkpoint {saved.path} was written for other trainable parameters ({len(wrong)} "
            f"differ, e.g. {wrong[0]!r}): same model, same trainable parts, or {saved.fix()}"
        )
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in ours.items():
            state[name].copy_(value)
        for key, value in tensors.items():
            if key.startswith("optim/"):
                name, _, slot = key.removeprefix("optim/").rpartition("/")
                p = params[name]
                optimizer.state[p][slot] = value.to(p.device) if slot != "step" else value
    scheduler.load_state_dict(saved.meta["scheduler"])  # keeps its own lr function
    for group, lr in zip(optimizer.param_groups, scheduler.get_last_lr(), strict=True):
        group["lr"] = lr
    if scaler.is_enabled():
        scaler.load_state_dict(saved.meta["scaler"])
    torch.set_rng_state(tensors["rng/torch"])
    if "rng/cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["rng/cuda"])
