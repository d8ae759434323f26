"""Reading the files of the PASCAL_MT archive, one reader per format, each naming the file it
cannot use (``BadFileError``).

    read_image(path)                  JPEG -> uint8 (H, W, 3) RGB
    read_semseg(path)                 palette / grey PNG -> uint8 (H, W): 0..20, 255 = ignore
    read_human_parts(path, shape)     PASCAL-Part .mat -> uint8 (H, W): 0, the six parts, or 255
    read_saliency(path)               grey PNG -> uint8 (H, W) in {0, 1}
    read_labelmap(path)               PASCAL-Context .mat -> its LabelMap (H, W) of class ids
    read_normals(path, labelmap)      RGB PNG -> float32 (H, W, 3), zero where invalid
    read_edges(labelmap)              -> uint8 (H, W) in {0, 1}

Every image is decoded to its end, so a truncated file fails here, not as a short array later.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

IGNORE = 255  # label value of pixels without ground truth
NUM_SEMSEG = 21  # semseg classes: background and the 20 PASCAL VOC classes
PERSON = 15  # PASCAL VOC class index of "person" in the PASCAL-Part objects

# PASCAL-Part part names -> the six human parts of the benchmark (0 is background)
HUMAN_PARTS = {
    **dict.fromkeys(
        ["hair", "head", "lear", "rear", "lebrow", "rebrow", "leye", "reye", "mouth", "nose"], 1
    ),
    **dict.fromkeys(["neck", "torso"], 2),
    **dict.fromkeys(["luarm", "ruarm"], 3),
    **dict.fromkeys(["llarm", "rlarm", "lhand", "rhand"], 4),
    **dict.fromkeys(["luleg", "ruleg"], 5),
    **dict.fromkeys(["llleg", "rlleg", "lfoot", "rfoot"], 6),
}

# The ``LabelMap`` classes (PASCAL-Context ids, 1..459) whose pixels have distilled normals: the
# PASCAL-Context class names that NYUv2's class list also has ("unknown" excluded), plus tvmonitor
# (427). The public loaders compute this from nyu_classes.json and context_classes.json; this is
# that list, checked against both files.
# fmt: off
NORMALS_CLASSES = frozenset({
    3, 4, 6, 9, 10, 11, 13, 15, 17, 18, 22, 23, 29, 30, 33, 34, 36, 37, 38, 39, 41, 43, 46, 49,
    50, 51, 53, 55, 56, 59, 61, 62, 65, 66, 68, 69, 72, 73, 78, 83, 84, 85, 87, 88, 95, 96, 101,
    104, 105, 107, 111, 113, 115, 122, 124, 135, 141, 142, 143, 146, 150, 154, 157, 158, 159, 165,
    172, 174, 181, 183, 184, 191, 193, 195, 197, 199, 202, 213, 215, 216, 219, 220, 223, 225, 228,
    230, 232, 233, 238, 239, 242, 243, 246, 250, 251, 252, 255, 260, 261, 263, 269, 272, 273, 275,
    281, 283, 284, 285, 286, 287, 288, 290, 291, 292, 293, 295, 304, 307, 309, 310, 314, 315, 319,
    323, 329, 330, 331, 336, 342, 345, 349, 350, 351, 352, 355, 357, 368, 370, 371, 374, 379, 380,
    383, 384, 397, 401, 403, 405, 407, 408, 411, 412, 413, 414, 417, 419, 421, 423, 427, 429, 430,
    432, 440, 441, 442, 443, 444, 446, 454, 457
})
# fmt: on


class BadFileError(ValueError):
    """A file of the archive is not what the benchmark expects: ``path`` and ``problem``."""

    def __init__(self, path: Path | str, problem: str) -> None:
        self.path, self.problem = Path(path), problem
        super().__init__(f"{path}: {problem}")


def _undecodable(path: Path, what: str, err: Exception) -> Exception:
    """``err`` itself if the file is missing or unreadable, else a ``BadFileError``."""
    if isinstance(err, FileNotFoundError | PermissionError | IsADirectoryError):
        return err
    return BadFileError(path, f"cannot be read as {what}: truncated or damaged? ({err!r})")


def _png(path: Path) -> np.ndarray:
    """The pixels of an image file, decoded completely."""
    try:
        with Image.open(path) as im:
            im.load()
            return np.asarray(im)
    except Exception as err:  # PIL raises many kinds of error for a damaged file
        raise _undecodable(path, "an image", err) from err


def _loadmat(path: Path) -> dict[str, Any]:
    from scipy.io import loadmat  # scipy only where .mat files are read

    try:
        return loadmat(str(path))
    except Exception as err:  # scipy raises many kinds of error for a damaged file
        raise _undecodable(path, "a MATLAB file", err) from err


def read_image(path: Path) -> np.ndarray:
    """A JPEG as uint8 (H, W, 3) RGB."""
    pixels = _png(path)
    if pixels.ndim == 3 and pixels.shape[2] == 3:
        return pixels
    with Image.open(path) as im:  # grey or palette: as the loaders' convert("RGB")
        return np.asarray(im.convert("RGB"))


def read_semseg(path: Path) -> np.ndarray:
    """Semseg labels uint8 (H, W): 0..20 (0 = background) or ``IGNORE``; ``BadFileError`` for
    a PNG of several channels or with other values."""
    labels = _png(path)
    if labels.ndim != 2:
        raise BadFileError(
            path, f"an image of {labels.shape[2]} channels; semseg labels are a one-channel PNG"
        )
    odd = np.setdiff1d(np.unique(labels), [*range(NUM_SEMSEG), IGNORE])
    if odd.size:
        raise BadFileError(
            path, f"labels {odd[:5].tolist()} outside 0..{NUM_SEMSEG - 1} and {IGNORE}"
        )
    return labels.astype(np.uint8)


def read_labelmap(path: Path) -> np.ndarray:
    """The PASCAL-Context ``LabelMap`` (H, W) of class ids from a ``.mat``."""
    labelmap = _loadmat(path).get("LabelMap")
    if labelmap is None or np.ndim(labelmap) != 2:
        found = "no 'LabelMap'" if labelmap is None else f"a LabelMap of {np.shape(labelmap)}"
        raise BadFileError(path, f"{found}; expected a 2-D LabelMap of class ids")
    return labelmap


def part_objects(path: Path) -> np.ndarray:
    """The (N,) PASCAL-Part objects of a human-parts ``.mat`` (``read_human_parts`` says what each
    holds); ``ValueError`` naming the file if it holds no ``anno`` struct of that shape."""
    anno = _loadmat(path).get("anno")
    try:
        return anno[0, 0][1][0]  # type: ignore[index]
    except (TypeError, IndexError, KeyError, ValueError) as err:
        found = "no 'anno'" if anno is None else f"an 'anno' of {np.shape(anno)} without objects"
        raise BadFileError(path, f"{found}; a PASCAL-Part file holds anno.objects") from err


def has_person(path: Path) -> bool:
    """True if the human-parts ``.mat`` has an object of class ``PERSON`` whose mask is not
    empty: the images the public loaders keep when human parts is the only task."""
    return any(int(obj[1][0, 0]) == PERSON and obj[2].any() for obj in part_objects(path))


def read_human_parts(path: Path, shape: tuple[int, int]) -> np.ndarray:
    """Human-part labels uint8 (H, W) from a PASCAL-Part ``.mat``: 0 background, 1..6 the parts
    of ``HUMAN_PARTS``; all ``IGNORE`` if no person of the image has annotated parts.

    ``scipy.io.loadmat`` gives ``anno`` as a (1, 1) struct whose field 1 ("objects") is a (1, N)
    struct array; each object holds (class name, class index [[k]], instance mask, parts), and
    its parts (empty when the object has none) are (1, P) structs of (part name, mask). We index
    the fields by position, as the public loaders do.
    """
    labels = np.zeros(shape, dtype=np.uint8)
    for obj in part_objects(path):
        if int(obj[1][0, 0]) != PERSON or len(obj[3]) == 0:
            continue
        for part in obj[3][0]:
            name = str(part[0][0])
            if name not in HUMAN_PARTS:
                raise BadFileError(
                    path, f"unknown PASCAL-Part part {name!r}; known parts: {sorted(HUMAN_PARTS)}"
                )
            mask = part[1].astype(bool)
            if mask.shape != shape:
                raise BadFileError(path, f"part mask {mask.shape} but the image is {shape}")
            labels[mask] = HUMAN_PARTS[name]
    return labels if labels.any() else np.full(shape, IGNORE, dtype=np.uint8)


def read_saliency(path: Path) -> np.ndarray:
    """Saliency uint8 (H, W) in {0, 1}: grey level / 255 > 0.5."""
    grey = _png(path)
    if grey.ndim != 2:
        raise BadFileError(path, f"an image of {grey.shape[2]} channels; saliency is grey")
    return (grey.astype(np.float32) / 255 > 0.5).astype(np.uint8)


def read_normals(path: Path, labelmap: np.ndarray) -> np.ndarray:
    """Normals float32 (H, W, 3), n = 2 c / 255 - 1, zero (invalid) outside the ``LabelMap``
    classes of ``NORMALS_CLASSES``. Axes: x to the right, y down the rows (as the augmentation
    of the public loaders assumes), z the third channel."""
    rgb = _png(path)
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise BadFileError(path, f"normals must be an RGB PNG, got an array of {rgb.shape}")
    if rgb.shape[:2] != labelmap.shape:
        (h, w), (lh, lw) = rgb.shape[:2], labelmap.shape
        raise BadFileError(path, f"{w} x {h} pixels, but its LabelMap is {lw} x {lh}")
    normals = 2 * rgb.astype(np.float32) / 255 - 1
    valid = np.isin(labelmap, list(NORMALS_CLASSES))
    return normals * valid[..., None]


def read_edges(labelmap: np.ndarray) -> np.ndarray:
    """Edges uint8 (H, W) in {0, 1}: pixels with a 4-neighbour of another ``LabelMap`` class.
    (The public loaders also thin these to one pixel with scikit-image; we do not.)"""
    edge = np.zeros(labelmap.shape, dtype=bool)
    dx = labelmap[:, 1:] != labelmap[:, :-1]
    dy = labelmap[1:] != labelmap[:-1]
    edge[:, 1:] |= dx
    edge[:, :-1] |= dx
    edge[1:] |= dy
    edge[:-1] |= dy
    return edge.astype(np.uint8)
