"""Exercises of notebook 03 (MTLoRA).

1. ``ts_forward(x, x_tasks, W, b, A_s, B_s, A_t, B_t, s)``: one task-specific layer's outputs
   for the shared and the task streams, official "matrix" mode (section 1, in place of the check
   written out by hand).
2. ``ts_parameters(widths, task_rank, n_tasks)``: TS-LoRA's trainable numbers, by hand
   (section 2).
3. ``pareto_front(points)``: the methods no other beats on both parameters and Delta_m
   (section 5).
4. ``task_output_after_merge(...)``: a task's output once the shared update is folded into W
   (section 7).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from mtlora_lite.course.exercises.core import Exercise, Wrong, call, compare, compare_number

# ------------------------------------------------------------------------------------------------
# 1. a TS layer's forward
# ------------------------------------------------------------------------------------------------


def ts_forward(
    x: Tensor,
    x_tasks: Tensor,
    W: Tensor,
    b: Tensor,
    A_s: Tensor,
    B_s: Tensor,
    A_t: Tensor,
    B_t: Tensor,
    s: float,
) -> tuple[Tensor, Tensor]:
    """A TS-LoRA layer, official mode. x (N, in) shared input, x_tasks (T, N, in) the task
    inputs; W (out, in), b (out,); A_s (r, in), B_s (out, r); A_t (T, r_t, in), B_t (T, out, r_t).

    Returns the shared output W x + b + s B_s A_s x (N, out) and the task outputs
    W x + b + s B_t A_t x_t (T, N, out): W reads the shared x only.
    """
    base = x @ W.T + b  # (N, out), one dense matmul for every stream
    shared = base + s * (x @ A_s.T) @ B_s.T
    tasks = base + s * (x_tasks @ A_t.transpose(1, 2)) @ B_t.transpose(1, 2)  # (T, N, out)
    return shared, tasks


def _ts_case() -> dict[str, Tensor | float]:
    g = torch.Generator().manual_seed(4)
    T, N, d_in, d_out, r, r_t = 3, 5, 8, 6, 4, 2

    def randn(*shape: int) -> Tensor:
        return torch.randn(*shape, generator=g)

    return {
        "x": randn(N, d_in),
        "x_tasks": randn(T, N, d_in),
        "W": randn(d_out, d_in),
        "b": randn(d_out),
        "A_s": randn(r, d_in),
        "B_s": randn(d_out, r),
        "A_t": randn(T, r_t, d_in),
        "B_t": randn(T, d_out, r_t),
        "s": 4.0,
    }


def _check_ts(answer: object) -> None:
    c = _ts_case()
    x, xt, W, b, A_s, B_s, A_t, B_t, s = c.values()
    got = call(answer, *(v.clone() if isinstance(v, Tensor) else v for v in c.values()))
    if not isinstance(got, tuple | list) or len(got) != 2:
        raise Wrong("return two things: (shared output (N, out), task outputs (T, N, out))")
    shared, tasks = ts_forward(**c)
    task_delta = s * (xt @ A_t.transpose(1, 2)) @ B_t.transpose(1, 2)
    shared_delta = s * (x @ A_s.T) @ B_s.T
    compare(
        got[0],
        shared,
        "the shared output",
        {
            "the shared output is not scaled: W x + b + s B_s A_s x": x @ W.T
            + b
            + shared_delta / s,
            "the shared output misses its update s B_s A_s x": x @ W.T + b,
        },
        layout="(N, out)",
    )
    compare(
        got[1],
        tasks,
        "the task outputs",
        {
            "the frozen W reads the task input x_t here: in the official mode W acts on the shared "
            "x only (W x + b + s B_t A_t x_t), one dense matmul for all streams": (
                xt @ W.T + b + task_delta
            ),
            "that adds the shared update s B_s A_s x to the task outputs: that is the "
            "'with_shared' option; the official task output omits it": tasks + shared_delta,
            "the task branches read the shared x: each task's A_t reads its own input x_t": (
                x @ W.T + b + s * (x @ A_t.transpose(1, 2)) @ B_t.transpose(1, 2)
            ),
            "the task update is not scaled: multiply B_t A_t x_t by s": x @ W.T
            + b
            + task_delta / s,
        },
        layout="(T, N, out)",
    )


# ------------------------------------------------------------------------------------------------
# 2. TS-LoRA parameter count
# ------------------------------------------------------------------------------------------------


def ts_parameters(widths: Sequence[tuple[int, int]], task_rank: int, n_tasks: int) -> int:
    """Trainable numbers of TS-LoRA: per stage (C, H) (width, MLP width), each task has rank-r_t
    branches on proj (C -> C), fc1 (C -> H) and fc2 (H -> C); r_t (d_in + d_out) each."""
    per_task = sum(task_rank * ((c + c) + (c + h) + (h + c)) for c, h in widths)
    return n_tasks * per_task


def _check_ts_count(answer: object) -> None:
    widths, r, n = [(32, 128), (64, 256), (128, 512), (256, 1024)], 4, 4
    want = ts_parameters(widths, r, n)
    qkv = n * r * sum(c + 3 * c for c, _ in widths)
    mistakes = {
        "qkv has no task branch (the attention map stays shared): count proj, fc1 and fc2 only": (
            want + qkv
        ),
        "one set of branches per task: multiply by the number of tasks": want // n,
        "each branch has r_t (d_in + d_out) numbers: multiply by the task rank": want // r,
        "fc2 (H -> C) is missing: TS-LoRA sits on proj, fc1 and fc2": want
        - n * r * sum(h + c for c, h in widths),
    }
    got = call(answer, list(widths), r, n)
    compare_number(got, want, "ts_parameters", mistakes)


# ------------------------------------------------------------------------------------------------
# 3. Pareto front
# ------------------------------------------------------------------------------------------------


def pareto_front(points: Mapping[str, tuple[int, float]]) -> list[str]:
    """{method: (trainable parameters, delta_m)} -> the methods that no other method beats with
    both fewer (or as many) parameters and a higher delta_m, fewest parameters first."""
    front, best = [], -float("inf")
    for name, (_, d) in sorted(points.items(), key=lambda kv: (kv[1][0], -kv[1][1])):
        if d > best:
            front.append(name)
            best = d
    return front


PARETO_CASE = {
    "single-task": (11_000_000, 0.0),
    "MTL full": (2_900_000, -4.1),
    "decoders": (120_000, -8.0),
    "shared LoRA": (700_000, 9.2),
    "MTLoRA": (900_000, 9.4),
    "big LoRA": (1_500_000, 9.3),
}


def _check_pareto(answer: object) -> None:
    want = pareto_front(PARETO_CASE)
    got = call(answer, dict(PARETO_CASE))
    try:
        got = [str(n) for n in got]  # type: ignore[union-attr]
    except TypeError:
        raise Wrong("return a list of method names") from None
    if got == want:
        return
    if set(got) == set(want):
        raise Wrong(f"the right methods, in the wrong order: fewest parameters first, {want}")
    dominated = [n for n in got if n not in want]
    if dominated:
        n = dominated[0]
        better = next(
            m
            for m in want
            if PARETO_CASE[m][0] <= PARETO_CASE[n][0] and PARETO_CASE[m][1] > PARETO_CASE[n][1]
        )
        raise Wrong(
            f"{n!r} is dominated: {better!r} has fewer parameters and a higher delta_m, so "
            f"{n!r} is not on the front"
        )
    missing = [n for n in want if n not in got]
    raise Wrong(
        f"{missing[0]!r} is missing: no method has both fewer parameters and a higher delta_m "
        "than it"
    )


# ------------------------------------------------------------------------------------------------
# 4. the task output after merging
# ------------------------------------------------------------------------------------------------


def task_output_after_merge(
    x: Tensor,
    x_t: Tensor,
    W_merged: Tensor,
    b: Tensor,
    A_s: Tensor,
    B_s: Tensor,
    A_t: Tensor,
    B_t: Tensor,
    s: float,
) -> Tensor:
    """Task t's official output W x + b + s B_t A_t x_t computed from W_merged = W + s B_s A_s:
    the merged weight brings the shared update along, so subtract it again (in low rank).
    x, x_t (N, in); A_s (r, in), B_s (out, r); A_t (r_t, in), B_t (out, r_t) -> (N, out)."""
    return x @ W_merged.T + b - s * (x @ A_s.T) @ B_s.T + s * (x_t @ A_t.T) @ B_t.T


def _check_after_merge(answer: object) -> None:
    c = _ts_case()
    x, xt, W, b, A_s, B_s = (c[k] for k in ("x", "x_tasks", "W", "b", "A_s", "B_s"))
    A_t, B_t, s = c["A_t"][0], c["B_t"][0], c["s"]
    x_t = xt[0]
    merged = W + s * B_s @ A_s
    want = x @ W.T + b + s * (x_t @ A_t.T) @ B_t.T
    mistakes = {
        "the merged weight already contains the shared update s B_s A_s: subtract "
        "s B_s A_s x again, or the task output gets the 'with_shared' form": (
            x @ merged.T + b + s * (x_t @ A_t.T) @ B_t.T
        ),
        "subtract the shared update of the shared input x (that is what W_merged added), not of "
        "x_t": x @ merged.T + b - s * (x_t @ A_s.T) @ B_s.T + s * (x_t @ A_t.T) @ B_t.T,
    }
    got = call(answer, x, x_t, merged, b, A_s, B_s, A_t, B_t, s)
    compare(got, want, "the task output", mistakes, layout="(N, out)", atol=1e-4)


# The learner's starting cells (Exercise.stub), one per exercise.
STUBS = {
    "ts_forward": '''\
def ts_forward(x, x_tasks, W, b, A_s, B_s, A_t, B_t, s) -> tuple[torch.Tensor, torch.Tensor]:
    """One TS layer, official mode: x (N, in), x_tasks (T, N, in); W (out, in), b (out,);
    A_s (r, in), B_s (out, r); A_t (T, r_t, in), B_t (T, out, r_t); scale s.
    Returns (shared output (N, out), task outputs (T, N, out))."""
    raise NotImplementedError  # your code here''',
    "ts_parameters": '''\
def ts_parameters(widths: list[tuple[int, int]], task_rank: int, n_tasks: int) -> int:
    """TS-LoRA's trainable numbers; widths: (C, H) of each stage (width, MLP width)."""
    raise NotImplementedError  # your code here''',
    "pareto_front": '''\
def pareto_front(points: dict[str, tuple[int, float]]) -> list[str]:
    """{method: (trainable parameters, delta_m)} -> the methods on the Pareto front, fewest
    parameters first."""
    raise NotImplementedError  # your code here''',
    "task_output_after_merge": '''\
def task_output_after_merge(x, x_t, W_merged, b, A_s, B_s, A_t, B_t, s) -> torch.Tensor:
    """Task t's official output from the merged weight W_merged = W + s B_s A_s.
    x, x_t (N, in); A_s (r, in), B_s (out, r); A_t (r_t, in), B_t (out, r_t) -> (N, out)."""
    raise NotImplementedError  # your code here''',
}

EXERCISES = (
    Exercise(
        "ts_forward",
        _check_ts,
        ts_forward,
        hints=(
            "base = x @ W.T + b is shared by every output. The shared output adds "
            "s * (x @ A_s.T) @ B_s.T.",
            "For all tasks at once: x_tasks @ A_t.transpose(1, 2) is (T, N, r_t), then "
            "@ B_t.transpose(1, 2) gives (T, N, out); add base (it broadcasts over T).",
        ),
        stub=STUBS["ts_forward"],
    ),
    Exercise(
        "ts_parameters",
        _check_ts_count,
        ts_parameters,
        hints=(
            "A rank-r branch of a d_in -> d_out layer has r (d_in + d_out) numbers; per stage "
            "and task: proj (C, C), fc1 (C, H), fc2 (H, C).",
        ),
        stub=STUBS["ts_parameters"],
    ),
    Exercise(
        "pareto_front",
        _check_pareto,
        pareto_front,
        hints=(
            "Sort the methods by parameters (fewest first). Walk through them, keeping a method "
            "only if its delta_m beats every delta_m seen so far.",
        ),
        stub=STUBS["pareto_front"],
    ),
    Exercise(
        "task_output_after_merge",
        _check_after_merge,
        task_output_after_merge,
        hints=(
            "x @ W_merged.T = x @ W.T + s (x @ A_s.T) @ B_s.T: the shared update comes along. "
            "The official task output has no shared update, so take it out again.",
        ),
        stub=STUBS["task_output_after_merge"],
    ),
)
