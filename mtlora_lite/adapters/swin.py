"""MTLoRA on any timm ``SwinTransformer``: injection, freezing, and the 1 + T task streams.

``inject_mtlora`` puts TA-LoRA on qkv / proj / fc1 / fc2 of every block and TS-LoRA on proj / fc1 /
fc2 of the last block of each chosen stage (``adapters.mtlora``). That block then runs 1 + T
residual streams (shared + one per task); attention runs once, on the shared stream:

    a     = attn(LN1 x)                   (shared: qkv, shifted windows, softmax; up to proj)
    x_t'  = x + proj_t(a)                 x_t'' = x_t' + fc2_t(GELU(fc1_t(LN2 x_t')))

with LayerNorm weights shared. Task features of a stage go to the task decoders; the next stage
continues from the shared stream. ``SwinTaskEncoder`` runs a whole Swin this way.

Reusing timm's block: the task streams need the block's attention (shift, window partition, masked
attention, reverse, un-shift, crop) up to and including proj. We call the block's own ``_attn``
(a private method of timm's ``SwinTransformerBlock``, checked at injection) and, for that call
only, let the proj adapter return its 1 + T outputs stacked along the batch dimension
(``MTLoRALinear.streams_in_batch``): timm's window reverse and un-shift then simply see 1 + T
times the batch. Nothing of timm is copied, and the residual / LN2 / MLP part is written out below.

Notes. Inputs may be any size the Swin accepts (non-square too: build it with
``dynamic_img_size=True``, or call its ``set_input_size``). In "official" mode the shared update of
the last stage's TS fc2 only feeds the last shared stream, which no decoder reads: it never trains,
as in the official code, whose parameter count (and so the paper's) includes it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any, Literal

import timm
from timm.models.swin_transformer import PatchMerging, SwinTransformer, WindowAttention
from torch import Tensor, nn

from mtlora_lite.adapters.base import make_config
from mtlora_lite.adapters.freezing import mark_only_adapters_trainable
from mtlora_lite.adapters.mtlora import MergeLoRALinear, MTLoRAConfig, MTLoRALinear, RankSpec
from mtlora_lite.adapters.targets import TIMM_TARGETS, inject_adapters

TA_TARGETS = TIMM_TARGETS  # every block: qkv, proj, fc1, fc2
TS_TARGETS = TIMM_TARGETS[1:]  # the last block of a stage: proj, fc1, fc2 (attention stays shared)


def check_swin(model: nn.Module) -> SwinTransformer:
    """``model`` if it is a timm ``SwinTransformer``; else a ``TypeError`` that says what to use."""
    if not isinstance(model, SwinTransformer):
        raise TypeError(
            f"MTLoRA needs a timm SwinTransformer (stages of window-attention blocks), got "
            f"{type(model).__name__}. Use load_backbone('course') or e.g. "
            "timm.create_model('swin_tiny_patch4_window7_224', num_classes=0)."
        )
    return model


def _per_stage(value: RankSpec, n: int, what: str) -> list[int]:
    values = [value] * n if isinstance(value, int) else list(value)
    if len(values) != n:
        raise ValueError(f"{what} has {len(values)} entries but the backbone has {n} stages")
    return values


def _task_ranks(config: MTLoRAConfig, tasks: Sequence[str], n: int) -> list[dict[str, int]]:
    """Per stage, {task: rank}."""
    spec = config.task_rank
    if isinstance(spec, Mapping):
        unknown, missing = sorted(set(spec) - set(tasks)), sorted(set(tasks) - set(spec))
        if unknown or missing:
            raise ValueError(
                f"task_rank names unknown tasks {unknown} / misses tasks {missing}; the tasks are "
                f"{list(tasks)}. Give one rank per task, or a single int for all."
            )
        per_task = {t: _per_stage(spec[t], n, f"task_rank[{t!r}]") for t in tasks}
    else:
        per_task = {t: _per_stage(spec, n, "task_rank") for t in tasks}
    return [{t: per_task[t][i] for t in tasks} for i in range(n)]


def check_task_names(tasks: Sequence[str]) -> list[str]:
    """``tasks`` as a list; raises ``ValueError`` unless there is at least one and the names are
    unique and usable as keys."""
    if isinstance(tasks, str):
        raise TypeError(
            f"tasks must be a list of task names, got the string {tasks!r}; pass [{tasks!r}]"
        )
    tasks = list(tasks)
    if not tasks:
        raise ValueError(
            "the task list is empty: a multi-task model needs at least one task (its outputs "
            "would be {}); pass e.g. ['seg'] or a list of Task objects"
        )
    bad = [t for t in tasks if not isinstance(t, str) or not t or "." in t]
    if bad or len(set(tasks)) != len(tasks):
        raise ValueError(f"task names must be unique, non-empty strings without '.', got {tasks}")
    return tasks


def inject_mtlora(
    swin: nn.Module, tasks: Sequence[str], config: MTLoRAConfig | None = None, **options: Any
) -> list[str]:
    """Add TA-LoRA to every block and TS-LoRA (for ``tasks``) to the last block of the chosen
    stages of a timm Swin, in place: an ``MTLoRAConfig`` and / or its fields, e.g.
    ``inject_mtlora(swin, ["seg", "depth"], shared_rank=8)``. Returns the adapted module paths.
    Freeze with ``mark_mtlora_trainable``; run with ``SwinTaskEncoder``.
    """
    swin, tasks = check_swin(swin), check_task_names(tasks)
    cfg = make_config(MTLoRAConfig, config, **options)
    n = len(swin.layers)
    shared, task_ranks = _per_stage(cfg.shared_rank, n, "shared_rank"), _task_ranks(cfg, tasks, n)
    ts_stages = set(range(n) if cfg.task_stages is None else cfg.task_stages)
    if not ts_stages <= set(range(n)):
        raise ValueError(f"task_stages {sorted(ts_stages)} must be within 0..{n - 1}")
    for i in ts_stages:
        _check_block(swin.layers[i].blocks[-1])
    adapted: list[str] = []
    for i, stage in enumerate(swin.layers):
        if cfg.merge_reduction == "lora" and isinstance(stage.downsample, PatchMerging):
            # rank of the stage it closes, as in the official code
            make = partial(MergeLoRALinear, rank=shared[i - 1], config=cfg)
            inject_adapters(stage.downsample, "reduction", make)
            adapted.append(f"layers.{i}.downsample.reduction")
        for j, block in enumerate(stage.blocks):
            ts = i in ts_stages and j == len(stage.blocks) - 1
            for target in TA_TARGETS:
                ranks = task_ranks[i] if ts and target in TS_TARGETS else None
                make = partial(MTLoRALinear, rank=shared[i], task_ranks=ranks, config=cfg)
                inject_adapters(block, target, make)
                adapted.append(f"layers.{i}.blocks.{j}.{target}")
    return adapted


def _check_block(block: nn.Module) -> None:
    """Task streams call timm's private ``SwinTransformerBlock._attn``: fail at injection, with
    the fix, if this timm version's block no longer has it."""
    needed = ("_attn", "norm1", "norm2", "mlp", "drop_path1", "drop_path2")
    missing = [a for a in needed if not hasattr(block, a)]
    if missing:
        raise TypeError(
            f"TS-LoRA runs the task streams through timm's SwinTransformerBlock, but this block "
            f"({type(block).__name__}, timm {timm.__version__}) has no {missing}. Install a timm "
            "version whose Swin blocks have them (mtlora-lite is tested with timm 1.0), or use "
            "task_stages=() for shared LoRA only."
        )


def mark_mtlora_trainable(
    swin: nn.Module, config: MTLoRAConfig | None = None, **options: Any
) -> None:
    """Freeze everything but the adapters, then unfreeze the config's trainable extras (an
    ``MTLoRAConfig`` and / or its fields, as given to ``inject_mtlora``)."""
    swin, cfg = check_swin(swin), make_config(MTLoRAConfig, config, **options)
    mark_only_adapters_trainable(swin)
    swin.patch_embed.requires_grad_(cfg.train_patch_embed)
    for name, module in swin.named_modules():
        if isinstance(module, nn.LayerNorm) and name != "norm" and cfg.train_norms:
            module.requires_grad_(True)
        if isinstance(module, WindowAttention):
            module.relative_position_bias_table.requires_grad_(cfg.train_position_bias)
        if isinstance(module, PatchMerging) and cfg.merge_reduction == "trainable":
            module.reduction.requires_grad_(True)


def ts_layers(block: nn.Module) -> tuple[MTLoRALinear, MTLoRALinear, MTLoRALinear] | None:
    """The (proj, fc1, fc2) TS layers of a Swin block, or None if the block has no TS-LoRA."""
    layers = (block.attn.proj, block.mlp.fc1, block.mlp.fc2)
    has = [isinstance(m, MTLoRALinear) and len(m.tasks) > 0 for m in layers]
    if any(has) and not all(has):
        raise ValueError("a task-stream block needs TS-LoRA on all of proj, fc1 and fc2")
    return layers if all(has) else None  # type: ignore[return-value]


def task_streams(block: nn.Module, x: Tensor) -> tuple[Tensor, Tensor]:
    """Run a timm Swin block holding TS-LoRA as 1 + T streams (module docstring).

    x: (B, H, W, C) shared input -> shared output (B, H, W, C), task outputs (T, B, H, W, C).
    """
    layers = ts_layers(block)
    if layers is None:
        raise ValueError("this block has no TS-LoRA; inject_mtlora(...) with it in task_stages")
    proj, fc1, fc2 = layers
    b, h, w, c = x.shape
    s = 1 + len(proj.tasks)
    with proj.streams_in_batch():  # proj returns the S streams stacked on the batch dimension
        a = block._attn(block.norm1(x))  # (S * B, H, W, C): timm's own attention, run once
    z = x.unsqueeze(0) + block.drop_path1(a).view(s, b, h, w, c)  # (S, B, H, W, C)
    # split, not z[0] / z[1:]: indexing would zero-fill a full-size gradient per slice in backward
    u_s, u_t = block.norm2(z).view(s, b * h * w, c).split([1, s - 1])
    mlp = block.mlp
    us, ut = fc1.forward_streams(u_s.squeeze(0), u_t)  # W acts on the shared stream only
    us, ut = (mlp.norm(mlp.drop1(mlp.act(v))) for v in (us, ut))  # (N, hidden), (T, N, hidden)
    us, ut = (mlp.drop2(v) for v in fc2.forward_streams(us, ut))  # (N, C), (T, N, C)
    z_s, z_t = z.split([1, s - 1])
    shared = z_s.squeeze(0) + block.drop_path2(us.view(b, h, w, c))
    tasks = z_t + block.drop_path2(ut.view((s - 1) * b, h, w, c)).view(s - 1, b, h, w, c)
    return shared, tasks


class SwinTaskEncoder(nn.Module):
    """Multi-scale features of a timm Swin, per task: (B, 3, H, W) -> {task: [(B, C_i, H_i, W_i)]}.

    Stages whose last block holds TS-LoRA give each task its own features (``task_streams``); the
    other stages, and a Swin without TS-LoRA (full fine-tuning, frozen, plain LoRA), give every
    task the same shared tensors. The next stage always continues from the shared stream.

    features="merged" (official): stage i's features pass through stage i + 1's patch merging (the
        shared weights; the last stage as is): Swin-T gives 192 / 384 / 768 / 768 channels at
        strides 8 / 16 / 32 / 32, the course Swin 64 / 128 / 256 / 256.
    features="stage": the stage outputs as they are (Swin-T 96 / 192 / 384 / 768, strides 4 ... 32).
    """

    def __init__(
        self, swin: nn.Module, tasks: Sequence[str], features: Literal["merged", "stage"] = "merged"
    ) -> None:
        super().__init__()
        if features not in ("merged", "stage"):
            raise ValueError(f"features must be 'merged' or 'stage', got {features!r}")
        self.backbone, self.features = check_swin(swin), features
        self.tasks = check_task_names(tasks)

    @property
    def task_stages(self) -> list[int]:
        """The stages whose last block holds TS-LoRA, read from the backbone at every call (so the
        encoder may be built before ``inject_mtlora``); raises if that TS-LoRA is not for exactly
        ``self.tasks``, in order."""
        stages = []
        for i, stage in enumerate(self.backbone.layers):
            layers = ts_layers(stage.blocks[-1])
            if layers is None:
                continue
            if any(list(m.tasks) != self.tasks for m in layers):
                raise ValueError(
                    f"stage {i} has TS-LoRA for tasks {list(layers[0].tasks)}, but the encoder was "
                    f"given {self.tasks}; use the same names in the same order"
                )
            stages.append(i)
        return stages

    @property
    def channels(self) -> list[int]:
        """Channels of each feature map, finest first."""
        chs = [info["num_chs"] for info in self.backbone.feature_info]
        return chs[1:] + chs[-1:] if self.features == "merged" else chs

    def forward(self, images: Tensor) -> dict[str, list[Tensor]]:
        x = self.backbone.patch_embed(images)  # (B, H/4, W/4, C), channels last
        task_stages = self.task_stages
        shared: list[Tensor] = []  # per stage (B, h, w, c)
        streams: list[Tensor | None] = []  # per stage (T, B, h, w, c), None where shared
        for i, stage in enumerate(self.backbone.layers):
            x = stage.downsample(x)
            if i > 0 and self.features == "merged":  # stage i - 1's features, merged like x
                shared[-1], xt = x, streams[-1]
                if xt is not None:
                    streams[-1] = stage.downsample(xt.flatten(0, 1)).unflatten(0, xt.shape[:2])
            for block in stage.blocks[:-1]:
                x = block(x)
            if i in task_stages:
                x, xt = task_streams(stage.blocks[-1], x)
            else:
                x, xt = stage.blocks[-1](x), None
            shared.append(x)
            streams.append(xt)
        nchw = [s.permute(0, 3, 1, 2) for s in shared]  # views, one list for all tasks
        return {
            task: [
                s if t is None else t[k].permute(0, 3, 1, 2)
                for s, t in zip(nchw, streams, strict=True)
            ]
            for k, task in enumerate(self.tasks)
        }
