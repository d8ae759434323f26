"""What ``python -m mtlora_lite.paper`` runs: named recipes (schedules) and the runs of
the paper's Swin-T table (methods).

Recipes (``RECIPES``):

* ``paper``: the published schedule (configs/mtlora/tiny_448 of the official code): timm's
  ``swin_tiny_patch4_window7_224`` with its ImageNet-1k weights, built for 448 x 448 inputs
  (``img_size=448``: same window 7, so the pretrained tables fit); stochastic depth 0.2; AdamW
  (0.9, 0.999, eps 1e-8), weight decay 0.05, none on 1-D parameters (biases, norms) and on the
  relative-position bias tables; peak lr 5e-4 x batch / 512 = 3.125e-5 at batch 32; 20 linear
  warm-up epochs, then a per-step cosine to 1/100 of the peak; gradients clipped at 5.0; bf16
  autocast on CUDA; batch 32; 300 epochs; evaluation after the last one.
* ``paper-quick``: the same with 10 epochs (1 of warm-up): every run of the table in about an
  hour on one H100 (an estimate: see ``Recipe.estimate``); far from converged, so expect lower
  numbers than the paper's, but the same command and code path.
* ``fixture``: a plumbing check on ``pascal.fixture`` data: a tiny random Swin (no download) at
  64 x 64, batch 2, 2 epochs, on a CPU in well under a minute per run. Its numbers mean nothing.

Drop path is a property of the timm backbone (``drop_path_rate``, rising linearly from 0 in the
first block to ``Recipe.drop_path`` in the last; ``backbone()`` sets it), not of ``MTLoRAConfig``,
whose defaults are the official MTLoRA options. Runs (``RUNS``): the four single-task references
(full fine-tuning, one model per task; Delta_m is measured against them), multi-task full
fine-tuning, decoders only, one shared LoRA, and MTLoRA at shared rank 16 / 32 / 64 (task rank
4, the official defaults).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from mtlora_lite.multitask.backbones import timm_backbone
from mtlora_lite.multitask.pascal.data import TASKS

NO_WEIGHT_DECAY = "relative_position_bias_table"  # besides every 1-D parameter


@dataclass(frozen=True)
class Recipe:
    """A training schedule and backbone (module docstring). ``batch_size`` is the effective
    batch: under torchrun each of N processes takes batch_size / N."""

    name: str
    epochs: int
    warmup_epochs: float
    batch_size: int = 32
    img_size: int = 448
    base_lr: float = 5e-4  # the official linear rule: lr = base_lr * batch_size / 512
    min_lr: float = 0.01  # the cosine ends at min_lr x the peak lr
    weight_decay: float = 0.05
    grad_clip: float = 5.0
    amp: bool = True
    backbone: str = "swin_tiny_patch4_window7_224"
    backbone_options: Mapping[str, Any] = field(default_factory=dict)
    pretrained: bool = True
    drop_path: float = 0.2
    max_steps: int | None = None  # stop after this many steps (overrides epochs)
    workers: int = 8  # DataLoader processes
    log_every: int = 10  # steps between JSON log lines
    seed: int = 0
    estimate: str = ""  # expected time on a GPU, stated as an estimate

    def __post_init__(self) -> None:
        if self.epochs < 1 or not 0 <= self.warmup_epochs <= self.epochs:
            raise ValueError(
                f"recipe {self.name!r}: need epochs >= 1 and 0 <= warmup_epochs <= epochs, got "
                f"{self.epochs} and {self.warmup_epochs}"
            )
        if self.batch_size < 1 or self.img_size < 1 or self.workers < 0 or self.log_every < 1:
            raise ValueError(f"recipe {self.name!r}: batch, size, workers, log_every must be > 0")

    @property
    def lr(self) -> float:
        """The peak learning rate, base_lr x batch_size / 512 (3.125e-5 for the paper)."""
        return self.base_lr * self.batch_size / 512

    @property
    def warmup(self) -> float:
        """The warm-up as a fraction of all steps (``fit``'s ``warmup``)."""
        return self.warmup_epochs / self.epochs

    def replace(self, **changes: Any) -> Recipe:
        """A copy with ``changes`` (command-line overrides); None values are left out."""
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "backbone_options": dict(self.backbone_options)}

    def build_backbone(self) -> nn.Module:
        """The timm Swin of this recipe, classifier removed (``pretrained`` downloads weights
        from the Hugging Face hub once; timm caches them)."""
        return timm_backbone(
            self.backbone,
            pretrained=self.pretrained,
            img_size=self.img_size,
            drop_path_rate=self.drop_path,
            **self.backbone_options,
        )


# Estimates, not measurements: from the official code's ~0.19 s per step (Swin-T, 448 x 448,
# batch 32, bf16, one H100: DESIGN.md), 157 steps per epoch, single-task runs at about 2/3 of that
# cost, plus one evaluation of the 5,105 validation images per run.
RECIPES: dict[str, Recipe] = {
    "paper": Recipe(
        "paper",
        epochs=300,
        warmup_epochs=20,
        estimate="about 22 GPU-hours on one H100 for the 10 runs (estimate, not measured)",
    ),
    "paper-quick": Recipe(
        "paper-quick",
        epochs=10,
        warmup_epochs=1,
        estimate="about 1 hour on one H100 for the 10 runs (estimate, not measured)",
    ),
    "fixture": Recipe(
        "fixture",
        epochs=2,
        warmup_epochs=0.5,
        batch_size=2,
        img_size=64,
        amp=False,
        pretrained=False,
        backbone_options={
            "embed_dim": 16,
            "depths": (1, 1, 1, 1),
            "num_heads": (1, 1, 1, 1),
            "window_size": 4,
        },
        workers=0,
        log_every=1,
        estimate="under a minute on 2 CPU cores (measured on the fixture)",
    ),
}


@dataclass(frozen=True)
class RunSpec:
    """One model of the table: ``method`` and ``options`` for ``build_model``, its tasks."""

    name: str
    label: str
    method: str
    tasks: tuple[str, ...] = TASKS
    options: Mapping[str, Any] = field(default_factory=dict)

    @property
    def single_task(self) -> bool:
        return self.method == "full" and len(self.tasks) == 1


RUNS: dict[str, RunSpec] = {
    run.name: run
    for run in [
        *(RunSpec(f"single-{t}", f"single-task {t}", "full", (t,)) for t in TASKS),
        RunSpec("mtl-full", "MTL full fine-tuning", "full"),
        RunSpec("decoders", "MTL decoders only", "decoders"),
        RunSpec("shared-lora", "MTL shared LoRA r=32", "shared_lora", options={"shared_rank": 32}),
        *(
            RunSpec(f"mtlora-r{r}", f"MTLoRA r={r}", "mtlora", options={"shared_rank": r})
            for r in (16, 32, 64)
        ),
    ]
}
