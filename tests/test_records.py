"""Run records and notebook results on disk: atomic writes, bad files named, never fatal to a listing."""

from __future__ import annotations

import dataclasses
import errno
import json
import tempfile
from pathlib import Path

import pytest

from mtlora_lite.adapters.atomic import check_writable
from mtlora_lite.course.notebook import save_results
from mtlora_lite.course.records import RunResult, load_results, read_record, write_record


def make_run(name: str = "run") -> RunResult:
    return RunResult(
        name=name,
        method="lora",
        tasks=["semseg"],
        seed=0,
        options={"rank": 4},
        metrics={"semseg": {"mIoU": 40.0}},
        primary={"semseg": 40.0},
        trainable=10,
        total=100,
        breakdown={},
        seconds=1.5,
        images_per_s=20.0,
        loss_curve=[(1, 2.0), (2, 1.5)],
        primary_metric={"semseg": "mIoU"},
        higher_is_better={"semseg": True},
    )


def test_round_trip_marks_the_record_cached(tmp_path: Path) -> None:
    path = write_record(make_run(), tmp_path / "sub" / "run.json", spec={"seed": 0})
    back = read_record(path)
    assert back == dataclasses.replace(make_run(), cached=True)
    assert list(path.parent.iterdir()) == [path]  # no temporary file left


def _stored(**changes: object) -> str:
    return json.dumps({**dataclasses.asdict(make_run()), **changes})


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (_stored()[:80].encode(), "not a readable run record .*invalid JSON"),  # cut short
        (b"\x80\x81 not text", "not a readable run record"),
        (b"[1, 2, 3]", "a JSON list, not object"),
        (b'{"name": "run"}', r"not a complete run record: missing \['method', 'tasks'"),
        (_stored(primary=[40.0]).encode(), r"wrong \['primary \(list\)'\]"),
        (_stored(seconds="fast").encode(), r"wrong \['seconds \(str\)'\]"),
        (_stored(loss_curve=[[1, 2.0, 3]]).encode(), "loss_curve .*pairs"),
    ],
)
def test_a_bad_record_is_a_value_error_naming_the_file(
    tmp_path: Path, data: bytes, message: str
) -> None:
    path = tmp_path / "bad.json"
    path.write_bytes(data)
    with pytest.raises(ValueError, match=message) as info:
        read_record(path)
    assert str(path) in str(info.value)


def test_load_results_skips_bad_files_and_names_them(tmp_path: Path) -> None:
    write_record(make_run("a"), tmp_path / "a.json")
    write_record(make_run("c"), tmp_path / "c.json")
    (tmp_path / "b.json").write_text(_stored()[:50])
    (tmp_path / "d.json").write_text('{"name": "d"}')
    with pytest.warns(UserWarning, match=r"skipped 2 unreadable file\(s\) .*b\.json.*d\.json"):
        runs = load_results(tmp_path)
    assert [r.name for r in runs] == ["a", "c"]


def test_check_writable_names_the_folder_and_the_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert check_writable(tmp_path / "new" / "cache") == tmp_path / "new" / "cache"  # created
    assert list((tmp_path / "new" / "cache").iterdir()) == []  # the probe is gone

    def full(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(tempfile, "TemporaryFile", full)
    with pytest.raises(OSError, match=r"cannot write to .*cache: No space left.*; pass x") as info:
        check_writable(tmp_path / "cache", "pass x")
    assert info.value.errno == errno.ENOSPC


@pytest.mark.parametrize("fault", [KeyboardInterrupt(), OSError(errno.ENOSPC, "No space left")])
def test_save_results_cut_short_keeps_the_previous_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fault: BaseException
) -> None:
    path = save_results({"headline": {"acc": 1.0}}, tmp_path)
    real = Path.write_bytes

    def half_then_fault(self: Path, data: bytes) -> int:
        real(self, data[: len(data) // 2])
        raise fault

    monkeypatch.setattr(Path, "write_bytes", half_then_fault)
    with pytest.raises(type(fault)):
        save_results({"headline": {"acc": 2.0}}, tmp_path)
    assert json.loads(path.read_text()) == {"headline": {"acc": 1.0}}
    assert list(tmp_path.iterdir()) == [path]
