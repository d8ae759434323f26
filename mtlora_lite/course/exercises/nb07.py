"""Exercises of notebook 07 (PASCAL-Context): normals are vectors, and the paper's learning rate.

Normal maps are (3, H, W) tensors with x to the right and y down the rows (as
``mtlora_lite.multitask.pascal.transforms``); a rotation by theta is counter-clockwise on screen.

1. ``turn_vectors(normals, degrees)``: turn every normal's (x, y) by theta (section 2).
2. ``rotate_normal_map(normals, quarter_turns)``: rotate the map by k x 90 degrees, pixels and
   vectors (section 2, compared with ``warp``).
3. ``flip_normals(normals)``: the horizontal flip of a normal map (section 2, before the flip
   check).
4. ``scaled_lr(batch_per_device, devices)``: the paper's linear learning-rate rule under torchrun
   (section 4).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from mtlora_lite.course.exercises.core import Exercise, Wrong, call, compare, compare_number

# ------------------------------------------------------------------------------------------------
# 1. turn the vectors
# ------------------------------------------------------------------------------------------------


def turn_vectors(normals: Tensor, degrees: float) -> Tensor:
    """(3, H, W) -> (3, H, W): each normal's (x, y) turned by ``degrees`` counter-clockwise on
    screen (y points down the rows), z unchanged. The pixels stay where they are."""
    theta = math.radians(degrees)
    c, s = math.cos(theta), math.sin(theta)
    x, y, z = normals
    return torch.stack([c * x + s * y, -s * x + c * y, z])


def _normal_map(h: int = 5, w: int = 5) -> Tensor:
    g = torch.Generator().manual_seed(11)
    n = torch.randn(3, h, w, generator=g)
    n[2] = n[2].abs()  # facing the camera
    return n / n.norm(dim=0, keepdim=True)


def _check_turn(answer: object) -> None:
    n = _normal_map()
    for degrees in (30.0, 90.0):
        t = math.radians(degrees)
        c, s = math.cos(t), math.sin(t)
        x, y, z = n
        mistakes = {
            "that turns clockwise on screen: with y pointing down the rows, counter-clockwise "
            "is x' = c x + s y, y' = -s x + c y": torch.stack([c * x - s * y, s * x + c * y, z]),
            "the angle is in degrees: convert with math.radians before cos and sin": torch.stack(
                [
                    math.cos(degrees) * x + math.sin(degrees) * y,
                    -math.sin(degrees) * x + math.cos(degrees) * y,
                    z,
                ]
            ),
            "the vectors did not turn": n,
        }
        got = call(answer, n.clone(), degrees)
        compare(
            got,
            turn_vectors(n, degrees),
            f"turn_vectors(normals, {degrees:g})",
            mistakes,
            layout="(3, H, W)",
        )


# ------------------------------------------------------------------------------------------------
# 2. rotate a normal map: pixels and vectors
# ------------------------------------------------------------------------------------------------


def rotate_normal_map(normals: Tensor, quarter_turns: int) -> Tensor:
    """(3, H, W) -> (3, W, H) or (3, H, W): the map rotated by quarter_turns x 90 degrees
    counter-clockwise on screen. The pixels move (torch.rot90) and every vector turns with them."""
    moved = torch.rot90(normals, quarter_turns, dims=(1, 2))  # counter-clockwise, as np.rot90
    return turn_vectors(moved, 90.0 * quarter_turns)


PIXELS_STAY = "the pixels did not move: rotate the map too (torch.rot90(normals, k, dims=(1, 2)))"


def _check_rotate(answer: object) -> None:
    n = _normal_map(4, 6)  # not square: a wrong axis shows in the shape
    for k in (1, 2, 3):
        moved = torch.rot90(n, k, dims=(1, 2))
        mistakes = {
            "only the pixels moved: a rotated surface faces another way, so turn each vector "
            "too (turn_vectors by 90 k degrees)": moved,
            PIXELS_STAY: turn_vectors(n, 90.0 * k) if k == 2 else torch.zeros(0),
            "the pixels and the vectors turn in opposite directions: rotate both "
            "counter-clockwise": turn_vectors(moved, -90.0 * k),
            "that rotates clockwise: torch.rot90 with k > 0 on dims (1, 2) turns "
            "counter-clockwise on screen, and the vectors must follow": turn_vectors(
                torch.rot90(n, -k, dims=(1, 2)), -90.0 * k
            ),
        }
        mistakes = {m: v for m, v in mistakes.items() if v.numel()}
        got = call(answer, n.clone(), k)
        if isinstance(got, Tensor) and k % 2 and got.shape == n.shape:
            raise Wrong(
                f"{PIXELS_STAY} (a {n.shape[1]} x {n.shape[2]} map turned by 90 degrees is "
                f"{n.shape[2]} x {n.shape[1]})"
            )
        compare(got, rotate_normal_map(n, k), f"rotate_normal_map(normals, {k})", mistakes)


# ------------------------------------------------------------------------------------------------
# 3. the horizontal flip
# ------------------------------------------------------------------------------------------------


def flip_normals(normals: Tensor) -> Tensor:
    """(3, H, W) -> (3, H, W): the map mirrored left-right; a mirrored surface faces the other
    way along x, so n_x changes sign."""
    out = normals.flip(-1)
    return torch.stack([-out[0], out[1], out[2]])


def _check_flip(answer: object) -> None:
    n = _normal_map()
    mirrored = n.flip(-1)
    mistakes = {
        "only the pixels were mirrored: a mirrored surface faces the other way, so negate n_x": (
            mirrored
        ),
        "n_y was negated: a left-right mirror changes x only": torch.stack(
            [mirrored[0], -mirrored[1], mirrored[2]]
        ),
        "that mirrors the rows (up-down): a horizontal flip reverses the columns, flip(-1)": (
            torch.stack([-n.flip(-2)[0], n.flip(-2)[1], n.flip(-2)[2]])
        ),
        "n_x was negated, but the pixels did not move: mirror the map too": torch.stack(
            [-n[0], n[1], n[2]]
        ),
    }
    compare(call(answer, n.clone()), flip_normals(n), "flip_normals", mistakes, layout="(3, H, W)")


# ------------------------------------------------------------------------------------------------
# 4. the learning rate
# ------------------------------------------------------------------------------------------------


def scaled_lr(batch_per_device: int, devices: int) -> float:
    """The MTLoRA paper's rule, 5e-4 x effective batch / 512, where torchrun's effective batch
    is the batch of one device times the number of devices."""
    return 5e-4 * batch_per_device * devices / 512


def _check_lr(answer: object) -> None:
    for batch, devices in ((32, 1), (32, 4), (16, 8)):
        want = scaled_lr(batch, devices)
        mistakes = {
            "the effective batch is the per-device batch times the number of devices": (
                5e-4 * batch / 512
            ),
            "the rule grows with the batch: 5e-4 x batch / 512, not 512 / batch": 5e-4
            * 512
            / (batch * devices),
        }
        if devices == 1:
            del mistakes[next(iter(mistakes))]
        got = call(answer, batch, devices)
        compare_number(got, want, f"scaled_lr({batch}, {devices})", mistakes, rel=1e-6)


# The learner's starting cells (Exercise.stub), one per exercise.
STUBS = {
    "turn_vectors": '''\
def turn_vectors(normals: torch.Tensor, degrees: float) -> torch.Tensor:
    """(3, H, W) -> (3, H, W): each normal's (x, y) turned counter-clockwise on screen (y points
    down the rows); z unchanged; the pixels stay where they are."""
    raise NotImplementedError  # your code here''',
    "rotate_normal_map": '''\
def rotate_normal_map(normals: torch.Tensor, quarter_turns: int) -> torch.Tensor:
    """The normal map (3, H, W) rotated by quarter_turns x 90 degrees counter-clockwise on
    screen: the pixels and the vectors."""
    raise NotImplementedError  # your code here''',
    "flip_normals": '''\
def flip_normals(normals: torch.Tensor) -> torch.Tensor:
    """The normal map (3, H, W) mirrored left-right."""
    raise NotImplementedError  # your code here''',
    "scaled_lr": '''\
def scaled_lr(batch_per_device: int, devices: int) -> float:
    """The MTLoRA paper's learning rate for torchrun on `devices` devices."""
    raise NotImplementedError  # your code here''',
}

EXERCISES = (
    Exercise(
        "turn_vectors",
        _check_turn,
        turn_vectors,
        hints=(
            "c, s = math.cos(theta), math.sin(theta) with theta = math.radians(degrees); "
            "x, y, z = normals.",
            "Counter-clockwise on screen with y down: x' = c x + s y, y' = -s x + c y; stack "
            "(x', y', z).",
        ),
        stub=STUBS["turn_vectors"],
    ),
    Exercise(
        "rotate_normal_map",
        _check_rotate,
        rotate_normal_map,
        hints=(
            "Two steps: move the pixels, torch.rot90(normals, quarter_turns, dims=(1, 2)); then "
            "turn the vectors by the same angle, turn_vectors(..., 90 * quarter_turns).",
        ),
        stub=STUBS["rotate_normal_map"],
    ),
    Exercise(
        "flip_normals",
        _check_flip,
        flip_normals,
        hints=("Mirror the columns, normals.flip(-1); then negate channel 0 (n_x).",),
        stub=STUBS["flip_normals"],
    ),
    Exercise(
        "scaled_lr",
        _check_lr,
        scaled_lr,
        hints=("5e-4 * (batch_per_device * devices) / 512.",),
        stub=STUBS["scaled_lr"],
    ),
)
