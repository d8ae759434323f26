"""Several processes, one ``fit``: what the trainer does when ``torchrun`` started it.

``torchrun --nproc_per_node N script.py`` sets ``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK`` in each
process. ``launch`` reads them: without them (or with WORLD_SIZE=1) training is single-process
and nothing here changes anything. With them, ``fit`` and ``evaluate``

- join (or create) the process group: NCCL on CUDA, gloo on CPU; each rank takes
  ``cuda:LOCAL_RANK``;
- wrap the model in ``DistributedDataParallel`` (gradients averaged over ranks);
- shard the data: training batches through a ``DistributedSampler`` (reshuffled every epoch from
  the same seed on every rank), evaluation through ``ShardSampler`` (rank r takes examples r,
  r + N, ..., without the padding DistributedSampler adds), so reduced metrics are exactly those of
  one process on the whole set;
- reduce what they report: metrics through each metric's ``merge`` (every rank ends with the same
  numbers), the step losses as means over ranks.

Before the process group is created, the environment is checked and every rank must arrive
within a short, stated timeout (``multitask.startup``: 60 s by default), so a peer that never
starts is named instead of hanging; ``fit`` then compares what each rank holds as data
(``same_on_every_rank``), so ranks with different data sizes fail at once too.

The process group is created once, by the first ``fit`` or ``evaluate`` of the process (or by
the caller, before), and reused by later calls; one that ``launch`` created is destroyed when the
process exits, normally or by an exception (``atexit``). Re-creating a group within one process
is fragile (gloo and NCCL reconnect to the same store), so it is never torn down in between.
"""

from __future__ import annotations

import atexit
import datetime as dt
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler, Sampler

from mtlora_lite.multitask.startup import meet, torchrun_environment


@dataclass
class Launch:
    """Where this process stands: ``rank`` of ``world_size``, and its device."""

    rank: int = 0
    world_size: int = 1
    device: torch.device | None = None

    @property
    def active(self) -> bool:
        """True under a multi-process launch."""
        return self.world_size > 1

    @property
    def main(self) -> bool:
        """True on the process that shows progress and writes files (rank 0)."""
        return self.rank == 0


def is_main_process() -> bool:
    """True in the process that should print and write files: rank 0 under ``torchrun``, and
    always in a single process. Guard your own script's output with it:

        history = fit(model, task, loader)       # every process trains its shard
        if is_main_process():
            save_adapters(model, "adapters.safetensors")
    """
    return rank_and_world()[0] == 0


def rank_and_world() -> tuple[int, int]:
    """(rank, world size) as torchrun sets them in the environment, checked
    (``startup.torchrun_environment``); (0, 1) in one process."""
    env = torchrun_environment()
    return env.rank, env.world_size


def launch(device: torch.device, timeout_s: float = 1800.0) -> Launch:
    """The torchrun context of this process (module docstring); ``device`` is the requested one.

    On CUDA the rank's device is ``cuda:LOCAL_RANK``; raises ``ValueError`` if WORLD_SIZE asks for
    more CUDA processes than this machine has GPUs or the environment is inconsistent, and
    ``RuntimeError`` naming the ranks that did not arrive within ``startup.START_TIMEOUT_S``.
    ``timeout_s`` is the process group's timeout for the collectives of training.
    """
    env = torchrun_environment()
    rank, world, local = env.rank, env.world_size, env.local_rank
    if world <= 1:
        return Launch(device=device)
    if device.type == "cuda":
        if local >= torch.cuda.device_count():
            raise ValueError(
                f"LOCAL_RANK {local} but only {torch.cuda.device_count()} GPU(s): start torchrun "
                "with --nproc_per_node at most the number of GPUs"
            )
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        timeout = dt.timedelta(seconds=timeout_s)
        store = meet(env)  # every rank is there, or who is not is named
        store.set_timeout(timeout)
        store = dist.PrefixStore("default_pg", store)  # as init_process_group's own rendezvous
        dist.init_process_group(backend, store=store, rank=rank, world_size=world, timeout=timeout)
        atexit.register(_destroy)
    return Launch(rank, world, device)


def same_on_every_rank(value: Any, what: str, ctx: Launch) -> None:
    """Raise ``ValueError`` on every rank unless all ranks hold the same JSON-like ``value``
    (e.g. the size and identity of their data), naming the values of the ranks that differ."""
    if not ctx.active:
        return
    values: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(values, value)
    if any(v != values[0] for v in values):
        ranks = ", ".join(f"rank {r}: {v}" for r, v in enumerate(values))
        raise ValueError(
            f"the ranks hold different {what} ({ranks}): every rank must build the same data set "
            "(fit gives each rank its own shard of it)"
        )


def _destroy() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def wrap(model: nn.Module, ctx: Launch, options: Mapping[str, Any] | None = None) -> nn.Module:
    """``model`` in ``DistributedDataParallel`` under a launch, else ``model`` itself.

    ``static_graph=True`` by default: every step uses the same parameters (true of ``fit``'s
    models, which compute every task's loss at every step), so DDP learns in the first step which
    trainable parameters never get a gradient (MTLoRA's last-stage shared fc2 update in
    "official" mode) and skips them, without the per-step graph search of
    ``find_unused_parameters=True``. A model whose used parameters change between steps needs
    ``options={"static_graph": False, "find_unused_parameters": True}``.
    """
    if not ctx.active:
        return model
    ids = [ctx.device.index] if ctx.device is not None and ctx.device.type == "cuda" else None
    return DistributedDataParallel(
        model, device_ids=ids, **{"static_graph": True, **(options or {})}
    )


class ShardSampler(Sampler[int]):
    """Rank r of N takes indices r, r + N, r + 2N, ... of a dataset of ``n`` examples: every
    example exactly once over all ranks (shards differ by at most one example)."""

    def __init__(self, n: int, rank: int, world_size: int) -> None:
        self.n, self.rank, self.world_size = n, rank, world_size

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.n, self.world_size))

    def __len__(self) -> int:
        return len(range(self.rank, self.n, self.world_size))


def _rebuild(loader: DataLoader, sampler: Sampler[int], drop_last: bool) -> DataLoader:
    return DataLoader(
        loader.dataset,
        batch_size=loader.batch_size,
        sampler=sampler,
        num_workers=loader.num_workers,
        collate_fn=loader.collate_fn,
        pin_memory=loader.pin_memory,
        drop_last=drop_last,
        worker_init_fn=loader.worker_init_fn,
        persistent_workers=loader.persistent_workers,
    )


def _check_shardable(loader: Any, what: str) -> DataLoader:
    if not isinstance(loader, DataLoader) or loader.batch_size is None:
        raise TypeError(
            f"under torchrun, {what} must be a torch DataLoader with a batch_size over a map-style "
            f"dataset, so that each rank gets its own shard; got {type(loader).__name__}"
        )
    return loader


def shard_train(loader: Any, ctx: Launch, seed: int) -> Any:
    """``loader`` with a ``DistributedSampler`` (``seed``; shuffled if ``loader`` shuffles)."""
    if not ctx.active:
        return loader
    loader = _check_shardable(loader, "train_loader")
    if isinstance(loader.sampler, DistributedSampler | ShardSampler):
        return loader  # sharded by the caller already
    shuffle = isinstance(loader.sampler, RandomSampler)
    sampler = DistributedSampler(
        loader.dataset,
        ctx.world_size,
        ctx.rank,
        shuffle=shuffle,
        seed=seed,
        drop_last=loader.drop_last,
    )
    return _rebuild(loader, sampler, loader.drop_last)


def shard_eval(loader: Any, ctx: Launch) -> Any:
    """``loader`` with a ``ShardSampler``: each example on exactly one rank, in order."""
    if not ctx.active:
        return loader
    loader = _check_shardable(loader, "the evaluation loader")
    if isinstance(loader.sampler, DistributedSampler | ShardSampler):
        return loader
    return _rebuild(loader, ShardSampler(len(loader.dataset), ctx.rank, ctx.world_size), False)


def merge_metrics(metrics: dict[str, Any], ctx: Launch) -> dict[str, Any]:
    """Every rank's streaming metrics merged into one per task, on every rank.

    Each metric needs ``merge(other)`` (adds ``other``'s counts into its own), as the metrics of
    ``mtlora_lite.multitask.tasks`` have.
    """
    if not ctx.active:
        return metrics
    missing = [t for t, m in metrics.items() if not callable(getattr(m, "merge", None))]
    if missing:
        raise TypeError(
            f"metrics of tasks {missing} have no merge(other) method, so their ranks' results "
            "cannot be combined under torchrun: add one that adds other's counts into self"
        )
    gathered: list[dict[str, Any] | None] = [None] * ctx.world_size
    dist.all_gather_object(gathered, metrics)
    merged = gathered[0]
    assert merged is not None
    for other in gathered[1:]:
        for task, metric in merged.items():
            metric.merge(other[task])  # type: ignore[index]
    return merged


def mean_over_ranks(values: torch.Tensor, ctx: Launch) -> torch.Tensor:
    """The element-wise mean of ``values`` (a float tensor on the rank's device) over ranks."""
    if not ctx.active:
        return values
    values = values.clone()
    dist.all_reduce(values)
    return values / ctx.world_size
