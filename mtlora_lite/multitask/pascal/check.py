"""Check a PASCAL_MT archive before training on it: every file of the chosen splits opened once,
with the readers training uses, and every bad one named with what is wrong.

    bad = check_archive("PASCAL_MT", splits=("train", "val"))   # [] when all is well
    print(report("PASCAL_MT", bad))

What counts as bad: a missing file; an id list with a byte-order mark, non-UTF-8 text or odd ids;
an image or label PNG that does not decode to the end (truncated, damaged, not an image); a
semseg PNG of several channels or with labels other than 0..20 and 255; a saliency PNG that is
not grey; a normals PNG that is not RGB; a ``.mat`` that scipy cannot read (truncated, random
bytes) or without its struct (``anno`` for human parts, ``LabelMap``); a PASCAL-Part file with an
unknown part name; and any label map whose size is not its image's. A downloaded archive has
none of these; a copy that was cut short, edited or converted can.

The files are read by ``workers`` DataLoader processes (0: in this process).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from mtlora_lite.multitask.pascal.data import (
    DOWNLOAD_URL,
    FOLDERS,
    TASKS,
    load_sample,
    split_ids,
    split_path,
    task_files,
)
from mtlora_lite.multitask.pascal.readers import BadFileError


@dataclass(frozen=True, order=True)
class BadFile:
    """One bad file of the archive: where, and what is wrong with it."""

    path: Path
    problem: str

    def __str__(self) -> str:
        return f"{self.path}: {self.problem}"


class DataCheckError(ValueError):
    """The archive has bad files: ``bad`` lists every one (the message too)."""

    def __init__(self, root: Path | str, bad: Sequence[BadFile]) -> None:
        self.bad = list(bad)
        super().__init__(report(root, self.bad))


def check_sample(root: Path, image_id: str, tasks: Sequence[str]) -> list[BadFile]:
    """The bad files of one sample: each file read once by ``load_sample``'s readers; after a
    bad label file the sample's other labels are still read, one task at a time (a bad image is
    reported alone: the labels are compared with it)."""
    files = task_files(root, image_id, tasks)
    absent = [BadFile(p, "missing") for p in files.values() if not p.is_file()]
    if absent:
        return absent
    try:
        load_sample(root, image_id, tasks)
        return []
    except BadFileError as err:
        first = BadFile(err.path, err.problem)
    if first.path == files["image"] or len(tasks) == 1:
        return [first]
    bad = {first}
    for task in tasks:  # the others, one by one (the image is read again, the rest once)
        try:
            load_sample(root, image_id, [task])
        except BadFileError as err:
            bad.add(BadFile(err.path, err.problem))
    return sorted(bad)


class _Samples(Dataset):
    """``check_sample`` of each id, for a DataLoader's worker processes."""

    def __init__(self, root: Path, ids: Sequence[str], tasks: Sequence[str]) -> None:
        self.root, self.ids, self.tasks = root, list(ids), tuple(tasks)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> list[BadFile]:
        return check_sample(self.root, self.ids[index], self.tasks)


def check_archive(
    root: str | Path,
    splits: Sequence[str] = ("train", "val"),
    tasks: Sequence[str] = TASKS,
    *,
    workers: int = 0,
    progress: bool = False,
) -> list[BadFile]:
    """Every bad file of ``splits`` for ``tasks`` (module docstring), sorted by path; [] if
    none. ``MissingDataError`` if ``root`` is not an extracted archive at all."""
    root = Path(root)
    bad: list[BadFile] = []
    ids: list[str] = []
    for split in splits:
        path = split_path(root, split)
        try:
            listed = split_ids(path)
        except BadFileError as err:
            bad.append(BadFile(err.path, err.problem))
            listed = _readable_ids(path)  # still check the files of the ids it names
        ids += [i for i in listed if i not in ids]
    loader = DataLoader(
        _Samples(root, ids, tasks), batch_size=None, num_workers=workers, collate_fn=_same
    )
    for found in tqdm(loader, desc="check data", disable=not progress, leave=False):
        bad += found
    return sorted(set(bad))


def _same(found: list[BadFile]) -> list[BadFile]:
    return found


def _readable_ids(path: Path) -> list[str]:
    """The well-formed ids of a damaged id list (BOM and undecodable bytes left out)."""
    words = path.read_bytes().decode("utf-8-sig", errors="replace").split()
    return [w for w in words if w.replace("_", "").isalnum() and w.isascii()]


def report(root: Path | str, bad: Sequence[BadFile]) -> str:
    """Every bad file, one a line, and how to repair the archive."""
    if not bad:
        return f"{root}: every file checked is readable and consistent"
    lines = [f"{len(bad)} bad file(s) in the PASCAL_MT archive at {root}:"]
    lines += [f"  {b}" for b in bad]
    lines.append(
        "Replace them from the original archive (tar xzf PASCAL_MT.tgz PASCAL_MT/<file>, or "
        f"download it again from {DOWNLOAD_URL}); the id lists are {FOLDERS['split']}/*.txt."
    )
    return "\n".join(lines)
