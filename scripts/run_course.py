"""Execute every course notebook in order with papermill and print a summary table.

    python scripts/run_course.py --profile course   # what `make course` runs
    python scripts/run_course.py --profile smoke    # quick pass (what the tests run)

Executed copies go to outputs/executed/, each notebook's figures and results.json to
outputs/<notebook>/ (both git-ignored; ``outputs/`` is under ``$MTLORA_LITE_HOME`` if set). Stops at the first failing notebook. The notebooks run
with SOLUTIONS = True: every exercise checks its reference solution, and a failing check fails
the run.

Threads. Before the first notebook, the runner chooses how many CPU threads the notebook kernels
use (``thread_settings``): it counts the cores other programs keep busy (on Linux the CPU
time they used over the last second, from /proc/stat; elsewhere the 1-minute load average,
which still counts a job that ended a minute ago), rounded, and gives the kernels the rest, at
least one, with ``OMP_WAIT_POLICY=PASSIVE`` so that a waiting thread sleeps instead of spinning on a core another program needs. On a
2-core machine with one core busy, a training step with 2 spinning threads took 3.2x its idle
time, with passive threads 1.5x and with one thread 1.3x. ``OMP_NUM_THREADS`` or
``OMP_WAIT_POLICY`` set by you are kept as they are.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Mapping, MutableMapping
from pathlib import Path

import papermill as pm

from mtlora_lite import resolve_device
from mtlora_lite.course.notebook import course_root

ROOT = Path(__file__).resolve().parents[1]


def thread_settings(cores: int, load: float, env: Mapping[str, str]) -> dict[str, str]:
    """The thread variables to set for the notebook kernels on a machine with ``cores`` CPU
    cores of which other programs keep ``load`` busy (``busy_cores``; module docstring), leaving
    out any that ``env`` (the user's environment) already sets.

    ``OMP_NUM_THREADS`` = ``cores`` minus the cores in use (``load`` rounded half up), at least 1;
    ``OMP_WAIT_POLICY`` = "PASSIVE".
    """
    busy = math.floor(max(load, 0.0) + 0.5)
    chosen = {"OMP_NUM_THREADS": str(max(1, cores - busy)), "OMP_WAIT_POLICY": "PASSIVE"}
    return {name: value for name, value in chosen.items() if name not in env}


def busy_between(before: str, after: str, cores: int) -> float:
    """Cores busy between two readings of /proc/stat's first line ("cpu user nice system idle
    iowait irq softirq steal ..."): ``cores`` times the share of CPU time not idle or waiting."""
    first, second = ([int(v) for v in line.split()[1:9]] for line in (before, after))
    delta = [b - a for a, b in zip(first, second, strict=True)]
    total = sum(delta)
    if total <= 0:
        return 0.0
    return cores * (1.0 - (delta[3] + delta[4]) / total)


def busy_cores(cores: int, seconds: float = 1.0) -> tuple[float, str]:
    """How many cores other programs keep busy now, and how it was measured: from /proc/stat
    over ``seconds`` where it exists (Linux), else the 1-minute load average, else 0 (idle)."""
    stat = Path("/proc/stat")
    try:
        before = stat.read_text().splitlines()[0]
        time.sleep(seconds)
        after = stat.read_text().splitlines()[0]
        return busy_between(before, after, cores), f"over the last {seconds:g} s"
    except (OSError, IndexError, ValueError):
        pass
    try:
        return os.getloadavg()[0], "1-minute load average"
    except (AttributeError, OSError):  # no load average (Windows): take the machine as idle
        return 0.0, "not measurable, taken as idle"


def apply_thread_settings(env: MutableMapping[str, str] = os.environ) -> str:
    """Set ``thread_settings`` for this machine in ``env`` (the kernels inherit it); return a
    line that says what was chosen."""
    cores = os.cpu_count() or 1
    busy, how = busy_cores(cores) if "OMP_NUM_THREADS" not in env else (0.0, "not measured")
    env.update(thread_settings(cores, busy, env))
    return (
        f"threads: OMP_NUM_THREADS={env['OMP_NUM_THREADS']}, "
        f"OMP_WAIT_POLICY={env['OMP_WAIT_POLICY']} ({cores} cores, {busy:.2f} busy, {how})"
    )


def run(profile: str, device: str, only: list[str]) -> int:
    notebooks = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    if only:
        notebooks = [nb for nb in notebooks if any(nb.stem.startswith(o) for o in only)]
    if not notebooks:
        print("no notebooks to run", file=sys.stderr)
        return 1
    print(apply_thread_settings(), flush=True)
    outputs = course_root(ROOT) / "outputs"  # $MTLORA_LITE_HOME/outputs if set, as the notebooks
    executed = outputs / "executed"
    executed.mkdir(parents=True, exist_ok=True)
    summary = []
    for i, nb in enumerate(notebooks, 1):
        print(
            f"[{i}/{len(notebooks)}] {nb.name} (profile={profile}, device={device}) ...", flush=True
        )
        start = time.perf_counter()
        pm.execute_notebook(
            str(nb),
            str(executed / nb.name),
            parameters={"PROFILE": profile, "DEVICE": device, "SOLUTIONS": True},
            cwd=str(ROOT),
            kernel_name="python3",
            progress_bar=False,
        )
        seconds = time.perf_counter() - start
        results_path = outputs / nb.stem / "results.json"
        headline = (
            json.loads(results_path.read_text()).get("headline", {})
            if results_path.exists()
            else {}
        )
        print(f"    done in {seconds:.0f} s", flush=True)
        summary.append((nb.stem, seconds, headline))

    print(f"\nSummary ({profile} profile)")
    print(f"{'notebook':<28} {'seconds':>8}  key results")
    for stem, seconds, headline in summary:
        key = ", ".join(
            f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in headline.items()
        )
        print(f"{stem:<28} {seconds:>8.0f}  {key}")
    print(f"{'total':<28} {sum(s for _, s, _ in summary):>8.0f}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--profile", default="course", choices=["smoke", "course"])
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    parser.add_argument("--only", nargs="*", default=[], help="notebook prefixes, e.g. 01 03")
    args = parser.parse_args()
    try:
        resolve_device(args.device)  # fail here, not in a 75-line traceback of the first notebook
    except ValueError as err:
        parser.error(str(err))
    return run(args.profile, args.device, args.only)


if __name__ == "__main__":
    raise SystemExit(main())
