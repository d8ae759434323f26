"""Exercises of notebook 05 (R-LoRA).

1. ``rlora_scale(d_out, gamma)``: R-LoRA's init constant c (section 1).
2. ``offset_weight(W, A, B, s)``: the offset that keeps ``layer(x) == base(x)`` at step 0
   (section 1, before the check on one layer).
3. ``multihead_dropout(u, w, masks, B, s, p)``: multi-head dropout in its one-GEMM form
   (section 2, in place of the two forms written by hand).
4. ``verdict(a, b)``: the paired seed-by-seed verdict "better", "worse" or "within noise"
   (section 4, before the ablation's table).
"""

from __future__ import annotations

import math
import statistics

import torch
from torch import Tensor

from mtlora_lite.course.compare import paired
from mtlora_lite.course.exercises.core import Exercise, Wrong, call, compare, compare_number

# ------------------------------------------------------------------------------------------------
# 1. the init scale
# ------------------------------------------------------------------------------------------------


def rlora_scale(d_out: int, gamma: float = 64.0) -> float:
    """R-LoRA's c = d_out^(1/4) / sqrt(gamma): A ~ c N(0, 1/d_in), B_i ~ c N(0, 1/d_out)."""
    return d_out**0.25 / math.sqrt(gamma)


def _check_scale(answer: object) -> None:
    for d_out, gamma in ((32, 64.0), (768, 64.0), (256, 16.0)):
        want = rlora_scale(d_out, gamma)
        mistakes = {
            "that uses sqrt(d_out): the numerator is the fourth root, d_out ** 0.25": (
                math.sqrt(d_out) / math.sqrt(gamma)
            ),
            "divide by sqrt(gamma), not by gamma": d_out**0.25 / gamma,
            "the square root of gamma divides: c = d_out^(1/4) / sqrt(gamma)": d_out**0.25
            * math.sqrt(gamma),
        }
        got = call(answer, d_out, gamma)
        compare_number(got, want, f"rlora_scale({d_out}, {gamma:g})", mistakes, rel=1e-6)


# ------------------------------------------------------------------------------------------------
# 2. the offset
# ------------------------------------------------------------------------------------------------


def offset_weight(W: Tensor, A: Tensor, B: Tensor, s: float) -> Tensor:
    """W (out, in), A (r, in), random heads B (out, n, r) -> W - s B0 A with B0 = mean_i B_i.

    With a zero router (w_i = 1/n) the update at step 0 is s B0 A x: subtracting it from the
    base weight makes the adapted layer start as the base layer."""
    B0 = B.mean(dim=1)  # (out, r)
    return W - s * B0 @ A


def _check_offset(answer: object) -> None:
    gen = torch.Generator().manual_seed(9)
    d_in, d_out, n, r, s = 8, 6, 4, 2, 2.0
    W, b = torch.randn(d_out, d_in, generator=gen), torch.randn(d_out, generator=gen)
    A, B = torch.randn(r, d_in, generator=gen), torch.randn(d_out, n, r, generator=gen)
    x = torch.randn(5, d_in, generator=gen)
    got = call(answer, W.clone(), A.clone(), B.clone(), s)
    want = offset_weight(W, A, B, s)
    mistakes = {
        "the offset subtracts the sum of the heads: with a uniform router each head weighs 1/n, "
        "so subtract s * mean_i(B_i) A": W - s * B.sum(1) @ A,
        "the offset is added: subtract it, W - s B0 A": W + s * B.mean(1) @ A,
        "the scale s is missing: W - s B0 A": W - B.mean(1) @ A,
        "that is W itself: subtract the initial update s B0 A": W,
    }
    compare(got, want, "offset_weight", mistakes, layout="(out, in)")
    # the property that matters: the layer starts as the base layer
    update = s * (x @ A.T) @ B.mean(1).T  # uniform routing weights 1/n
    gap = (x @ got.T + b + update - (x @ W.T + b)).abs().max().item()
    if gap > 1e-4:
        raise Wrong(f"layer(x) - base(x) is up to {gap:.3g}, should be 0 at step 0")


# ------------------------------------------------------------------------------------------------
# 3. multi-head dropout, one GEMM
# ------------------------------------------------------------------------------------------------


def multihead_dropout(u: Tensor, w: Tensor, masks: Tensor, B: Tensor, s: float, p: float) -> Tensor:
    """The update s / (1 - p) sum_i w_i B_i (m_i * u) as one GEMM with [B_1 ... B_n].

    u = A x (N, r); w (N, n) routing weights; masks (N, n, r) of 0 / 1, one per head;
    B (out, n, r) -> (N, out)."""
    z = (w.unsqueeze(-1) * masks * u.unsqueeze(1)).flatten(1)  # (N, n r): concat_i(w_i m_i u)
    return s / (1 - p) * z @ B.flatten(1).T  # [B_1 ... B_n] is B.flatten(1): (out, n r)


def _check_dropout(answer: object) -> None:
    gen = torch.Generator().manual_seed(10)
    N, n, r, d_out, s, p = 5, 3, 4, 6, 2.0, 0.5
    u, B = torch.randn(N, r, generator=gen), torch.randn(d_out, n, r, generator=gen)
    w = torch.softmax(torch.randn(N, n, generator=gen), -1)
    masks = torch.bernoulli(torch.full((N, n, r), 1 - p), generator=gen)
    want = multihead_dropout(u, w, masks, B, s, p)

    def per_head(m: Tensor, ww: Tensor, scale: float) -> Tensor:
        return scale * sum(ww[:, i : i + 1] * (m[:, i] * u) @ B[:, i].T for i in range(n))

    z = (w.unsqueeze(-1) * masks * u.unsqueeze(1)).flatten(1)
    mistakes = {
        "inverted dropout divides by the keep probability: multiply by 1 / (1 - p)": per_head(
            masks, w, s
        ),
        "every head uses the first head's mask: each head has its own mask m_i = masks[:, i]": (
            per_head(masks[:, :1].expand_as(masks), w, s / (1 - p))
        ),
        "the routing weights w_i are missing": per_head(masks, torch.ones_like(w), s / (1 - p)),
        "[B_1 ... B_n] must list head 1's r columns, then head 2's, ...: B.flatten(1) does that "
        "for B (out, n, r); B.transpose(1, 2).flatten(1) mixes heads and ranks": (
            s / (1 - p) * z @ B.transpose(1, 2).flatten(1).T
        ),
    }
    got = call(answer, u, w, masks, B.clone(), s, p)
    compare(got, want, "multihead_dropout", mistakes, layout="(N, out)")


# ------------------------------------------------------------------------------------------------
# 4. a paired verdict
# ------------------------------------------------------------------------------------------------


def verdict(a: dict[int, float], b: dict[int, float]) -> str:
    """Method a against b: "better" if a wins on every seed by a mean gain larger than the
    gains' spread (sample std), "worse" in the mirror case, else "within noise". a, b: {seed:
    metric}, higher is better, the same seeds."""
    gains = [a[seed] - b[seed] for seed in a]
    mean, spread = statistics.fmean(gains), statistics.stdev(gains)
    if abs(mean) > spread and all(g > 0 for g in gains):
        return "better"
    if abs(mean) > spread and all(g < 0 for g in gains):
        return "worse"
    return "within noise"


VERDICT_CASES = (  # (a, b, why a typical wrong rule fails here)
    ({0: 52.0, 1: 55.0, 2: 50.0}, {0: 50.0, 1: 53.5, 2: 48.9}, ""),
    ({0: 50.0, 1: 51.0, 2: 52.0}, {0: 51.0, 1: 52.5, 2: 53.0}, ""),
    (
        {0: 60.0, 1: 50.0, 2: 51.0},
        {0: 50.0, 1: 50.5, 2: 51.5},
        "the mean gain is positive (+3.0), but a loses on 2 of 3 seeds: 'better' needs a win on "
        "every seed",
    ),
    (
        {0: 50.1, 1: 58.0, 2: 50.2},
        {0: 50.0, 1: 50.0, 2: 50.0},
        "a wins on every seed, but the mean gain (2.8) is smaller than the gains' spread "
        "(std 4.5): that is within noise",
    ),
    (
        {0: 70.0, 1: 60.0, 2: 65.0},
        {0: 61.0, 1: 69.0, 2: 64.0},
        "compare seed by seed: a's and b's means are close, but the verdict comes from the "
        "per-seed gains (+9, -9, +1)",
    ),
)


def _check_verdict(answer: object) -> None:
    for a, b, why in VERDICT_CASES:
        want = paired(a, b).outcome
        assert verdict(a, b) == want
        got = call(answer, dict(a), dict(b))
        if not isinstance(got, str):
            raise Wrong('return one of the strings "better", "worse", "within noise"')
        if got.strip().lower() != want:
            detail = why or f"the gains per seed are {[round(a[s] - b[s], 2) for s in a]}"
            raise Wrong(f"a = {a}, b = {b}: expected {want!r}, got {got!r}. {detail}")


# The learner's starting cells (Exercise.stub), one per exercise.
STUBS = {
    "rlora_scale": '''\
def rlora_scale(d_out: int, gamma: float = 64.0) -> float:
    """R-LoRA's init constant c for a layer with d_out outputs."""
    raise NotImplementedError  # your code here''',
    "offset_weight": '''\
def offset_weight(W: torch.Tensor, A: torch.Tensor, B: torch.Tensor, s: float) -> torch.Tensor:
    """W (out, in), A (r, in), random heads B (out, n, r) -> the effective weight (out, in) that
    makes the layer equal to the base layer at step 0 (zero router: w_i = 1/n)."""
    raise NotImplementedError  # your code here''',
    "multihead_dropout": '''\
def multihead_dropout(u, w, masks, B, s, p) -> torch.Tensor:
    """The multi-head dropout update as one GEMM. u = A x (N, r), w (N, n), masks (N, n, r)
    of 0 / 1, B (out, n, r), scale s, dropout p -> (N, out)."""
    raise NotImplementedError  # your code here''',
    "verdict": '''\
def verdict(a: dict[int, float], b: dict[int, float]) -> str:
    """Method a against b, {seed: metric} each, higher is better: "better", "worse" or
    "within noise"."""
    raise NotImplementedError  # your code here''',
}

EXERCISES = (
    Exercise(
        "rlora_scale",
        _check_scale,
        rlora_scale,
        hints=("d_out ** 0.25 / math.sqrt(gamma).",),
        stub=STUBS["rlora_scale"],
    ),
    Exercise(
        "offset_weight",
        _check_offset,
        offset_weight,
        hints=(
            "At step 0 the router is zero, so w_i = 1/n for every token and the update is "
            "s sum_i (1/n) B_i A x = s B0 A x with B0 = B.mean(dim=1), (out, r).",
            "Fold the subtraction into the weight: W - s * B0 @ A, so y = W' x + b + update "
            "equals W x + b at step 0.",
        ),
        stub=STUBS["offset_weight"],
    ),
    Exercise(
        "multihead_dropout",
        _check_dropout,
        multihead_dropout,
        hints=(
            "z = (w.unsqueeze(-1) * masks * u.unsqueeze(1)) is (N, n, r): head i's slice is "
            "w_i m_i u. Flatten it to (N, n r).",
            "[B_1 ... B_n] is B.flatten(1), (out, n r); the update is s / (1 - p) * z @ that.T.",
        ),
        stub=STUBS["multihead_dropout"],
    ),
    Exercise(
        "verdict",
        _check_verdict,
        verdict,
        hints=(
            "gains = [a[s] - b[s] for s in a]; mean and sample std (statistics.stdev) of the gains.",
            "'better' only if every gain is positive and |mean| > std; 'worse' if every gain is "
            "negative and |mean| > std; else 'within noise'.",
        ),
        stub=STUBS["verdict"],
    ),
)
