"""The output folder of ``python -m mtlora_lite.paper``: made and probed before anything trains,
tied to one recipe, and read back whole, with every failure naming the folder or file and the fix.

    prepare_out(out)                    # a folder we can write in, or OutputError
    same_recipe(out, recipe)            # out/recipe.json written, or checked against the recipe
    finished = finished_records(out)    # {run: record} of every run with a result.json

A call's table is built from every finished run on disk (``finished_records``), so calls with
different ``--runs`` add up to one table. Loader settings are not part of the recipe, so a call
with other ``--workers`` resumes the same runs.
"""

from __future__ import annotations

import errno
import json
import tempfile
from pathlib import Path
from typing import Any

from mtlora_lite.adapters.atomic import atomic_write
from mtlora_lite.paper.recipes import REPORTING, RUNS, PaperRecipe

RECORD_KEYS = ("name", "label", "tasks", "single_task", "metrics", "trainable", "device_hours")


class OutputError(ValueError):
    """The output folder, or a file in it, cannot be used; the message says why and the fix."""


def prepare_out(out: Path) -> None:
    """Make ``out`` (and its parents) and check that files can be written in it."""
    if out.exists() and not out.is_dir():
        raise OutputError(
            f"--out {out} is a file, not a folder: pass a folder (it is made if missing), e.g. "
            f"--out {out.with_name(out.name + '_runs')}"
        )
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as err:
        why = err.strerror or str(err)
        fix = (
            "free space on its disk, or pass --out " if err.errno == errno.ENOSPC else "pass --out "
        )
        raise OutputError(
            f"cannot write in the output folder {out} ({why}): {fix}a folder you can write to"
        ) from err


def _read_json(path: Path, fix: str) -> Any:
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise OutputError(f"{path} is damaged ({err}): {fix}") from err


def same_recipe(out: Path, recipe: PaperRecipe, write: bool = True) -> None:
    """Write ``out/recipe.json`` (if ``write``: rank 0), or check that the runs there were made
    with this recipe (``PaperRecipe.identity``: reporting fields may differ)."""
    path, wanted = out / "recipe.json", json.loads(json.dumps(recipe.identity()))
    if path.is_file():
        fix = (
            f"it records the recipe of the runs in {out}. If they were made with --recipe "
            f"{recipe.name} and the same options, delete it and call again (it is written "
            "anew); otherwise pass another --out."
        )
        saved = _read_json(path, fix)
        if not isinstance(saved, dict):
            raise OutputError(f"{path} is damaged (not a JSON object): {fix}")
        saved = {k: v for k, v in saved.items() if k not in REPORTING}
        diff = sorted(k for k in saved.keys() | wanted.keys() if saved.get(k) != wanted.get(k))
        if diff:
            raise OutputError(
                f"{out} holds runs of another recipe (differs in {diff}): pass another --out, or "
                "the options those runs were made with"
            )
    elif write:
        atomic_write(path, json.dumps(recipe.to_dict(), indent=2) + "\n")


def read_record(path: Path) -> dict[str, Any]:
    """A finished run's ``result.json``, checked to hold a record."""
    fix = (
        f"delete it and call again: the run is then finished again from its last checkpoint in "
        f"{path.parent} (no training is lost)"
    )
    record = _read_json(path, fix)
    missing = [k for k in RECORD_KEYS if not isinstance(record, dict) or k not in record]
    if missing:
        raise OutputError(f"{path} is damaged (no {missing}): {fix}")
    return record


def finished_records(out: Path) -> dict[str, dict[str, Any]]:
    """{run: record} of every run of ``RUNS`` that has a ``result.json`` under ``out/runs``, in
    the order of ``RUNS``."""
    paths = {name: out / "runs" / name / "result.json" for name in RUNS}
    return {name: read_record(path) for name, path in paths.items() if path.is_file()}
