"""The notebooks' shared set-up: the install cell (its one canonical text, what it runs, and its
advice when pip fails) and ``course.notebook.setup`` / ``NotebookRun``."""

from __future__ import annotations

import importlib.util
import json
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from mtlora_lite.course import notebook
from mtlora_lite.course.notebook import INSTALL_CELL, setup

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
USES_SETUP = ("00", "01", "02", "03", "04", "05", "06", "07")  # notebooks on the shared set-up


def _install_cells(path: Path) -> list[str]:
    cells = json.loads(path.read_text())["cells"]
    sources = ["".join(c["source"]) for c in cells if c["cell_type"] == "code"]
    return [s for s in sources if 'find_spec("mtlora_lite")' in s]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_install_cell_is_the_canonical_one(path: Path) -> None:
    cells = _install_cells(path)
    assert len(cells) == 1, "one install cell per notebook"
    if path.stem[:2] in USES_SETUP or "REPO_URL" in cells[0]:
        assert cells[0] == INSTALL_CELL, "copy course.notebook.INSTALL_CELL verbatim"


def _run_install(monkeypatch, repo_url: str, returncode: int) -> list[list[str]]:
    calls: list[list[str]] = []

    def fake_run(args, *rest, **kwargs):
        calls.append(list(args))
        return SimpleNamespace(returncode=returncode)

    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)  # "not installed"
    monkeypatch.setattr(subprocess, "run", fake_run)
    code = INSTALL_CELL.replace(
        'REPO_URL = "https://github.com/mtlora-lite/mtlora-lite"', f"REPO_URL = {repo_url!r}"
    )
    exec(compile(code, "install-cell", "exec"), {})
    return calls


def test_install_cell_installs_from_git_a_fork_or_a_wheel(monkeypatch) -> None:
    calls = _run_install(monkeypatch, "https://github.com/someone/mtlora-lite", 0)
    assert calls[0][-1] == "git+https://github.com/someone/mtlora-lite"
    assert calls[0][1:4] == ["-m", "pip", "install"]
    calls = _run_install(monkeypatch, "/content/mtlora_lite-0.3.0-py3-none-any.whl", 0)
    assert calls[0][-1] == "/content/mtlora_lite-0.3.0-py3-none-any.whl"


def test_install_cell_says_how_to_point_it_elsewhere_when_pip_fails(monkeypatch) -> None:
    with pytest.raises(RuntimeError) as err:
        _run_install(monkeypatch, "https://github.com/gone/mtlora-lite", 1)
    message = str(err.value)
    assert "REPO_URL" in message and "fork" in message and "pip wheel" in message


def test_install_cell_does_nothing_when_the_package_is_installed(monkeypatch) -> None:
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: pytest.fail("installed anyway"))
    exec(compile(INSTALL_CELL, "install-cell", "exec"), {})


def test_setup_resolves_checks_reports_and_loads_the_exercises(tmp_path, capsys) -> None:
    nb = setup("06_use_it_on_your_model", "smoke", 3, "cpu", tmp_path / "out", None, True)
    out = capsys.readouterr().out
    assert nb.device == torch.device("cpu") and nb.out_dir.is_dir() and nb.cache_dir is None
    assert "torch" in out and str(nb.out_dir) in out and "SOLUTIONS = True" in out
    assert len(nb.exercises) == 4 and nb.exercises.solutions
    nb.exercises.q1.check(...)
    path = nb.save({"headline": {"acc": 50.0}, "extra": [1, 2]})
    saved = json.loads(path.read_text())
    assert saved["profile"] == "smoke" and saved["seed"] == 3 and saved["device"] == "cpu"
    assert saved["exercises"]["correct"] == 1 and saved["headline"] == {"acc": 50.0}
    with pytest.raises(ValueError, match="headline"):
        nb.save({"extra": 1})


def test_setup_takes_seeds_all_in_the_course_profile_the_first_in_smoke(tmp_path) -> None:
    course = setup("00_data_and_backbone", "course", (4, 5, 6), "cpu", tmp_path / "a", None)
    smoke = setup("00_data_and_backbone", "smoke", [4, 5, 6], "cpu", tmp_path / "b", None)
    assert course.seeds == (4, 5, 6) and course.seed == 4 and smoke.seeds == (4,)
    saved = json.loads(course.save({"headline": {"x": 1.0}}).read_text())
    assert saved["seeds"] == [4, 5, 6] and saved["seed"] == 4
    with pytest.raises(ValueError, match="SEEDS"):
        setup("00_data_and_backbone", "course", (), "cpu", tmp_path / "c", None)


def test_setup_refuses_an_unknown_profile_and_an_unwritable_folder(tmp_path) -> None:
    with pytest.raises(ValueError, match="PROFILE"):
        setup("00_data_and_backbone", "paper", 0, "cpu", tmp_path)
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(OSError, match="OUT_DIR"):
        setup("00_data_and_backbone", "smoke", 0, "cpu", blocker / "out")
    assert notebook.course_path("rel").is_absolute()
