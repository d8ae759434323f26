"""The precision ``fit`` trains in: autocast for the forward pass, loss scaling for fp16.

    precision   forward pass (CUDA)            loss scaling
    "bf16"      bf16 autocast (the default)    none (bf16 has fp32's range)
    "fp16"      fp16 autocast                  a ``torch.amp.GradScaler``: the official MTLoRA
                                               training; steps whose gradients are inf / NaN
                                               are skipped and the scale lowered
    "fp32"      no autocast                    none

Autocast runs on CUDA only (``AUTOCAST_DEVICES``). Elsewhere (CPU, MPS) training runs in fp32
whatever is asked: "bf16" quietly (it is the default), "fp16" with a warning. The weights stay
in their own dtype (fp32) in every mode; ``evaluate`` never autocasts.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator

import torch
from torch import Tensor, nn

PRECISIONS = ("bf16", "fp16", "fp32")
AUTOCAST_DEVICES = ("cuda",)  # device types on which fit autocasts
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_precision(precision: str, device: torch.device) -> str:
    """The precision ``fit`` will use on ``device``: ``precision`` where autocast runs, else
    "fp32" (with a warning when "fp16" was asked for). Raises ``ValueError`` for an unknown one."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "fp32" or device.type in AUTOCAST_DEVICES:
        return precision
    if precision == "fp16":
        warnings.warn(
            f"precision='fp16' needs CUDA (autocast with a GradScaler); on {device.type} fit "
            "trains in fp32 instead. Pass precision='fp32' to silence this warning.",
            stacklevel=3,
        )
    return "fp32"


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """Autocast to bf16 / fp16 for a ``resolve_precision`` result; a no-op for "fp32"."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=_DTYPES[precision])


def grad_scaler(device: torch.device, precision: str) -> torch.amp.GradScaler:
    """A GradScaler, enabled for "fp16" only (disabled, its calls pass through unchanged)."""
    return torch.amp.GradScaler(device.type, enabled=precision == "fp16")


def model_dtype(model: nn.Module) -> torch.dtype | None:
    """The dtype of the model's first floating-point parameter (the one its input meets first,
    for the usual stem-first models); None without one."""
    return next((p.dtype for p in model.parameters() if p.is_floating_point()), None)


def check_model_dtype(model: nn.Module, device: torch.device, precision: str) -> None:
    """Refuse half-precision weights where ``fit`` cannot train them, saying what to do."""
    half = sorted({str(p.dtype) for p in model.parameters() if p.dtype in _DTYPES.values()})
    if not half:
        return
    if device.type not in AUTOCAST_DEVICES:
        raise TypeError(
            f"the model has {', '.join(half)} parameters; on {device.type} fit trains in fp32: "
            "call model.float() first (on CUDA, keep the weights fp32 and pass precision='bf16' "
            "or 'fp16' to compute in half precision)"
        )
    trained = {str(p.dtype) for p in model.parameters() if p.requires_grad}
    if precision == "fp16" and "torch.float16" in trained:
        raise TypeError(
            "precision='fp16' keeps float32 weights and scales the loss (GradScaler), which "
            "cannot unscale float16 gradients: call model.float() first"
        )


@contextlib.contextmanager
def explain_dtype_errors(model: nn.Module, images: Tensor) -> Iterator[None]:
    """Re-raise an error of the forward pass as a ``TypeError`` that names both dtypes and the fix
    when the images' dtype differs from the model's (e.g. float64 images into a float32 model)."""
    try:
        yield
    except RuntimeError as err:
        weights = model_dtype(model)
        if not images.is_floating_point() or weights is None or images.dtype == weights:
            raise
        raise TypeError(
            f"the model failed on {images.dtype} images; its parameters are {weights} ({err}). "
            f"Give it {weights} images (e.g. images.to({weights}) in the dataset or its "
            "transform), or convert the model (model.to(dtype))"
        ) from err
