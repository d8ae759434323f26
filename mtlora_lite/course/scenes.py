"""Procedural multi-task scenes: shaded 3-D primitives over textured backgrounds, fully offline.

One ray caster draws each image and computes all of its labels exactly, mirroring the tasks of
PASCAL-Context (semantic and part segmentation, saliency, surface normals, plus depth and edges)
and adding image-level tasks (object count, shape and colour of the largest object).

Scene model. Camera coordinates: x right, y up, z towards the viewer; the image spans [-1, 1]^2.
* Orthographic camera looking along -z, tilted down by a random elevation so tops are visible.
* ``min_objects..max_objects`` objects, one per cell of a jittered ``grid x grid`` layout; the
  config checks that no object can reach another's centre, so every object stays visible.
  Objects higher in the image are further away. Occlusion is resolved by a z-buffer.
* Every primitive is a quadric ``a (x^2 + z^2) + b y^2 + e y + f <= 0`` intersected with up to
  8 half-spaces ``n . p <= 1`` in its unit frame (y = the object's up axis), then scaled, yawed
  and tilted: one ray/primitive routine draws spheres, cubes, cylinders, cones and polyhedra.
* Lambertian shading plus ambient light, from a random light direction per image.

Labels (keys of ``generate_scenes``):
* ``semseg``: 0 background, k + 1 for shape ``config.shapes[k]``.
* ``parts``: 0 background, 1 top, 2 lit body, 3 shadowed body. "Top": the surface normal is
  within ~45 degrees of the object's up axis (sphere cap, top face of a cube or cylinder); for
  pointed primitives (cone, pyramid, octahedron) the upper third of the height, i.e. the tip.
  Other object pixels are "shadowed" where ``normal . light < SHADOW_COS``, otherwise "lit".
* ``saliency``: 1 on the largest visible object (most pixels; ties -> lower slot), 0 elsewhere.
* ``normals``: unit normals in camera coordinates on objects; the zero vector (= invalid) on
  the background. ``depth``: distance from the camera plane; ``FAR`` on the background.
* ``edges``: object pixels with a 4-neighbour of another object or of the background.
* ``count``: visible objects minus ``min_objects``; ``shape`` / ``colour``: index into
  ``config.shapes`` / ``config.palette`` of the largest visible object.

Speed: 10,000 images at 64x64 (1.7 GB of tensors, mostly the int64 and float32 labels) in
3.1-3.5 s on 2 otherwise idle CPU cores (torch 2.14; 6 s of CPU time), measured with
``python -c "import time; from mtlora_lite.course.scenes import generate_scenes as g;
t = time.perf_counter(); g(10_000, 0); print(time.perf_counter() - t)"``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from mtlora_lite.adapters.checks import check_count
from mtlora_lite.course.primitives import PRIMITIVES, TEXTURES, intersect, rotation

CAMERA_Z = 2.5  # rays start on the plane z = CAMERA_Z; depth = distance from that plane
FAR = 5.0  # depth of background pixels (every object is nearer)
TOP_COS = 0.7  # "top" part: normal within ~45 degrees of the object's up axis
SHADOW_COS = 0.25  # "shadowed body" part: normal . light below this
PART_NAMES = ("background", "top", "lit body", "shadowed body")
DENSE_LABELS = ("semseg", "parts", "saliency", "normals", "depth", "edges")
IMAGE_LABELS = ("count", "shape", "colour")
# torch's CPU generator (a Mersenne Twister) keeps only the low 32 bits of a seed: seeds 2**32
# apart, and -1 and 2**32 - 1, draw the same numbers. Scene seeds must therefore be below this.
SEED_LIMIT = 2**32


RGB = tuple[float, float, float]
DOWNSTREAM_PALETTE: tuple[tuple[str, RGB], ...] = (
    ("red", (0.85, 0.15, 0.15)),
    ("green", (0.15, 0.70, 0.20)),
    ("blue", (0.15, 0.30, 0.90)),
    ("yellow", (0.90, 0.80, 0.10)),
    ("magenta", (0.80, 0.20, 0.80)),
    ("cyan", (0.10, 0.75, 0.80)),
)
PRETRAIN_PALETTE: tuple[tuple[str, RGB], ...] = (
    ("orange", (0.95, 0.50, 0.10)),
    ("lime", (0.55, 0.90, 0.10)),
    ("teal", (0.10, 0.55, 0.45)),
    ("violet", (0.50, 0.25, 0.90)),
    ("pink", (1.00, 0.55, 0.70)),
    ("brown", (0.55, 0.35, 0.20)),
    ("white", (0.92, 0.92, 0.92)),
)


@dataclass(frozen=True)
class SceneConfig:
    """What scenes look like. Lengths are in image half-widths (the image spans [-1, 1])."""

    image_size: int = 64
    min_objects: int = 1
    max_objects: int = 4
    shapes: tuple[str, ...] = ("sphere", "cube", "cylinder", "cone")
    palette: tuple[tuple[str, RGB], ...] = DOWNSTREAM_PALETTE
    backgrounds: tuple[str, ...] = ("stripes", "checkers", "blobs", "gradient")
    bg_saturation: float = 0.35  # 0 = grey backgrounds, 1 = as saturated as random RGB
    size_range: tuple[float, float] = (0.14, 0.28)  # half-width of an object
    elevation_deg: tuple[float, float] = (20.0, 35.0)  # camera tilt below the horizon
    ambient: float = 0.3
    grid: int = 3  # objects sit in distinct cells of a grid x grid layout
    jitter: float = 0.06  # largest offset of an object from its cell centre
    shift: float = 0.1  # largest offset of the whole layout

    def __post_init__(self) -> None:
        for field, known in (("shapes", PRIMITIVES), ("backgrounds", TEXTURES)):
            unknown = [s for s in getattr(self, field) if s not in known]
            if unknown:
                raise ValueError(f"unknown {field} {unknown}; choose from {sorted(known)}")
        if not 1 <= self.min_objects <= self.max_objects <= self.grid**2:
            raise ValueError(
                f"need 1 <= min_objects <= max_objects <= grid**2 = {self.grid**2}, got "
                f"{self.min_objects}, {self.max_objects}: change the counts or the grid"
            )
        if self.jitter + self.shift >= 1 / self.grid:
            raise ValueError(
                f"jitter + shift = {self.jitter + self.shift} could move objects out of the "
                f"image: keep it below 1 / grid = {1 / self.grid:.3f}"
            )
        if self.reach >= 2 / self.grid - 2 * self.jitter:
            raise ValueError(
                f"objects reach {self.reach:.3f} from their centre but centres may be only "
                f"{2 / self.grid - 2 * self.jitter:.3f} apart, so an object could hide another: "
                "lower size_range[1] or jitter, or use a smaller grid"
            )

    @property
    def reach(self) -> float:
        """Largest distance from an object's centre to its surface (bounds its footprint)."""
        prims = [PRIMITIVES[s] for s in self.shapes]
        return self.size_range[1] * max(math.hypot(p.radius, p.aspect[1]) for p in prims)


DOWNSTREAM = SceneConfig()
PRETRAIN = SceneConfig(
    shapes=("sphere", "cube", "pyramid", "octahedron", "prism"),
    palette=PRETRAIN_PALETTE,
    backgrounds=("rings", "dots", "plaid", "waves"),
    bg_saturation=0.6,
)


def class_names(config: SceneConfig, task: str) -> list[str]:
    """Names of the classes of a segmentation / classification task, in label order."""
    names = {
        "semseg": ["background", *config.shapes],
        "parts": list(PART_NAMES),
        "saliency": ["background", "salient"],
        "edges": ["no edge", "edge"],
        "count": [str(k) for k in range(config.min_objects, config.max_objects + 1)],
        "shape": list(config.shapes),
        "colour": [name for name, _ in config.palette],
    }
    if task not in names:
        raise ValueError(f"task {task!r} has no classes; tasks with classes: {sorted(names)}")
    return names[task]


def _sample(n: int, cfg: SceneConfig, g: torch.Generator) -> dict[str, Tensor]:
    """All random choices for n scenes, drawn up front so that chunking never changes a scene."""
    m, k = cfg.max_objects, cfg.grid

    def rand(*shape: int, lo: float = 0.0, hi: float = 1.0) -> Tensor:
        return lo + (hi - lo) * torch.rand(*shape, generator=g)

    cell = rand(n, k * k).argsort(1)[:, :m]  # distinct cells, row 0 at the top
    xy = (torch.stack([cell % k, k - 1 - cell // k], -1) + 0.5) * (2 / k) - 1
    xy = (
        xy
        + rand(n, m, 2, lo=-cfg.jitter, hi=cfg.jitter)
        + rand(n, 1, 2, lo=-cfg.shift, hi=cfg.shift)
    )
    kind = torch.randint(len(cfg.shapes), (n, m), generator=g)
    colour = torch.randint(len(cfg.palette), (n, m), generator=g)
    lo, hi = torch.tensor([PRIMITIVES[s].aspect for s in cfg.shapes]).unbind(-1)
    radius = torch.tensor([PRIMITIVES[s].radius for s in cfg.shapes])[kind]
    width = rand(n, m, lo=cfg.size_range[0], hi=cfg.size_range[1])
    height = width * (lo[kind] + (hi - lo)[kind] * rand(n, m))  # half-height
    side = torch.where(rand(n) < 0.5, -1.0, 1.0)
    light = torch.stack(
        [side * rand(n, lo=0.4), rand(n, lo=0.3, hi=0.9), rand(n, lo=0.2, hi=0.7)], -1
    )
    bg = rand(n, 2, 3)
    bg = bg.mean(-1, keepdim=True) + cfg.bg_saturation * (bg - bg.mean(-1, keepdim=True))
    return {
        "n_obj": torch.randint(cfg.min_objects, m + 1, (n,), generator=g),
        "xy": xy,
        "z": -1.2 * xy[..., 1] + rand(n, m, lo=-0.1, hi=0.1),  # higher in the image = further
        "kind": kind,
        "scale": torch.stack([width, height, width], -1),
        "reach": torch.hypot(radius * width, height),  # centre-to-surface distance bound
        "yaw": rand(n, m, hi=2 * math.pi),
        "colour": colour,
        "albedo": torch.tensor([c for _, c in cfg.palette])[colour] * rand(n, m, 1, lo=0.85),
        "elevation": torch.deg2rad(rand(n, lo=cfg.elevation_deg[0], hi=cfg.elevation_deg[1])),
        "light": F.normalize(light, dim=-1),
        "texture": torch.randint(len(cfg.backgrounds), (n,), generator=g),
        "texture_u": rand(n, 4),
        "noise": rand(n, 1, 5, 5),
        "bg": 0.15 + 0.7 * bg,  # two colours per background
    }


def _background(p: dict[str, Tensor], cfg: SceneConfig) -> Tensor:
    """Textured backgrounds (n, 3, H, W) in [0, 255]: a per-image texture mixing two colours."""
    size = cfg.image_size
    coords = (torch.arange(size) + 0.5) * 2 / size - 1
    x, y = coords[None, :].expand(size, -1), -coords[:, None].expand(-1, size)
    w = torch.empty(len(p["texture"]), size, size)
    for k, name in enumerate(cfg.backgrounds):
        sel = p["texture"] == k
        if sel.any():
            w[sel] = TEXTURES[name](x, y, p["texture_u"][sel].T[..., None, None], p["noise"][sel])
    c0, c1 = (255 * c[:, :, None, None] for c in p["bg"].unbind(1))
    return torch.addcmul(c0, c1 - c0, w[:, None])


def _batches(p: dict[str, Tensor], groups: int = 4) -> Iterator[tuple[int, Tensor]]:
    """(slot, scene indices) batches: the scenes with an object in that slot, grouped by the
    object's reach so that small objects get small ray windows."""
    for j in range(p["kind"].shape[1]):
        idx = (p["n_obj"] > j).nonzero()[:, 0]
        for group in idx[p["reach"][idx, j].argsort()].tensor_split(groups):
            if len(group):
                yield j, group


def _render(p: dict[str, Tensor], cfg: SceneConfig, out: dict[str, Tensor]) -> None:
    """Draw scenes from their parameters (see ``_sample``) into ``out``, views of the outputs
    of ``generate_scenes`` with semseg, parts and normals zero and depth ``FAR``."""
    n, m = p["kind"].shape
    size, prims = cfg.image_size, [PRIMITIVES[s] for s in cfg.shapes]
    quadrics = torch.tensor([s.quadric for s in prims])  # (K, 4)
    pad = ((0.0, 0.0, 0.0),)  # 0 . p <= 1 holds everywhere
    n_planes = max(1, *(len(s.normals) for s in prims))
    normals = torch.tensor([s.normals + pad * (n_planes - len(s.normals)) for s in prims])
    tips = torch.tensor([s.tip for s in prims])
    out["image"][:] = _background(p, cfg).round_()
    image, normal = out["image"].permute(0, 2, 3, 1), out["normals"].permute(0, 2, 3, 1)
    zbuf, sem, part = out["depth"], out["semseg"], out["parts"]
    inst = torch.full((n, size, size), -1, dtype=torch.long)  # slot of the visible object
    visible = torch.zeros(n, m + 1, dtype=torch.long)  # pixels per slot, background first
    for j, idx in _batches(p):
        # each object is cast in a crop x crop window around its centre
        crop = 2 * math.ceil(p["reach"][idx, j].max().item() * size / 2) + 2
        steps = torch.arange(crop)
        kind, scale, (cx, cy) = p["kind"][idx, j], p["scale"][idx, j], p["xy"][idx, j].unbind(-1)
        col = (((cx + 1) * size / 2).floor().long() - crop // 2)[:, None] + steps  # (n_j, crop)
        row = (((1 - cy) * size / 2).floor().long() - crop // 2)[:, None] + steps
        rot = rotation(p["yaw"][idx, j], p["elevation"][idx])
        axes = rot / scale[:, None, :]  # rows: camera x, y, z axes in the unit frame
        x0 = (col + 0.5) * 2 / size - 1 - cx[:, None]  # ray origins relative to the centre
        y0 = 1 - (row + 0.5) * 2 / size - cy[:, None]
        z0 = CAMERA_Z - p["z"][idx, j]
        across = x0[:, :, None] * axes[:, None, 0] + (z0[:, None] * axes[:, 2])[:, None]
        down = y0[:, :, None] * axes[:, None, 1]  # ray origins = across + down, unit frame
        origin, t, face, flat = intersect(
            across[:, None], down[:, :, None], -axes[:, 2], quadrics[kind], normals[kind]
        )
        inside = ((row >= 0) & (row < size))[:, :, None] & ((col >= 0) & (col < size))[:, None, :]
        window = (
            idx[:, None, None],
            row.clamp(0, size - 1)[:, :, None],
            col.clamp(0, size - 1)[:, None, :],
        )
        front = (inside & (t < zbuf[window])).flatten().nonzero()[:, 0]  # nearest so far
        o, r, c = front // crop**2, front // crop % crop, front % crop  # shade only those
        b, y, x, t, kind = idx[o], row[o, r], col[o, c], t.flatten()[front], kind[o]
        unit = origin.view(-1, 3)[front] - t[:, None] * axes[o, 2]  # hit points, unit frame
        qa, qb, qe, _ = quadrics[kind].unbind(-1)
        grad = torch.stack([2 * qa * unit[:, 0], 2 * qb * unit[:, 1] + qe, 2 * qa * unit[:, 2]], -1)
        on_face = flat.flatten()[front, None]
        grad = torch.where(on_face, normals[kind, face.flatten()[front]], grad)
        n_obj = F.normalize(grad / scale[o], dim=-1)  # object frame, y = up axis
        n_cam = (rot[o] @ n_obj[:, :, None])[:, :, 0]
        lambert = (n_cam * p["light"][b]).sum(-1)
        top = (n_obj[:, 1] >= TOP_COS) | (unit[:, 1] >= tips[kind])
        visible.index_put_((b, inst[b, y, x] + 1), torch.tensor(-1), accumulate=True)
        visible.index_put_((b, torch.tensor(j + 1)), torch.tensor(1), accumulate=True)
        zbuf[b, y, x], inst[b, y, x], sem[b, y, x], normal[b, y, x] = t, j, kind + 1, n_cam
        part[b, y, x] = torch.where(top, 1, torch.where(lambert < SHADOW_COS, 3, 2))
        light = cfg.ambient + (1 - cfg.ambient) * lambert.clamp_min(0)
        image[b, y, x] = (p["albedo"][b, j] * light[:, None] * 255).round_().to(torch.uint8)

    visible = visible[:, 1:]  # (n, m) visible pixels per object
    largest = visible.argmax(1)  # (n,) slot of the largest visible object
    edge = torch.zeros(n, size, size, dtype=torch.bool)
    edge[:, 1:] |= inst[:, 1:] != inst[:, :-1]
    edge[:, :-1] |= inst[:, :-1] != inst[:, 1:]
    edge[:, :, 1:] |= inst[:, :, 1:] != inst[:, :, :-1]
    edge[:, :, :-1] |= inst[:, :, :-1] != inst[:, :, 1:]
    out["saliency"][:] = inst == largest[:, None, None]
    out["edges"][:] = edge & (inst >= 0)
    out["count"][:] = (visible > 0).sum(1) - cfg.min_objects
    out["shape"][:] = p["kind"].gather(1, largest[:, None])[:, 0]
    out["colour"][:] = p["colour"].gather(1, largest[:, None])[:, 0]


_CHUNK = 1024  # scenes rendered at once (bounds the ray caster's memory)


def check_seed(seed: object, limit: int = SEED_LIMIT, why: str = "") -> int:
    """``seed`` as an ``int`` if it is an integer in [0, ``limit``), else ``ValueError``.

    ``limit`` is at most ``SEED_LIMIT``: torch's generator keeps only the low 32 bits of a seed,
    so a larger or negative seed would silently repeat the data of another seed. ``why`` says
    where a smaller limit comes from.
    """
    seed = check_count(seed, "seed", minimum=0)
    if seed >= limit:
        raise ValueError(
            f"seed must be below {limit} (2**{limit.bit_length() - 1}), got {seed}: torch's "
            f"generator keeps only the low 32 bits of a seed{why}, so this seed would repeat "
            "the data of a smaller one. Pass a seed in that range."
        )
    return seed


def generate_scenes(n: int, seed: int, config: SceneConfig = DOWNSTREAM) -> dict[str, Tensor]:
    """Render ``n`` scenes; the same ``seed`` (in [0, 2**32), ``check_seed``) and ``config`` give
    bit-identical tensors.

    Returns "image" (n, 3, H, W) uint8; "semseg", "parts" (n, H, W) int64; "saliency",
    "depth", "edges" (n, H, W) float32; "normals" (n, 3, H, W) float32; "count", "shape",
    "colour" (n,) int64. The module docstring defines each label.
    """
    if n < 1:
        raise ValueError(f"n must be a positive number of scenes, got {n}")
    params = _sample(n, config, torch.Generator().manual_seed(check_seed(seed)))
    size = config.image_size
    out = {
        "image": torch.empty(n, 3, size, size, dtype=torch.uint8),
        "semseg": torch.zeros(n, size, size, dtype=torch.long),
        "parts": torch.zeros(n, size, size, dtype=torch.long),
        "saliency": torch.empty(n, size, size),
        "normals": torch.zeros(n, 3, size, size),
        "depth": torch.full((n, size, size), FAR),
        "edges": torch.empty(n, size, size),
        **{task: torch.empty(n, dtype=torch.long) for task in IMAGE_LABELS},
    }
    for start in range(0, n, _CHUNK):
        chunk = slice(start, start + _CHUNK)
        _render(
            {k: v[chunk] for k, v in params.items()}, config, {k: v[chunk] for k, v in out.items()}
        )
    return out
