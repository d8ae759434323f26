"""benchmarks/gpu_check.py, the prepared GPU check: its dry run on the CPU, the time limit that
stops a hanging part, and the course calls against the notebooks they mirror."""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"


def load_script() -> ModuleType:
    """benchmarks/gpu_check.py as a module; its own modules beside it import as they do when it
    runs as a script (its folder first on sys.path)."""
    if str(SCRIPT.parent) not in sys.path:
        sys.path.insert(0, str(SCRIPT.parent))
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while building
    spec.loader.exec_module(module)
    return module


gpu_check = load_script()


def test_dry_run_of_the_course_part(tmp_path: Path) -> None:
    """The course part on the CPU: a trained call, then the same call again from the cache;
    the output folder holds what the device would return, and nothing more."""
    out = tmp_path / "out"
    command = [sys.executable, str(SCRIPT), "--dry-run", "--out", str(out)]
    command += ["--parts", "course", "--course-runs", "2"]
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    )
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    summary = json.loads((out / "summary.json").read_text())
    assert summary["dry_run"] and list(summary["parts"]) == ["course"]
    course = summary["parts"]["course"]
    assert course["status"] == "passed" and course["files"] == [
        "course_runs.json",
        "course_cache.zip",
    ]
    assert course["results"]["trained"] == 1 and course["results"]["cached"] == 1
    runs = json.loads((out / "course_runs.json").read_text())["runs"]
    assert [(r["notebook"], r["name"], r["cached"]) for r in runs] == [
        ("01", "full-semseg", False),
        ("02", "full-semseg", True),
    ]
    assert 0.0 <= runs[0]["primary"]["semseg"] <= 100.0 and runs[1]["primary"] == runs[0]["primary"]
    with zipfile.ZipFile(out / "course_cache.zip") as zf:
        assert len(zf.namelist()) == 1 and zf.namelist()[0].startswith("full-semseg-")
    files = sorted(p.name for p in out.iterdir())
    assert files == ["course_cache.zip", "course_runs.json", "log.txt", "summary.json"]
    assert "[course]  2/2 02 full-semseg" in (out / "log.txt").read_text()
    assert "=== summary (dry run, CPU)" in done.stdout


def _state(pid: int) -> str | None:
    """The process state letter from /proc (Z: a zombie), or None if the process is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return None


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads process states from /proc")
def test_a_hanging_part_is_stopped_with_everything_it_started(tmp_path: Path) -> None:
    code = (
        "import subprocess, sys, time\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'])\n"
        "print('child', child.pid, flush=True)\n"
        "time.sleep(120)\n"
    )
    log = gpu_check.Log(tmp_path / "log.txt")
    result = gpu_check.run_part("hang", [sys.executable, "-c", code], 3.0, dict(os.environ), log)
    log.close()
    assert result["status"] == "timeout" and result["limit_s"] == 3
    assert 3.0 <= result["seconds"] < 30.0
    text = (tmp_path / "log.txt").read_text()
    assert "=== hang: timeout" in text
    child = int(text.split("[hang] child ")[1].split()[0])
    assert _state(child) in (None, "Z")  # the grandchild was stopped too


def test_a_failing_part_is_recorded(tmp_path: Path) -> None:
    log = gpu_check.Log(tmp_path / "log.txt")
    command = [sys.executable, "-c", "import sys; print('bad'); sys.exit(3)"]
    result = gpu_check.run_part("bad", command, 30.0, dict(os.environ), log)
    log.close()
    assert (result["status"], result["rc"]) == ("failed", 3)
    assert "[bad] bad" in (tmp_path / "log.txt").read_text()


def _code(notebook: Path) -> list[tuple[list[str], str]]:
    """(tags, source) of each code cell of ``notebook``."""
    cells = json.loads(notebook.read_text())["cells"]
    return [
        (c.get("metadata", {}).get("tags", []), "".join(c["source"]))
        for c in cells
        if c["cell_type"] == "code"
    ]


def _parameters(notebook: Path) -> dict[str, object]:
    """The literal assignments of a notebook's ``parameters`` cell."""
    (source,) = [source for tags, source in _code(notebook) if "parameters" in tags]
    return {
        node.targets[0].id: ast.literal_eval(node.value)
        for node in ast.parse(source).body
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name)
    }


def test_course_calls_mirror_the_notebooks() -> None:
    """The parameters the calls copy are the notebooks' own, notebook 05's variants are its
    VARIANTS, only notebooks 01-05 make training calls, and the course profile makes 31 runs."""
    notebooks = {p.name[:2]: p for p in (ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")}
    for number, expected in gpu_check.NOTEBOOK_PARAMETERS.items():
        params = _parameters(notebooks[number])
        assert params["SEED"] == 0, number
        for name, value in expected.items():
            assert params[name] == value, (
                f"notebook {number}: {name} is {params[name]!r}; update NOTEBOOK_PARAMETERS"
            )
    code_05 = "\n".join(source for _, source in _code(notebooks["05"]))
    p05 = gpu_check.NOTEBOOK_PARAMETERS["05"]
    for name, options in gpu_check.MIXTURE_VARIANTS.items():
        if name == f"lora-r{p05['N_HEADS'] * p05['RANK']}":  # 05 names it lora_name
            name = "lora_name"
        else:
            name = f'"{name}"'
        written = ", ".join(f"{k}={v!r}".replace("'", '"') for k, v in options.items())
        assert f"{name}: dict({written})" in code_05, name
    calling = {
        number
        for number, path in notebooks.items()
        if any("run_dense(" in src or "run_mixture(" in src for _, src in _code(path))
    }
    assert calling == {"01", "02", "03", "04", "05"}

    calls = gpu_check.course_calls("course")
    assert {c.notebook for c in calls} == calling
    runs = {(c.kind, c.name, c.kwargs.get("seed", 0)) for c in calls}
    assert len(calls) == 40 and len(runs) == 31  # 13 dense and 18 mixture runs
    assert sum(kind == "dense" for kind, _, _ in runs) == 13
