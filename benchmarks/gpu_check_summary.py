"""The summary of the GPU check: what each part's files say, in summary.json and as a short
table at the end of the output."""

from __future__ import annotations

import json
import os
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from gpu_check_runner import Log

MAX_FILES = 8  # summary.json, log.txt and the parts' files: one small folder to copy back


def write_json(path: Path, record: dict[str, Any]) -> None:
    """``record`` as JSON at ``path``, never half written (a stopped part leaves the last one)."""
    from mtlora_lite.adapters.atomic import atomic_write

    atomic_write(path, json.dumps(record, indent=1, default=str) + "\n")


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
    """Per notebook: seconds, runs trained, failures; and the totals."""
    if not path.exists():
        return {"error": f"no {path.name}"}
    record = json.loads(path.read_text())
    notebooks = record["notebooks"]
    peaks = [n["peak_mib"] for n in notebooks if "peak_mib" in n]
    return {
        "profile": record["profile"],
        "notebooks": f"{len(notebooks)} of {len(record['planned'])}",
        "seconds": {n["notebook"][:2]: n["seconds"] for n in notebooks},
        "trained": sum(n["trained"] for n in notebooks),
        "train_s": round(sum(n["train_s"] for n in notebooks), 1),
        "errors": [f"{n['notebook']}: {n['error']}" for n in notebooks if n["rc"]],
        "total_s": record.get("total_s"),
        "peak_mib": max(peaks) if peaks else None,
    }


def bench_summary(path: Path) -> dict[str, Any]:
    """The ratios benchmarks/README.md sets targets for, and each variant's step time and peak
    memory."""
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
    """A short table last, so that the tail of the output says how the check went."""
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


def write_summary(path: Path, summary: dict[str, Any]) -> None:
    """summary.json, replaced in one step (this process imports no package code)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(summary, indent=1) + "\n")
    os.replace(tmp, path)
