"""Pretrain the course Swin on the PRETRAIN scenes and check that it helps downstream.

``python -m mtlora_lite.course.pretrain`` trains the course Swin with linear heads on four PRETRAIN
tasks (object count, shape and colour of the largest object, semantic segmentation) on freshly
generated scenes, then writes ``course_swin.safetensors`` (backbone only) and its card
``course_swin.json`` (see ``mtlora_lite.course.backbones``). ``--probe`` compares the checkpoint with a
randomly initialised Swin on DOWNSTREAM data (linear probe and short fine-tuning) and adds the
numbers to the card.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import timm
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader

from mtlora_lite.adapters.atomic import atomic_write
from mtlora_lite.course.backbones import (
    CARD_NAME,
    build_course_swin,
    data_dir,
    load_backbone,
    load_course_card,
    save_course_checkpoint,
)
from mtlora_lite.course.data import SceneDataset, make_loaders, normalize
from mtlora_lite.course.scene_tasks import build_tasks
from mtlora_lite.course.scenes import (
    DOWNSTREAM,
    PRETRAIN,
    SEED_LIMIT,
    SceneConfig,
    check_seed,
    generate_scenes,
)
from mtlora_lite.multitask.backbones import feature_channels
from mtlora_lite.multitask.runtime import resolve_device, seed_everything
from mtlora_lite.multitask.tasks import Task, primary_metrics
from mtlora_lite.multitask.train import fit


@dataclasses.dataclass
class PretrainConfig:
    """Settings of the pretraining run (all recorded in the card)."""

    steps: int = 2400
    batch_size: int = 32
    seed: int = 0
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup: float = 0.05
    grad_clip: float = 1.0
    n_val: int = 1024  # held-out PRETRAIN scenes for the final metrics
    tasks: tuple[str, ...] = ("count", "shape", "colour", "semseg")


@dataclasses.dataclass
class ProbeConfig:
    """Settings of the downstream comparison, pretrained vs random initialisation."""

    n_train: int = 2048
    n_val: int = 1024
    batch_size: int = 32
    seed: int = 0
    linear_steps: int = 300
    linear_lr: float = 1e-2
    finetune_steps: int = 300
    finetune_lr: float = 1e-3
    tasks: tuple[str, ...] = ("count", "shape", "colour", "semseg")


class LinearHeads(nn.Module):
    """A backbone with one linear head per task: ``forward(images) -> {task: prediction}``.

    Image-level task: pooled final features (B, C) -> BN (no affine) -> Linear -> (B, classes).
    Dense task: every stage map upsampled to the finest one and concatenated (B, sum C_i, h, w)
    -> BN (no affine) -> 1x1 conv -> bilinear upsample to the input -> (B, classes, H, W).
    """

    def __init__(self, backbone: nn.Module, tasks: Mapping[str, Task]) -> None:
        super().__init__()
        self.backbone = backbone
        width = sum(feature_channels(backbone))
        self.heads = nn.ModuleDict()
        for name, task in tasks.items():
            if task.dense:
                norm, layer = (
                    nn.BatchNorm2d(width, affine=False),
                    nn.Conv2d(width, task.out_channels, 1),
                )
            else:
                norm = nn.BatchNorm1d(backbone.num_features, affine=False)
                layer = nn.Linear(backbone.num_features, task.out_channels)
            self.heads[name] = nn.Sequential(norm, layer)
        self.dense = {name for name, task in tasks.items() if task.dense}

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        final, maps = self.backbone.forward_intermediates(images)  # final: (B, h, w, C) normed
        pooled = self.backbone.forward_head(final)  # (B, C)
        size = maps[0].shape[-2:]
        stacked = torch.cat([F.interpolate(m, size, mode="bilinear") for m in maps], 1)
        out = {}
        for name, head in self.heads.items():
            if name in self.dense:
                out[name] = F.interpolate(head(stacked), images.shape[-2:], mode="bilinear")
            else:
                out[name] = head(pooled)
        return out


BLOCK_BITS = 20  # scene seed = (seed << BLOCK_BITS) + block: 2**20 blocks per pretraining seed
PRETRAIN_SEED_LIMIT = SEED_LIMIT >> BLOCK_BITS  # so that scene seeds stay below 2**32 (4096 seeds)


class SceneStream:
    """Endless batches of fresh scenes, ``(images (B, 3, H, W), {task: target})``.

    Scenes are rendered ``block`` batches at a time; block b = 1, 2, ... uses scene seed
    (seed << 20) + b, so the stream never repeats and never meets ``heldout_seed(seed)``, and
    streams of different seeds never meet: scene seeds stay below 2**32, the bits torch's
    generator keeps (``seed`` below 4096, at most 2**20 - 1 blocks). Seed 0 gives the scene
    seeds 1, 2, ... (held out: 0) that the bundled checkpoint was pretrained with.
    """

    def __init__(
        self, tasks: list[str], batch_size: int, seed: int, config: SceneConfig, block: int = 16
    ) -> None:
        self.tasks, self.batch_size, self.seed = tasks, batch_size, _check_pretrain_seed(seed)
        self.config, self.block = config, block

    def __iter__(self) -> Iterator[tuple[Tensor, dict[str, Tensor]]]:
        n = self.block * self.batch_size
        for b in range(1, 1 << BLOCK_BITS):
            scenes = generate_scenes(n, (self.seed << BLOCK_BITS) + b, self.config)
            for i in range(0, n, self.batch_size):
                part = slice(i, i + self.batch_size)
                yield normalize(scenes["image"][part]), {t: scenes[t][part] for t in self.tasks}
        raise RuntimeError(
            f"SceneStream used all 2**{BLOCK_BITS} - 1 blocks of scene seeds of seed {self.seed} "
            f"({n * ((1 << BLOCK_BITS) - 1):,} scenes); pretrain for fewer steps or a larger block"
        )


def _check_pretrain_seed(seed: object) -> int:
    why = f" and pretraining puts 2**{BLOCK_BITS} blocks of scenes under each seed"
    return check_seed(seed, PRETRAIN_SEED_LIMIT, why)


def heldout_seed(seed: int) -> int:
    """Scene seed of the held-out PRETRAIN set (never used by ``SceneStream``)."""
    return _check_pretrain_seed(seed) << BLOCK_BITS


def _mean(values: list[float]) -> float:
    return round(sum(values) / len(values), 4)


def _versions(device: torch.device) -> dict[str, Any]:
    return {
        "device": str(device),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "timm": timm.__version__,
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }


def pretrain(
    cfg: PretrainConfig | None = None,
    out_dir: str | Path | None = None,
    *,
    device: str = "auto",
    progress: bool = True,
) -> dict[str, Any]:
    """Pretrain the course Swin, save it to ``out_dir`` (default ``data_dir()``); return its card."""
    cfg = cfg or PretrainConfig()
    _check_pretrain_seed(cfg.seed)  # before anything is built or seeded
    dev = resolve_device(device)
    tasks = build_tasks(cfg.tasks, PRETRAIN)
    seed_everything(cfg.seed)
    model = LinearHeads(build_course_swin(), tasks)
    stream = SceneStream(list(cfg.tasks), cfg.batch_size, cfg.seed, PRETRAIN)
    val = SceneDataset(generate_scenes(cfg.n_val, heldout_seed(cfg.seed), PRETRAIN), cfg.tasks)
    start = time.perf_counter()
    history = fit(
        model,
        tasks,
        stream,
        DataLoader(val, batch_size=256),
        max_steps=cfg.steps,
        lr=cfg.lr,
        weight_decay=cfg.weight_decay,
        warmup=cfg.warmup,
        grad_clip=cfg.grad_clip,
        device=dev,
        progress=progress,
        seed=cfg.seed,
    )
    losses = history.curve("loss")[1]
    every = max(1, cfg.steps // 50)
    curve = [
        [min(i + every, len(losses)), _mean(losses[i : i + every])]
        for i in range(0, len(losses), every)
    ]
    card = {
        "description": "course Swin pretrained on PRETRAIN scenes by python -m mtlora_lite.course.pretrain",
        "settings": dataclasses.asdict(cfg),
        "optimizer": "AdamW, no weight decay on 1-D params, linear warmup + cosine decay to 0",
        "heads": "linear per task (discarded): pooled features / concatenated upsampled stages",
        "data": {
            "scene_config": dataclasses.asdict(PRETRAIN),
            "images_seen": cfg.steps * cfg.batch_size,
            "train_scene_seeds": f"(seed << {BLOCK_BITS}) + b for block b = 1, 2, ...",
            "block_size": stream.block * cfg.batch_size,
            "heldout_scene_seed": heldout_seed(cfg.seed),
            "n_heldout": cfg.n_val,
        },
        "train_loss_curve": curve,  # [step, mean loss of the steps up to it]
        "heldout_metrics": {
            t: {k: round(v, 2) for k, v in m.items()} for t, m in history.final.items()
        },
        "wall_time_s": round(time.perf_counter() - start, 1),
        "images_per_s": round(history.images_per_s, 1),
        **_versions(dev),
    }
    save_course_checkpoint(model.backbone.cpu(), out_dir, card)
    return load_course_card(out_dir or data_dir())


def _probe_run(
    backbone: nn.Module,
    tasks: dict[str, Task],
    loaders: tuple[DataLoader, DataLoader],
    *,
    frozen: bool,
    steps: int,
    lr: float,
    seed: int,
    device: torch.device,
    progress: bool,
) -> dict[str, float]:
    """Train linear heads on ``backbone`` (frozen or not); the primary metric of each task."""
    backbone.requires_grad_(not frozen)
    model = LinearHeads(backbone, tasks)
    history = fit(
        model,
        tasks,
        *loaders,
        max_steps=steps,
        lr=lr,
        device=device,
        progress=progress,
        seed=seed,
    )
    return {k: round(v, 2) for k, v in primary_metrics(history.final, tasks).items()}


def probe(
    checkpoint_dir: str | Path | None = None,
    cfg: ProbeConfig | None = None,
    *,
    device: str = "auto",
    progress: bool = True,
) -> dict[str, Any]:
    """Downstream primary metrics (accuracy / mIoU, %) of a linear probe on frozen features and of
    short full fine-tuning, from the checkpoint in ``checkpoint_dir`` vs from random init."""
    cfg = cfg or ProbeConfig()
    dev = resolve_device(device)
    tasks = build_tasks(cfg.tasks, DOWNSTREAM)
    loaders = make_loaders(
        cfg.tasks, n_train=cfg.n_train, n_val=cfg.n_val, seed=cfg.seed, batch_size=cfg.batch_size
    )
    results: dict[str, Any] = {"settings": dataclasses.asdict(cfg)}
    for mode, frozen, steps, lr in (
        ("linear_probe", True, cfg.linear_steps, cfg.linear_lr),
        ("fine_tune", False, cfg.finetune_steps, cfg.finetune_lr),
    ):
        results[mode] = {}
        for init in ("pretrained", "random"):
            seed_everything(cfg.seed)
            backbone = load_backbone(
                "course", pretrained=init == "pretrained", checkpoint_dir=checkpoint_dir
            )
            results[mode][init] = _probe_run(
                backbone,
                tasks,
                loaders,
                frozen=frozen,
                steps=steps,
                lr=lr,
                seed=cfg.seed,
                device=dev,
                progress=progress,
            )
    return results


def main(argv: list[str] | None = None) -> None:
    """Command line: pretrain (default) or ``--probe`` an existing checkpoint."""
    defaults = PretrainConfig()
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=defaults.steps)
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--n-val", type=int, default=defaults.n_val, help="held-out scenes")
    parser.add_argument("--out-dir", type=Path, default=None, help="default: data_dir()")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument(
        "--probe",
        action="store_true",
        help="instead of pretraining, compare the checkpoint in --out-dir with random init on "
        "DOWNSTREAM data (ProbeConfig defaults) and add the numbers to its card",
    )
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    out = args.out_dir or data_dir()
    if args.probe:
        results = probe(out, device=args.device)
        card = load_course_card(out)
        card["probe"] = results
        atomic_write(out / CARD_NAME, json.dumps(card, indent=2) + "\n")
    else:
        cfg = dataclasses.replace(
            defaults, steps=args.steps, batch_size=args.batch_size, seed=args.seed, n_val=args.n_val
        )
        results = pretrain(cfg, out, device=args.device)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
