"""benchmarks/gpu_check.py, the prepared GPU check: its dry run on the CPU, the time limit that
stops a hanging part, and the notebooks run as scripts."""

from __future__ import annotations

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
    """The course part on the CPU: notebook 04 run as a script (smoke profile); the output folder
    holds what the device would return, and nothing more."""
    out = tmp_path / "out"
    command = [sys.executable, str(SCRIPT), "--dry-run", "--out", str(out)]
    command += ["--parts", "course", "--notebooks", "04"]
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
    results = course["results"]
    assert results["notebooks"] == "1 of 1" and results["errors"] == [] and results["trained"] > 0
    (notebook,) = json.loads((out / "course_runs.json").read_text())["notebooks"]
    assert notebook["notebook"] == "04_multihead_lora" and notebook["rc"] == 0
    with zipfile.ZipFile(out / "course_cache.zip") as zf:
        assert len(zf.namelist()) == notebook["trained"]
    files = sorted(p.name for p in out.iterdir())
    assert files == ["course_cache.zip", "course_runs.json", "log.txt", "summary.json"]
    assert "1/1 04_multihead_lora" in (out / "log.txt").read_text()
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


def test_a_notebook_runs_as_the_script_papermill_would_run(tmp_path: Path) -> None:
    """Code cells in order, the parameters right after the parameters cell, IPython's own lines
    left out; markdown cells are not code."""
    import gpu_check_course

    def cell(kind: str, source: str, tags: tuple[str, ...] = ()) -> dict:
        return {"cell_type": kind, "metadata": {"tags": list(tags)}, "source": source}

    notebook = tmp_path / "99_probe.ipynb"
    cells = [
        cell("markdown", "# title"),
        cell("code", "PROFILE = 'course'\nSEEDS = (0, 1, 2)", ("parameters",)),
        cell("code", "%matplotlib inline\nimport math\n!pip list\nx = [PROFILE, SEEDS]"),
    ]
    notebook.write_text(json.dumps({"cells": cells}))
    script = gpu_check_course.notebook_script(notebook, {"PROFILE": "smoke", "SEEDS": (0,)})
    namespace: dict = {}
    exec(compile(script, str(notebook), "exec"), namespace)
    assert namespace["x"] == ["smoke", (0,)] and "%" not in script and "!pip" not in script
    notebook.write_text(json.dumps({"cells": cells[2:]}))
    with pytest.raises(ValueError, match="no code cell tagged 'parameters'"):
        gpu_check_course.notebook_script(notebook, {})
