"""PASCAL-Context for dense multi-task learning: the ``PASCAL_MT`` archive, read as it is.

The archive of the multi-task literature (Maninis et al., CVPR 2019; used by MTLoRA), about 3 GB:

    wget https://data.vision.ee.ethz.ch/kmaninis/share/MTL/PASCAL_MT.tgz   # ``DOWNLOAD_URL``
    tar xzf PASCAL_MT.tgz                                                  # -> PASCAL_MT/

The package never downloads it. Extracted, it holds (``<id>`` as in ``2008_000002``):

    JPEGImages/<id>.jpg                      RGB images, about 500 x 375 (any size is fine)
    ImageSets/Context/{train,val}.txt        ids, one a line: 4,998 train / 5,105 val
    semseg/VOC12/<id>.png, else              21 classes (0 = background), 255 = ignore
      semseg/pascal-context/<id>.png
    human_parts/<id>.mat                     PASCAL-Part ``anno`` struct (``read_human_parts``)
    sal_distill/<id>.png                     saliency, grey levels: /255 > 0.5 is salient
    normals_distill/<id>.png                 RGB normals, n = 2 c / 255 - 1
    pascal-context/trainval/<id>.mat         ``LabelMap`` (459 PASCAL-Context classes): which
                                             pixels have normals, and the optional edges

``PascalContext(root, split, tasks, transform)`` yields one sample per id: without a transform a
dict of numpy arrays at the image's own size (``load_sample``), with
``pascal.transforms.PascalTransform`` the tensors a model trains on.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

DOWNLOAD_URL = "https://data.vision.ee.ethz.ch/kmaninis/share/MTL/PASCAL_MT.tgz"
LABELS = ("semseg", "human_parts", "sal", "normals", "edge")  # what a sample can hold
TASKS = ("semseg", "human_parts", "sal", "normals")  # the benchmark's four (MTLoRA's)
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

# where each task's files live, relative to the archive root
FOLDERS = {
    "image": "JPEGImages",
    "split": "ImageSets/Context",
    "semseg": "semseg",
    "human_parts": "human_parts",
    "sal": "sal_distill",
    "normals": "normals_distill",
    "labelmap": "pascal-context/trainval",
}


class MissingDataError(FileNotFoundError):
    """A folder or file of the archive is missing; the message says which and how to get it."""


class BadFileError(ValueError):
    """A file of the archive is not what the benchmark expects: ``path`` and ``problem``."""

    def __init__(self, path: Path | str, problem: str) -> None:
        self.path, self.problem = Path(path), problem
        super().__init__(f"{path}: {problem}")


def missing(what: Path | str, root: Path | str, detail: str = "") -> MissingDataError:
    """The error for a missing part of the archive, with the download instructions."""
    return MissingDataError(
        f"{what} is missing{detail}. PASCAL_MT (PASCAL-Context for multi-task learning, about "
        f"3 GB) is not bundled and never downloaded by mtlora_lite: fetch {DOWNLOAD_URL}, extract "
        f"it (tar xzf PASCAL_MT.tgz) and pass the folder that holds JPEGImages/ (given: {root})."
    )


def semseg_path(root: Path, image_id: str) -> Path:
    """``semseg/VOC12/<id>.png`` where it exists, else ``semseg/pascal-context/<id>.png``."""
    voc = root / FOLDERS["semseg"] / "VOC12" / f"{image_id}.png"
    return voc if voc.is_file() else root / FOLDERS["semseg"] / "pascal-context" / f"{image_id}.png"


def task_files(root: Path, image_id: str, tasks: Sequence[str]) -> dict[str, Path]:
    """The files one sample reads: "image" and, per task, its label file(s)."""
    files = {"image": root / FOLDERS["image"] / f"{image_id}.jpg"}
    if "semseg" in tasks:
        files["semseg"] = semseg_path(root, image_id)
    if "human_parts" in tasks:
        files["human_parts"] = root / FOLDERS["human_parts"] / f"{image_id}.mat"
    if "sal" in tasks:
        files["sal"] = root / FOLDERS["sal"] / f"{image_id}.png"
    if "normals" in tasks:
        files["normals"] = root / FOLDERS["normals"] / f"{image_id}.png"
    if "normals" in tasks or "edge" in tasks:
        files["labelmap"] = root / FOLDERS["labelmap"] / f"{image_id}.mat"
    return files


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


def _fits(
    value: np.ndarray, files: dict[str, Path], name: str, shape: tuple[int, ...]
) -> np.ndarray:
    """``value`` (read from ``files[name]``) if its size is ``shape``, its image's (H, W)."""
    (h, w), (ih, iw) = value.shape[:2], shape
    if (h, w) != (ih, iw):
        image = files["image"].name
        raise BadFileError(files[name], f"{w} x {h} pixels, but its image {image} is {iw} x {ih}")
    return value


def load_sample(root: Path, image_id: str, tasks: Sequence[str]) -> dict[str, np.ndarray]:
    """One sample at the image's size: "image" uint8 (H, W, 3) and, per task, "semseg" /
    "human_parts" uint8 (H, W) with 255 = ignore, "sal" / "edge" uint8 (H, W) in {0, 1},
    "normals" float32 (H, W, 3) (zero = invalid). ``BadFileError`` names a file that cannot be
    read, holds what it should not, or has another size than its image."""
    files = task_files(root, image_id, tasks)
    image = read_image(files["image"])
    shape = image.shape[:2]
    sample = {"image": image}
    labelmap = None
    if "labelmap" in files:
        labelmap = _fits(read_labelmap(files["labelmap"]), files, "labelmap", shape)
    for task in tasks:
        if task == "semseg":
            sample[task] = _fits(read_semseg(files[task]), files, task, shape)
        elif task == "human_parts":
            sample[task] = read_human_parts(files[task], shape)  # checks its masks' size
        elif task == "sal":
            sample[task] = _fits(read_saliency(files[task]), files, task, shape)
        elif task == "normals":
            sample[task] = read_normals(files[task], labelmap)  # checks against the LabelMap
        elif task == "edge":
            sample[task] = read_edges(labelmap)
    return sample


def split_ids(path: Path) -> list[str]:
    """The ids of an id list, one a line (blank lines and surrounding spaces skipped);
    ``BadFileError`` if it is not plain UTF-8 without a byte-order mark, or an id is not made of
    letters, digits and underscores (as ``2008_000002``)."""
    raw = path.read_bytes()
    if raw.startswith(b"\xef\xbb\xbf"):
        raise BadFileError(
            path, "starts with a UTF-8 byte-order mark (BOM): save it as UTF-8 without BOM"
        )
    try:
        lines = raw.decode().splitlines()
    except UnicodeDecodeError as err:
        raise BadFileError(path, f"is not UTF-8 text ({err.reason} at byte {err.start})") from err
    ids = [(k, line.strip()) for k, line in enumerate(lines, 1) if line.strip()]
    odd = [
        f"line {k}: {i!r}" for k, i in ids if not i.replace("_", "").isalnum() or not i.isascii()
    ]
    if odd:
        raise BadFileError(path, f"ids must be letters, digits and '_': {', '.join(odd[:5])}")
    return [i for _, i in ids]


def split_path(root: str | Path, split: str) -> Path:
    """``ImageSets/Context/<split>.txt`` of ``root``; ``MissingDataError`` if the archive or the
    id list is missing."""
    root = Path(root)
    if not (root / FOLDERS["image"]).is_dir():
        raise missing(root / FOLDERS["image"], root, " (is this the extracted PASCAL_MT folder?)")
    path = root / FOLDERS["split"] / f"{split}.txt"
    if not path.is_file():
        raise missing(path, root, f" (the id list of split {split!r}: 'train' or 'val')")
    return path


def read_split(root: str | Path, split: str) -> list[str]:
    """The ids of ``ImageSets/Context/<split>.txt`` (``split_path``, ``split_ids``)."""
    return split_ids(split_path(root, split))


class PascalContext(Dataset):
    """The ``split`` ("train" or "val") of an extracted PASCAL_MT archive (module docstring).

    Args:
        root: the folder that holds ``JPEGImages/``.
        split: "train" (4,998 images) or "val" (5,105).
        tasks: labels to load, from ``LABELS`` (default: the benchmark's four, ``TASKS``).
        transform: applied to each ``load_sample`` dict, e.g. ``PascalTransform(448, train=True)``.
        person_only: keep only the images with a person (``has_person``). Default (None): as the
            public loaders, exactly when human parts is the only task, so that a single-task
            human-parts model trains on images that have its labels.

    Every file is checked when the dataset is made: ``MissingDataError`` names the first missing
    ones and says where to download the archive.
    """

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        tasks: Sequence[str] = TASKS,
        transform: Callable[[dict[str, np.ndarray]], Any] | None = None,
        person_only: bool | None = None,
    ) -> None:
        unknown = sorted(set(tasks) - set(LABELS))
        if unknown or not tasks:
            raise ValueError(f"unknown tasks {unknown or list(tasks)}; choose from {LABELS}")
        self.root, self.split = Path(root), split
        self.tasks, self.transform = tuple(tasks), transform
        self.ids = read_split(self.root, split)
        if not self.ids:
            raise ValueError(f"{self.root / FOLDERS['split'] / split}.txt lists no images")
        absent = [
            p
            for i in self.ids
            for p in task_files(self.root, i, self.tasks).values()
            if not p.is_file()
        ]
        if absent:
            folders = sorted({str(p.parent) for p in absent})
            raise missing(
                absent[0], self.root, f" ({len(absent)} files missing in all, under {folders[:3]})"
            )
        if person_only is None:
            person_only = self.tasks == ("human_parts",)
        if person_only:
            parts = self.root / FOLDERS["human_parts"]
            self.ids = [i for i in self.ids if has_person(parts / f"{i}.mat")]
            if not self.ids:
                raise ValueError(f"no image of split {split!r} under {self.root} has a person")

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> Any:
        sample = load_sample(self.root, self.ids[index], self.tasks)
        return sample if self.transform is None else self.transform(sample)

    def __repr__(self) -> str:
        return (
            f"PascalContext({str(self.root)!r}, split={self.split!r}, {len(self)} images, "
            f"tasks={list(self.tasks)})"
        )
