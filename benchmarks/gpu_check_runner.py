"""Running one part of the GPU check: a command in its own process group under a time limit,
its output into the log, its files into the output folder."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Part:
    """One step of the check: a command with its time limit.

    ``min_s``: not started with less time than this left; ``required``: the parts before it
    keep ``min_s`` for it. ``writes``: files the command writes into the output folder;
    ``outputs``: files it writes into the work folder, copied into the output folder under the
    name given.
    """

    name: str
    command: list[str]
    limit_s: float
    min_s: float = 30.0
    required: bool = True
    env: dict[str, str] = field(default_factory=dict)
    writes: tuple[str, ...] = ()
    outputs: dict[str, Path] = field(default_factory=dict)
    note: str = ""  # into summary.json, beside the part's result


class Log:
    """Lines to the console and to log.txt, flushed at once (so that a check stopped from
    outside still leaves everything it printed in the output folder)."""

    def __init__(self, path: Path) -> None:
        self._file = path.open("a", encoding="utf-8")
        self._lock = threading.Lock()

    def write(self, line: str) -> None:
        with self._lock:
            for stream in (sys.stdout, self._file):
                stream.write(line if line.endswith("\n") else line + "\n")
                stream.flush()

    def close(self) -> None:
        self._file.close()


def _pump(stream: IO[str], prefix: str, log: Log) -> None:
    for line in stream:
        log.write(f"[{prefix}] {line}")


def _stop_group(proc: subprocess.Popen) -> None:
    """Stop the part's process group (the part and anything it started): SIGINT first, so that
    pytest still writes its report of the tests that ran, then SIGTERM, then SIGKILL."""
    for sig, wait_s in ((signal.SIGINT, 10), (signal.SIGTERM, 5), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait_s)
            return
        except subprocess.TimeoutExpired:
            continue


def run_part(
    name: str, command: list[str], limit_s: float, env: dict[str, str], log: Log
) -> dict[str, Any]:
    """Run ``command`` from the repository root for at most ``limit_s`` seconds, its output
    (stdout and stderr) prefixed with ``name`` into ``log``; returns status ("passed",
    "failed" or "timeout"), exit code, seconds and limit."""
    log.write(f"\n=== {name} (limit {limit_s:.0f} s): {' '.join(command)}")
    start = time.monotonic()
    proc = subprocess.Popen(
        command,
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
        start_new_session=True,  # its own process group, so that a timeout stops all of it
    )
    pump = threading.Thread(target=_pump, args=(proc.stdout, name, log), daemon=True)
    pump.start()
    try:
        rc = proc.wait(timeout=limit_s)
        status = "passed" if rc == 0 else "failed"
    except subprocess.TimeoutExpired:
        _stop_group(proc)
        rc, status = proc.returncode, "timeout"
    pump.join(timeout=10)
    seconds = time.monotonic() - start
    log.write(f"=== {name}: {status} (exit code {rc}) in {seconds:.1f} s")
    return {"status": status, "rc": rc, "seconds": round(seconds, 1), "limit_s": round(limit_s)}


def collect_outputs(part: Part, out: Path, work: Path) -> list[str]:
    """Copy ``part``'s output files into ``out`` (the course's cache as one zip); the names of
    the files it left there."""
    names = [name for name in part.writes if (out / name).exists()]
    for name, source in part.outputs.items():
        if source.exists():
            shutil.copyfile(source, out / name)
            names.append(name)
    cache = work / "course_cache"
    if part.name == "course" and cache.is_dir():
        with zipfile.ZipFile(out / "course_cache.zip", "w", zipfile.ZIP_DEFLATED) as zf:
            for path in sorted(cache.glob("*.json")):
                zf.write(path, path.name)
        names.append("course_cache.zip")
    return names
