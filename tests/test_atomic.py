"""Atomic writes: a failure mid-write leaves the previous file intact and no temporary behind; the
mode is the umask's (or the replaced file's); a killed writer's leftovers go at the next write."""

from __future__ import annotations

import errno
import os
import stat
import subprocess
import sys
import time
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


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_a_new_file_gets_the_umask_mode(tmp_path: Path, umask: int, mode: int) -> None:
    old = os.umask(umask)
    try:
        path = atomic_write(tmp_path / "a.json", "{}")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == mode


def test_a_replaced_file_keeps_its_mode(tmp_path: Path) -> None:
    path = tmp_path / "shared.json"
    for mode in (0o644, 0o640, 0o600):
        path.write_text("old")
        path.chmod(mode)
        old = os.umask(0o077)  # a private umask must not make a shared file private
        try:
            atomic_write(path, "new")
        finally:
            os.umask(old)
        assert stat.S_IMODE(path.stat().st_mode) == mode and path.read_text() == "new"


KILLED = """
import os, sys
from mtlora_lite.adapters.atomic import atomic_path
with atomic_path(sys.argv[1]) as tmp:
    tmp.write_text("half")
    print(tmp.name, flush=True)
    if sys.argv[2] == "die":
        os._exit(9)  # killed between writing and renaming
    sys.stdin.read()  # alive until told to stop
"""


def writer(target: Path, mode: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", KILLED, str(target), mode],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )


def test_leftovers_of_a_killed_writer_are_removed_by_the_next_write(tmp_path: Path) -> None:
    target = tmp_path / "checkpoint.safetensors"
    killed = writer(target, "die")
    name = killed.stdout.readline().strip()
    killed.wait()
    assert (tmp_path / name).is_file() and killed.returncode == 9  # what a kill leaves
    old_style = tmp_path / ".checkpoint.safetensors.k3x9_q2a.tmp"  # an older version's name
    recent_old_style = tmp_path / ".cache.json.ab12cd34.tmp"
    others = [tmp_path / ".notes.tmp", tmp_path / "keep.tmp", old_style, recent_old_style]
    for path in others:
        path.write_text("x")
    hours_ago = time.time() - 2 * 3600
    os.utime(old_style, (hours_ago, hours_ago))
    alive = writer(tmp_path / "other.json", "wait")  # a concurrent writer, still running
    live_name = alive.stdout.readline().strip()
    try:
        atomic_write(tmp_path / "b.json", "{}")
        assert not (tmp_path / name).exists() and not old_style.exists()
        assert (tmp_path / live_name).is_file()  # never a live writer's file
        assert all(p.exists() for p in others if p is not old_style)  # not ours, or too young
    finally:
        alive.communicate("")
    assert alive.returncode == 0 and (tmp_path / "other.json").read_text() == "half"
