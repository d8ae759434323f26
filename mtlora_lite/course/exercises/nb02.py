"""Exercises of notebook 02 (multi-task baselines and task interference).

1. ``multitask_loss(preds, targets, tasks, weights)``: the weighted sum of task losses one
   multi-task step minimises (section 3).
2. ``gradient_cosines(grads)``: the (T, T) cosines between task gradients (section 6, before the
   heatmaps).
3. ``first_order_change(grads, task, lr)``: to first order, how much one step on the summed loss
   changes one task's loss (section 6, the equation).
4. ``pcgrad(g_i, g_j)``: PCGrad's projection of a conflicting gradient (section 6, after the
   cosines: one fix for conflicts).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from mtlora_lite.course.exercises.core import Exercise, Wrong, call, compare, compare_number

# ------------------------------------------------------------------------------------------------
# 1. multi-task loss
# ------------------------------------------------------------------------------------------------


def multitask_loss(
    preds: Mapping[str, Tensor],
    targets: Mapping[str, Tensor],
    tasks: Mapping,
    weights: Mapping[str, float],
) -> Tensor:
    """sum_t weights[t] * tasks[t].loss(preds[t], targets[t]), a scalar tensor."""
    return sum(weights[t] * tasks[t].loss(preds[t], targets[t]) for t in tasks)


@dataclass(frozen=True)
class _ToyTask:
    """A stand-in for ``Task`` with its ``loss`` only."""

    name: str

    def loss(self, pred: Tensor, target: Tensor) -> Tensor:
        return F.mse_loss(pred, target) if self.name != "cls" else F.cross_entropy(pred, target)


def _loss_case() -> tuple[dict, dict, dict, dict]:
    g = torch.Generator().manual_seed(2)
    tasks = {n: _ToyTask(n) for n in ("depth", "cls", "normals")}
    preds = {"depth": torch.randn(4, 1, 3, 3, generator=g), "cls": torch.randn(4, 5, generator=g)}
    preds["normals"] = torch.randn(4, 3, 3, 3, generator=g)
    targets = {"depth": torch.randn(4, 1, 3, 3, generator=g), "cls": torch.tensor([0, 4, 2, 1])}
    targets["normals"] = torch.randn(4, 3, 3, 3, generator=g)
    preds = {t: p.requires_grad_() for t, p in preds.items()}  # as a model's outputs
    return preds, targets, tasks, {"depth": 1.0, "cls": 2.0, "normals": 10.0}


def _check_loss(answer: object) -> None:
    preds, targets, tasks, weights = _loss_case()
    losses = {t: tasks[t].loss(preds[t], targets[t]) for t in tasks}
    want = multitask_loss(preds, targets, tasks, weights)
    mistakes = {
        "the weights are missing: multiply each task's loss by weights[t]": sum(losses.values()),
        "that is the weighted mean: the trainer minimises the weighted sum (no division by the "
        "number of tasks)": want / len(tasks),
        "only the first task's loss is there: sum over every task": weights["depth"]
        * losses["depth"],
    }
    got = call(answer, preds, targets, tasks, weights)
    compare(got, want, "multitask_loss", {m: torch.as_tensor(v) for m, v in mistakes.items()})
    if isinstance(got, Tensor) and got.requires_grad is False:
        raise Wrong("the loss lost its graph (did you call .item() or .detach()?): keep the tensor")


# ------------------------------------------------------------------------------------------------
# 2. cosines between task gradients
# ------------------------------------------------------------------------------------------------


def gradient_cosines(grads: Mapping[str, Tensor]) -> Tensor:
    """{task: flat gradient (P,)} -> (T, T) cosines, tasks in the dict's order."""
    g = torch.stack(list(grads.values()))  # (T, P)
    g = g / g.norm(dim=1, keepdim=True)
    return g @ g.T


def _grads() -> dict[str, Tensor]:
    gen = torch.Generator().manual_seed(3)
    base = torch.randn(50, generator=gen)
    return {
        "semseg": base + 0.5 * torch.randn(50, generator=gen),
        "parts": 3.0 * (base + torch.randn(50, generator=gen)),
        "normals": -0.2 * base + torch.randn(50, generator=gen),
    }


def _check_cosines(answer: object) -> None:
    grads = _grads()
    g = torch.stack(list(grads.values()))
    want = gradient_cosines(grads)
    mistakes = {
        "these are dot products: divide by both gradients' norms to get cosines": g @ g.T,
        "each gradient must be normalised over its own P entries (dim=1 of the stacked (T, P)), "
        "not across tasks": (F.normalize(g, dim=0) @ F.normalize(g, dim=0).T),
    }
    got = call(answer, dict(grads))
    compare(got, want, "gradient_cosines", mistakes, layout="(tasks, tasks)")


# ------------------------------------------------------------------------------------------------
# 3. first-order change of one task's loss
# ------------------------------------------------------------------------------------------------


def first_order_change(grads: Mapping[str, Tensor], task: str, lr: float) -> float:
    """Delta L_task ~ -lr * g_task . sum_s g_s after one SGD step on the summed loss."""
    total = sum(grads.values())
    return -lr * float(grads[task] @ total)


def _check_change(answer: object) -> None:
    grads, lr = _grads(), 0.1
    total = sum(grads.values())
    for task in ("normals", "semseg"):
        want = first_order_change(grads, task, lr)
        mistakes = {
            "the sign: the step goes against the gradient, so the change is -lr g_t . sum_s g_s": (
                -want
            ),
            "the learning rate is missing: the step is -lr * sum_s g_s": want / lr,
            "only the task's own gradient is there: the step follows the sum over every task": (
                -lr * float(grads[task] @ grads[task])
            ),
            "the other tasks' gradients are there, but the step also contains this task's own "
            "gradient": -lr * float(grads[task] @ (total - grads[task])),
        }
        got = call(answer, dict(grads), task, lr)
        compare_number(got, want, f"first_order_change(grads, {task!r}, {lr})", mistakes, rel=1e-5)


# ------------------------------------------------------------------------------------------------
# 4. PCGrad
# ------------------------------------------------------------------------------------------------


def pcgrad(g_i: Tensor, g_j: Tensor) -> Tensor:
    """PCGrad (Yu et al., 2020): if g_i conflicts with g_j (negative dot product), remove from
    g_i its component along g_j; otherwise keep g_i. Shapes (P,) -> (P,)."""
    dot = g_i @ g_j
    if dot < 0:
        return g_i - dot / (g_j @ g_j) * g_j
    return g_i


def _check_pcgrad(answer: object) -> None:
    grads = _grads()
    conflict = (grads["normals"], grads["semseg"])
    assert conflict[0] @ conflict[1] < 0
    agree = (grads["parts"], grads["semseg"])
    for g_i, g_j in (conflict, agree):
        dot = g_i @ g_j
        projected = g_i - dot / (g_j @ g_j) * g_j
        mistakes = {
            "these gradients do not conflict (g_i . g_j > 0): keep g_i as it is; PCGrad projects "
            "only when the dot product is negative": projected,
            "the component must be removed, not added: g_i - (g_i . g_j / |g_j|^2) g_j": g_i
            + dot / (g_j @ g_j) * g_j,
            "divide by |g_j|^2 (g_j @ g_j), not by |g_j|: the projection is (g_i . g_j / |g_j|^2) "
            "g_j": g_i - dot / g_j.norm() * g_j,
        }
        if dot < 0:
            del mistakes[next(iter(mistakes))]
        got = call(answer, g_i.clone(), g_j.clone())
        compare(got, pcgrad(g_i, g_j), "pcgrad(g_i, g_j)", mistakes)
        if dot < 0 and abs(float(got @ g_j)) > 1e-3 * float(g_i.norm() * g_j.norm()):
            raise Wrong("after the projection g_i . g_j should be 0")


# The learner's starting cells (Exercise.stub), one per exercise.
STUBS = {
    "multitask_loss": '''\
def multitask_loss(preds: dict, targets: dict, tasks: dict, weights: dict) -> torch.Tensor:
    """The loss one multi-task step minimises: tasks[t].loss(preds[t], targets[t]), weighted."""
    raise NotImplementedError  # your code here''',
    "gradient_cosines": '''\
def gradient_cosines(grads: dict) -> torch.Tensor:
    """{task: flat gradient (P,)} -> (T, T) cosines between the tasks' gradients."""
    raise NotImplementedError  # your code here''',
    "first_order_change": '''\
def first_order_change(grads: dict, task: str, lr: float) -> float:
    """To first order, the change of `task`'s loss after one SGD step (lr) on the summed loss."""
    raise NotImplementedError  # your code here''',
    "pcgrad": '''\
def pcgrad(g_i: torch.Tensor, g_j: torch.Tensor) -> torch.Tensor:
    """PCGrad: g_i without its component along g_j if the two conflict; (P,) -> (P,)."""
    raise NotImplementedError  # your code here''',
}

EXERCISES = (
    Exercise(
        "multitask_loss",
        _check_loss,
        multitask_loss,
        hints=("One term per task: weights[t] * tasks[t].loss(preds[t], targets[t]); add them.",),
        stub=STUBS["multitask_loss"],
    ),
    Exercise(
        "gradient_cosines",
        _check_cosines,
        gradient_cosines,
        hints=(
            "Stack the gradients into a (T, P) matrix g; the cosine of rows i and j is "
            "g_i . g_j / (|g_i| |g_j|).",
            "Normalise each row (g / g.norm(dim=1, keepdim=True)), then all cosines at once: "
            "g @ g.T.",
        ),
        stub=STUBS["gradient_cosines"],
    ),
    Exercise(
        "first_order_change",
        _check_change,
        first_order_change,
        hints=(
            "One SGD step on the summed loss moves the shared weights by -lr * sum_s g_s. To first "
            "order, L_t changes by its gradient dotted with that move.",
        ),
        stub=STUBS["first_order_change"],
    ),
    Exercise(
        "pcgrad",
        _check_pcgrad,
        pcgrad,
        hints=(
            "Only if g_i @ g_j < 0: subtract the projection of g_i onto g_j, "
            "(g_i @ g_j) / (g_j @ g_j) * g_j. Otherwise return g_i unchanged.",
        ),
        stub=STUBS["pcgrad"],
    ),
)
