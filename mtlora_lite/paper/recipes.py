"""What ``python -m mtlora_lite.paper`` runs: named recipes (schedules) and the runs of the paper's
Swin-T table (methods).

Recipes (``RECIPES``):

* ``paper``: the published schedule (the official code's configs/mtlora/tiny_448 and its command
  line): timm's ``swin_tiny_patch4_window7_224`` with its ImageNet-1k weights, built for 448 x 448
  inputs (``img_size=448``: same window 7, so the pretrained tables fit); stochastic depth 0.2;
  AdamW (0.9, 0.999, eps 1e-8), weight decay 0.05 on every trainable parameter of two or more
  dimensions, the relative-position bias tables included (the official optimizer exempts only
  1-D parameters and biases: its multi-task model names no other exemption); peak lr 5e-4 x
  batch / 512 = 3.125e-5 at batch 32; 20 linear warm-up epochs from 5e-7 x batch / 512, then a
  per-step cosine to 1/100 of the peak; gradients clipped at 5.0; fp16 autocast with a
  GradScaler; batch 32 with the last partial batch dropped (156 steps per epoch over the 4,998
  training images); 300 epochs; validation every 5 epochs and after the last, in fp32.
* ``paper-quick``: the same with 10 epochs (1 of warm-up), validated after every epoch: every run
  of the table in about an hour on one H100 (an estimate: see ``PaperRecipe.estimate``); far
  from converged, so expect lower numbers than the paper's, but the same command and code path.
* ``fixture``: a plumbing check on ``pascal.fixture`` data: a tiny random Swin (no download) at
  64 x 64, batch 2, 2 epochs, fp32, on a CPU in well under a minute per run. Its numbers mean
  nothing.

Precision: "fp16" (autocast and a GradScaler) is the default of ``paper`` and ``paper-quick``
because the official code trains so, and this command reproduces it; "bf16" (``--precision
bf16``) needs no loss scaling and never skips a step, at the same speed on Ampere and Hopper
GPUs, and is the choice where fp16 overflows; "fp32" is slower. Evaluation is in fp32 always.

Drop path is a property of the timm backbone (``drop_path_rate``, rising linearly from 0 in the
first block to ``PaperRecipe.drop_path`` in the last; ``build_backbone()`` sets it), not of
``MTLoRAConfig``, whose defaults are the official MTLoRA options. Runs (``RUNS``): the four
single-task references (full fine-tuning, one model per task; Delta_m is measured against them),
multi-task full fine-tuning, decoders only, one shared LoRA (our own variant: the paper gives no
configuration for its LoRA row) and MTLoRA at shared rank 16 / 32 / 64 (task rank 4, the
official defaults).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from mtlora_lite.multitask.backbones import timm_backbone
from mtlora_lite.multitask.pascal.data import TASKS
from mtlora_lite.multitask.precision import PRECISIONS

REPORTING = ("log_every", "estimate")  # fields that change no result: not a recipe's identity


@dataclass(frozen=True)
class PaperRecipe:
    """A training schedule and backbone (module docstring). ``batch_size`` is the effective
    batch: under torchrun each of N processes takes batch_size / N."""

    name: str
    epochs: int
    warmup_epochs: float
    batch_size: int = 32
    img_size: int = 448
    base_lr: float = 5e-4  # the official linear rule: lr = base_lr * batch_size / 512
    warmup_base_lr: float = 5e-7  # the warm-up starts at warmup_base_lr * batch_size / 512
    min_lr: float = 0.01  # the cosine ends at min_lr x the peak lr
    weight_decay: float = 0.05
    grad_clip: float = 5.0
    precision: str = "fp16"  # training: "fp16" (with a GradScaler), "bf16" or "fp32"
    eval_every: int = 5  # epochs between validations (and one after the last)
    backbone: str = "swin_tiny_patch4_window7_224"
    backbone_options: Mapping[str, Any] = field(default_factory=dict)
    pretrained: bool = True
    drop_path: float = 0.2
    max_steps: int | None = None  # stop after this many steps (overrides epochs)
    seed: int = 0
    log_every: int = 10  # steps between JSON log lines
    estimate: str = ""  # expected time on a GPU, stated as an estimate

    def __post_init__(self) -> None:
        if self.epochs < 1 or not 0 <= self.warmup_epochs <= self.epochs:
            raise ValueError(
                f"recipe {self.name!r}: need epochs >= 1 and 0 <= warmup_epochs <= epochs, got "
                f"{self.epochs} and {self.warmup_epochs}"
            )
        if min(self.batch_size, self.img_size, self.eval_every, self.log_every) < 1:
            raise ValueError(
                f"recipe {self.name!r}: batch size, image size, eval_every and log_every must be "
                "at least 1"
            )
        if self.precision not in PRECISIONS:
            raise ValueError(
                f"recipe {self.name!r}: precision must be one of {PRECISIONS}, got "
                f"{self.precision!r}"
            )

    @property
    def lr(self) -> float:
        """The peak learning rate, base_lr x batch_size / 512 (3.125e-5 for the paper)."""
        return self.base_lr * self.batch_size / 512

    @property
    def warmup_start_lr(self) -> float:
        """The learning rate of the first step, warmup_base_lr x batch_size / 512."""
        return self.warmup_base_lr * self.batch_size / 512

    def replace(self, **changes: Any) -> PaperRecipe:
        """A copy with ``changes`` (command-line overrides); None values are left out."""
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "backbone_options": dict(self.backbone_options)}

    def identity(self) -> dict[str, Any]:
        """What makes two runs comparable: every field but the reporting ones (``REPORTING``).
        Loader settings (workers, pinned memory) are no fields at all."""
        return {k: v for k, v in self.to_dict().items() if k not in REPORTING}

    def fit_options(self) -> dict[str, Any]:
        """The schedule as ``fit``'s keyword arguments (no ``no_weight_decay``: fit's default
        exempts only 1-D parameters, as the official optimizer)."""
        return {
            "epochs": self.epochs,
            "max_steps": self.max_steps,
            "lr": self.lr,
            "min_lr": self.min_lr,
            "weight_decay": self.weight_decay,
            "warmup": self.warmup_epochs / self.epochs,
            "warmup_start_lr": self.warmup_start_lr,
            "grad_clip": self.grad_clip,
            "precision": self.precision,
            "eval_every": self.eval_every,
            "seed": self.seed,
        }

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


# Estimates, not measurements: about 0.19 s per training step of the official code (Swin-T,
# 448 x 448, batch 32, one H100), 156 steps per epoch, single-task runs at about 2/3 of that
# cost, and a validation on the 5,105 validation images (about 15 s) every eval_every epochs.
RECIPES: dict[str, PaperRecipe] = {
    "paper": PaperRecipe(
        "paper",
        epochs=300,
        warmup_epochs=20,
        estimate="about 24 GPU-hours on one H100 for the 10 runs (estimate, not measured)",
    ),
    "paper-quick": PaperRecipe(
        "paper-quick",
        epochs=10,
        warmup_epochs=1,
        eval_every=1,
        estimate="about 1 hour on one H100 for the 10 runs (estimate, not measured)",
    ),
    "fixture": PaperRecipe(
        "fixture",
        epochs=2,
        warmup_epochs=0.5,
        batch_size=2,
        img_size=64,
        precision="fp32",
        eval_every=1,
        pretrained=False,
        backbone_options={
            "embed_dim": 16,
            "depths": (1, 1, 1, 1),
            "num_heads": (1, 1, 1, 1),
            "window_size": 4,
        },
        log_every=1,
        estimate="under a minute on 2 CPU cores (measured on the fixture)",
    ),
}


@dataclass(frozen=True)
class RunSpec:
    """One model of the table: ``method`` and ``options`` for ``build_model``, its tasks, and
    ``about``: what the row is."""

    name: str
    label: str
    method: str
    tasks: tuple[str, ...] = TASKS
    options: Mapping[str, Any] = field(default_factory=dict)
    about: str = ""

    @property
    def single_task(self) -> bool:
        return self.method == "full" and len(self.tasks) == 1


RUNS: dict[str, RunSpec] = {
    run.name: run
    for run in [
        *(
            RunSpec(
                f"single-{t}",
                f"single-task {t}",
                "full",
                (t,),
                about="full fine-tuning on this task alone: the reference of Delta_m"
                + (" (trained on the images with a person)" if t == "human_parts" else ""),
            )
            for t in TASKS
        ),
        RunSpec(
            "mtl-full",
            "MTL full fine-tuning",
            "full",
            about="one shared backbone, all of it trained, and the four decoders",
        ),
        RunSpec(
            "decoders",
            "MTL decoders only",
            "decoders",
            about="the pretrained backbone frozen; only the four decoders train",
        ),
        RunSpec(
            "shared-lora",
            "shared LoRA r=32 (our variant)",
            "shared_lora",
            options={"shared_rank": 32},
            about="our own variant, not the paper's LoRA row (which has no published "
            "configuration): rank-32 LoRA on qkv, proj, fc1 and fc2 of every block of the frozen "
            "backbone (MTLoRA without its task-specific modules) plus MTLoRA's trainable extras "
            "(patch embedding, norms, position tables, patch-merging reductions)",
        ),
        *(
            RunSpec(
                f"mtlora-r{r}",
                f"MTLoRA r={r}",
                "mtlora",
                options={"shared_rank": r},
                about=f"MTLoRA: task-agnostic LoRA of rank {r} everywhere, task-specific LoRA of "
                "rank 4 in the last block of each stage",
            )
            for r in (16, 32, 64)
        ),
    ]
}
