"""Exercises of notebook 01 (LoRA from scratch).

1. ``LinearWithLoRA(base, rank, alpha)``: wrap a frozen ``nn.Linear``; A kaiming-uniform (r, in),
   B zero (out, r), scale alpha / r (section 1, in place of the hand-written function).
2. ``train(model, loader, loss_fn, steps, lr)``: a visible AdamW training loop that returns the
   loss of every step (after section 1: train the learner's layer before ``fit`` does it).
3. ``lora_parameters(d_in, d_out, rank)``: trainable numbers of one LoRA update (section 2).
4. ``merged_weight(W, A, B, scaling)``: the weight after merging, W + s B A (section 5).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mtlora_lite.adapters import LoRALinear, mark_only_adapters_trainable
from mtlora_lite.course.exercises.core import (
    Exercise,
    NotAnswered,
    Wrong,
    as_number,
    call,
    check_shape,
    compare,
    compare_number,
)

# ------------------------------------------------------------------------------------------------
# 1. LinearWithLoRA
# ------------------------------------------------------------------------------------------------


class LinearWithLoRA(nn.Module):
    """y = W x + b + (alpha / r) B A x around a frozen nn.Linear: (..., d_in) -> (..., d_out)."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float) -> None:
        super().__init__()
        self.base = base.requires_grad_(False)  # the pretrained W and b: frozen, not copied
        self.lora_A = nn.Parameter(torch.empty(rank, base.in_features))  # (r, d_in)
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank))  # (d_out, r), zero
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # as nn.Linear inits its weight
        self.scaling = alpha / rank

    def forward(self, x: Tensor) -> Tensor:
        return self.base(x) + self.scaling * (x @ self.lora_A.T) @ self.lora_B.T


def _factors(layer: nn.Module) -> tuple[Tensor, Tensor]:
    A, B = getattr(layer, "lora_A", None), getattr(layer, "lora_B", None)
    if A is None or B is None:
        raise Wrong(
            "name the factors self.lora_A and self.lora_B (the checks, and the package's "
            "LoRALinear, use these names)"
        )
    for name, p in (("lora_A", A), ("lora_B", B)):
        if not isinstance(p, nn.Parameter):
            raise Wrong(f"{name} must be an nn.Parameter, so that it trains (model.parameters())")
    return A, B


def _check_init(A: Tensor, B: Tensor, d_in: int) -> None:
    if B.detach().abs().max() > 0:
        raise Wrong(
            "lora_B must start at zero (torch.zeros), so that B A = 0 and the layer starts as "
            "the pretrained one"
        )
    a = A.detach()
    if a.abs().max() == 0:
        raise Wrong(
            "lora_A must start random: with A = 0 and B = 0 no factor ever gets a gradient "
            "(dL/dB = s g (A x)^T = 0)"
        )
    bound = 1 / math.sqrt(d_in)  # kaiming-uniform with a = sqrt(5), nn.Linear's weight init
    if a.abs().max() > 1.0001 * bound or a.abs().max() < 0.5 * bound or a.min() >= 0:
        raise Wrong(
            f"lora_A's values span [{a.min():.3g}, {a.max():.3g}]; nn.Linear's initialisation "
            f"draws uniformly from [-{bound:.3g}, {bound:.3g}] (1 / sqrt(d_in)): use "
            "nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))"
        )


def _check_lora_layer(answer: object) -> None:
    d_in, d_out, rank, alpha = 64, 12, 4, 8.0
    base = nn.Linear(d_in, d_out)
    w0, b0 = base.weight.detach().clone(), base.bias.detach().clone()
    layer = call(answer, base, rank, alpha)
    if not isinstance(layer, nn.Module):
        raise Wrong(f"LinearWithLoRA(...) should build an nn.Module, got {type(layer).__name__}")
    A, B = _factors(layer)
    check_shape(A, (rank, d_in), "lora_A", "(r, d_in)")
    check_shape(B, (d_out, rank), "lora_B", "(d_out, r)")
    _check_init(A, B, d_in)
    scale_mistakes = {
        "scaling is r / alpha: the LoRA scale is alpha / r": rank / alpha,
        "scaling is alpha: divide it by the rank, s = alpha / r": alpha,
        "scaling is 1 / r: multiply by alpha, s = alpha / r": 1 / rank,
    }
    compare_number(getattr(layer, "scaling", None), alpha / rank, "self.scaling", scale_mistakes)
    unfrozen = [n for n, p in layer.named_parameters() if p.requires_grad and "lora_" not in n]
    if unfrozen:
        raise Wrong(
            f"{unfrozen} still require gradients: freeze the base layer "
            "(base.requires_grad_(False)); only lora_A and lora_B train"
        )
    layer.eval()  # no dropout in the comparison
    x = torch.randn(5, d_in)
    with torch.no_grad():
        out = call(layer, x)
        if not torch.allclose(F.linear(x, w0, b0), out, atol=1e-5):
            changed = any(not torch.equal(m.weight, w0) for m in _linears(layer))
            if changed:
                raise Wrong(
                    "the base weights changed: wrap the given layer as it is (do not create a new "
                    "nn.Linear or re-initialise it)"
                )
        compare(out, F.linear(x, w0, b0), "the output at initialisation (B = 0: base(x))")
        B.normal_()  # as after training, so that the update shows
        x3 = torch.randn(2, 5, d_in)
        try:
            out = layer(x3)
        except NotImplementedError:
            raise NotAnswered from None
        except Exception as err:
            raise Wrong(
                f"it works on (N, d_in) inputs but not on (2, 5, d_in): {type(err).__name__}: "
                f"{err}. Use x @ A.T (or F.linear): they take any leading dims, as timm's "
                "blocks feed (batch, tokens, d_in)"
            ) from None
        base_out = F.linear(x3, w0, b0)
        update = (x3 @ A.T) @ B.T
        mistakes = {
            "the update is not scaled: multiply B A x by self.scaling (alpha / r)": base_out
            + update,
            "the output misses the base layer: return base(x) + s B A x": alpha / rank * update,
            "the update is scaled by r / alpha: use alpha / r": base_out + rank / alpha * update,
        }
        compare(out, base_out + alpha / rank * update, "the output with a non-zero B", mistakes)
    layer(x).square().sum().backward()
    if A.grad is None or B.grad is None:
        raise Wrong("lora_A and lora_B get no gradient: compute the update from them in forward")


def _linears(layer: nn.Module) -> list[nn.Linear]:
    return [m for m in layer.modules() if isinstance(m, nn.Linear)]


# ------------------------------------------------------------------------------------------------
# 2. the training loop
# ------------------------------------------------------------------------------------------------


def train(model: nn.Module, loader, loss_fn, steps: int, lr: float) -> list[float]:
    """Train the parameters of ``model`` that require grad with AdamW for ``steps`` steps,
    looping over ``loader`` (which yields (inputs, targets)) as often as needed; return the loss
    (a float) of every step. The loss of a batch is ``loss_fn(model(inputs), targets)``."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr)
    model.train()
    losses = []
    while len(losses) < steps:
        for inputs, targets in loader:
            loss = loss_fn(model(inputs), targets)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            if len(losses) == steps:
                break
    return losses


STEPS, LR = 7, 0.05


def _toy() -> tuple[nn.Module, list[tuple[Tensor, Tensor]]]:
    """A frozen 'pretrained' layer with LoRA and a trainable head, and three fixed batches."""
    g = torch.Generator().manual_seed(1)
    torch.manual_seed(1)
    model = nn.Sequential(
        LoRALinear(nn.Linear(6, 8), rank=2, alpha=4.0), nn.ReLU(), nn.Linear(8, 3)
    )
    mark_only_adapters_trainable(model, extra=["2"])
    batches = [
        (torch.randn(5, 6, generator=g), torch.randint(0, 3, (5,), generator=g)) for _ in range(3)
    ]
    return model, batches


def _variant(kind: str) -> list[float]:
    """The losses a typical wrong loop gives on the toy problem."""
    model, batches = _toy()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = (torch.optim.SGD if kind == "sgd" else torch.optim.AdamW)(params, lr=LR)
    losses = []
    for step in range(STEPS):
        inputs, targets = batches[step % len(batches)]
        loss = F.cross_entropy(model(inputs), targets)
        if kind != "no_zero_grad":
            opt.zero_grad()
        loss.backward()
        if kind == "zero_before_step":
            opt.zero_grad()
        opt.step()
        losses.append(loss.item())
    return losses


def _check_train(answer: object) -> None:
    model, batches = _toy()
    frozen = model[0].base_layer.weight.detach().clone()
    got = call(answer, model, batches, F.cross_entropy, STEPS, LR)
    if not isinstance(got, list | tuple):
        raise Wrong(f"return the list of the step losses, got a {type(got).__name__}")
    if any(isinstance(v, Tensor) for v in got):
        raise Wrong(
            "return floats: append loss.item(), not the loss tensor (which keeps its graph)"
        )
    if len(got) == len(batches):
        raise Wrong(
            f"{len(got)} losses for {STEPS} steps: the loader has only {len(batches)} batches, "
            "so loop over it again until `steps` steps are done"
        )
    if len(got) != STEPS:
        raise Wrong(f"return one loss per step: {STEPS} steps, got {len(got)} losses")
    losses = torch.tensor([as_number(v, "each loss") for v in got])
    if not torch.equal(model[0].base_layer.weight.detach(), frozen):
        raise Wrong(
            "the frozen base weight changed: optimise only the parameters that require grad"
        )
    mistakes = {
        "the loss does not go down: call optimizer.zero_grad() before loss.backward(), not "
        "between backward() and step() (it erases the gradients)": _variant("zero_before_step"),
        "gradients pile up from step to step: call optimizer.zero_grad() once per step": _variant(
            "no_zero_grad"
        ),
        "that is plain SGD: use torch.optim.AdamW(params, lr=lr) as the stub says": _variant("sgd"),
    }
    want = torch.tensor(_variant("reference"))
    mistakes = {m: torch.tensor(v) for m, v in mistakes.items()}
    compare(losses, want, "the step losses", mistakes, rtol=2e-3, atol=1e-4)


# ------------------------------------------------------------------------------------------------
# 3. parameter count
# ------------------------------------------------------------------------------------------------


def lora_parameters(d_in: int, d_out: int, rank: int) -> int:
    """Trainable numbers of one rank-r LoRA update of a d_out x d_in weight: A and B."""
    return rank * d_in + d_out * rank


def _check_count(answer: object) -> None:
    for d_in, d_out, r in ((32, 96, 8), (256, 1024, 2), (4096, 4096, 16)):
        mistakes = {
            "that is the full weight times r: A (r x d_in) and B (d_out x r) have "
            "r (d_in + d_out) numbers": r * d_in * d_out,
            "that is the full weight d_in x d_out: count only A and B": d_in * d_out,
            "A and B both have r columns or rows: multiply by the rank": d_in + d_out,
            "only A is counted: add B's d_out x r": r * d_in,
            "only B is counted: add A's r x d_in": r * d_out,
        }
        got = call(answer, d_in, d_out, r)
        compare_number(
            got, lora_parameters(d_in, d_out, r), f"lora_parameters({d_in}, {d_out}, {r})", mistakes
        )


# ------------------------------------------------------------------------------------------------
# 4. merging
# ------------------------------------------------------------------------------------------------


def merged_weight(W: Tensor, A: Tensor, B: Tensor, scaling: float) -> Tensor:
    """W (out, in), A (r, in), B (out, r) -> the merged weight W + s B A (out, in)."""
    return W + scaling * B @ A


def _check_merge(answer: object) -> None:
    W, A, B, s = torch.randn(6, 8), torch.randn(2, 8), torch.randn(6, 2), 2.0
    W0 = W.clone()
    got = call(answer, W, A.clone(), B.clone(), s)
    if not torch.equal(W, W0):
        raise Wrong("W was changed in place: return W + ... as a new tensor (W += ... edits it)")
    mistakes = {
        "the update is not scaled: W + scaling * B @ A": W + B @ A,
        "that is only the update s B A: add it to W": s * B @ A,
        "the update is subtracted: merging adds it, W + s B A": W - s * B @ A,
    }
    compare(got, merged_weight(W, A, B, s), "merged_weight", mistakes, layout="(out, in)")


# The learner's starting cells (Exercise.stub), one per exercise.
STUBS = {
    "LinearWithLoRA": '''\
class LinearWithLoRA(nn.Module):
    """y = W x + b + (alpha / r) B A x around a frozen nn.Linear: (..., d_in) -> (..., d_out)."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float) -> None:
        super().__init__()
        raise NotImplementedError  # your code: self.base, self.lora_A, self.lora_B, self.scaling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError  # your code here''',
    "train": '''\
def train(model: nn.Module, loader, loss_fn, steps: int, lr: float) -> list[float]:
    """AdamW on the parameters that require grad, for `steps` steps (loop over the loader as often
    as needed); return the loss (a float) of every step. Loss: loss_fn(model(inputs), targets)."""
    raise NotImplementedError  # your code here (about 15 lines)''',
    "lora_parameters": '''\
def lora_parameters(d_in: int, d_out: int, rank: int) -> int:
    """Trainable numbers of one rank-r LoRA update of a (d_out x d_in) weight."""
    raise NotImplementedError  # your code here''',
    "merged_weight": '''\
def merged_weight(W, A, B, scaling: float) -> torch.Tensor:
    """W (out, in), A (r, in), B (out, r) -> the merged weight (out, in), as a new tensor."""
    raise NotImplementedError  # your code here''',
}

EXERCISES = (
    Exercise(
        "LinearWithLoRA",
        _check_lora_layer,
        LinearWithLoRA,
        hints=(
            "In __init__: keep `base` frozen (base.requires_grad_(False)); lora_A = "
            "nn.Parameter of shape (rank, base.in_features), lora_B of shape "
            "(base.out_features, rank); self.scaling = alpha / rank.",
            "B starts at zero (torch.zeros); A like nn.Linear's weight: "
            "nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5)). forward returns "
            "self.base(x) + self.scaling * (x @ self.lora_A.T) @ self.lora_B.T.",
        ),
        stub=STUBS["LinearWithLoRA"],
    ),
    Exercise(
        "train",
        _check_train,
        train,
        hints=(
            "optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], "
            "lr=lr). Each step: loss = loss_fn(model(inputs), targets); optimizer.zero_grad(); "
            "loss.backward(); optimizer.step().",
            "Keep a list of loss.item(); wrap the `for inputs, targets in loader` loop in "
            "`while len(losses) < steps:` and break once `steps` steps are done.",
        ),
        stub=STUBS["train"],
    ),
    Exercise(
        "lora_parameters",
        _check_count,
        lora_parameters,
        hints=("A is r x d_in, B is d_out x r.",),
        stub=STUBS["lora_parameters"],
    ),
    Exercise(
        "merged_weight",
        _check_merge,
        merged_weight,
        hints=(
            "The merged layer computes (W + s B A) x + b = W x + b + s B A x. B @ A has the "
            "shape (out, in) of W.",
        ),
        stub=STUBS["merged_weight"],
    ),
)
