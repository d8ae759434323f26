"""The paper command tried with bad input and faults: it records everything or refuses, naming
the folder or file and the fix, and never records half."""

from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path

import pytest

from mtlora_lite.multitask.pascal.fixture import damage_pascal_fixture, write_pascal_fixture
from mtlora_lite.paper import outputs, run
from mtlora_lite.paper.command import main

QUICK = ["--recipe", "fixture", "--quiet", "--max-steps", "1"]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_pascal_fixture(tmp_path_factory.mktemp("pascal") / "PASCAL_MT", n=6)


def _call(data: Path, out: Path, *args: str) -> int:
    return main([*QUICK, "--data", str(data), "--out", str(out), *args])


def test_two_calls_with_different_runs_add_up_to_one_table(data: Path, tmp_path: Path) -> None:
    assert _call(data, tmp_path, "--runs", "decoders") == 0
    assert _call(data, tmp_path, "--runs", "mtlora-r16") == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert list(results["runs"]) == ["decoders", "mtlora-r16"]
    assert [r["model"] for r in results["table"]] == ["MTL decoders only", "MTLoRA r=16"]
    text = (tmp_path / "results.md").read_text()
    assert "MTL decoders only" in text and "MTLoRA r=16" in text and "runs finished: 2" in text


def test_other_loader_settings_resume_the_same_runs(data: Path, tmp_path: Path) -> None:
    assert _call(data, tmp_path, "--runs", "decoders", "--workers", "0") == 0
    log = tmp_path / "runs/decoders/log.jsonl"
    before = log.read_text()
    assert _call(data, tmp_path, "--runs", "decoders", "--workers", "1") == 0
    assert log.read_text() == before  # read back, not refused and not trained again
    assert "workers" not in json.loads((tmp_path / "recipe.json").read_text())


def test_a_lone_rank_is_refused_before_anything_runs(
    data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """RANK=1 without WORLD_SIZE: a process that is not rank 0 writes no results, so it would
    train and record nothing; the command refuses, saying how to launch."""
    monkeypatch.setenv("RANK", "1")
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert _call(data, tmp_path / "out", "--runs", "decoders") == 2
    err = capsys.readouterr().err
    assert "RANK=1 but WORLD_SIZE=1 (WORLD_SIZE is not set)" in err and "torchrun" in err
    assert not (tmp_path / "out").exists()


def test_an_out_that_is_a_file_is_named(data: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "results.txt"
    out.write_text("not a folder")
    assert _call(data, out) == 2
    err = capsys.readouterr().err
    assert f"--out {out} is a file, not a folder" in err and out.read_text() == "not a folder"
    assert main(["--recipe", "fixture", "--quiet", "--out", str(out)]) == 2  # its own archive
    assert f"--out {out} is a file, not a folder" in capsys.readouterr().err


def test_a_read_only_out_is_named(
    data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    out = tmp_path / "locked"
    out.mkdir()
    if os.geteuid() != 0:  # a real read-only folder (root may write anywhere)
        out.chmod(0o500)
    else:

        def refuse(*args: object, **kwargs: object) -> None:
            raise PermissionError(errno.EACCES, "Permission denied")

        monkeypatch.setattr(outputs.tempfile, "TemporaryFile", refuse)
    try:
        assert _call(data, out) == 2
    finally:
        out.chmod(0o700)
    err = capsys.readouterr().err
    assert f"cannot write in the output folder {out} (Permission denied)" in err
    assert "pass --out a folder you can write to" in err


def test_a_full_disk_says_so_and_keeps_what_was_finished(
    data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    assert _call(data, tmp_path, "--runs", "decoders") == 0

    def full(path: Path, text: str) -> None:
        raise OSError(errno.ENOSPC, f"could not write {path}: No space left on device")

    monkeypatch.setattr(run, "atomic_write", full)
    assert _call(data, tmp_path, "--runs", "decoders", "mtlora-r16") == 1
    err = capsys.readouterr().err
    assert str(tmp_path / "runs/mtlora-r16/result.json") in err and "disk is full" in err
    assert (tmp_path / "runs/decoders/result.json").is_file()
    monkeypatch.undo()  # space again: the interrupted run finishes from its checkpoint
    assert _call(data, tmp_path, "--runs", "mtlora-r16") == 0
    assert len(json.loads((tmp_path / "results.json").read_text())["runs"]) == 2


def test_damaged_records_are_named_with_the_fix(data: Path, tmp_path: Path, capsys) -> None:
    assert _call(data, tmp_path, "--runs", "decoders") == 0
    result = tmp_path / "runs/decoders/result.json"
    good = json.loads(result.read_text())
    result.write_text(result.read_text()[:100])  # cut short
    assert _call(data, tmp_path, "--runs", "decoders") == 2
    err = capsys.readouterr().err
    assert f"{result} is damaged" in err and "delete it and call again" in err
    result.unlink()  # as the message says: the run is finished again from its checkpoint
    assert _call(data, tmp_path, "--runs", "decoders") == 0
    assert json.loads(result.read_text())["metrics"] == good["metrics"]
    recipe = tmp_path / "recipe.json"
    recipe.write_text("{")
    assert _call(data, tmp_path, "--runs", "decoders") == 2
    err = capsys.readouterr().err
    assert f"{recipe} is damaged" in err and "delete it and call again" in err


def test_check_data_names_every_bad_file_and_training_waits_for_it(
    data: Path, tmp_path: Path, capsys
) -> None:
    assert main(["--check-data", "--data", str(data), "--quiet"]) == 0
    assert "every file checked is readable" in capsys.readouterr().out
    root = write_pascal_fixture(tmp_path / "PASCAL_MT", n=15)
    spoiled = damage_pascal_fixture(root)
    assert main(["--check-data", "--data", str(root), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert all(str(path) in err for path in spoiled.values())
    assert _call(root, tmp_path / "out", "--runs", "decoders") == 2  # checked before training
    err = capsys.readouterr().err
    assert f"{len(spoiled)} bad file(s)" in err and not (tmp_path / "out/runs").exists()
    shutil.rmtree(root)
