"""Checking a PASCAL_MT archive: every bad file of a fixture with a dozen kinds of damage is named
with what is wrong, in both splits, and the readers name the file when training meets one."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from mtlora_lite.multitask.pascal.check import DataCheckError, check_archive, report
from mtlora_lite.multitask.pascal.data import PascalContext
from mtlora_lite.multitask.pascal.fixture import (
    DAMAGE,
    damage_pascal_fixture,
    write_pascal_fixture,
)
from mtlora_lite.multitask.pascal.readers import BadFileError

# kind of damage -> what the report says about it
SAYS = {
    "truncated JPEG": "truncated or damaged",
    "empty JPEG": "cannot be read as an image",
    "truncated PNG": "truncated or damaged",
    "missing file": "missing",
    "RGB semseg PNG": "an image of 3 channels; semseg labels are a one-channel PNG",
    "label 40 in semseg": "labels [40] outside 0..20 and 255",
    "truncated .mat": "cannot be read as a MATLAB file",
    "random bytes .mat": "cannot be read as a MATLAB file",
    ".mat without anno": "no 'anno'",
    "unknown part name": "unknown PASCAL-Part part 'tail'",
    "wrong-size normals": "28 x 36 pixels, but its LabelMap is 56 x 72",
    "grey normals": "normals must be an RGB PNG",
    "BOM in a split file": "byte-order mark",
}


@pytest.fixture(scope="module")
def clean(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_pascal_fixture(tmp_path_factory.mktemp("pascal") / "PASCAL_MT", n=15)


@pytest.fixture(scope="module")
def damaged(clean: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    root = shutil.copytree(clean, tmp_path_factory.mktemp("damaged") / "PASCAL_MT")
    return root, damage_pascal_fixture(root)


def test_a_whole_archive_passes(clean: Path) -> None:
    assert check_archive(clean) == []
    assert "every file checked is readable" in report(clean, [])


def test_every_kind_of_damage_is_named_by_path(damaged: tuple[Path, dict]) -> None:
    root, spoiled = damaged
    assert len(spoiled) == len(DAMAGE) + 1 >= 10
    bad = check_archive(root)
    assert sorted(b.path for b in bad) == sorted(spoiled.values())  # each once, nothing else
    said = {b.path: b.problem for b in bad}
    for kind, path in spoiled.items():
        assert SAYS[kind] in said[path], (kind, said[path])
    text = report(root, bad)
    assert all(str(p) in text for p in spoiled.values()) and "PASCAL_MT.tgz" in text
    assert check_archive(root, workers=2) == bad  # the same, read by worker processes


def test_validation_files_are_checked_too(damaged: tuple[Path, dict]) -> None:
    root, spoiled = damaged
    val_ids = (root / "ImageSets/Context/val.txt").read_bytes().decode("utf-8-sig").split()
    in_val = [p for p in spoiled.values() if p.stem in val_ids]
    assert len(in_val) >= 4  # damage in the validation split, found before any training
    assert {b.path for b in check_archive(root, splits=("val",))} >= set(in_val)
    train_only = check_archive(root, splits=("train",))
    assert not {b.path for b in train_only} & set(in_val)


def test_training_names_the_bad_file(damaged: tuple[Path, dict]) -> None:
    root, spoiled = damaged
    with pytest.raises(BadFileError, match="byte-order mark") as err:
        PascalContext(root, "val")
    assert err.value.path == spoiled["BOM in a split file"]
    train = PascalContext(root, "train", tasks=("semseg", "human_parts"))  # its sal has a gap
    for kind in ("truncated JPEG", "label 40 in semseg", "truncated .mat"):
        path = spoiled[kind]
        with pytest.raises(BadFileError) as err:
            train[train.ids.index(path.stem)]
        assert err.value.path == path and str(path) in str(err.value)


def test_the_error_lists_every_bad_file(damaged: tuple[Path, dict]) -> None:
    root, spoiled = damaged
    err = DataCheckError(root, check_archive(root))
    assert len(err.bad) == len(spoiled) and all(str(p) in str(err) for p in spoiled.values())
