"""The package on a lent GPU, in one call (issue 15): CUDA tests, the course's training runs and
the training-step benchmark, each timed, everything written into one output folder.

    PYTHONPATH=. python3 benchmarks/gpu_check.py --out $OUT            # on the GPU: about 7 min
    PYTHONPATH=. python benchmarks/gpu_check.py --dry-run --out DIR    # the same parts, CPU, small
    PYTHONPATH=. python3 benchmarks/gpu_check.py --out $OUT --parts bench_compile_swin_b  # one again

Parts, in this order; each runs in its own process group under its own time limit (a part that
fails or hangs is stopped and recorded, and the next one starts):

    env                    versions, the device, nvidia-smi                  -> summary.json
    tests                  pytest tests/test_cuda.py on the device           -> cuda_tests.xml
    course                 every training run notebooks 01-05 make (course profile), through
                           course.experiments, in the notebooks' order; a repeated call reads
                           the first one's record, as in the course       -> course_runs.json,
                                                                             course_cache.zip
    bench_eager            benchmarks/bench.py --profile-ops: Swin-T and Swin-B, bf16 autocast,
                           batch 64, 224 x 224, HF PEFT included, peak memory per variant
                                                                          -> bench_eager.json
    torchrun               the paper command's fixture recipe under torchrun: one process on the
                           GPU (NCCL; two on the CPU with gloo in the dry run)  -> log.txt
    bench_compile_swin_t   bench.py --compile on Swin-T (its run repeats eager, as a reference in
    bench_compile_swin_b   the same run), then Swin-B, while time is left
                                                                          -> bench_compile_*.json

The folder gets those files plus log.txt (all output) and summary.json (each part's status,
seconds and limit; test counts and failures; the course's total time; the benchmark's ratios),
rewritten after every part: 8 files, as many as the device returns. The time limits add up to
``--budget`` seconds: a part gets its own limit or what is left once the parts after it that
must run have their minimum, whichever is less.

``--dry-run`` runs the same parts on the CPU: the tests with MTLORA_TEST_DEVICE=cpu (which also
compiles on the CPU), a few course runs in the smoke profile, the benchmark at tiny sizes on
Swin-T only, with torch.compile disabled in its compile part (compiling every variant on a CPU
takes longer than the whole GPU run; the part still checks its command and its output file).

The package is not installed on the device image (no registry there): the parts import it from
the checkout (PYTHONPATH; its version then reads "0+source"). This script itself imports only
the standard library; the parts import torch.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.metadata
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import xml.etree.ElementTree as ET
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

ROOT = Path(__file__).resolve().parents[1]
MAX_FILES = 8  # the device returns at most 8 files from its output folder
MODELS = {"swin_t": "swin_tiny_patch4_window7_224", "swin_b": "swin_base_patch4_window7_224"}
# The dry run's course calls (seed 0 only): full fine-tuning, MTLoRA, HydraLoRA and R-LoRA, and
# the notebooks' repeated calls of them, which read the first call's record.
DRY_RUNS = ("full-semseg", "mtlora-semseg+parts+saliency+normals", "hydra", "rlora")


# --- the parts ------------------------------------------------------------------------------


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
    if args.course_runs is not None:
        course += ["--course-runs", str(args.course_runs)]
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
            note="fit under torchrun (issue 14): NCCL on the GPU, gloo in the dry run",
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


# --- running a part -------------------------------------------------------------------------


class Log:
    """Lines to the console and to log.txt, flushed at once (the device keeps only the tail of
    the console, and what is in the output folder when a run is stopped)."""

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


# --- the workers (run as parts, in their own process) --------------------------------------


@dataclass(frozen=True)
class CourseCall:
    """One ``run_dense`` / ``run_mixture`` call of a notebook; ``name`` is the run's name."""

    notebook: str
    kind: str  # "dense" or "mixture"
    name: str
    kwargs: dict[str, Any]


# The parameters-cell values of the notebooks that the course calls below depend on (with their
# default SEED 0); tests/test_gpu_check.py checks them against the notebooks.
NOTEBOOK_PARAMETERS: dict[str, dict[str, Any]] = {
    "01": {"RANKS": (2, 8, 32)},
    "03": {"ABLATIONS": {"mtlora-ts-last-stage": {"task_stages": [3]}}},
    "04": {"N_HEADS": 4, "RANK": 4, "SIMILARITY_POINTS": 32},
    "05": {"N_SEEDS": None, "N_HEADS": 4, "RANK": 4, "SIMILARITY_POINTS": 32},
}
MIXTURE_VARIANTS: dict[str, dict[str, Any]] = {  # notebook 05's VARIANTS (run_mixture options)
    "hydra": dict(init="hydra", dropout_mode="shared"),
    "hydra+mh-dropout": dict(init="hydra", dropout_mode="per_head_ax"),
    "rlora-init": dict(init="rlora", dropout_mode="shared"),
    "rlora": dict(init="rlora", dropout_mode="per_head_ax"),
    "rlora-no-router": dict(init="rlora", dropout_mode="per_head_ax", router=False),
    "lora-r16": dict(adapter="lora"),  # lora-r{N_HEADS * RANK}
}


def course_calls(profile: str) -> list[CourseCall]:
    """Every training call notebooks 01-05 make, in their order, with their options (profile,
    device and cache are added by the caller). Mirrors the notebooks' cells; repeated calls are
    kept, since the course makes them too (they read the first call's record)."""
    from mtlora_lite.course.experiments import DENSE_TASKS, recipe

    def dense(
        notebook: str, method: str, tasks: Sequence[str] = DENSE_TASKS, **options: Any
    ) -> CourseCall:
        name = options.get("name") or f"{method}-{'+'.join(tasks)}"
        kwargs = dict(method=method, tasks=list(tasks), **options)
        return CourseCall(notebook, "dense", name, kwargs)

    def mixture(notebook: str, name: str, **options: Any) -> CourseCall:
        params = NOTEBOOK_PARAMETERS[notebook]
        rec = recipe("mixture", profile)
        steps = rec.epochs * (rec.n_train // rec.batch_size)  # the notebooks' rule
        every = max(1, steps // params["SIMILARITY_POINTS"])
        heads = dict(n_heads=params["N_HEADS"], rank=params["RANK"], similarity_every=every)
        return CourseCall(notebook, "mixture", name, dict(name=name, **options, **heads))

    calls = [dense("01", "full", ["semseg"]), dense("01", "decoders", ["semseg"])]
    calls += [
        dense("01", "shared_lora", ["semseg"], shared_rank=r, name=f"lora-r{r}-semseg")
        for r in NOTEBOOK_PARAMETERS["01"]["RANKS"]
    ]
    for notebook in ("02", "03"):  # 03 repeats 02's single-task references and baselines
        calls += [dense(notebook, "full", [task]) for task in DENSE_TASKS]
        calls += [dense(notebook, method) for method in ("full", "decoders", "shared_lora")]
    calls += [dense("03", "mtlora")]
    for name, options in NOTEBOOK_PARAMETERS["03"]["ABLATIONS"].items():
        calls += [dense("03", "mtlora", name=name, **options)]
    calls += [mixture("04", "hydra", adapter="multihead", init="hydra", dropout_mode="shared")]
    n_seeds = NOTEBOOK_PARAMETERS["05"]["N_SEEDS"] or (2 if profile == "smoke" else 3)
    for name, options in MIXTURE_VARIANTS.items():
        options = {"adapter": "multihead", **options}
        calls += [mixture("05", name, seed=seed, **options) for seed in range(n_seeds)]
    return calls


def _write_json(path: Path, record: dict[str, Any]) -> None:
    """``record`` as JSON at ``path``, never half written (a stopped part leaves the last one)."""
    from mtlora_lite.adapters.atomic import atomic_write

    atomic_write(path, json.dumps(record, indent=1, default=str) + "\n")


def course_worker(args: argparse.Namespace) -> int:
    """Make the course calls on ``args.device``, recording each into course_runs.json as it
    finishes; a call that fails is recorded and the next one made. Exit code 1 if any failed."""
    import torch

    from mtlora_lite.course.experiments import run_dense, run_mixture

    calls = course_calls(args.profile)
    if args.dry_run:
        calls = [c for c in calls if c.name in DRY_RUNS and c.kwargs.get("seed", 0) == 0]
    calls = calls[: args.course_runs]
    cache = args.work / "course_cache"
    cuda = args.device == "cuda"
    record: dict[str, Any] = {
        "profile": args.profile,
        "device": args.device,
        "device_name": torch.cuda.get_device_name() if cuda else platform.machine(),
        "torch": torch.__version__,
        "date": dt.date.today().isoformat(),
        "planned": len(calls),
        "runs": [],
    }
    start, failed = time.perf_counter(), 0
    for i, call in enumerate(calls, 1):
        tic = time.perf_counter()
        entry: dict[str, Any] = {"notebook": call.notebook, "kind": call.kind, "name": call.name}
        entry["seed"] = call.kwargs.get("seed", 0)
        run = run_dense if call.kind == "dense" else run_mixture
        try:
            result = run(
                **call.kwargs,
                profile=args.profile,
                device=args.device,
                cache_dir=cache,
                progress=False,
            )
            entry.update(cached=result.cached, train_s=round(result.seconds, 2))
            entry.update(images_per_s=round(result.images_per_s, 1), primary=result.primary)
        except Exception as err:  # recorded; the next call still runs
            failed += 1
            entry["error"] = f"{type(err).__name__}: {err}"
            traceback.print_exc()
        entry["wall_s"] = round(time.perf_counter() - tic, 2)
        record["runs"].append(entry)
        record["total_s"] = round(time.perf_counter() - start, 1)
        if cuda:
            record["peak_mib"] = round(torch.cuda.max_memory_allocated() / 2**20)
        _write_json(args.out / "course_runs.json", record)
        how = "cached" if entry.get("cached") else "error" if "error" in entry else "trained"
        print(
            f"{i:>2}/{len(calls)} {call.notebook} {call.name:<40} seed {entry['seed']}: "
            f"{how:<7} {entry['wall_s']:7.1f} s (total {record['total_s']:.0f} s)",
            flush=True,
        )
    return 1 if failed else 0


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
    _write_json(args.work / "env.json", info)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("torch sees no CUDA GPU here: run with --dry-run on a machine without one")
        return NO_DEVICE
    return 0


# --- the summary ----------------------------------------------------------------------------


def test_summary(path: Path) -> dict[str, Any]:
    """Counts and failures from pytest's junit XML."""
    if not path.exists():
        return {"error": f"no {path.name}"}
    suite = ET.parse(path).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    xfailed = [s for s in suite.iter("skipped") if s.get("type") == "pytest.xfail"]
    counts["skipped"] -= len(xfailed)
    counts["xfailed"] = len(xfailed)
    failed = []
    for case in suite.iter("testcase"):
        for bad in (*case.findall("failure"), *case.findall("error")):
            message = (bad.get("message") or "").splitlines()[:1]
            failed.append(f"{case.get('name')}: {''.join(message)[:300]}")
    return {**counts, "failed": failed}


def course_summary(path: Path) -> dict[str, Any]:
    """Total time and counts of the course calls made."""
    if not path.exists():
        return {"error": f"no {path.name}"}
    record = json.loads(path.read_text())
    runs = record["runs"]
    return {
        "profile": record["profile"],
        "calls": f"{len(runs)} of {record['planned']}",
        "trained": sum(1 for r in runs if r.get("cached") is False),
        "cached": sum(1 for r in runs if r.get("cached")),
        "errors": [f"{r['name']}: {r['error']}" for r in runs if "error" in r],
        "total_s": record.get("total_s"),
        "train_s": round(sum(r.get("train_s", 0.0) for r in runs if not r.get("cached")), 1),
        "peak_mib": record.get("peak_mib"),
    }


def bench_summary(path: Path) -> dict[str, Any]:
    """The ratios DESIGN.md sets targets for, and each variant's step time and peak memory."""
    record = json.loads(path.read_text())
    return {
        "ratios": [
            f"{r['model']} {r['mode']} {r['ratio']}: {r['value']:.2f}x" for r in record["ratios"]
        ],
        "rows": [
            f"{r['model']} {r['mode']} {r['variant']}: {r['ms']:.1f} ms, {r['ratio']:.2f}x, "
            f"peak {r['peak_mib'] if r['peak_mib'] is None else round(r['peak_mib'])} MiB"
            for r in record["rows"]
        ],
    }


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


def summarize(summary: dict[str, Any], out: Path, work: Path) -> None:
    """Add what the parts wrote to ``summary`` (in place)."""
    if (work / "env.json").exists():
        summary["env"] = json.loads((work / "env.json").read_text())
    parts = {name: p for name, p in summary["parts"].items() if p["status"] != "skipped"}
    if "tests" in parts:
        parts["tests"]["results"] = test_summary(out / "cuda_tests.xml")
    if "course" in parts:
        parts["course"]["results"] = course_summary(out / "course_runs.json")
    for name, part in parts.items():
        if name.startswith("bench") and (out / f"{name}.json").exists():
            part["results"] = bench_summary(out / f"{name}.json")


def print_summary(summary: dict[str, Any], log: Log) -> None:
    """A short table last: the device's reply keeps the tail of the output."""
    log.write(f"\n=== summary ({'dry run, CPU' if summary['dry_run'] else 'GPU'})")
    env = summary.get("env", {})
    log.write(
        f"{env.get('gpu', env.get('platform', '?'))}, torch {env.get('torch', '?')}, "
        f"timm {env.get('timm', '?')}, peft {env.get('peft', '?')}"
    )
    for name, part in summary["parts"].items():
        if part["status"] == "skipped":
            log.write(f"{name:<22} skipped: {part['reason']}")
            continue
        log.write(
            f"{name:<22} {part['status']:<8} {part['seconds']:7.1f} s (limit {part['limit_s']} s)"
        )
        if part.get("note"):
            log.write(f"    note: {part['note']}")
        results = part.get("results", {})
        if name == "tests":
            log.write(f"    {json.dumps({k: v for k, v in results.items() if k != 'failed'})}")
            for line in results.get("failed", []):
                log.write(f"    FAILED {line}")
        elif name == "course":
            log.write(f"    {json.dumps(results)}")
        else:
            for line in results.get("ratios", []):
                log.write(f"    {line}")
    files = sorted(p.name for p in Path(summary["out"]).iterdir() if p.is_file())
    log.write(f"files ({len(files)} of at most {MAX_FILES}): {', '.join(files)}")
    log.write(f"total {summary['seconds']:.0f} s of a {summary['budget_s']} s budget")


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
        _write_summary(out / "summary.json", summary)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--out", type=Path, required=True, help="output folder ($OUT on the device)"
    )
    parser.add_argument("--dry-run", action="store_true", help="the same parts on the CPU, small")
    parser.add_argument(
        "--budget", type=float, default=None, help="seconds for all parts (GPU: 500)"
    )
    parser.add_argument("--parts", nargs="+", default=None, help="run only these parts")
    parser.add_argument(
        "--course-runs", type=int, default=None, help="only the first N course calls"
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


def _write_summary(path: Path, summary: dict[str, Any]) -> None:
    """summary.json, replaced in one step (this process imports no package code)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(summary, indent=1) + "\n")
    os.replace(tmp, path)


if __name__ == "__main__":
    sys.exit(main())
