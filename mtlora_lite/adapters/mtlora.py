"""MTLoRA's layers (Agiza, Neseem, Reda, CVPR 2024): its config, TA-LoRA and TS-LoRA.

TA-LoRA (task-agnostic, shared) adapts qkv / proj / fc1 / fc2 of every block. TS-LoRA
(task-specific) adds one low-rank branch per task to proj / fc1 / fc2 of the last block of each
chosen stage. A TS layer maps the shared input x and task inputs x_t to

    shared   W x + b + s B_s A_s x
    task t   W x + b + s B_t A_t x_t                  task_output="official" (default, the paper's)
    task t   W x + b + s B_s A_s x + s B_t A_t x_t    task_output="with_shared"

so W x is one dense matmul for all streams. Merging (``merge_adapters``) folds only the shared
update into W; task branches stay separate and, in "official" mode, subtract the shared update
again in low rank. How the 1 + T streams run through a timm Swin block: ``adapters.swin``.
"""

from __future__ import annotations

import contextlib
import math
import numbers
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mtlora_lite.adapters.base import AdapterLayer
from mtlora_lite.adapters.checks import check_count, check_dropout, check_positive
from mtlora_lite.adapters.functional import lora_dropout, lora_linear
from mtlora_lite.adapters.lora import lora_scaling

TaskOutput = Literal["official", "with_shared"]
RankSpec = int | Sequence[int]


@dataclass(frozen=True)
class MTLoRAConfig:
    """MTLoRA's hyper-parameters; the defaults are the official ones (configs/mtlora/tiny_448).

    Checked when built: integers of any type (e.g. ``np.int64``) become ``int``, rank and stage
    lists tuples. Drop path is not an adapter option: it is the timm backbone's
    ``drop_path_rate`` (0.2 in the official config).
    """

    shared_rank: RankSpec = 16  # TA-LoRA's rank: one int, or one per stage
    # TS-LoRA's rank: an int, one per stage, or {task: int or per-stage list} naming every task
    task_rank: RankSpec | Mapping[str, RankSpec] = 4
    scale: float = 4.0  # the official fixed multiplier s, the same at every rank; finite, > 0
    alpha: float | None = None  # if set, s = alpha / r for each branch instead of ``scale``
    dropout: float = 0.05  # probability in [0, 1) of dropping an entry of the low-rank inputs
    # "official": the task outputs omit the shared update; "with_shared": they add it
    task_output: TaskOutput = "official"
    # stages whose last block gets TS-LoRA; None: every stage, (): none (plain shared LoRA)
    task_stages: Sequence[int] | None = None
    train_patch_embed: bool = True  # the patch embedding trains
    train_norms: bool = True  # every LayerNorm trains (not timm's final norm, unused by decoders)
    train_position_bias: bool = True  # the relative-position bias tables train
    # the patch-merging reductions: "trainable" (official), "frozen", or a shared "lora"
    # (MTLoRA+, of the rank of the stage they close, as in the official code)
    merge_reduction: Literal["trainable", "frozen", "lora"] = "trainable"

    def __post_init__(self) -> None:
        if isinstance(self.task_rank, Mapping):
            task_rank = {t: _ranks(r, f"task_rank[{t!r}]") for t, r in self.task_rank.items()}
        else:
            task_rank = _ranks(self.task_rank, "task_rank")
        alpha_fix = "pass alpha=None to use the fixed scale, or e.g. alpha = 2 * rank"
        checked = {
            "shared_rank": _ranks(self.shared_rank, "shared_rank"),
            "task_rank": task_rank,
            "scale": check_positive(self.scale, "scale", "the official MTLoRA scale is 4.0"),
            "alpha": None if self.alpha is None else check_positive(self.alpha, "alpha", alpha_fix),
            "dropout": check_dropout(self.dropout),
            "task_stages": None if self.task_stages is None else _stages(self.task_stages),
        }
        for name, value in checked.items():  # frozen, so via object
            object.__setattr__(self, name, value)
        choices = {
            "task_output": ("official", "with_shared"),
            "merge_reduction": ("trainable", "frozen", "lora"),
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")

    def scaling(self, rank: int) -> float:
        """s of a branch of rank r: the fixed ``scale``, or alpha / r when ``alpha`` is set."""
        return self.scale if self.alpha is None else lora_scaling(rank, self.alpha)


def _ranks(value: object, name: str) -> int | tuple[int, ...]:
    """One rank (an ``int``) or one per stage (a tuple of ``int``); else ``ValueError``."""
    many = isinstance(value, Sequence) and not isinstance(value, str)
    try:
        return tuple(check_count(v, name) for v in value) if many else check_count(value, name)
    except ValueError:
        raise ValueError(
            f"ranks must be positive integers, one or a list with one per stage; got "
            f"{name}={value!r}"
        ) from None


def _stages(value: object) -> tuple[int, ...]:
    """``task_stages`` as a tuple of stage indices; an int or a float gets the fix in the error."""
    if (
        isinstance(value, numbers.Number)
        or not isinstance(value, Sequence)
        or isinstance(value, str)
    ):
        raise TypeError(
            f"task_stages must be a list or tuple of stage indices, got {value!r}; for one stage "
            f"pass e.g. task_stages=({value!r},), for none task_stages=(), for all None"
        )
    try:
        return tuple(check_count(i, "a task stage", minimum=0) for i in value)
    except ValueError as err:
        raise ValueError(f"task_stages={value!r}: {err}") from None


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


class MTLoRALinear(AdapterLayer):
    """TA-LoRA on a frozen linear layer, plus optional TS-LoRA branches (one per task).

    ``rank`` is the shared rank, ``task_ranks`` the rank of each task's branch; the scale (fixed,
    or alpha / r), dropout and task_output come from ``config`` (its other fields do not concern
    one layer). ``scaling`` is the shared branch's s, each branch's own in ``tasks[t].scaling``.

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
        config: MTLoRAConfig | None = None,
    ) -> None:
        super().__init__(base_layer)
        self.config = cfg = config or MTLoRAConfig()
        self.rank = check_count(rank, "rank")
        self.scaling = cfg.scaling(self.rank)  # the real scale: fixed, or alpha / r
        w = base_layer.weight
        self.lora_A = nn.Parameter(w.new_empty(self.rank, self.in_features))  # (r, in)
        self.lora_B = nn.Parameter(w.new_zeros(self.out_features, self.rank))  # (out, r)
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        dims = (self.in_features, self.out_features)
        self.tasks = nn.ModuleDict(  # TS-LoRA, same scale rule as the shared branch
            {t: TaskLoRA(*dims, r, cfg.scaling(r), w) for t, r in (task_ranks or {}).items()}
        )
        self._streams_in_batch = False  # see ``streams_in_batch``

    @property
    def dropout(self) -> float:
        return self.config.dropout

    @property
    def task_output(self) -> TaskOutput:
        return self.config.task_output

    def delta_weight(self) -> Tensor:
        """The shared update s * B_s A_s: (out, in)."""
        return self.scaling * (self.lora_B @ self.lora_A)

    @contextlib.contextmanager
    def streams_in_batch(self) -> Iterator[None]:
        """Inside this block, ``forward`` returns the shared and every task's output stacked on
        the batch dimension: (..., in) -> ((1 + T) * x.shape[0], ..., out). ``task_streams`` uses
        it around timm's attention call, whose proj is this layer."""
        self._streams_in_batch = True
        try:
            yield
        finally:
            self._streams_in_batch = False

    def forward(self, x: Tensor) -> Tensor:
        """x: (..., in) -> (..., out); inside ``streams_in_batch``: (1 + T) * x.shape[0] rows."""
        if self._streams_in_batch:  # shared output first, then each task's, stacked on dim 0
            shared, tasks = self.forward_streams(x)
            return torch.cat([shared.unsqueeze(0), tasks]).flatten(0, 1)
        if self.merged or self.disabled:
            return self.base_layer(x)
        p = self.dropout if self.training else 0.0
        return lora_linear(self.base_layer, x, self.lora_A, self.lora_B, self.scaling, p)

    def forward_streams(self, x: Tensor, x_tasks: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Shared output (..., out) and task outputs (T, ..., out) of a TS layer.

        x: (..., in) shared input; x_tasks: (T, ..., in) task inputs, or None if every task reads x
        (proj after the shared attention). As in the official code, dropout applies to x only.
        """
        base = F.linear(x, self.base_layer.weight, self.base_layer.bias)  # the one dense matmul
        if self.disabled:  # the base function: W acts on the shared input in every stream
            return base, base.unsqueeze(0).expand(len(self.tasks), *base.shape).contiguous()
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
        cfg = self.config
        return {
            "type": type(self).__name__,
            "rank": self.rank,
            "task_ranks": {t: b.rank for t, b in self.tasks.items()},
            "scale": cfg.scale,
            "alpha": cfg.alpha,
            "dropout": cfg.dropout,
            "task_output": cfg.task_output,
            "scaling": self.scaling,  # what scale and alpha give: the real s of each branch
            "task_scalings": {t: b.scaling for t, b in self.tasks.items()},
            "in_features": self.in_features,
            "out_features": self.out_features,
        }

    def extra_repr(self) -> str:
        tasks = {t: b.rank for t, b in self.tasks.items()}
        return (
            f"rank={self.rank}, scaling={self.scaling:g}, dropout={self.dropout:g}, "
            f"merged={self.merged}, tasks={tasks}, task_output={self.task_output}"
        )


class MergeLoRALinear(MTLoRALinear):
    """MTLoRA+: a shared LoRA on a patch-merging reduction (its own row in trainable_breakdown)."""

    adapter_group = "merge_lora"
