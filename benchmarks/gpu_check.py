"""The GPU check: the CUDA tests, the course's training notebooks and the training-step benchmark, in
one command on a machine with a CUDA GPU, each part timed, everything written into one folder.

    make gpu-check                                          # -> outputs/gpu_check/, <= 500 s
    python benchmarks/gpu_check.py --out DIR                # the same, into an empty DIR
    python benchmarks/gpu_check.py --out DIR --parts bench_compile_swin_b --budget 200  # one part
    make gpu-check-dry                                      # the same parts on the CPU, small

benchmarks/README.md describes the parts, their limits and outputs, and the targets the benchmark
measures. Each part runs in its own process group under its own time limit (a part that fails or
hangs is stopped and recorded, and the next one starts); the limits come out of one budget
(``--budget`` seconds): a part gets its own limit or what is left once the parts after it that
must run have their minimum, whichever is less.

The parts import the package from the checkout (``PYTHONPATH``), so the check also runs where the
package is not installed (its version then reads "0+source"). This script itself imports only
the standard library and its modules beside it (``gpu_check_runner``, ``gpu_check_summary``,
``gpu_check_course``); the parts import torch.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.metadata
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from gpu_check_course import course_worker
from gpu_check_runner import ROOT, Log, Part, collect_outputs, run_part
from gpu_check_summary import print_summary, summarize, write_json, write_summary

MODELS = {"swin_t": "swin_tiny_patch4_window7_224", "swin_b": "swin_base_patch4_window7_224"}


# --- the parts ------------------------------------------------------------------------------


def plan(args: argparse.Namespace, work: Path) -> list[Part]:
    """The parts, in order, for ``args`` (GPU run or dry run)."""
    py, me = sys.executable, str(Path(__file__).resolve())
    dry = args.dry_run
    device = "cpu" if dry else "cuda"
    worker = [py, me, "--device", device, "--work", str(work), "--out", str(args.out)]
    worker += ["--dry-run"] if dry else []
    tests = [py, "-m", "pytest", "tests/test_cuda.py", "-q", "-rfEsxX", "--tb=short"]
    tests += ["-p", "no:cacheprovider", "-p", "no:logging", "--durations=10"]
    tests += [f"--junitxml={args.out / 'cuda_tests.xml'}"]
    course = [*worker, "--worker", "course", "--profile", "smoke" if dry else "course"]
    if args.notebooks:
        course += ["--notebooks", *args.notebooks]
    tiny = ["--img", "64", "--batch", "2", "--warmup", "1", "--repeats", "2"]
    sizes = tiny if dry else ["--img", "224", "--batch", "64"]  # bench.py's GPU defaults, named
    bench = [py, "benchmarks/bench.py", "--device", device, *sizes]
    models = ["swin_t"] if dry else list(MODELS)
    bench_json, eager_out = f"bench-{device}.json", str(work / "bench_eager")
    eager = [*bench, "--models", *(MODELS[m] for m in models), "--profile-ops", "--out", eager_out]
    parts = [
        Part("env", [*worker, "--worker", "env"], 60, min_s=10, required=False),
        Part(
            "tests",
            tests,
            600 if dry else 180,
            min_s=60,
            env={"MTLORA_TEST_DEVICE": device},
            writes=("cuda_tests.xml",),
        ),
        Part("course", course, 300 if dry else 270, min_s=60, writes=("course_runs.json",)),
        Part(
            "bench_eager",
            eager,
            120 if dry else 150,
            min_s=100,
            outputs={"bench_eager.json": work / "bench_eager" / bench_json},
        ),
        Part(
            "torchrun",
            [
                py,
                "-m",
                "torch.distributed.run",
                "--standalone",
                "--nproc_per_node",
                "2" if dry else "1",
                "-m",
                "mtlora_lite.paper",
                "--recipe",
                "fixture",
                "--device",
                device,
                "--out",
                str(work / "paper_torchrun"),
                "--quiet",
            ],
            120 if dry else 90,
            min_s=30,
            required=False,
            note="fit under torchrun: NCCL on the GPU, gloo in the dry run",
        ),
    ]
    for m in models:
        name = f"bench_compile_{m}"
        parts.append(
            Part(
                name,
                [*bench, "--compile", "--models", MODELS[m], "--out", str(work / name)],
                120 if dry else 240,
                min_s=60 if m == "swin_t" else 90,
                required=False,
                env={"TORCH_COMPILE_DISABLE": "1"} if dry else {},
                outputs={f"{name}.json": work / name / bench_json},
                note="dry run: torch.compile disabled, its 'compiled' rows ran eager"
                if dry
                else "",
            )
        )
    if args.parts:
        unknown = set(args.parts) - {p.name for p in parts}
        if unknown:
            raise SystemExit(
                f"unknown parts {sorted(unknown)}; choose from {[p.name for p in parts]}"
            )
        parts = [p for p in parts if p.name in args.parts]
    return parts


# --- the env worker (run as a part, in its own process) ----------------------------------


NO_DEVICE = 3  # the env part's exit code when the device asked for is not there


def env_worker(args: argparse.Namespace) -> int:
    """Versions and the device, into env.json in the work folder (summary.json takes it).
    Exit code ``NO_DEVICE`` if CUDA was asked for and torch sees no GPU."""
    import timm
    import torch

    import mtlora_lite

    def version(name: str) -> str:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            return "not installed"

    info: dict[str, Any] = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "timm": timm.__version__,
        "peft": version("peft"),
        "safetensors": version("safetensors"),
        "mtlora_lite": f"{mtlora_lite.__version__} from {Path(mtlora_lite.__file__).parent}",
        "cuda_available": torch.cuda.is_available(),
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(
            gpu=props.name,
            capability=f"{props.major}.{props.minor}",
            gpu_memory_gib=round(props.total_memory / 2**30, 1),
            multiprocessors=props.multi_processor_count,
        )
    smi = shutil.which("nvidia-smi")
    if smi:
        query = "name,driver_version,memory.total,clocks.sm,clocks.max.sm,temperature.gpu"
        try:
            done = subprocess.run(
                [smi, f"--query-gpu={query}", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                timeout=30,
            )
            info["nvidia_smi"] = (done.stdout or done.stderr).strip()
        except subprocess.TimeoutExpired:
            info["nvidia_smi"] = "no answer in 30 s"
    print(json.dumps(info, indent=1), flush=True)
    write_json(args.work / "env.json", info)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("torch sees no CUDA GPU here: run with --dry-run on a machine without one")
        return NO_DEVICE
    return 0


# --- running the parts within the budget ---------------------------------------------------


def run_parts(
    parts: list[Part],
    deadline: float,
    env: dict[str, str],
    summary: dict[str, Any],
    out: Path,
    work: Path,
    log: Log,
) -> None:
    """Run ``parts`` in order within ``deadline`` (time.monotonic), each result into
    ``summary`` and summary.json as soon as it is known."""
    start, no_device = time.monotonic(), False
    for i, part in enumerate(parts):
        left = deadline - time.monotonic()
        keep = sum(p.min_s for p in parts[i + 1 :] if p.required)
        limit = min(part.limit_s, left - keep)
        if no_device:
            summary["parts"][part.name] = {"status": "skipped", "reason": "no CUDA GPU (env)"}
        elif limit < part.min_s:
            reason = f"{left:.0f} s left, {keep:.0f} s kept for the parts after it"
            summary["parts"][part.name] = {"status": "skipped", "reason": reason}
        else:
            result = run_part(part.name, part.command, limit, {**env, **part.env}, log)
            result["files"] = collect_outputs(part, out, work)
            summary["parts"][part.name] = result | ({"note": part.note} if part.note else {})
            if part.name == "env" and result["rc"] == NO_DEVICE:
                no_device = True  # every other part needs the GPU
        if summary["parts"][part.name]["status"] == "skipped":
            log.write(f"\n=== {part.name}: skipped ({summary['parts'][part.name]['reason']})")
        summary["seconds"] = round(time.monotonic() - start, 1)
        summarize(summary, out, work)
        write_summary(out / "summary.json", summary)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, required=True, help="output folder, empty or new")
    parser.add_argument("--dry-run", action="store_true", help="the same parts on the CPU, small")
    parser.add_argument(
        "--budget", type=float, default=None, help="seconds for all parts (GPU: 500)"
    )
    parser.add_argument("--parts", nargs="+", default=None, help="run only these parts")
    parser.add_argument(
        "--notebooks",
        nargs="+",
        default=None,
        help="the course part runs these notebooks (prefixes, e.g. 01 03); default: 01-05, dry: 04",
    )
    # used by the parts that run this script as a worker
    parser.add_argument("--worker", choices=["env", "course"], help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--device", help=argparse.SUPPRESS)
    parser.add_argument("--profile", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.out = args.out.resolve()
    if args.worker:
        return {"env": env_worker, "course": course_worker}[args.worker](args)

    budget = args.budget or (900.0 if args.dry_run else 500.0)
    args.out.mkdir(parents=True, exist_ok=True)
    stale = [p.name for p in args.out.iterdir()]
    if stale:
        raise SystemExit(
            f"--out {args.out} is not empty ({', '.join(stale[:5])}): give an empty folder"
        )
    start = time.monotonic()
    log = Log(args.out / "log.txt")
    summary: dict[str, Any] = {
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "dry_run": args.dry_run,
        "budget_s": budget,
        "out": str(args.out),
        "command": " ".join(sys.argv),
        "parts": {},
    }
    with tempfile.TemporaryDirectory(prefix="gpu_check-") as tmp:
        work = Path(tmp)
        env = dict(os.environ, PYTHONUNBUFFERED="1", MPLBACKEND="Agg")
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
        run_parts(plan(args, work), start + budget, env, summary, args.out, work, log)
    print_summary(summary, log)
    log.close()
    return 0 if all(p["status"] == "passed" for p in summary["parts"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
