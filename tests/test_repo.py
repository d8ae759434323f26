"""Repository invariants: install metadata in sync, notebooks stored clean and parameterised."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def test_environment_yml_mirrors_pyproject() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    wanted = set(project["dependencies"]) | set(extras["dev"]) | set(extras["course"])
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_lists = [d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d]
    assert len(pip_lists) == 1, "environment.yml needs exactly one pip section"
    listed = {r for r in pip_lists[0] if not r.startswith("-e")}
    assert listed == wanted, (
        f"only in environment.yml: {listed - wanted}; only in pyproject: {wanted - listed}"
    )
    assert "-e ." in pip_lists[0], "environment.yml must install the package itself"


def test_the_library_leaves_the_notebook_tools_to_the_course_extra() -> None:
    """`pip install .` (e.g. in Colab, or in your project) brings no Jupyter of its own; the
    course extra does, and make installs it."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    runtime = {d.split(">=")[0].split("[")[0].lower() for d in project["dependencies"]}
    notebook_tools = {"jupyterlab", "papermill", "ipykernel", "ipywidgets", "notebook"}
    assert not runtime & notebook_tools, f"runtime dependencies include {runtime & notebook_tools}"
    course = {d.split(">=")[0] for d in project["optional-dependencies"]["course"]}
    assert {"jupyterlab", "papermill", "ipykernel", "ipywidgets", "peft"} <= course
    install = [
        line for line in (ROOT / "Makefile").read_text().splitlines() if "pip install" in line
    ]
    assert install and all(".[dev,course]" in line for line in install), install


def test_constraints_pin_what_pyproject_allows() -> None:
    pins = [
        line.split("==")
        for line in (ROOT / "constraints.txt").read_text().splitlines()
        if line and not line.startswith("#")
    ]
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    for name, version in pins:
        spec = next(d for d in deps if d.split(">=")[0] == name)
        lower = tuple(int(x) for x in spec.split(">=")[1].split("."))
        assert tuple(int(x) for x in version.split(".")) >= lower, (name, version, spec)


def test_there_are_notebooks() -> None:
    assert len(NOTEBOOKS) >= 1


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_clean_and_parameterised(path: Path) -> None:
    nb = json.loads(path.read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    for cell in code:
        assert not cell.get("outputs"), "notebooks are stored without outputs (run `make format`?)"
        assert cell.get("execution_count") is None, "notebooks are stored without execution counts"
        assert "sys.path" not in "".join(cell["source"]), "import the installed package instead"
    first = code[0]
    assert "parameters" in first.get("metadata", {}).get("tags", []), (
        "first code cell must be tagged"
    )
    source = "".join(first["source"])
    for name in ("PROFILE", "DEVICE"):
        assert f"{name} =" in source, f"parameters cell must define {name}"
    assert "SEED =" in source or "SEEDS =" in source, "parameters cell must define SEEDS (or SEED)"
    header = "".join(nb["cells"][0]["source"])
    assert nb["cells"][0]["cell_type"] == "markdown" and header.startswith("# ")
    assert "colab.research.google.com" in header, "header needs a Colab badge"


def test_data_folder_documents_every_source_and_keeps_datasets_out_of_git() -> None:
    readme = (ROOT / "data" / "README.md").read_text()
    for source in ("Procedural scenes", "course checkpoint", "PASCAL-Context", "Licence"):
        assert source in readme, source
    assert (
        "DATA ?= $(if $(filter fixture,$(RECIPE)),,data/PASCAL_MT)"
        in (ROOT / "Makefile").read_text()
    )
    ignored = (ROOT / ".gitignore").read_text().splitlines()
    assert "/data/*" in ignored and "!/data/README.md" in ignored
