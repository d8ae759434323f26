"""Exercises of notebook 06 (the package on your own model).

1. ``majority_accuracy(labels)``: the floor a classifier must beat (section 1).
2. ``adapter_numbers(shapes, rank, head)``: how many numbers an adapter file holds (before the
   file sizes are read back).
3. ``merge_lora(layer)``: fold one ``LoRALinear`` into a plain ``nn.Linear`` (merge section).
4. ``peft_config(rank, alpha, targets, modules_to_save)``: the fields of PEFT's LoRA config that
   describe our adapter (PEFT section).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from mtlora_lite.adapters.lora import LoRALinear
from mtlora_lite.course.exercises.core import (
    Exercise,
    Wrong,
    call,
    compare,
    compare_number,
)

# ------------------------------------------------------------------------------------------------
# 1. the majority class
# ------------------------------------------------------------------------------------------------


def majority_accuracy(labels: Tensor) -> float:
    """Accuracy in % of always answering the most frequent label; labels (N,) int64."""
    return 100 * labels.bincount().max().item() / len(labels)


def _check_majority(answer: object) -> None:
    labels = torch.tensor([2, 0, 2, 1, 2, 5, 0, 2, 3, 2])  # class 2 in 5 of 10, class 0 in 2
    want = majority_accuracy(labels)
    n_classes = int(labels.max()) + 1
    mistakes = {
        "the result should be in percent: multiply by 100": want / 100,
        "that is the share of class 0: answer the most frequent class (labels.bincount().argmax())": (
            100 * (labels == 0).float().mean().item()
        ),
        "that is chance for uniform guessing, 100 / classes: the majority class does better when "
        "the classes are unbalanced": 100 / n_classes,
        "that is the count of the most frequent class: divide by the number of labels": (
            labels.bincount().max().item()
        ),
    }
    compare_number(call(answer, labels.clone()), want, "majority_accuracy", mistakes, rel=1e-6)


# ------------------------------------------------------------------------------------------------
# 2. what an adapter file holds
# ------------------------------------------------------------------------------------------------


def adapter_numbers(shapes: Sequence[tuple[int, int]], rank: int, head: tuple[int, int]) -> int:
    """Numbers saved for one task: LoRA of rank r on layers of shapes (d_in, d_out), plus the
    task's linear head (features, classes) with its bias."""
    lora = sum(rank * (d_in + d_out) for d_in, d_out in shapes)
    features, classes = head
    return lora + features * classes + classes


def _check_adapter_numbers(answer: object) -> None:
    shapes = [(32, 96), (32, 32), (32, 128), (128, 32)] * 2 + [(256, 768), (768, 256)]
    rank, head = 8, (256, 6)
    want = adapter_numbers(shapes, rank, head)
    lora = want - head[0] * head[1] - head[1]
    mistakes = {
        "the head's bias (one number per class) is missing": want - head[1],
        "the head is missing: the file also holds what else trained, here the task's head": lora,
        "the LoRA part is r d_in d_out per layer: A and B have r (d_in + d_out)": (
            sum(rank * i * o for i, o in shapes) + head[0] * head[1] + head[1]
        ),
    }
    compare_number(call(answer, list(shapes), rank, head), want, "adapter_numbers", mistakes)


# ------------------------------------------------------------------------------------------------
# 3. merging one layer
# ------------------------------------------------------------------------------------------------


def merge_lora(layer: LoRALinear) -> nn.Linear:
    """A new nn.Linear computing what ``layer`` computes: weight W + s B A, the same bias. The
    LoRA layer itself is left as it is."""
    base = layer.base_layer
    merged = nn.Linear(base.in_features, base.out_features, bias=base.bias is not None)
    with torch.no_grad():
        merged.weight.copy_(base.weight + layer.scaling * layer.lora_B @ layer.lora_A)
        if base.bias is not None:
            merged.bias.copy_(base.bias)
    return merged


def _check_merge(answer: object) -> None:
    layer = LoRALinear(nn.Linear(8, 6), rank=2, alpha=6.0).eval()
    with torch.no_grad():
        layer.lora_B.normal_()  # a trained, non-zero update
    w0 = layer.base_layer.weight.detach().clone()
    x = torch.randn(4, 8)
    with torch.no_grad():
        want = layer(x)
    merged = call(answer, layer)
    if not isinstance(merged, nn.Linear):
        raise Wrong(f"return a plain nn.Linear, got {type(merged).__name__}")
    if merged is layer.base_layer or not torch.equal(layer.base_layer.weight.detach(), w0):
        raise Wrong(
            "the LoRA layer's base weight was changed: build a new nn.Linear (the LoRA layer "
            "must stay as it is, e.g. to swap adapters later)"
        )
    W, b = layer.base_layer.weight, layer.base_layer.bias
    delta = layer.lora_B @ layer.lora_A
    with torch.no_grad():
        mistakes = {
            "the update is not scaled: the weight is W + layer.scaling * B @ A": x @ (W + delta).T
            + b,
            "the bias is missing: copy base_layer.bias": x @ (W + layer.scaling * delta).T,
            "the merged layer computes the base layer only: add s B A to its weight": x @ W.T + b,
        }
        compare(merged(x), want, "the merged layer's output", mistakes, atol=1e-5)


# ------------------------------------------------------------------------------------------------
# 4. PEFT's config
# ------------------------------------------------------------------------------------------------


def peft_config(
    rank: int, alpha: float, targets: Sequence[str], modules_to_save: Sequence[str]
) -> dict:
    """The fields of PEFT's adapter_config.json that describe a LoRA of rank r with scale
    alpha / r on ``targets``, saving the trainable ``modules_to_save`` (e.g. a head) whole."""
    return {
        "peft_type": "LORA",
        "r": rank,
        "lora_alpha": alpha,
        "target_modules": list(targets),
        "modules_to_save": list(modules_to_save),
    }


def _check_peft(answer: object) -> None:
    rank, alpha = 8, 16.0
    targets, save = ["attn.qkv", "mlp.fc1"], ["heads.colour"]
    got = call(answer, rank, alpha, list(targets), list(save))
    if not isinstance(got, dict):
        raise Wrong(f"return a dict of config fields, got {type(got).__name__}")
    missing = [k for k in peft_config(rank, alpha, targets, save) if k not in got]
    if missing:
        raise Wrong(f"the config lacks {missing}")
    if got["peft_type"] != "LORA":
        raise Wrong('PEFT names the method in "peft_type": "LORA"')
    compare_number(got["r"], rank, '"r"', {'"r" is the rank, not alpha': alpha})
    compare_number(
        got["lora_alpha"],
        alpha,
        '"lora_alpha"',
        {
            '"lora_alpha" is alpha itself: PEFT computes the scale lora_alpha / r on its own, so '
            "alpha / r here would scale the update down by r twice": alpha / rank,
            '"lora_alpha" is alpha, not the rank': rank,
        },
    )
    if sorted(got["target_modules"] or []) != sorted(targets):
        raise Wrong(f'"target_modules" should name the adapted layers, {targets}')
    if not got["modules_to_save"] or sorted(got["modules_to_save"]) != sorted(save):
        raise Wrong(
            '"modules_to_save" should list the trained modules outside LoRA (here the head), '
            "or PEFT would load the untrained head"
        )


# The learner's starting cells (Exercise.stub), one per exercise.
STUBS = {
    "majority_accuracy": '''\
def majority_accuracy(labels: torch.Tensor) -> float:
    """Accuracy in % of always answering the most frequent label; labels (N,) int64."""
    raise NotImplementedError  # your code here''',
    "adapter_numbers": '''\
def adapter_numbers(shapes: list[tuple[int, int]], rank: int, head: tuple[int, int]) -> int:
    """Numbers saved for one task: rank-r LoRA on layers (d_in, d_out) plus a linear head."""
    raise NotImplementedError  # your code here''',
    "merge_lora": '''\
def merge_lora(layer) -> nn.Linear:
    """A new nn.Linear computing what the LoRALinear `layer` computes (weight W + s B A)."""
    raise NotImplementedError  # your code here''',
    "peft_config": '''\
def peft_config(rank: int, alpha: float, targets: list[str], modules_to_save: list[str]) -> dict:
    """The fields of PEFT's adapter_config.json that describe our LoRA."""
    raise NotImplementedError  # your code here''',
}

EXERCISES = (
    Exercise(
        "majority_accuracy",
        _check_majority,
        majority_accuracy,
        hints=(
            "labels.bincount() counts each class; its max is how often the most frequent class "
            "occurs. Return a percentage.",
        ),
        stub=STUBS["majority_accuracy"],
    ),
    Exercise(
        "adapter_numbers",
        _check_adapter_numbers,
        adapter_numbers,
        hints=(
            "Each adapted layer: r (d_in + d_out) numbers (A and B). The head: a weight "
            "(classes x features) and a bias (classes).",
        ),
        stub=STUBS["adapter_numbers"],
    ),
    Exercise(
        "merge_lora",
        _check_merge,
        merge_lora,
        hints=(
            "base = layer.base_layer; new = nn.Linear(base.in_features, base.out_features). "
            "Under torch.no_grad(): new.weight.copy_(base.weight + layer.scaling * "
            "layer.lora_B @ layer.lora_A) and new.bias.copy_(base.bias).",
        ),
        stub=STUBS["merge_lora"],
    ),
    Exercise(
        "peft_config",
        _check_peft,
        peft_config,
        hints=(
            'Keys "peft_type" ("LORA"), "r", "lora_alpha", "target_modules", "modules_to_save". '
            "PEFT's scale is lora_alpha / r, as ours is alpha / r.",
        ),
        stub=STUBS["peft_config"],
    ),
)
