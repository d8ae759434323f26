"""Training-step benchmark: every variant as a ratio to full fine-tuning measured in the same run.

Two groups per backbone. "classification": full fine-tuning, head only, LoRA r=16 (ours, a naive
wrapper, HF PEFT when installed), multi-head LoRA with 4 heads of rank 4 (hydra and rlora init;
compare with the rank-matched LoRA r=16). "dense, 4 tasks": the paper's four dense tasks with
multi-scale decoders: multi-task full fine-tuning, shared LoRA (r=16) and MTLoRA (r=16, task rank 4).

    python benchmarks/bench.py                          # CPU: small sizes, a few minutes
    python benchmarks/bench.py --device cuda            # GPU: Swin-T and Swin-B, 224x224, batch 64, bf16
    python benchmarks/bench.py --compile                # also torch.compile'd variants
    python benchmarks/bench.py --profile-ops            # + profiler time by kernel family

A step is forward + loss + backward + AdamW step. The variants of a group are built and warmed up,
then timed round-robin (one step of each per round, device synchronised) and each reported as the
median of its rounds; peak memory is what the variant allocated on CUDA (not measured on CPU).
Only ratios within one run mean something: the machines are noisy.
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import itertools
import json
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import timm
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mtlora_lite import (
    AdapterLayer,
    build_model,
    count_parameters,
    inject_adapters,
    inject_lora,
    inject_multihead_lora,
    mark_only_adapters_trainable,
)
from mtlora_lite.adapters.targets import TIMM_TARGETS as TARGETS
from mtlora_lite.multitask.pascal.tasks import pascal_tasks

RANK = 16
HEADS = 4  # multi-head LoRA: HEADS heads of rank RANK // HEADS, rank-matched to LoRA r=RANK


class NaiveLoRA(AdapterLayer):
    """The usual wrapper, kept here as the baseline: separate A and B matmuls, addmm for the add."""

    adapter_group = "lora"

    def __init__(self, base: nn.Linear, rank: int) -> None:
        super().__init__(base)
        self.lora_A = nn.Parameter(torch.randn(rank, base.in_features) / base.in_features**0.5)
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank))

    def forward(self, x: Tensor) -> Tensor:
        u = F.linear(x, self.lora_A)
        return torch.addmm(
            self.base_layer(x).reshape(-1, self.out_features),
            u.reshape(-1, u.shape[-1]),
            self.lora_B.t(),
        ).reshape(*x.shape[:-1], self.out_features)


def _head_only(model: nn.Module) -> nn.Module:
    model.requires_grad_(False)
    model.get_classifier().requires_grad_(True)
    return model


def _lora(model: nn.Module) -> nn.Module:
    inject_lora(model, TARGETS, rank=RANK, alpha=2 * RANK)
    mark_only_adapters_trainable(model, extra=["head"])
    return model


def _naive_lora(model: nn.Module) -> nn.Module:
    inject_adapters(model, TARGETS, lambda lin: NaiveLoRA(lin, RANK))
    mark_only_adapters_trainable(model, extra=["head"])
    return model


def _peft_lora(model: nn.Module) -> nn.Module:
    from peft import LoraConfig, get_peft_model  # optional dependency of the benchmark only

    config = LoraConfig(r=RANK, lora_alpha=2 * RANK, target_modules=["qkv", "proj", "fc1", "fc2"])
    config.modules_to_save = ["head"]
    return get_peft_model(model, config)


def _multihead(init: str) -> Callable[[nn.Module], nn.Module]:
    def build(model: nn.Module) -> nn.Module:
        inject_multihead_lora(model, TARGETS, n_heads=HEADS, rank=RANK // HEADS, init=init)
        mark_only_adapters_trainable(model, extra=["head"])
        return model

    return build


def _dense(method: str) -> Callable[[nn.Module], nn.Module]:
    tasks = list(pascal_tasks().values())
    options = {} if method == "full" else {"shared_rank": RANK}
    options |= {"task_rank": 4} if method == "mtlora" else {}
    return lambda swin: build_model(swin, tasks, method, **options)


GROUPS: dict[str, dict[str, Callable[[nn.Module], nn.Module]]] = {
    "classification": {
        "full fine-tuning": lambda m: m,
        "head only": _head_only,
        f"lora r={RANK} (mtlora_lite)": _lora,
        f"lora r={RANK} (naive wrapper)": _naive_lora,
        f"lora r={RANK} (HF PEFT)": _peft_lora,
        f"multi-head {HEADS}x{RANK // HEADS} hydra": _multihead("hydra"),
        f"multi-head {HEADS}x{RANK // HEADS} rlora": _multihead("rlora"),
    },
    "dense, 4 tasks": {
        "multi-task full fine-tuning": _dense("full"),
        f"shared lora r={RANK}": _dense("shared_lora"),
        f"mtlora r={RANK}, task r=4": _dense("mtlora"),
    },
}
# (what, numerator, denominator): the ratios that benchmarks/README.md sets targets for
DERIVED = [
    (
        "LoRA / full FT (target <= 0.85 eager, 0.90 compiled)",
        f"lora r={RANK} (mtlora_lite)",
        "full fine-tuning",
    ),
    (
        "multi-head hydra / rank-matched LoRA (target <= 1.10)",
        f"multi-head {HEADS}x{RANK // HEADS} hydra",
        f"lora r={RANK} (mtlora_lite)",
    ),
    (
        "multi-head rlora / rank-matched LoRA (target <= 1.10)",
        f"multi-head {HEADS}x{RANK // HEADS} rlora",
        f"lora r={RANK} (mtlora_lite)",
    ),
    (
        "MTLoRA / shared LoRA (target <= 1.30)",
        f"mtlora r={RANK}, task r=4",
        f"shared lora r={RANK}",
    ),
]


@dataclass
class Row:
    model: str
    group: str
    variant: str
    mode: str
    ms: float
    ratio: float
    peak_mib: float | None
    trainable: int


def _loss(out: Tensor | dict[str, Tensor], labels: Tensor) -> Tensor:
    """Cross-entropy for logits; for a dict of dense task maps, the sum of their mean squares."""
    if isinstance(out, dict):
        return sum(o.float().square().mean() for o in out.values())  # type: ignore[return-value]
    return F.cross_entropy(out, labels)


def make_step(model: nn.Module, batch: Tensor, labels: Tensor, amp: bool) -> Callable[[], None]:
    """One training step of ``model`` (forward, loss, backward, AdamW step) as a closure."""
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

    def step() -> None:
        with torch.autocast(batch.device.type, dtype=torch.bfloat16, enabled=amp):
            loss = _loss(model(batch), labels)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def timed_ms(step: Callable[[], None], device: torch.device) -> float:
    """Milliseconds of one call of ``step``, with the device synchronised before and after."""
    sync = torch.cuda.synchronize if device.type == "cuda" else lambda: None
    sync()
    start = time.perf_counter()
    step()
    sync()
    return 1000 * (time.perf_counter() - start)


def _inputs(
    model_name: str, args: argparse.Namespace, device: torch.device
) -> tuple[nn.Module, Tensor, Tensor]:
    """The seeded base model (100 classes) with a random batch (B, 3, img, img) and labels (B,)."""
    torch.manual_seed(0)
    base = timm.create_model(model_name, pretrained=False, num_classes=100, img_size=args.img)
    batch = torch.randn(args.batch, 3, args.img, args.img, device=device)
    labels = torch.randint(0, 100, (args.batch,), device=device)
    return base, batch, labels


def run_group(
    base: nn.Module,
    variants: dict[str, Callable[[nn.Module], nn.Module]],
    batch: Tensor,
    labels: Tensor,
    args: argparse.Namespace,
    compiled: bool,
) -> dict[str, tuple[float, float | None, int]]:
    """{variant: (median step ms, peak MiB or None, trainable parameters)} for one group.

    Every variant is built and warmed up first (its peak memory is what it allocated itself:
    weights, gradients, optimizer state, activations); then the steps are timed round-robin,
    one step of each variant per round, so that a machine slowing down mid-run affects all
    variants alike.
    """
    device, cuda = batch.device, batch.is_cuda
    amp = cuda
    steps: dict[str, Callable[[], None]] = {}
    info: dict[str, tuple[float | None, int]] = {}
    for variant, build in variants.items():
        try:
            model = build(copy.deepcopy(base))
        except ImportError as err:
            print(f"  skip {variant}: {err}")
            continue
        before = torch.cuda.memory_allocated() if cuda else 0
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        model = model.to(device).train()
        trainable = count_parameters(model)[0]
        steps[variant] = make_step(torch.compile(model) if compiled else model, batch, labels, amp)
        for _ in range(args.warmup):
            steps[variant]()
        peak = (torch.cuda.max_memory_allocated() - before) / 2**20 if cuda else None
        info[variant] = (peak, trainable)
    times: dict[str, list[float]] = {v: [] for v in steps}
    for _ in range(args.repeats):
        for variant, step in steps.items():
            times[variant].append(timed_ms(step, device))
    return {v: (statistics.median(times[v]), *info[v]) for v in steps}


def run(args: argparse.Namespace) -> list[Row]:
    device = torch.device(args.device)
    rows: list[Row] = []
    modes = ["eager", "compiled"] if args.compile else ["eager"]
    for model_name in args.models:
        base, batch, labels = _inputs(model_name, args, device)
        for mode, (group, variants) in itertools.product(modes, GROUPS.items()):
            results = run_group(base, variants, batch, labels, args, mode == "compiled")
            reference_ms = next(iter(results.values()))[0]
            for variant, (ms, peak, trainable) in results.items():
                ratio = ms / reference_ms
                rows.append(Row(model_name, group, variant, mode, ms, ratio, peak, trainable))
                print(f"  {model_name:<30} {mode:<8} {variant:<30} {ms:8.1f} ms  {ratio:5.2f}x")
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return rows


FAMILIES = {  # aten op name fragments -> kernel family, first match wins
    "matmul (GEMM)": ("mm", "matmul", "linear", "addmm", "bmm", "baddbmm", "conv"),
    "attention softmax": ("softmax",),
    "layer norm": ("layer_norm",),
    "optimizer (foreach kernels)": ("_foreach", "adam"),
    "copies / layout": ("copy_", "clone", "contiguous", "cat", "roll", "index", "pad"),
    "elementwise": ("add", "mul", "gelu", "div", "sub", "where", "fill", "zero", "sum", "mean"),
}


def op_families(step: Callable[[], None], cuda: bool) -> dict[str, float]:
    """Self time (ms) of one call of ``step`` (after one warm-up call) by kernel family."""
    from torch.profiler import ProfilerActivity, profile

    step()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities, record_shapes=False) as prof:
        step()
    families: dict[str, float] = dict.fromkeys([*FAMILIES, "other"], 0.0)
    for event in prof.key_averages():
        us = event.self_device_time_total if cuda else event.self_cpu_time_total
        name = event.key.removeprefix("aten::")
        if not event.key.startswith("aten::"):
            continue
        family = next((f for f, keys in FAMILIES.items() if any(k in name for k in keys)), "other")
        families[family] += us / 1000
    return families


PROFILED = [  # (group, variant) pairs that --profile-ops breaks down
    ("classification", "full fine-tuning"),
    ("classification", f"lora r={RANK} (mtlora_lite)"),
    ("dense, 4 tasks", "multi-task full fine-tuning"),
    ("dense, 4 tasks", f"shared lora r={RANK}"),
    ("dense, 4 tasks", f"mtlora r={RANK}, task r=4"),
]


def profile_variants(args: argparse.Namespace) -> None:
    """Print the kernel-family breakdown of the ``PROFILED`` variants on the first model."""
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    base, batch, labels = _inputs(args.models[0], args, device)
    table = {}
    for group, variant in PROFILED:
        model = GROUPS[group][variant](copy.deepcopy(base)).to(device).train()
        table[variant] = op_families(make_step(model, batch, labels, cuda), cuda)
        del model
    print(f"\nself time by kernel family, one step, {args.models[0]} (ms)")
    print("| family | " + " | ".join(table) + " |")
    print("|---|" + "---:|" * len(table))
    for family in table["full fine-tuning"]:
        print(f"| {family} | " + " | ".join(f"{t[family]:.1f}" for t in table.values()) + " |")


def format_rows(rows: list[Row]) -> str:
    """Markdown table; "vs first" is the ratio to the first variant of the group (full FT)."""
    lines = [
        "| model | mode | group | variant | step (ms) | vs full FT | peak memory (MiB) | trainable |",
        "|---|---|---|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        peak = f"{r.peak_mib:,.0f}" if r.peak_mib is not None else "n/a"
        lines.append(
            f"| {r.model} | {r.mode} | {r.group} | {r.variant} | {r.ms:.1f} | {r.ratio:.2f}x "
            f"| {peak} | {r.trainable:,} |"
        )
    return "\n".join(lines)


def derived_ratios(rows: list[Row]) -> list[dict[str, str | float]]:
    """The ratios benchmarks/README.md sets targets for, per model and mode."""
    ms = {(r.model, r.mode, r.variant): r.ms for r in rows}
    out: list[dict[str, str | float]] = []
    for model, mode in dict.fromkeys((r.model, r.mode) for r in rows):
        for what, num, den in DERIVED:
            if (model, mode, num) in ms and (model, mode, den) in ms:
                ratio = ms[model, mode, num] / ms[model, mode, den]
                out.append({"model": model, "mode": mode, "ratio": what, "value": ratio})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="auto")
    parser.add_argument("--models", nargs="+", default=None)
    parser.add_argument("--img", type=int, default=None)
    parser.add_argument("--batch", type=int, default=None)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--out", type=Path, default=Path("outputs/bench"))
    parser.add_argument(
        "--profile-ops",
        action="store_true",
        help="also print a profiler breakdown by kernel family",
    )
    args = parser.parse_args()
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    gpu = args.device.startswith("cuda")
    args.models = args.models or (
        ["swin_tiny_patch4_window7_224", "swin_base_patch4_window7_224"]
        if gpu
        else ["swin_tiny_patch4_window7_224"]
    )
    args.img = args.img or 224
    args.batch = args.batch or (64 if gpu else 4)

    rows = run(args)
    device_name = (
        torch.cuda.get_device_name() if gpu else platform.processor() or platform.machine()
    )
    meta = {
        "date": dt.date.today().isoformat(),
        "device": device_name,
        "torch": torch.__version__,
        "timm": timm.__version__,
        "batch": args.batch,
        "img": args.img,
        "precision": "bf16 autocast" if gpu else "fp32",
        "threads": torch.get_num_threads(),
    }
    ratios = derived_ratios(rows)
    print(f"\n{meta}\n\n{format_rows(rows)}\n")
    for r in ratios:
        print(f"{r['model']:<30} {r['mode']:<8} {r['ratio']:<58} {r['value']:.2f}x")
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"bench-{args.device.split(':')[0]}.json"
    record = {"meta": meta, "rows": [asdict(r) for r in rows], "ratios": ratios}
    path.write_text(json.dumps(record, indent=2))
    print(f"\nwrote {path}")
    if args.profile_ops:
        profile_variants(args)


if __name__ == "__main__":
    main()
