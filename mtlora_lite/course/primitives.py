"""Building blocks of the procedural scenes (``scenes.py``): background textures, the solid
primitives, and the ray caster that intersects parallel rays with them.

A primitive is a quadric ``a (x^2 + z^2) + b y^2 + e y + f <= 0`` intersected with up to 8
half-spaces ``n . p <= 1`` in its unit frame (y = the object's up axis); one routine,
``intersect``, draws spheres, cubes, cylinders, cones and polyhedra.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor


# ---- background textures: pixel coords x, y (H, W), params u (4, n, 1, 1) -> weights (n, H, W)
def _turn(x: Tensor, y: Tensor, u: Tensor) -> tuple[Tensor, Tensor]:
    c, s = torch.cos(math.pi * u), torch.sin(math.pi * u)
    return x * c + y * s, y * c - x * s


def _stripes(x: Tensor, y: Tensor, u: Tensor, noise: Tensor) -> Tensor:
    return (torch.sin(math.pi * (2 + 4 * u[1]) * _turn(x, y, u[0])[0] + 7 * u[2]) > 0).float()


def _checkers(x: Tensor, y: Tensor, u: Tensor, noise: Tensor) -> Tensor:
    (xr, yr), f = _turn(x, y, u[0]), math.pi * (2 + 3 * u[1])
    return (torch.sin(f * xr + 7 * u[2]) * torch.sin(f * yr + 7 * u[3]) > 0).float()


def _blobs(x: Tensor, y: Tensor, u: Tensor, noise: Tensor) -> Tensor:
    smooth = F.interpolate(noise, size=x.shape, mode="bilinear", align_corners=False)[:, 0]
    return torch.sigmoid(12 * (smooth - 0.5))


def _gradient(x: Tensor, y: Tensor, u: Tensor, noise: Tensor) -> Tensor:
    return (0.5 + 0.6 * _turn(x, y, 2 * u[0])[0]).clamp(0, 1)


def _rings(x: Tensor, y: Tensor, u: Tensor, noise: Tensor) -> Tensor:
    r = torch.hypot(x - 2 * u[0] + 1, y - 2 * u[1] + 1)
    return 0.5 + 0.5 * torch.sin(math.pi * (2 + 4 * u[2]) * r + 7 * u[3])


def _dots(x: Tensor, y: Tensor, u: Tensor, noise: Tensor) -> Tensor:
    (xr, yr), f = _turn(x, y, u[0]), 2 + 3 * u[1]
    return (
        (torch.frac(f * xr + 9) - 0.5) ** 2 + (torch.frac(f * yr + 9) - 0.5) ** 2 < 0.08
    ).float()


def _plaid(x: Tensor, y: Tensor, u: Tensor, noise: Tensor) -> Tensor:
    xr, yr = _turn(x, y, u[0])
    return 0.5 + 0.25 * (
        torch.sin(math.pi * (2 + 4 * u[1]) * xr) + torch.sin(math.pi * (2 + 4 * u[2]) * yr)
    )


def _waves(x: Tensor, y: Tensor, u: Tensor, noise: Tensor) -> Tensor:
    xr, yr = _turn(x, y, u[0])
    bend = 2 * torch.sin(math.pi * (1 + 2 * u[2]) * yr)
    return 0.5 + 0.5 * torch.sin(math.pi * (1 + 2 * u[1]) * xr + bend)


TEXTURES = {
    f.__name__[1:]: f
    for f in (_stripes, _checkers, _blobs, _gradient, _rings, _dots, _plaid, _waves)
}


# ---- primitives
class Primitive(NamedTuple):
    """A solid in its unit frame: quadric (a, b, e, f) <= 0 and half-spaces normal . p <= 1."""

    quadric: tuple[float, float, float, float]
    normals: tuple[tuple[float, float, float], ...]
    aspect: tuple[float, float]  # range of half-height / half-width
    radius: float  # largest distance from the up axis in the unit frame
    tip: float  # unit-frame height above which a pixel is "top" (2 = never)


_SOLID = (0.0, 0.0, 0.0, -1.0)  # a quadric negative everywhere: the half-spaces make the shape
_CAPS = ((0.0, 1.0, 0.0), (0.0, -1.0, 0.0))
_BOX = (*_CAPS, (1.0, 0.0, 0.0), (-1.0, 0.0, 0.0), (0.0, 0.0, 1.0), (0.0, 0.0, -1.0))
_HEX = tuple((math.cos(k * math.pi / 3), 0.0, math.sin(k * math.pi / 3)) for k in range(6))
_PYRAMID = ((0.0, -1.0, 0.0), (2.0, 1.0, 0.0), (-2.0, 1.0, 0.0), (0.0, 1.0, 2.0), (0.0, 1.0, -2.0))
_OCTAHEDRON = tuple((x, y, z) for x in (1.0, -1.0) for y in (1.0, -1.0) for z in (1.0, -1.0))
# e.g. sphere x^2 + y^2 + z^2 <= 1; cylinder x^2 + z^2 <= 1, |y| <= 1; cone x^2 + z^2 <=
# ((1 - y) / 2)^2 (apex at y = 1), |y| <= 1; cube |x|, |y|, |z| <= 1
PRIMITIVES: dict[str, Primitive] = {
    "sphere": Primitive((1.0, 1.0, 0.0, -1.0), (), (1.0, 1.0), 1.0, 2.0),
    "cube": Primitive(_SOLID, _BOX, (1.0, 1.0), math.sqrt(2), 2.0),
    "cylinder": Primitive((1.0, 0.0, 0.0, -1.0), _CAPS, (0.6, 1.3), 1.0, 2.0),
    "cone": Primitive((1.0, -0.25, 0.5, -0.25), _CAPS, (0.8, 1.3), 1.0, 1 / 3),
    "pyramid": Primitive(_SOLID, _PYRAMID, (0.7, 1.2), math.sqrt(2), 1 / 3),
    "octahedron": Primitive(_SOLID, _OCTAHEDRON, (1.0, 1.3), 1.0, 1 / 3),
    "prism": Primitive(_SOLID, _CAPS + _HEX, (0.5, 1.2), 2 / math.sqrt(3), 2.0),
}


# ---- ray casting
def rotation(yaw: Tensor, elevation: Tensor) -> Tensor:
    """Object-to-camera rotations (n, 3, 3): yaw about the object's up axis, then camera tilt."""
    cy, sy, ce, se = yaw.cos(), yaw.sin(), elevation.cos(), elevation.sin()
    one, zero = torch.ones_like(yaw), torch.zeros_like(yaw)
    r_yaw = torch.stack([cy, zero, sy, zero, one, zero, -sy, zero, cy], -1).view(-1, 3, 3)
    r_tilt = torch.stack([one, zero, zero, zero, ce, -se, zero, se, ce], -1).view(-1, 3, 3)
    return r_tilt @ r_yaw


def intersect(
    across: Tensor, down: Tensor, d: Tensor, quadric: Tensor, normals: Tensor
) -> tuple[Tensor, ...]:
    """First hits of parallel rays with quadric-and-half-space solids, in their unit frames.

    Ray origins are ``across + down``: (n, 1, S, 3) + (n, S, 1, 3) -> (n, S, S, 3); d (n, 3)
    is one direction per solid, quadric (n, 4), normals (n, P, 3). Returns the ray origins,
    t (n, S, S) (inf = miss), the entry face (n, S, S) and whether the hit is on that face
    rather than on the quadric (n, S, S).
    """
    # half-spaces (slab method): the ray is inside all of them for t_in <= t <= t_out, where
    # t = (1 - origin . normal) / (d . normal) per plane, summed from its across and down parts
    den = torch.einsum("nk,npk->np", d, normals)
    den = torch.where(den.abs() < 1e-9, 1e-9, den)[:, None, None, :]  # parallel: never enters
    t_across = (1 - across @ normals.transpose(1, 2)[:, None]) / den  # (n, 1, S, P)
    t_down = -(down @ normals.transpose(1, 2)[:, None]) / den  # (n, S, 1, P)
    t_in, face = (t_across + torch.where(den < 0, 0.0, -math.inf) + t_down).max(-1)
    t_out = (t_across + torch.where(den > 0, 0.0, math.inf) + t_down).amin(-1)
    # quadric along the ray: qa t^2 + qb t + qc, roots by the numerically stable formula
    a, b, e, f = (c[:, None, None] for c in quadric.unbind(-1))
    dx, dy, dz = (c[:, None, None] for c in d.unbind(-1))
    origin = across + down
    ox, oy, oz = origin.unbind(-1)
    qa = a * (dx**2 + dz**2) + b * dy**2
    qb = 2 * a * (ox * dx + oz * dz) + (2 * b * oy + e) * dy
    qc = a * (ox**2 + oz**2) + (b * oy + e) * oy + f
    disc = qb**2 - 4 * qa * qc
    q = -0.5 * (qb + torch.where(qb >= 0, 1.0, -1.0) * disc.clamp_min(0).sqrt())
    roots = torch.stack([q / qa, qc / q], -1)
    # the hit: the slab entry if it lies inside the quadric, else the root inside the slab
    # where the ray enters the quadric (Q decreasing: 2 qa t + qb < 0)
    tol = 1e-5
    on_face = (t_in > -math.inf) & (t_in <= t_out) & (qa * t_in**2 + qb * t_in + qc <= tol)
    ok = (disc >= 0)[..., None] & (2 * qa[..., None] * roots + qb[..., None] < 0)
    ok &= (roots >= t_in[..., None] - tol) & (roots <= t_out[..., None] + tol)
    t_root = torch.where(ok, roots, math.inf).amin(-1)
    t_face = torch.where(on_face, t_in, math.inf)
    return origin, torch.minimum(t_face, t_root), face, t_face <= t_root
