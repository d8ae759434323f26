"""Execute every notebook top to bottom in the smoke profile and check what it recorded."""

from __future__ import annotations

import json
import math
from pathlib import Path

import papermill as pm
import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def _numbers(value: object) -> list[float]:
    if isinstance(value, dict):
        return [x for v in value.values() for x in _numbers(v)]
    if isinstance(value, list):
        return [x for v in value for x in _numbers(v)]
    return [float(value)] if isinstance(value, int | float) and not isinstance(value, bool) else []


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One run cache for the session: later notebooks reuse earlier ones' runs, as in the course."""
    return tmp_path_factory.mktemp("cache")


@pytest.mark.notebooks
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_in_smoke_profile(path: Path, tmp_path: Path, cache_dir: Path) -> None:
    out_dir = tmp_path / path.stem
    params = {
        "PROFILE": "smoke",
        "DEVICE": "cpu",
        "OUT_DIR": str(out_dir),
        "CACHE_DIR": str(cache_dir),
        "SOLUTIONS": True,  # every exercise's check runs on its reference solution
    }
    pm.execute_notebook(
        str(path),
        str(tmp_path / path.name),
        parameters=params,
        cwd=str(ROOT),
        kernel_name="python3",
        progress_bar=False,
    )
    results = json.loads((out_dir / "results.json").read_text())
    assert results["profile"] == "smoke"
    assert results["headline"], "results.json needs a non-empty headline"
    values = _numbers(results)
    assert values and all(math.isfinite(v) for v in values)
    assert list(out_dir.glob("*.png")), "each notebook saves its figures as PNG"


@pytest.mark.notebooks
def test_outputs_land_in_the_repository_whatever_the_working_folder(tmp_path: Path) -> None:
    """JupyterLab starts the kernel in notebooks/, make course in the repository root: the default
    relative OUT_DIR / CACHE_DIR resolve to the same <repo>/outputs either way."""
    checkout = tmp_path / "checkout"
    (checkout / "notebooks").mkdir(parents=True)
    (checkout / "pyproject.toml").write_text((ROOT / "pyproject.toml").read_text())
    notebook = checkout / "notebooks" / NOTEBOOKS[0].name
    notebook.write_text(NOTEBOOKS[0].read_text())
    pm.execute_notebook(
        str(notebook),
        str(tmp_path / "executed.ipynb"),
        parameters={"PROFILE": "smoke", "DEVICE": "cpu", "SOLUTIONS": True},  # paths as shipped
        cwd=str(checkout / "notebooks"),
        kernel_name="python3",
        progress_bar=False,
    )
    assert (checkout / "outputs" / NOTEBOOKS[0].stem / "results.json").is_file()
    assert not (checkout / "notebooks" / "outputs").exists()
