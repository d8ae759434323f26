"""Checksums and fingerprints of tensors: is this the same data, and is this the same base?

    tensor_digest(sorted(state.items()))       # sha256 of names, dtypes, shapes and bytes
    fp = weights_fingerprint(named_tensors)     # that sha256, plus a sketch of each tensor
    weights_difference(saved_fp, fp)            # None if the same up to rounding, else why not

A sha256 changes with a single bit, but merging adapters into their base weights and unmerging
them again changes about a third of the base weights by one unit of rounding. So a fingerprint
also keeps, per tensor, its dtype, shape and a *sketch*: the sums and absolute sums of
``SKETCH_CHUNKS`` contiguous chunks (in float64). Two fingerprints whose sha256 differ still
count as the same weights when dtypes and shapes agree and every chunk sum differs by at most
``ROUNDING_UNITS`` units of the dtype's precision times the chunk's absolute sum: what rounding
can do, and far less than another pretrained or fine-tuned weight changes (a random change of
relative size 1e-4 per element already exceeds it in chunks of 10^4 elements).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import Tensor

SKETCH_CHUNKS = 16
ROUNDING_UNITS = 8.0


def tensor_digest(tensors: Iterable[tuple[str, Tensor]], prefix: str = "") -> str:
    """sha256 of ``prefix`` and, in the given order, each tensor's name, dtype, shape and bytes."""
    h = hashlib.sha256(prefix.encode())
    for name, t in tensors:
        t = t.detach().cpu().contiguous()
        h.update(json.dumps([name, str(t.dtype), list(t.shape)]).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().data)
    return h.hexdigest()


def _sketch(t: Tensor) -> dict[str, Any]:
    """dtype, shape and the float64 sums / absolute sums of ``SKETCH_CHUNKS`` chunks of ``t``."""
    flat = t.detach().reshape(-1).double()
    chunks = flat.tensor_split(min(SKETCH_CHUNKS, max(1, flat.numel())))
    sums = torch.stack([c.sum() for c in chunks]).tolist()
    absolute = torch.stack([c.abs().sum() for c in chunks]).tolist()
    return {"dtype": str(t.dtype), "shape": list(t.shape), "sums": sums, "abs": absolute}


def weights_fingerprint(named: Iterable[tuple[str, Tensor]]) -> dict[str, Any]:
    """``{"sha256": tensor_digest(named), "tensors": {name: sketch}}`` as JSON-ready data (the
    sha256 in the given order); the same on every device."""
    items = list(named)
    return {"sha256": tensor_digest(items), "tensors": {n: _sketch(t) for n, t in items}}


def _close(saved: Mapping[str, Any], now: Mapping[str, Any]) -> bool:
    dtype = getattr(torch, now["dtype"].removeprefix("torch."))
    eps = torch.finfo(dtype).eps if dtype.is_floating_point else 0.0
    return all(
        abs(s - n) <= ROUNDING_UNITS * eps * max(a, b)
        for s, n, a, b in zip(saved["sums"], now["sums"], saved["abs"], now["abs"], strict=True)
    )


def weights_difference(saved: Mapping[str, Any], now: Mapping[str, Any]) -> str | None:
    """None if two ``weights_fingerprint``s are of the same weights, bit for bit or up to
    rounding (module docstring); else what differs, in words (names, dtypes, shapes, values)."""
    if saved["sha256"] == now["sha256"]:
        return None
    before, after = saved["tensors"], now["tensors"]
    if before.keys() != after.keys():
        gone, new = sorted(before.keys() - after.keys()), sorted(after.keys() - before.keys())
        return f"other tensors (missing here: {gone[:3]}, new here: {new[:3]})"
    dtypes = sorted({(before[n]["dtype"], after[n]["dtype"]) for n in before})
    changed = [(a, b) for a, b in dtypes if a != b]
    if changed:
        saved_as, now_as = changed[0]
        return f"another dtype: {now_as} here, {saved_as} when saved"
    shapes = [n for n in before if before[n]["shape"] != after[n]["shape"]]
    if shapes:
        return f"other shapes (e.g. {shapes[0]!r})"
    values = [n for n in sorted(before) if not _close(before[n], after[n])]
    if values:
        return f"other values (e.g. {values[0]!r}), more than rounding"
    return None
