"""Exact parameter breakdowns of adapted models.

``trainable_breakdown`` assigns every parameter to one group, by structure rather than by name
substrings: adapters report their own group (``lora``, ``ta_lora``, ``ts_lora``, ...), norms are
found by module type, and anything else can be grouped by module name (e.g. ``{"decoders":
"decoders"}``). Totals are exact, so the table can be checked against a paper's count
(``mtlora_lite.multitask.models.paper_breakdown`` does, for MTLoRA on Swin-T).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from torch import nn

from mtlora_lite.adapters.base import AdapterLayer
from mtlora_lite.adapters.targets import Targets, name_matches

NORM_TYPES: tuple[type[nn.Module], ...] = (
    nn.LayerNorm,
    nn.GroupNorm,
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.RMSNorm,
)


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) number of parameters."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, total


@dataclass
class Breakdown:
    """Parameter counts per group: ``rows[group] = (trainable, total)``."""

    rows: dict[str, tuple[int, int]] = field(default_factory=dict)

    @property
    def trainable(self) -> int:
        return sum(t for t, _ in self.rows.values())

    @property
    def total(self) -> int:
        return sum(n for _, n in self.rows.values())

    def to_dict(self) -> dict[str, dict[str, int]]:
        return {g: {"trainable": t, "total": n} for g, (t, n) in self.rows.items()}

    def __str__(self) -> str:
        width = max([len(g) for g in self.rows] + [5])
        lines = [f"{'group':<{width}}  {'trainable':>12}  {'total':>12}"]
        for g, (t, n) in self.rows.items():
            lines.append(f"{g:<{width}}  {t:>12,}  {n:>12,}")
        share = 100 * self.trainable / max(self.total, 1)
        lines.append(
            f"{'all':<{width}}  {self.trainable:>12,}  {self.total:>12,}  ({share:.2f}% trainable)"
        )
        return "\n".join(lines)

    def _repr_html_(self) -> str:  # pretty in notebooks
        rows = "".join(
            f"<tr><td>{g}</td><td align=right>{t:,}</td><td align=right>{n:,}</td></tr>"
            for g, (t, n) in self.rows.items()
        )
        tail = f"<tr><th>all</th><th align=right>{self.trainable:,}</th><th align=right>{self.total:,}</th></tr>"
        return f"<table><tr><th>group</th><th>trainable</th><th>total</th></tr>{rows}{tail}</table>"


def _group_of(
    param_name: str, owner: nn.Module, owner_name: str, groups: Mapping[str, Targets]
) -> str:
    for group, targets in groups.items():
        parts = owner_name.split(".") if owner_name else []
        prefixes = [".".join(parts[: i + 1]) for i in range(len(parts))]
        if any(name_matches(p, targets) for p in prefixes):
            return group
    leaf = param_name.rsplit(".", 1)[-1]
    if isinstance(owner, NORM_TYPES):
        return "norms"
    if leaf == "relative_position_bias_table":
        return "position bias"
    if leaf in ("pos_embed", "cls_token", "reg_token") or "patch_embed" in owner_name.split("."):
        return "embedding"
    return "other"


def trainable_breakdown(model: nn.Module, groups: Mapping[str, Targets] | None = None) -> Breakdown:
    """Exact (trainable, total) parameter counts per group.

    Args:
        model: any module; adapters are recognised by type (``AdapterLayer``).
        groups: extra groups by module name, checked first, e.g. ``{"head": "head"}``. A module
            may define ``breakdown_groups() -> dict`` to provide defaults (merged under ``groups``).

    Groups: each adapter's ``adapter_group`` for its own parameters (a sub-module of an adapter may
    declare its own ``adapter_group``, e.g. MTLoRA's task branches); then ``groups``; then
    ``norms`` (by module type), ``position bias``, ``embedding``; else ``other``. The base weights
    inside an adapter are grouped like any other frozen layer (``other``).
    """
    merged_groups: dict[str, Targets] = {}
    if hasattr(model, "breakdown_groups"):
        merged_groups.update(model.breakdown_groups())
    merged_groups.update(groups or {})

    adapters = {n: m for n, m in model.named_modules() if isinstance(m, AdapterLayer)}

    def adapter_group(mod_name: str, module: nn.Module) -> str | None:
        """Group of the adapter enclosing ``mod_name`` (not counting its base layer), if any."""
        for path, adapter in adapters.items():
            inside = mod_name == path or mod_name.startswith(path + ".")
            in_base = (mod_name + ".").startswith(path + ".base_layer.")
            if inside and not in_base:
                return getattr(module, "adapter_group", adapter.adapter_group)
        return None

    rows: dict[str, tuple[int, int]] = {}
    seen: set[int] = set()  # a tied parameter counts once, as in model.parameters()
    for mod_name, module in model.named_modules():
        for p_name, p in module.named_parameters(recurse=False):
            if id(p) in seen:
                continue
            seen.add(id(p))
            full = f"{mod_name}.{p_name}" if mod_name else p_name
            group = adapter_group(mod_name, module) or _group_of(
                full, module, mod_name, merged_groups
            )
            t, n = rows.get(group, (0, 0))
            rows[group] = (t + (p.numel() if p.requires_grad else 0), n + p.numel())
    return Breakdown(rows)
