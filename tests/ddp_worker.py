"""A tiny MTLoRA training run that tests/test_distributed.py starts under torchrun (and in one
process): the same model, data and seed in every mode, so the runs can be compared.

    python -m torch.distributed.run --nproc_per_node 2 tests/ddp_worker.py OUT [--fail | --uneven]
    python tests/ddp_worker.py OUT --single              # one process, batch 2 x BATCH

Writes OUT/params.safetensors (the trained trainable parameters) and OUT/metrics.json (fit's last
validation and a separate evaluate) from rank 0.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import Tensor
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from mtlora_lite import Task, build_model, evaluate, fit
from mtlora_lite.course.backbones import build_course_swin
from mtlora_lite.multitask.tasks import AccuracyMetric

BATCH, N_TRAIN, N_VAL, SEED = 4, 32, 13, 7  # N_VAL odd: the ranks' shards differ in size


def _task(name: str, classes: int) -> Task:
    return Task(
        name=name,
        kind="classification",
        out_channels=classes,
        dense=False,
        primary="acc",
        higher_is_better=True,
        loss_fn=F.cross_entropy,
        metric_factory=AccuracyMetric,
    )


TASKS = {"a": _task("a", 3), "b": _task("b", 4)}


class Data(TensorDataset):
    """Random images with labels for both tasks; (image (3, 32, 32), {task: label})."""

    def __init__(self, n: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        super().__init__(
            torch.randn(n, 3, 32, 32, generator=g),
            torch.randint(0, 3, (n,), generator=g),
            torch.randint(0, 4, (n,), generator=g),
        )

    def __getitem__(self, i: int) -> tuple[Tensor, dict[str, Tensor]]:
        x, a, b = super().__getitem__(i)
        return x, {"a": a, "b": b}


class FailOnRankOne(torch.nn.Module):
    """Wraps the model; raises on rank 1 at the third forward pass."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model, self.calls = model, 0

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        self.calls += 1
        if os.environ.get("RANK") == "1" and self.calls == 3:
            raise RuntimeError("rank 1 fails at its third step")
        return self.model(x)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path)
    parser.add_argument("--single", action="store_true", help="one process, the doubled batch")
    parser.add_argument("--fail", action="store_true", help="rank 1 raises during training")
    parser.add_argument("--uneven", action="store_true", help="rank 1 has 2 examples fewer")
    args = parser.parse_args()
    torch.manual_seed(SEED)
    swin = build_course_swin(img_size=32, embed_dim=8, depths=(1, 1, 1, 1), window_size=2)
    model = build_model(swin, TASKS, "mtlora", shared_rank=2, task_rank=2, dropout=0.0)
    uneven = args.uneven and os.environ.get("RANK") == "1"
    train = Data(N_TRAIN - 2 if uneven else N_TRAIN, SEED)
    if args.single:  # the permutation a DistributedSampler draws, in one batch of both ranks' data
        sampler = DistributedSampler(train, num_replicas=1, rank=0, shuffle=True, seed=SEED)
        loader = DataLoader(train, batch_size=2 * BATCH, sampler=sampler)
    else:
        loader = DataLoader(train, batch_size=BATCH, shuffle=True)
    val = DataLoader(Data(N_VAL, SEED + 1), batch_size=3)
    net = FailOnRankOne(model) if args.fail else model
    history = fit(
        net, TASKS, loader, val, epochs=2, lr=1e-2, seed=SEED, device="cpu", progress=False
    )
    metrics = evaluate(model, TASKS, val, device="cpu")
    if os.environ.get("RANK", "0") == "0":
        args.out.mkdir(parents=True, exist_ok=True)
        trained = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
        save_file(trained, str(args.out / "params.safetensors"))
        record = {"fit": history.final, "evaluate": metrics, "steps": len(history.steps)}
        (args.out / "metrics.json").write_text(json.dumps(record))


if __name__ == "__main__":
    main()
