"""The package's four rooms: imports point one way (applications -> multitask -> adapters), the
two applications (course, paper) stand apart, the adapters import alone, the top-level API holds
library names only, and the installed package carries its checkpoint."""

from __future__ import annotations

import ast
import importlib
import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import mtlora_lite

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "mtlora_lite"
ROOMS = ("adapters", "multitask", "course", "paper")
FORBIDDEN = {
    "adapters": {"multitask", "course", "paper"},  # the layers are usable without the rest
    "multitask": {"course", "paper"},  # the library never imports an application
    "course": {"paper"},  # the two applications stand apart
    "paper": {"course"},
}


def _imported_rooms(path: Path) -> set[str]:
    """The rooms (``mtlora_lite.<room>``) a module imports, at any depth of its code."""
    rooms = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        for name in names:
            parts = name.split(".")
            if parts[0] == "mtlora_lite" and len(parts) > 1 and parts[1] in ROOMS:
                rooms.add(parts[1])
    return rooms


@pytest.mark.parametrize("room", ROOMS)
def test_imports_point_one_way(room: str) -> None:
    modules = sorted((PACKAGE / room).rglob("*.py"))
    assert modules, f"mtlora_lite/{room}/ has no modules"
    broken = {
        str(m.relative_to(ROOT)): sorted(_imported_rooms(m) & FORBIDDEN[room]) for m in modules
    }
    assert not {m: r for m, r in broken.items() if r}, (
        f"mtlora_lite/{room} may not import {sorted(FORBIDDEN[room])}"
    )


def test_no_modules_outside_the_rooms() -> None:
    loose = sorted(p.name for p in PACKAGE.glob("*.py") if p.name != "__init__.py")
    assert not loose, f"every module lives in one of {ROOMS}, found {loose} at the top"
    assert _imported_rooms(PACKAGE / "__init__.py") <= {"adapters", "multitask"}


def test_top_level_api_is_the_library_only() -> None:
    homes = {name: getattr(mtlora_lite, name).__module__ for name in mtlora_lite.__all__}
    outside = {n: m for n, m in homes.items() if m.split(".")[1] not in ("adapters", "multitask")}
    assert not outside, f"application names belong under their room: {outside}"
    assert 25 <= len(mtlora_lite.__all__) <= 55


@pytest.mark.parametrize("room", ["adapters", "multitask"])
def test_subpackages_export_their_names(room: str) -> None:
    package = importlib.import_module(f"mtlora_lite.{room}")
    assert len(package.__all__) >= 20
    for name in package.__all__:  # each resolves, to a definition of this room
        module = getattr(getattr(package, name), "__module__", None)
        if isinstance(module, str) and module.startswith("mtlora_lite."):
            assert module.startswith(f"mtlora_lite.{room}."), (name, module)
    with pytest.raises(AttributeError, match="has no attribute 'nothing'"):
        package.nothing  # noqa: B018


SEEN = (
    "import json, sys\n"
    "before = set(sys.modules)\n"
    "{code}\n"
    "print(json.dumps(sorted(set(sys.modules) - before)))\n"
)


def _imported_by(code: str, baseline: str = "import torch") -> list[str]:
    """The modules that ``code`` imports in a fresh interpreter after ``baseline`` ran."""
    script = f"{baseline}\n" + SEEN.format(code=code)
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, cwd=ROOT
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_the_adapters_import_alone() -> None:
    """``import mtlora_lite.adapters`` and its torch-only layers need nothing but torch (and
    safetensors for the files): not timm, not the trainer or its tqdm, not the course."""
    code = (
        "import mtlora_lite.adapters as a\n"
        "from mtlora_lite.adapters import (LoRALinear, MultiHeadLoRALinear, MTLoRALinear, "
        "inject_lora, merge_adapters, unload_adapters, disable_adapters, save_adapters, "
        "load_adapters, export_peft, trainable_breakdown, head_similarity)"
    )
    new = _imported_by(code)
    foreign = [
        m
        for m in new
        if m.split(".")[0] in ("timm", "tqdm", "matplotlib")
        or m.startswith(("mtlora_lite.multitask", "mtlora_lite.course", "mtlora_lite.paper"))
    ]
    assert not foreign, foreign
    assert "mtlora_lite.adapters.lora" in new
    swin = _imported_by("from mtlora_lite.adapters import SwinTaskEncoder")
    assert "timm" in swin and not [m for m in swin if m.startswith("mtlora_lite.multitask")]


def test_the_top_level_is_lazy() -> None:
    """``import mtlora_lite`` imports no room; a name imports its own module on first use."""
    new = _imported_by("import mtlora_lite", baseline="")
    assert not [m for m in new if m.startswith(("torch", "timm", "mtlora_lite."))], new
    lora = _imported_by("import mtlora_lite; mtlora_lite.LoRALinear", baseline="")
    assert "mtlora_lite.adapters.lora" in lora and "mtlora_lite.multitask.train" not in lora


def test_wheel_carries_the_course_checkpoint(tmp_path: Path) -> None:
    """A non-editable install finds the checkpoint: the wheel holds it as package data, and the
    package loads it from an unpacked copy outside the repository."""
    pytest.importorskip("setuptools")
    src = tmp_path / "src"  # a clean copy: an old build/ folder in the checkout could leak in
    names = shutil.ignore_patterns(".*", "build", "outputs", "*.egg-info", "__pycache__", "wt")

    def skip(folder: str, entries: list[str]) -> set[str]:  # and datasets in the top data/
        top_data = Path(folder) == ROOT / "data"
        return names(folder, entries) | (
            {e for e in entries if e != "README.md"} if top_data else set()
        )

    shutil.copytree(ROOT, src, ignore=skip)
    build = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"]
    subprocess.run([*build, "-w", str(tmp_path), str(src)], check=True, cwd=tmp_path)
    (wheel,) = tmp_path.glob("mtlora_lite-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        assert {
            "mtlora_lite/course/data/course_swin.safetensors",
            "mtlora_lite/course/data/course_swin.json",
        } <= names
        zf.extractall(tmp_path / "site")
    code = (
        "import mtlora_lite.course.backbones as b; b.load_backbone('course'); print(b.data_dir())"
    )
    env = {"PYTHONPATH": str(tmp_path / "site"), "PATH": "/usr/bin:/bin"}
    out = subprocess.run(
        [sys.executable, "-c", code],
        check=True,
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
    )
    assert out.stdout.strip().startswith(str(tmp_path / "site"))
