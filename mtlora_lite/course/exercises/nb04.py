"""Exercises of notebook 04 (multi-head LoRA, HydraLoRA).

1. ``multihead_forward(x, W, b, A, B, W_r, s)``: the multi-head LoRA layer by hand (section 2,
   in place of the hand-written forward).
2. ``PREDICTION``: predict the heads' step-0 gradients under zero init with a uniform router
   (section 2, before the derivation).
3. ``head_gradients(x, g, A, w, s)``: derive them, dL/dB_i for every head (section 2, then
   compared with autograd).
4. ``head_cosine(B)``: the mean pairwise cosine of the heads (section 2, after the gradients).
5. ``router_entropy(w)``: how evenly the router spreads tokens, in nats (section 4).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from mtlora_lite.course.exercises.core import (
    Exercise,
    Wrong,
    call,
    compare,
    compare_number,
)

# ------------------------------------------------------------------------------------------------
# 1. the forward pass
# ------------------------------------------------------------------------------------------------


def multihead_forward(
    x: Tensor, W: Tensor, b: Tensor, A: Tensor, B: Tensor, W_r: Tensor, s: float
) -> Tensor:
    """x (N, in); W (out, in), b (out,); shared A (r, in); heads B (out, n, r), B[:, i] = B_i;
    router W_r (n, in) -> W x + b + s sum_i w_i(x) B_i A x with w(x) = softmax(W_r x), (N, out)."""
    w = torch.softmax(x @ W_r.T, dim=-1)  # (N, n): one weight per token and head
    u = x @ A.T  # (N, r): the shared down-projection
    heads = torch.einsum("nr,oir->nio", u, B)  # (N, n, out): B_i A x for every head
    return x @ W.T + b + s * (w.unsqueeze(-1) * heads).sum(1)


def _mh_case() -> tuple[Tensor, ...]:
    g = torch.Generator().manual_seed(5)
    N, d_in, d_out, n, r = 6, 8, 5, 3, 2
    x, W, b = (
        torch.randn(N, d_in, generator=g),
        torch.randn(d_out, d_in, generator=g),
        torch.randn(d_out, generator=g),
    )
    A, B = torch.randn(r, d_in, generator=g), torch.randn(d_out, n, r, generator=g)
    W_r = torch.randn(n, d_in, generator=g)
    return x, W, b, A, B, W_r


def _check_forward(answer: object) -> None:
    x, W, b, A, B, W_r = _mh_case()
    s = 2.0
    base, u = x @ W.T + b, x @ A.T
    heads = torch.einsum("nr,oir->nio", u, B)

    def mix(w: Tensor) -> Tensor:
        return (w.unsqueeze(-1) * heads).sum(1)

    logits = x @ W_r.T
    mistakes = {
        "the softmax runs over the tokens: take it over the heads (dim=-1), one distribution "
        "per token": base + s * mix(torch.softmax(logits, dim=0)),
        "the routing weights are the raw logits W_r x: apply a softmax over the heads": base
        + s * mix(logits),
        "the heads are averaged with equal weights: weigh head i by the router's w_i(x)": base
        + s * mix(torch.full_like(logits, 1 / B.shape[1])),
        "the update is not scaled: multiply the mixture by s": base
        + mix(torch.softmax(logits, -1)),
    }
    got = call(answer, x, W, b, A, B, W_r, s)
    compare(
        got,
        multihead_forward(x, W, b, A, B, W_r, s),
        "multihead_forward",
        mistakes,
        layout="(N, out)",
    )


# ------------------------------------------------------------------------------------------------
# 2. predict, 3. derive the step-0 head gradients
# ------------------------------------------------------------------------------------------------

PREDICTION = "identical"  # the reference answer: "zero", "identical" or "different"


def _check_prediction(answer: object) -> str:
    if not isinstance(answer, str):
        raise Wrong('answer with one of the strings "zero", "identical" or "different"')
    choice = answer.strip().lower()
    if choice == "zero":
        raise Wrong(
            "not zero: B_i = 0, but A x and the upstream gradient g are not, and "
            "dL/dB_i = s sum_tokens w_i g (A x)^T. (It is dL/dA that is zero at step 0.)"
        )
    if choice == "different":
        raise Wrong(
            "think about what could tell the heads apart: they are all zero, they read the same "
            "A x, and a uniform router gives each the same weight 1/n"
        )
    if choice != "identical":
        raise Wrong(f'{answer!r} is not one of "zero", "identical", "different"')
    return "Every head gets the same gradient, so the same optimizer step: the heads stay equal."


def head_gradients(x: Tensor, g: Tensor, A: Tensor, w: Tensor, s: float) -> Tensor:
    """dL/dB_i of every head while all B_i = 0: s sum_tokens w_i(x) g (A x)^T.

    x (N, in) layer inputs, g (N, out) = dL/dy the upstream gradient, A (r, in), w (N, n) the
    routing weights -> (n, out, r)."""
    u = x @ A.T  # (N, r)
    return s * torch.einsum("ni,no,nr->ior", w, g, u)


def _check_gradients(answer: object) -> None:
    x, _, _, A, B, W_r = _mh_case()
    gen = torch.Generator().manual_seed(6)
    g = torch.randn(x.shape[0], B.shape[0], generator=gen)
    w = torch.softmax(x @ W_r.T, -1)  # a non-uniform router, so that w_i matters
    s = 2.0
    want = head_gradients(x, g, A, w, s)
    n = w.shape[1]
    same = s * (g.T @ (x @ A.T))  # (out, r): every head alike, no routing weight
    mistakes = {
        "every head got the same gradient although the router is not uniform here: weigh each "
        "token by its routing weight w_i(x)": same.expand(n, -1, -1),
        "the scale s is missing": want / s,
        "the heads share the uniform weight 1/n here, but the router gives each token its own "
        "weights: use w[:, i]": same.expand(n, -1, -1) / n,
    }
    got = call(answer, x, g, A, w, s)
    if isinstance(got, Tensor) and tuple(got.shape) == (n, B.shape[2], B.shape[0]):
        raise Wrong(
            f"shape {tuple(got.shape)} is (n, r, out): each dL/dB_i has B_i's shape (out, r), "
            "so transpose the last two dimensions"
        )
    if isinstance(got, Tensor) and tuple(got.shape) == (n, B.shape[0], x.shape[1]):
        raise Wrong(
            "shape (n, out, in): dL/dB_i multiplies g by (A x)^T, the r-dimensional input of "
            "B_i, not by x"
        )
    compare(got, want, "head_gradients", mistakes, layout="(n, out, r)")


# ------------------------------------------------------------------------------------------------
# 4. head similarity
# ------------------------------------------------------------------------------------------------


def head_cosine(B: Tensor) -> float:
    """Mean cosine over the pairs i < j of the flattened heads B_i; B (out, n, r)."""
    heads = B.permute(1, 0, 2).flatten(1)  # (n, out * r): one row per head
    heads = heads / heads.norm(dim=1, keepdim=True)
    cos = heads @ heads.T
    i, j = torch.triu_indices(len(cos), len(cos), offset=1)
    return cos[i, j].mean().item()


def _check_cosine(answer: object) -> None:
    gen = torch.Generator().manual_seed(7)
    common = torch.randn(5, 1, 2, generator=gen)
    B = common + 0.7 * torch.randn(5, 4, 2, generator=gen)  # 4 heads, alike but not equal
    want = head_cosine(B)
    n = B.shape[1]
    heads = F.normalize(B.permute(1, 0, 2).flatten(1), dim=1)
    cos = heads @ heads.T
    rows = F.normalize(B.flatten(1), dim=1)  # (out, n r): wrong flattening
    i, j = torch.triu_indices(len(rows), len(rows), offset=1)
    mistakes = {
        "the diagonal (each head with itself, always 1) is in the mean: average over the pairs "
        "i < j only": cos.mean().item(),
        "B is (out, n, r): head i is B[:, i], so move the head dimension first "
        "(B.permute(1, 0, 2)) before flattening each head to out * r numbers": (
            (rows @ rows.T)[i, j].mean().item()
        ),
        "each pair is counted, but the mean divides by n^2: divide by the n (n - 1) / 2 pairs": (
            (cos.sum() - n) / 2 / n**2
        ).item(),
    }
    got = call(answer, B.clone())
    compare_number(got, want, "head_cosine", mistakes, rel=1e-4)


# ------------------------------------------------------------------------------------------------
# 5. router entropy
# ------------------------------------------------------------------------------------------------


def router_entropy(w: Tensor) -> float:
    """Mean over tokens of the entropy -sum_i w_i log w_i of the routing weights, in nats.
    w (N, n), each row sums to 1. log n = uniform, 0 = every token to one head."""
    return -(w * w.clamp_min(1e-12).log()).sum(-1).mean().item()


def _check_entropy(answer: object) -> None:
    gen = torch.Generator().manual_seed(8)
    w = torch.softmax(2 * torch.randn(10, 4, generator=gen), -1)
    want = router_entropy(w)
    mean_w = w.mean(0)
    mistakes = {
        "that is in bits (log2): use the natural log, nats (log n = uniform)": want / math.log(2),
        "that is the entropy of the mean weights: take each token's entropy, then the mean": (
            -(mean_w * mean_w.log()).sum().item()
        ),
        "the sign: entropy is -sum_i w_i log w_i (positive)": -want,
        "that is the sum over tokens: average it": want * len(w),
    }
    got = call(answer, w.clone())
    compare_number(got, want, "router_entropy", mistakes, rel=1e-4)
    one_hot = torch.eye(4)[[0, 1, 2]]
    compare_number(call(answer, one_hot), 0.0, "router_entropy of one-hot weights", abs_tol=1e-6)


# The learner's starting cells (Exercise.stub), one per exercise.
STUBS = {
    "multihead_forward": '''\
def multihead_forward(x, W, b, A, B, W_r, s) -> torch.Tensor:
    """x (N, in); W (out, in), b (out,); A (r, in); heads B (out, n, r), B[:, i] = B_i;
    router W_r (n, in); scale s -> the multi-head LoRA layer's output (N, out)."""
    raise NotImplementedError  # your code here''',
    "PREDICTION": '''\
PREDICTION = ...  # at step 0, all B_i = 0 and a uniform router: "zero", "identical" or "different"''',
    "head_gradients": '''\
def head_gradients(x, g, A, w, s) -> torch.Tensor:
    """dL/dB_i of every head while all B_i = 0. x (N, in), g = dL/dy (N, out), A (r, in),
    routing weights w (N, n) -> (n, out, r)."""
    raise NotImplementedError  # your code here''',
    "head_cosine": '''\
def head_cosine(B: torch.Tensor) -> float:
    """Mean cosine over the pairs of heads i < j; B (out, n, r), head i = B[:, i] flattened."""
    raise NotImplementedError  # your code here''',
    "router_entropy": '''\
def router_entropy(w: torch.Tensor) -> float:
    """Mean over tokens of the routing weights' entropy in nats; w (N, n), rows sum to 1."""
    raise NotImplementedError  # your code here''',
}

EXERCISES = (
    Exercise(
        "multihead_forward",
        _check_forward,
        multihead_forward,
        hints=(
            "w = torch.softmax(x @ W_r.T, dim=-1) is (N, n); u = x @ A.T is (N, r); head i "
            "adds u @ B[:, i].T, (N, out).",
            "Sum over i of w[:, i:i+1] * (u @ B[:, i].T), times s, plus x @ W.T + b.",
        ),
        stub=STUBS["multihead_forward"],
    ),
    Exercise(
        "PREDICTION",
        _check_prediction,
        PREDICTION,
        hints=(
            "What differs between the heads at step 0? Their values (all zero), their input "
            "(the same A x), their routing weight (uniform: 1/n each)?",
        ),
        explanation=(
            "With every B_i = 0 and a uniform router, dL/dB_i = (s / n) sum_tokens g (A x)^T for "
            "every i: identical gradients, identical AdamW steps, identical heads. With a "
            "trained (non-uniform) router the heads' gradients differ only by the per-token "
            "weights w_i(x), so they stay nearly parallel."
        ),
        stub=STUBS["PREDICTION"],
    ),
    Exercise(
        "head_gradients",
        _check_gradients,
        head_gradients,
        hints=(
            "y = ... + s sum_i w_i B_i u with u = A x: by the chain rule "
            "dL/dB_i = s sum_tokens w_i g u^T, an (out, r) matrix.",
            "For all heads at once: torch.einsum('ni,no,nr->ior', w, g, x @ A.T), times s.",
        ),
        stub=STUBS["head_gradients"],
    ),
    Exercise(
        "head_cosine",
        _check_cosine,
        head_cosine,
        hints=(
            "heads = B.permute(1, 0, 2).flatten(1) is (n, out * r); normalise its rows and take "
            "heads @ heads.T, the (n, n) cosines.",
            "Average the entries above the diagonal: torch.triu_indices(n, n, offset=1).",
        ),
        stub=STUBS["head_cosine"],
    ),
    Exercise(
        "router_entropy",
        _check_entropy,
        router_entropy,
        hints=(
            "Per token: -(w * w.log()).sum(-1); then the mean over the tokens (clamp w away "
            "from 0 before the log).",
        ),
        stub=STUBS["router_entropy"],
    ),
)
