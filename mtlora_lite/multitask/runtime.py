"""The runtime of a run: which device, which seeds (the precision: ``multitask.precision``).

    device = resolve_device("auto")      # cuda, then mps, then cpu
    seed_everything(0)                   # Python, NumPy and torch

``fit`` and ``evaluate`` use them; so can a training loop of your own.
"""

from __future__ import annotations

import numbers
import random

import numpy as np
import torch


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` -> cuda if available, then mps, then cpu; anything else -> ``torch.device(device)``
    after checking that it exists here (``ValueError`` with the fix otherwise)."""
    if str(device) != "auto":
        try:
            dev = torch.device(device)
        except RuntimeError as err:
            raise ValueError(
                f"unknown device {device!r}: use 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'"
            ) from err
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(
                f"device {device!r} was asked for, but torch sees no CUDA GPU here (torch "
                f"{torch.__version__}, CUDA build: {torch.version.cuda}). Use device='auto' or "
                "'cpu', or install a CUDA build of torch on a machine with a GPU."
            )
        if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(
                f"device {device!r}: only {torch.cuda.device_count()} GPU(s) here, indices "
                f"0..{torch.cuda.device_count() - 1}"
            )
        if dev.type == "mps" and not torch.backends.mps.is_available():
            raise ValueError(f"device {device!r}: MPS is not available here; use 'auto' or 'cpu'")
        return dev
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices); ``seed`` in [0, 2^32), NumPy's range."""
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or not 0 <= seed < 2**32:
        raise ValueError(
            f"seed must be an integer in [0, 2**32) (NumPy's seed range), got {seed!r}"
        )
    random.seed(seed)
    np.random.seed(seed)  # noqa: NPY002 (seeds the legacy global RNG that user code may use)
    torch.manual_seed(seed)
