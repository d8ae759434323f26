"""PASCAL-Context for dense multi-task learning: the ``PASCAL_MT`` archive, read as it is.

The archive of the multi-task literature (Maninis et al., CVPR 2019; used by MTLoRA), about 3 GB:

    wget https://data.vision.ee.ethz.ch/kmaninis/share/MTL/PASCAL_MT.tgz   # ``DOWNLOAD_URL``
    tar xzf PASCAL_MT.tgz                                                  # -> PASCAL_MT/

The package never downloads it. Extracted, it holds (``<id>`` as in ``2008_000002``):

    JPEGImages/<id>.jpg                      RGB images, about 500 x 375 (any size is fine)
    ImageSets/Context/{train,val}.txt        ids, one a line: 4,998 train / 5,105 val
    semseg/VOC12/<id>.png, else              21 classes (0 = background), 255 = ignore
      semseg/pascal-context/<id>.png
    human_parts/<id>.mat                     PASCAL-Part ``anno`` struct
    sal_distill/<id>.png                     saliency, grey levels: /255 > 0.5 is salient
    normals_distill/<id>.png                 RGB normals, n = 2 c / 255 - 1
    pascal-context/trainval/<id>.mat         ``LabelMap`` (459 PASCAL-Context classes): which
                                             pixels have normals, and the optional edges

Each format has its reader in ``pascal.readers``. ``PascalContext(root, split, tasks, transform)``
yields one sample per id: without a transform a dict of numpy arrays at the image's own size
(``load_sample``), with ``pascal.transforms.PascalTransform`` the tensors a model trains on.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from mtlora_lite.multitask.pascal.readers import (
    BadFileError,
    has_person,
    read_edges,
    read_human_parts,
    read_image,
    read_labelmap,
    read_normals,
    read_saliency,
    read_semseg,
)

DOWNLOAD_URL = "https://data.vision.ee.ethz.ch/kmaninis/share/MTL/PASCAL_MT.tgz"
LABELS = ("semseg", "human_parts", "sal", "normals", "edge")  # what a sample can hold
TASKS = ("semseg", "human_parts", "sal", "normals")  # the benchmark's four (MTLoRA's)

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
