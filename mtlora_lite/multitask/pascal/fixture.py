"""A tiny PASCAL_MT on disk, in the archive's own formats, for tests and plumbing runs offline.

    root = write_pascal_fixture("/tmp/pascal_fixture", n=6)
    PascalContext(root, "train")          # reads it like the real archive

Each image is a procedural scene (sky over a wall, a chair, and a person in two of every three
images) written as the archive writes it: JPEG images of several non-square sizes; palette PNGs
for semseg with a 255 (ignore) band along object borders, one image in ``semseg/VOC12`` (with a
different decoy in ``semseg/pascal-context``, which readers must skip) and the rest in
``semseg/pascal-context``; PASCAL-Part ``anno`` structs written with ``scipy.io.savemat`` (field
names class / class_ind / mask / parts and part_name / mask; a chair without parts); grey
saliency PNGs; RGB normals PNGs (c = (n + 1) 255 / 2) whose sky is not a normals class of the
``LabelMap``; ``LabelMap`` .mat files; id lists. Numbers trained on it mean nothing.

The persons cover the cases of the human-parts rules (``PERSONS``, by image index modulo 6): a
person with six annotated parts (0, 1, 4), no person at all (2), a person annotated without parts
(3: kept by ``has_person``, its parts map all ignore), and a person object whose mask is empty
(5: no person for ``has_person``). With the default n = 6, train holds 0-3 and val 4-5.

``damage_pascal_fixture`` then spoils a fixture in every way ``pascal.check`` must report, one
kind of damage per image, in both splits (``DAMAGE``).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from mtlora_lite.adapters.atomic import atomic_path
from mtlora_lite.multitask.pascal.data import FOLDERS
from mtlora_lite.multitask.pascal.readers import IGNORE, PERSON, read_edges

SIZES = ((60, 80), (72, 56), (64, 64), (56, 90))  # (H, W), non-square first
CONTEXT = {"sky": 360, "wall": 440, "chair": 72, "person": 284}  # LabelMap ids (sky: no normals)
VOC = {"chair": 9, "person": PERSON}  # semseg classes
COLOURS = {"sky": (120, 170, 230), "wall": (200, 190, 170), "chair": (140, 80, 40)}
PARTS = ("head", "torso", "luarm", "rlarm", "luleg", "rlleg")  # one name per human part group
PERSONS = ("parts", "parts", "none", "no parts", "parts", "empty mask")  # image index modulo 6


def _ellipse(h: int, w: int, cy: float, cx: float, ry: float, rx: float) -> np.ndarray:
    y, x = np.mgrid[:h, :w]
    return ((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2 <= 1


def _box(h: int, w: int, top: float, bottom: float, left: float, right: float) -> np.ndarray:
    y, x = np.mgrid[:h, :w]
    return (y >= top) & (y < bottom) & (x >= left) & (x < right)


def _person_parts(h: int, w: int) -> dict[str, np.ndarray]:
    """Masks of the six parts of a standing person in the left half of an h x w image."""
    cx = 0.3 * w
    return {
        "head": _ellipse(h, w, 0.22 * h, cx, 0.09 * h, 0.07 * w),
        "torso": _box(h, w, 0.31 * h, 0.6 * h, cx - 0.08 * w, cx + 0.08 * w),
        "luarm": _box(h, w, 0.32 * h, 0.45 * h, cx + 0.08 * w, cx + 0.12 * w),
        "rlarm": _box(h, w, 0.45 * h, 0.58 * h, cx - 0.12 * w, cx - 0.08 * w),
        "luleg": _box(h, w, 0.6 * h, 0.75 * h, cx - 0.07 * w, cx),
        "rlleg": _box(h, w, 0.75 * h, 0.92 * h, cx, cx + 0.07 * w),
    }


def _anno(
    image_id: str, chair: np.ndarray, person: np.ndarray, parts: dict[str, np.ndarray] | None
) -> np.ndarray:
    """The PASCAL-Part ``anno`` struct: (1, 1) of (imname, objects (1, N)); a person object
    first (with ``parts`` if given) unless ``person`` is None."""
    objects = [("chair", VOC["chair"], chair, np.zeros((0, 0)))]  # an object without parts
    if person is not None:
        table = np.zeros((0, 0))
        if parts is not None:
            table = np.zeros((1, len(parts)), dtype=[("part_name", "O"), ("mask", "O")])
            for k, (name, mask) in enumerate(parts.items()):
                table[0, k] = (name, mask.astype(np.uint8))
        objects.insert(0, ("person", PERSON, person, table))
    dtype = [("class", "O"), ("class_ind", "O"), ("mask", "O"), ("parts", "O")]
    array = np.zeros((1, len(objects)), dtype=dtype)
    for k, (name, index, mask, part_table) in enumerate(objects):
        array[0, k] = (name, np.array([[index]], dtype=np.uint8), mask.astype(np.uint8), part_table)
    anno = np.zeros((1, 1), dtype=[("imname", "O"), ("objects", "O")])
    anno[0, 0] = (image_id, array)
    return anno


def _normals(h: int, w: int, person: np.ndarray) -> np.ndarray:
    """Unit normals (H, W, 3), x right, y down: the wall faces the camera, the person bulges
    like a sphere, the chair faces right, the sky points up (it is not a normals class)."""
    n = np.zeros((h, w, 3), dtype=np.float32)
    n[..., 2] = 1
    n[: h // 2] = (0, -1, 0)
    n[_box(h, w, 0.5 * h, 0.9 * h, 0.65 * w, 0.9 * w)] = (1, 0, 0)
    y, x = np.mgrid[:h, :w]
    bulge = np.stack([(x - 0.3 * w) / (0.2 * w), (y - 0.55 * h) / (0.5 * h), np.ones((h, w))], -1)
    n[person] = bulge[person] / np.linalg.norm(bulge[person], axis=-1, keepdims=True)
    return n


def _save_image(array: np.ndarray, path: Path, **options: object) -> None:
    with atomic_path(path) as tmp:
        Image.fromarray(array).save(tmp, **options)


def _save_mat(path: Path, data: dict[str, np.ndarray]) -> None:
    from scipy.io import savemat

    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        savemat(f, data, do_compression=True)


def _write_one(root: Path, index: int, image_id: str, rng: np.random.Generator) -> None:
    h, w = SIZES[index % len(SIZES)]
    kind = PERSONS[index % len(PERSONS)]
    has_person = kind in ("parts", "no parts")
    labelmap = np.full((h, w), CONTEXT["wall"], dtype=np.uint16)
    labelmap[: h // 2] = CONTEXT["sky"]
    chair = _box(h, w, 0.5 * h, 0.9 * h, 0.65 * w, 0.9 * w)
    labelmap[chair] = CONTEXT["chair"]
    parts = _person_parts(h, w) if has_person else None
    person = np.logical_or.reduce(list(parts.values())) if parts else np.zeros((h, w), bool)
    labelmap[person] = CONTEXT["person"]

    semseg = np.zeros((h, w), dtype=np.uint8)
    semseg[chair], semseg[person] = VOC["chair"], VOC["person"]
    semseg[read_edges(semseg) > 0] = IGNORE  # VOC-style void band along object borders
    image = np.zeros((h, w, 3), dtype=np.float32)
    for name in ("sky", "wall", "chair"):
        image[labelmap == CONTEXT[name]] = COLOURS[name]
    image[person] = (230, 60, 60)
    image = np.clip(image + rng.normal(0, 12, image.shape), 0, 255).astype(np.uint8)
    salient = person if has_person else chair
    saliency = np.where(salient, 255, 0).astype(np.uint8)
    saliency[0, :] = 120  # 120 / 255 < 0.5: not salient

    palette = [c for k in range(256) for c in ((k * 37) % 256, (k * 91) % 256, (k * 53) % 256)]
    seg_png = Image.fromarray(semseg)  # "L", made "P" by its palette
    seg_png.putpalette(palette)
    folder = "VOC12" if index == 0 else "pascal-context"
    with atomic_path(root / FOLDERS["semseg"] / folder / f"{image_id}.png") as tmp:
        seg_png.save(tmp, format="PNG")
    if index == 0:  # a decoy the readers must not use: VOC12 comes first
        _save_image(
            np.zeros_like(semseg),
            root / FOLDERS["semseg"] / "pascal-context" / f"{image_id}.png",
            format="PNG",
        )
    _save_image(image, root / FOLDERS["image"] / f"{image_id}.jpg", format="JPEG", quality=92)
    _save_image(saliency, root / FOLDERS["sal"] / f"{image_id}.png", format="PNG")
    rgb = np.round((_normals(h, w, person) + 1) * 255 / 2).astype(np.uint8)
    _save_image(rgb, root / FOLDERS["normals"] / f"{image_id}.png", format="PNG")
    _save_mat(root / FOLDERS["labelmap"] / f"{image_id}.mat", {"LabelMap": labelmap})
    annotated = {"none": None, "empty mask": np.zeros((h, w), bool)}.get(kind, person)
    anno = _anno(image_id, chair, annotated, parts if kind == "parts" else None)
    _save_mat(root / FOLDERS["human_parts"] / f"{image_id}.mat", {"anno": anno})


def write_pascal_fixture(folder: str | Path, n: int = 6, seed: int = 0) -> Path:
    """Write ``n`` (>= 2) images with all labels under ``folder`` (module docstring) and return
    it; the last third of the ids (at least one) is the "val" split, the rest "train"."""
    if n < 2:
        raise ValueError(f"the fixture needs n >= 2 images (one train, one val), got {n}")
    root, rng = Path(folder), np.random.default_rng(seed)
    ids = [f"2008_{k + 1:06d}" for k in range(n)]
    for index, image_id in enumerate(ids):
        _write_one(root, index, image_id, rng)
    n_val = max(1, n // 3)
    splits = {"train": ids[: n - n_val], "val": ids[n - n_val :]}
    for split, names in splits.items():
        with atomic_path(root / FOLDERS["split"] / f"{split}.txt") as tmp:
            tmp.write_text("".join(f"{i}\n" for i in names))
    return root


def _cut(path: Path) -> None:
    """Keep the first half of the file's bytes."""
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _relabel(path: Path, value: int) -> None:
    """Give one pixel of a semseg PNG the label ``value``."""
    with Image.open(path) as im:
        labels = np.array(im)
    labels[0, 0] = value
    Image.fromarray(labels).save(path, format="PNG")


def _resave(path: Path, mode: str, half: bool = False) -> None:
    """Save the image again in ``mode`` (and at half its size)."""
    with Image.open(path) as im:
        im = im.convert(mode)
        im = im.resize((im.width // 2, im.height // 2)) if half else im
        im.save(path, format="PNG")


def _unknown_part(path: Path) -> None:
    """Rename the first part of the person of a PASCAL-Part file to one that does not exist."""
    from scipy.io import loadmat

    anno = loadmat(str(path))["anno"]
    anno[0, 0][1][0, 0][3][0, 0][0] = np.array(["tail"])
    _save_mat(path, {"anno": anno})


# kind of damage -> (folder of the spoiled file, its suffix, how it is spoiled)
DAMAGE: dict[str, tuple[str, str, Callable[[Path], None]]] = {
    "truncated JPEG": ("image", ".jpg", _cut),
    "empty JPEG": ("image", ".jpg", lambda p: p.write_bytes(b"")),
    "truncated PNG": ("sal", ".png", _cut),
    "missing file": ("sal", ".png", lambda p: p.unlink()),
    "RGB semseg PNG": ("semseg", ".png", lambda p: _resave(p, "RGB")),
    "label 40 in semseg": ("semseg", ".png", lambda p: _relabel(p, 40)),
    "truncated .mat": ("human_parts", ".mat", _cut),
    "random bytes .mat": (
        "labelmap",
        ".mat",
        lambda p: p.write_bytes(np.random.default_rng(0).bytes(999)),
    ),
    ".mat without anno": ("human_parts", ".mat", lambda p: _save_mat(p, {"objects": np.zeros(1)})),
    "unknown part name": ("human_parts", ".mat", _unknown_part),
    "wrong-size normals": ("normals", ".png", lambda p: _resave(p, "RGB", half=True)),
    "grey normals": ("normals", ".png", lambda p: _resave(p, "L")),
}


def damage_pascal_fixture(root: str | Path) -> dict[str, Path]:
    """Spoil a fixture written with ``n >= len(DAMAGE) + 3`` (the first image of each person
    case stays whole): one kind of ``DAMAGE`` per image from the fourth on (both splits), and a
    byte-order mark put before the val id list. Returns {kind: the spoiled file}."""
    root = Path(root)
    ids = [
        line
        for split in ("train", "val")
        for line in (root / FOLDERS["split"] / f"{split}.txt").read_text().split()
    ]
    if len(ids) < len(DAMAGE) + 3:
        raise ValueError(f"damage needs a fixture of n >= {len(DAMAGE) + 3}, got {len(ids)}")
    spoiled = {}
    for image_id, (kind, (folder, suffix, spoil)) in zip(ids[3:], DAMAGE.items(), strict=False):
        path = root / FOLDERS[folder] / f"{image_id}{suffix}"
        if folder == "semseg":
            path = next((root / FOLDERS["semseg"]).glob(f"*/{image_id}.png"))
        spoil(path)
        spoiled[kind] = path
    val = root / FOLDERS["split"] / "val.txt"
    val.write_bytes(b"\xef\xbb\xbf" + val.read_bytes())
    spoiled["BOM in a split file"] = val
    return spoiled
