"""MTLoRA (Agiza, Neseem, Reda, CVPR 2024) on any timm ``SwinTransformer``.

TA-LoRA (task-agnostic, shared) adapts qkv / proj / fc1 / fc2 of every block. TS-LoRA
(task-specific) adds one low-rank branch per task to proj / fc1 / fc2 of the last block of each
chosen stage, and that block runs 1 + T residual streams (shared + one per task); attention runs
once, on the shared stream:

    a     = attn(LN1 x)                   (shared: qkv, shifted windows, softmax; up to proj)
    x_t'  = x + proj_t(a)                 x_t'' = x_t' + fc2_t(GELU(fc1_t(LN2 x_t')))

with LayerNorm weights shared. A TS layer maps the shared input x and task inputs x_t to

    shared   W x + b + s B_s A_s x
    task t   W x + b + s B_t A_t x_t                  task_output="official" (default, the paper's)
    task t   W x + b + s B_s A_s x + s B_t A_t x_t    task_output="with_shared"

so W x is one dense matmul for all streams. Task features of a stage go to the task decoders; the
next stage continues from the shared stream.

Reusing timm's block: the task streams need the block's attention (shift, window partition, masked
attention, reverse, un-shift, crop) up to and including proj. We call the block's own ``_attn`` and,
for that call only, let the proj adapter return its 1 + T outputs stacked along the batch dimension
(a flag set by ``task_streams``): timm's window reverse and un-shift then simply see 1 + T times the
batch. Nothing of timm is copied, and the residual / LN2 / MLP part is written out below. Merging
(``merge_adapters``) folds only the shared update into W; task branches stay separate and, in
"official" mode, subtract the shared update again in low rank.

Notes. Inputs may be any size the Swin accepts (non-square too: build it with
``dynamic_img_size=True``, or call its ``set_input_size``). In "official" mode the shared update of
the last stage's TS fc2 only feeds the last shared stream, which no decoder reads: it never trains,
as in the official code, whose parameter count (and so the paper's) includes it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Literal

import torch
import torch.nn.functional as F
from timm.models.swin_transformer import PatchMerging, SwinTransformer, WindowAttention
from torch import Tensor, nn

from mtlora_lite.functional import lora_dropout
from mtlora_lite.lora import LoRALinear, inject_adapters, mark_only_adapters_trainable

TaskOutput = Literal["official", "with_shared"]
RankSpec = int | Sequence[int]
TA_TARGETS = ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")
TS_TARGETS = ("attn.proj", "mlp.fc1", "mlp.fc2")


@dataclass
class MTLoRAConfig:
    """MTLoRA hyper-parameters; the defaults are the official ones (configs/mtlora/tiny_448).

    shared_rank: TA-LoRA rank, one int or one per stage.
    task_rank: TS-LoRA rank: an int, one per stage, or ``{task: int or per-stage list}`` naming
        every task.
    scale: the official fixed multiplier s, the same at every rank (4.0).
    alpha: if set, use the standard rule s = alpha / r for each branch instead of ``scale``.
    dropout: dropout on the low-rank inputs (0.05).
    task_output: "official" (task outputs omit the shared update) or "with_shared" (they add it).
    task_stages: stages whose last block gets TS-LoRA; None = every stage, () = none (plain
        shared LoRA).
    train_patch_embed / train_norms / train_position_bias: keep the patch embedding, all
        LayerNorms (not timm's unused final norm) and relative-position bias tables trainable.
    merge_reduction: the patch-merging reductions are "trainable" (official), "frozen", or get
        a shared "lora" (MTLoRA+, rank of the stage they close, as the official code).
    """

    shared_rank: RankSpec = 16
    task_rank: RankSpec | Mapping[str, RankSpec] = 4
    scale: float = 4.0
    alpha: float | None = None
    dropout: float = 0.05
    task_output: TaskOutput = "official"
    task_stages: Sequence[int] | None = None
    train_patch_embed: bool = True
    train_norms: bool = True
    train_position_bias: bool = True
    merge_reduction: Literal["trainable", "frozen", "lora"] = "trainable"

    def __post_init__(self) -> None:
        ranks = self.task_rank.values() if isinstance(self.task_rank, Mapping) else [self.task_rank]
        for r in [self.shared_rank, *ranks]:
            for v in [r] if isinstance(r, int) else r:
                if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                    raise ValueError(f"ranks must be positive integers, got {r!r}")
        if self.alpha is not None and self.alpha <= 0:
            raise ValueError(
                f"alpha must be positive (or None for the fixed scale), got {self.alpha}"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        choices = {
            "task_output": ("official", "with_shared"),
            "merge_reduction": ("trainable", "frozen", "lora"),
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")


class TaskLoRA(nn.Module):
    """One task's branch ``s B_t A_t x`` inside an ``MTLoRALinear``: (..., in) -> (..., out).

    A (r, in) starts kaiming-uniform and B (out, r) at zero, so the branch starts at zero.
    """

    adapter_group = "ts_lora"  # its own row in trainable_breakdown

    def __init__(
        self, in_features: int, out_features: int, rank: int, scaling: float, like: Tensor
    ) -> None:
        super().__init__()
        self.rank, self.scaling = rank, scaling
        self.lora_A = nn.Parameter(like.new_empty(rank, in_features))
        self.lora_B = nn.Parameter(like.new_zeros(out_features, rank))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))

    def forward(self, x: Tensor) -> Tensor:
        return self.scaling * F.linear(F.linear(x, self.lora_A), self.lora_B)


class MTLoRALinear(LoRALinear):
    """TA-LoRA on a frozen linear layer, plus optional TS-LoRA branches (one per task).

    ``forward(x)`` is the shared output ``W x + b + s B_s A_s x`` (a plain LoRA layer);
    ``forward_streams(x, x_tasks)`` gives the shared and every task's output (module docstring).
    ``merge()`` folds only the shared update into W.
    """

    adapter_group = "ta_lora"

    def __init__(
        self,
        base_layer: nn.Linear,
        rank: int,
        task_ranks: Mapping[str, int] | None = None,
        *,
        scale: float = 4.0,
        alpha: float | None = None,
        dropout: float = 0.0,
        task_output: TaskOutput = "official",
    ) -> None:
        super().__init__(
            base_layer, rank, alpha=scale * rank if alpha is None else alpha, dropout=dropout
        )
        self.task_output = task_output
        dims, w = (self.in_features, self.out_features), base_layer.weight
        self.tasks = nn.ModuleDict(  # TS-LoRA, same scale rule as the shared branch
            {
                t: TaskLoRA(*dims, r, scale if alpha is None else alpha / r, w)
                for t, r in (task_ranks or {}).items()
            }
        )
        self._streams_in_batch = False  # set by ``task_streams`` around timm's attention call

    def forward(self, x: Tensor) -> Tensor:
        """x: (..., in) -> (..., out); while ``_streams_in_batch``: (1 + T) * x.shape[0] rows."""
        if self._streams_in_batch:  # shared output first, then each task's, stacked on dim 0
            shared, tasks = self.forward_streams(x)
            return torch.cat([shared.unsqueeze(0), tasks]).flatten(0, 1)
        return super().forward(x)

    def forward_streams(self, x: Tensor, x_tasks: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Shared output (..., out) and task outputs (T, ..., out) of a TS layer.

        x: (..., in) shared input; x_tasks: (T, ..., in) task inputs, or None if every task reads x
        (proj after the shared attention). As in the official code, dropout applies to x only.
        """
        base = F.linear(x, self.base_layer.weight, self.base_layer.bias)  # the one dense matmul
        x = lora_dropout(x, self.dropout if self.training else 0.0)
        if self.merged and self.task_output == "with_shared":
            shared = task_base = base  # W already holds the shared update
        else:
            delta = self.scaling * F.linear(F.linear(x, self.lora_A), self.lora_B)
            shared = base if self.merged else base + delta
            if self.task_output == "with_shared":
                task_base = shared
            else:  # the task outputs omit the shared update (subtract it again once merged)
                task_base = base - delta if self.merged else base
        return shared, self._task_outputs(
            task_base, x if x_tasks is None else x_tasks, x_tasks is None
        )

    def _task_outputs(self, base: Tensor, x: Tensor, shared_input: bool) -> Tensor:
        """base + s_t B_t A_t x_t for every task: base (..., out); x (..., in) if ``shared_input``
        else (T, ..., in) -> (T, ..., out)."""
        branches = list(self.tasks.values())
        if not branches:
            raise ValueError("this layer has no task branches (it is TA-LoRA only)")
        if len({b.rank for b in branches}) > 1:  # differing ranks: a loop of small low-rank matmuls
            xs = [x] * len(branches) if shared_input else x.unbind(0)
            return torch.stack([base + b(xt) for b, xt in zip(branches, xs, strict=True)])
        t, r = len(branches), branches[0].rank
        a_all = torch.stack([br.lora_A for br in branches])  # (T, r, in)
        b_all = torch.stack([br.scaling * br.lora_B for br in branches])  # (T, out, r)
        if shared_input:  # one GEMM for all tasks' A
            u = F.linear(x.reshape(-1, self.in_features), a_all.reshape(t * r, -1))
            u = u.view(-1, t, r).transpose(0, 1)  # (T, N, r)
        else:
            u = torch.bmm(x.reshape(t, -1, self.in_features), a_all.transpose(1, 2))  # (T, N, r)
        base3 = base.reshape(1, -1, self.out_features).expand(t, -1, -1)
        out = torch.baddbmm(
            base3, u, b_all.transpose(1, 2)
        )  # (T, N, out): base + B_t u_t, one pass
        return out.view(t, *base.shape)

    def adapter_config(self) -> dict[str, object]:
        ranks = {t: b.rank for t, b in self.tasks.items()}
        scalings = {t: b.scaling for t, b in self.tasks.items()}
        return {
            **super().adapter_config(),
            "type": type(self).__name__,
            "task_ranks": ranks,
            "task_scalings": scalings,
            "task_output": self.task_output,
        }

    def extra_repr(self) -> str:
        tasks = {t: b.rank for t, b in self.tasks.items()}
        return f"{super().extra_repr()}, tasks={tasks}, task_output={self.task_output}"


class MergeLoRALinear(MTLoRALinear):
    """MTLoRA+: a shared LoRA on a patch-merging reduction (its own row in trainable_breakdown)."""

    adapter_group = "merge_lora"


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
    """``tasks`` as a list; raises ``ValueError`` unless the names are unique and usable as keys."""
    tasks = list(tasks)
    bad = [t for t in tasks if not isinstance(t, str) or not t or "." in t]
    if bad or len(set(tasks)) != len(tasks):
        raise ValueError(f"task names must be unique, non-empty strings without '.', got {tasks}")
    return tasks


def inject_mtlora(
    swin: nn.Module, tasks: Sequence[str], config: MTLoRAConfig | None = None
) -> list[str]:
    """Add TA-LoRA to every block and TS-LoRA (for ``tasks``) to the last block of the chosen
    stages of a timm Swin, in place. Returns the adapted module paths. Freeze with
    ``mark_mtlora_trainable``; run with ``mtlora_lite.models.SwinTaskEncoder``.
    """
    swin, cfg, tasks = check_swin(swin), config or MTLoRAConfig(), check_task_names(tasks)
    n = len(swin.layers)
    shared, task_ranks = _per_stage(cfg.shared_rank, n, "shared_rank"), _task_ranks(cfg, tasks, n)
    ts_stages = set(range(n) if cfg.task_stages is None else cfg.task_stages)
    if not ts_stages <= set(range(n)):
        raise ValueError(f"task_stages {sorted(ts_stages)} must be within 0..{n - 1}")
    opts = dict(scale=cfg.scale, alpha=cfg.alpha, dropout=cfg.dropout, task_output=cfg.task_output)
    adapted: list[str] = []
    for i, stage in enumerate(swin.layers):
        if cfg.merge_reduction == "lora" and isinstance(stage.downsample, PatchMerging):
            make = partial(MergeLoRALinear, rank=shared[i - 1], **opts)
            inject_adapters(stage.downsample, "reduction", make)
            adapted.append(f"layers.{i}.downsample.reduction")
        for j, block in enumerate(stage.blocks):
            ts = i in ts_stages and j == len(stage.blocks) - 1
            for target in TA_TARGETS:
                ranks = task_ranks[i] if ts and target in TS_TARGETS else None
                make = partial(MTLoRALinear, rank=shared[i], task_ranks=ranks, **opts)
                inject_adapters(block, target, make)
                adapted.append(f"layers.{i}.blocks.{j}.{target}")
    return adapted


def mark_mtlora_trainable(swin: nn.Module, config: MTLoRAConfig | None = None) -> None:
    """Freeze everything but the adapters, then unfreeze the config's trainable extras."""
    swin, cfg = check_swin(swin), config or MTLoRAConfig()
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
    proj._streams_in_batch = True  # the side channel: proj returns the S streams batch-stacked
    try:
        a = block._attn(block.norm1(x))  # (S * B, H, W, C): timm's own attention, run once
    finally:
        proj._streams_in_batch = False
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
