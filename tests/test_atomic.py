"""Atomic writes: a failure mid-write leaves the previous file intact and no temporary behind."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from mtlora_lite.adapters.atomic import atomic_path, atomic_write


def test_write_replaces_in_one_step(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "a.json"
    atomic_write(target, '{"v": 1}')
    atomic_write(target, b'{"v": 2}')
    assert target.read_text() == '{"v": 2}' and list(target.parent.iterdir()) == [target]


def test_a_kill_mid_write_keeps_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "a.json"
    atomic_write(target, "old")
    with pytest.raises(KeyboardInterrupt), atomic_path(target) as tmp:
        tmp.write_text("half of the new")
        raise KeyboardInterrupt  # stands in for a kill or Ctrl-C between two writes
    assert target.read_text() == "old" and list(tmp_path.iterdir()) == [target]


def test_a_full_disk_names_the_file_and_keeps_the_old_one(tmp_path: Path) -> None:
    target = tmp_path / "a.json"
    atomic_write(target, "old")
    with pytest.raises(OSError, match=r"could not write .*a\.json") as info:
        with atomic_path(target) as tmp:
            tmp.write_text("partial")
            raise OSError(errno.ENOSPC, "No space left on device")
    assert info.value.errno == errno.ENOSPC
    assert target.read_text() == "old" and list(tmp_path.iterdir()) == [target]
