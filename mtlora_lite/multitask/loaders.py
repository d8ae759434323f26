"""What ``fit`` needs from its loaders: how many steps a pass takes, the same shuffle for the
same (seed, epoch), targets for every task (``task_targets``: a dict, or a plain tensor for the
one task of a single-task run; ``check_val_loader`` looks at the validation data before
training), and an identity of the data that a resumed run must share.

``data_identity(loader)`` is cheap by design (it never reads the data set through): a data set
that offers ``data_identity() -> str`` (e.g. a checksum of its files) is taken at its word;
otherwise it is the number of examples and a sha256 of the first example, read twice under
fixed seeds (the RNG states are restored afterwards), so that random augmentation driven by the
global RNGs gives the same digest; if the two reads still differ (the data set draws from a
generator of its own), only the number is kept. So other data of the same size are told apart
unless they share their first example; a stream without ``len`` has no identity.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Iterable, Mapping, Sized
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, IterableDataset


def steps_per_pass(loader: Iterable) -> int:
    """len(loader), or a ``ValueError`` saying why a loader would give no batches."""
    if not hasattr(loader, "__len__"):
        raise TypeError("train_loader has no len(): pass max_steps to say how long to train.")
    n = len(loader)  # type: ignore[arg-type]
    if n == 0:
        why = "its dataset is empty"
        if isinstance(loader, DataLoader) and len(loader.dataset) > 0:  # type: ignore[arg-type]
            why = (
                f"its {len(loader.dataset)} examples make no full batch of {loader.batch_size} "  # type: ignore[arg-type]
                "with drop_last=True: use a smaller batch_size, more data, or drop_last=False"
            )
        raise ValueError(f"train_loader yields no batches: {why}.")
    return n


def reseed(loader: Iterable, seed: int, epoch: int) -> None:
    """The same shuffle for the same (seed, epoch), whoever used the loader before: a sampler with
    ``set_epoch`` (DistributedSampler) gets the epoch, a loader's own generator ``seed + epoch``."""
    sampler = getattr(loader, "sampler", None)
    if callable(getattr(sampler, "set_epoch", None)):
        sampler.set_epoch(epoch)  # type: ignore[union-attr]
    elif isinstance(getattr(loader, "generator", None), torch.Generator):
        loader.generator.manual_seed(seed + epoch)  # type: ignore[union-attr]


def task_targets(targets: Any, tasks: Iterable[str], what: str) -> Mapping[str, Tensor]:
    """A batch's targets by task: ``targets`` (a batch's second item) if it is a mapping with a
    target for every task, or ``{task: targets}`` for a plain tensor when there is one task (a
    plain ``(x, y)`` loader); else an error naming the loader (``what``) and the fix."""
    tasks = list(tasks)
    if isinstance(targets, Tensor) and len(tasks) == 1:
        return {tasks[0]: targets}
    if not isinstance(targets, Mapping):
        plain = "a plain (x, y) loader serves one task only; " if len(tasks) > 1 else ""
        raise TypeError(
            f"{what} must yield (images, targets) with targets a dict task name -> tensor "
            f"({plain}tasks: {tasks}), got targets of type {type(targets).__name__}"
        )
    missing = [t for t in tasks if t not in targets]
    if missing:
        raise KeyError(
            f"{what} gives no targets for tasks {missing} (it has {sorted(targets)}): give it a "
            "target for every task, or train / evaluate only the tasks it has"
        )
    return targets


def check_val_loader(loader: Iterable, tasks: Iterable[str]) -> None:
    """Before training: refuse a validation loader that is empty or whose first batch lacks a
    task's targets (a loader that is its own iterator is not looked into: that would use it up).
    """
    if isinstance(loader, Sized) and len(loader) == 0:
        raise ValueError(
            "val_loader yields no batches (its dataset is empty): pass validation data, or "
            "val_loader=None to train without validation"
        )
    batches = iter(loader)
    if batches is loader:
        return
    batch = next(batches, None)
    del batches  # a DataLoader's workers stop here
    if batch is None:
        raise ValueError(
            "val_loader yields no batches: pass validation data, or val_loader=None to train "
            "without validation"
        )
    task_targets(batch[1] if isinstance(batch, list | tuple) and len(batch) == 2 else None,
                 tasks, "val_loader")  # fmt: skip


def _feed(h: Any, item: Any) -> bool:
    """Hash ``item`` (tensors, arrays, numbers, strings, nested lists / tuples / dicts) into
    ``h``; False for anything else (no digest then)."""
    if isinstance(item, torch.Tensor | np.ndarray):
        array = item.detach().cpu().numpy() if isinstance(item, torch.Tensor) else item
        array = np.ascontiguousarray(array)
        h.update(json.dumps([str(array.dtype), list(array.shape)]).encode())
        h.update(array.tobytes())
        return True
    if isinstance(item, Mapping):
        return all(_feed(h, str(k)) and _feed(h, item[k]) for k in sorted(item, key=str))
    if isinstance(item, list | tuple):
        h.update(f"[{len(item)}".encode())
        return all(_feed(h, x) for x in item)
    if item is None or isinstance(item, str | int | float | bool):
        h.update(repr(item).encode())
        return True
    return False


def _first_digest(source: Any) -> str | None:
    """sha256 of ``source[0]`` read under fixed seeds (RNG states restored), or None."""
    py, legacy = random.getstate(), np.random.get_state()  # noqa: NPY002 (the global RNG)
    try:
        with torch.random.fork_rng(devices=[]):
            random.seed(0)
            np.random.seed(0)  # noqa: NPY002
            torch.default_generator.manual_seed(0)
            example = source[0]
    finally:
        random.setstate(py)
        np.random.set_state(legacy)  # noqa: NPY002
    h = hashlib.sha256()
    return h.hexdigest() if _feed(h, example) else None


def data_identity(loader: Iterable) -> dict[str, Any]:
    """``{"own": str}`` or ``{"examples": int | None, "first": sha256 | None}`` for ``loader``
    (a DataLoader: its dataset; a list of batches: the list); see the module docstring."""
    source = loader.dataset if isinstance(loader, DataLoader) else loader
    own = getattr(source, "data_identity", None)
    if callable(own):
        return {"own": str(own())}
    if isinstance(source, IterableDataset) or not isinstance(source, Sized):
        return {"examples": None, "first": None}
    n = len(source)
    if n == 0 or not hasattr(source, "__getitem__"):
        return {"examples": n, "first": None}
    first = _first_digest(source)
    return {"examples": n, "first": first if first == _first_digest(source) else None}


def data_difference(saved: Mapping[str, Any], now: Mapping[str, Any]) -> str | None:
    """None if two ``data_identity`` results may be of the same data, else what differs."""
    if "own" in saved or "own" in now:
        same = saved.get("own") == now.get("own")
        return None if same else f"identity {saved.get('own')!r} there, {now.get('own')!r} here"
    if saved["examples"] != now["examples"]:
        return f"{saved['examples']} examples there, {now['examples']} here"
    if saved["first"] and now["first"] and saved["first"] != now["first"]:
        return "another first example (sha256)"
    return None
