"""Plain LoRA in Hugging Face PEFT's folder format, both ways, without importing peft.

    export_peft(vit, "vit-lora")           # adapter_config.json + adapter_model.safetensors
    PeftModel.from_pretrained(timm.create_model(...), "vit-lora")   # ... in PEFT, same outputs
    import_peft(other_vit, "vit-lora")     # back into our LoRALinear layers

The folder holds what ``PeftModel.save_pretrained`` writes for a LoRA adapter: tensors named
``base_model.model.<module path>.lora_A.weight`` (r, in) and ``... .lora_B.weight`` (out, r)
(PEFT's adapter name is not part of the file), and a config with ``peft_type="LORA"``, ``r``,
``lora_alpha``, ``use_rslora`` and ``target_modules`` (PEFT matches a list entry like our
targets: the module path or a dot-boundary suffix of it; a string is a regex, full match). PEFT's
scale is ours: alpha / r, or alpha / sqrt(r) with rsLoRA.

Trainable parameters outside the adapters (a task head, unfrozen norms) go into PEFT's
``modules_to_save``, one entry per module, named by its full path: PEFT trains and saves whole
modules, so each such parameter must belong to a module whose parameters are all trainable.

``BlockLoRALinear`` (q / v LoRA on a fused qkv) exports as a plain LoRA whose B is zero in the
blocks not adapted: the same function, but PEFT will train those rows if you keep training there.
MTLoRA and multi-head LoRA / R-LoRA have no PEFT format: ``export_peft`` refuses them.

``import_peft`` checks the folder first (``adapters.peft_config``: the config's keys, types and
values, safetensors only) and loads only LoRA factors and the ``modules_to_save`` the config
names.
"""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import Tensor, nn

from mtlora_lite.adapters.atomic import atomic_path, atomic_write
from mtlora_lite.adapters.base import AdapterLayer
from mtlora_lite.adapters.blocks import BlockLoRALinear
from mtlora_lite.adapters.freezing import mark_only_adapters_trainable
from mtlora_lite.adapters.lora import LoRALinear, inject_lora
from mtlora_lite.adapters.peft_config import (
    CONFIG_NAME,
    UNSUPPORTED,
    WEIGHTS_NAME,
    read_peft_config,
    read_peft_tensors,
)
from mtlora_lite.adapters.targets import adapter_layers, name_matches

PREFIX = "base_model.model."  # where PEFT's LoraModel keeps the wrapped model


def _lora_factors(path: str, adapter: AdapterLayer) -> tuple[Tensor, Tensor]:
    """(A, B) of a layer PEFT can express as plain LoRA: (r, in) and (out, r)."""
    if type(adapter) is LoRALinear:
        return adapter.lora_A, adapter.lora_B
    if isinstance(adapter, BlockLoRALinear):
        return adapter.lora_A, adapter.full_B()
    raise ValueError(
        f"{path!r} is a {type(adapter).__name__}: PEFT has no format for MTLoRA (task-specific "
        "branches) or multi-head LoRA / R-LoRA (several routed B heads), so only plain LoRA "
        "(LoRALinear, BlockLoRALinear) can be exported; use save_adapters for the others"
    )


def _one(values: dict[str, Any], what: str) -> Any:
    """The value shared by every layer, or ValueError (PEFT's config has one per adapter)."""
    distinct = sorted(set(values.values()), key=str)
    if len(distinct) != 1:
        example = {v: next(p for p, x in values.items() if x == v) for v in distinct}
        raise ValueError(
            f"PEFT's config has one {what} for all layers, the model has {distinct} "
            f"(e.g. at {list(example.values())}); export layers with the same {what}"
        )
    return distinct[0]


def _target_modules(model: nn.Module, paths: list[str]) -> list[str]:
    """The shortest PEFT targets that select exactly ``paths`` among the model's modules: the
    last name of each path (``"qkv"``), else the last two (``"attn.proj"``, when ``"proj"`` would
    also catch ``patch_embed.proj``), ..., else the full paths."""
    inside = tuple(f"{p}." for p in paths)
    names = [n for n, _ in model.named_modules() if n and not n.startswith(inside)]
    for k in range(1, max(p.count(".") for p in paths) + 1):
        short = sorted({".".join(p.split(".")[-k:]) for p in paths})
        chosen = [n for n in names if any(n == s or n.endswith("." + s) for s in short)]
        if sorted(chosen) == sorted(paths):
            return short
    return paths


def _modules_to_save(model: nn.Module, adapters: dict[str, AdapterLayer]) -> list[str]:
    """The topmost modules outside adapters whose parameters are all trainable; raises if some
    trainable parameter is not in one of them."""
    inside = tuple(f"{p}." for p in adapters)
    whole: list[str] = []
    for name, module in model.named_modules():
        if not name or name in adapters or name.startswith(inside):
            continue
        params = list(module.parameters())
        if params and all(p.requires_grad for p in params):
            if not any(name.startswith(w + ".") for w in whole):
                whole.append(name)
    ours = {f"{path}.{n}" for path, a in adapters.items() for n, _ in a.adapter_parameters()}
    loose = [
        n
        for n, p in model.named_parameters()
        if p.requires_grad and n not in ours and not any(n.startswith(w + ".") for w in whole)
    ]
    if loose:
        raise ValueError(
            f"trainable parameters {loose[:4]} are not a whole module (or are inside an adapter's "
            "base layer): PEFT saves extra trainable weights per module (modules_to_save). Freeze "
            "them, unfreeze their whole module, or pass include_trainable=False"
        )
    return whole


def export_peft(
    model: nn.Module,
    folder: str | Path,
    *,
    include_trainable: bool = True,
    base_model_name_or_path: str | None = None,
) -> Path:
    """Write ``model``'s LoRA as a PEFT adapter folder that ``PeftModel.from_pretrained`` loads.

    Args:
        model: the model PEFT will wrap (e.g. the timm model itself), with ``LoRALinear`` or
            ``BlockLoRALinear`` layers, all of the same rank, alpha, rsLoRA and dropout.
        folder: created if needed; ``adapter_config.json`` and ``adapter_model.safetensors``.
        include_trainable: save trainable modules outside the adapters (a head) as PEFT's
            ``modules_to_save``; False saves the LoRA weights only.
        base_model_name_or_path: the config's pointer to the base model (e.g. a timm hub id),
            which PEFT's ``AutoPeftModel`` uses; None for a model you build yourself.

    Raises ``ValueError`` for adapters PEFT cannot express (MTLoRA, multi-head LoRA), mixed
    hyper-parameters, or trainable parameters that are not whole modules; ``RuntimeError`` if
    the adapters are merged.
    """
    adapters = adapter_layers(model)
    if not adapters:
        raise ValueError("the model has no adapters; inject_lora (or inject_qkv_lora) first")
    if any(a.merged for a in adapters.values()):
        raise RuntimeError("adapters are merged into the base weights; unmerge_adapters() first")
    state: dict[str, Tensor] = {}
    for path, adapter in adapters.items():
        A, B = _lora_factors(path, adapter)
        state[f"{PREFIX}{path}.lora_A.weight"] = A
        state[f"{PREFIX}{path}.lora_B.weight"] = B
    rank = _one({p: a.rank for p, a in adapters.items()}, "rank")
    alpha = _one({p: a.alpha for p, a in adapters.items()}, "lora_alpha")
    config = {
        "peft_type": "LORA",
        "task_type": None,  # a timm model is not one of PEFT's transformers task types
        "base_model_name_or_path": base_model_name_or_path,
        "r": rank,
        "lora_alpha": int(alpha) if float(alpha).is_integer() else alpha,
        "use_rslora": _one({p: a.rslora for p, a in adapters.items()}, "rsLoRA setting"),
        "lora_dropout": _one({p: a.dropout for p, a in adapters.items()}, "dropout"),
        "target_modules": _target_modules(model, list(adapters)),
        "init_lora_weights": True,
        "inference_mode": True,
        **{key: off for key, (off, _) in UNSUPPORTED.items()},
    }
    saved_modules = _modules_to_save(model, adapters) if include_trainable else []
    for name in saved_modules:
        for key, t in model.get_submodule(name).state_dict().items():
            state[f"{PREFIX}{name}.{key}"] = t
    config["modules_to_save"] = saved_modules or None
    folder = Path(folder)
    with atomic_path(folder / WEIGHTS_NAME) as tmp:
        tensors = {k: v.detach().contiguous().cpu() for k, v in state.items()}
        save_file(tensors, str(tmp), metadata={"format": "pt"})
    atomic_write(folder / CONFIG_NAME, json.dumps(config, indent=2, sort_keys=True) + "\n")
    return folder


def _saved_modules(model: nn.Module, names: list[str] | None, folder: Path) -> dict[str, Tensor]:
    """File name (without PEFT's prefix) -> the model's tensor, for the whole state (parameters
    and persistent buffers) of every module that ``modules_to_save`` names (a module path or a
    dot-boundary suffix of it, as targets)."""
    found: dict[str, Tensor] = {}
    for entry in names or []:
        modules = [n for n, _ in model.named_modules() if n and name_matches(n, entry)]
        if not modules:
            raise ValueError(
                f"{folder}: modules_to_save names {entry!r}, which matches no module of this "
                "model; load it into the architecture the adapter was trained on"
            )
        for name in modules:
            for key, t in model.get_submodule(name).state_dict(keep_vars=True).items():
                found[f"{name}.{key}"] = t
    return found


def import_peft(model: nn.Module, folder: str | Path, *, trainable: bool = True) -> list[str]:
    """Inject ``LoRALinear`` layers into ``model`` from a PEFT LoRA folder and load its weights.

    Rank, alpha, rsLoRA, dropout and targets come from ``adapter_config.json``
    (``read_peft_config`` checks each); ``model`` is the model PEFT wrapped (same architecture,
    base weights of your choice). What is loaded: the LoRA factors of the targeted layers and
    the whole state of the modules that the config's ``modules_to_save`` names (e.g. a head),
    nothing else: other tensors in the file (a base weight, say) are ignored with a warning, as
    PEFT ignores them. With ``trainable`` the model is then frozen except the adapters and those
    modules, ready to train on; otherwise everything is frozen. Returns the adapted module
    paths. Everything is checked (options, tensor names, shapes, finite values) before the model
    is touched.
    """
    folder = Path(folder)
    config = read_peft_config(folder)
    saved = read_peft_tensors(folder)
    outside = [k for k in saved if not k.startswith(PREFIX)]
    if outside:
        raise ValueError(
            f"tensor names must start with {PREFIX!r} (PEFT's LoRA), got {outside[:3]}"
        )
    saved = {k[len(PREFIX) :]: v for k, v in saved.items()}
    targets = config["target_modules"]
    targets = re.compile(targets) if isinstance(targets, str) else list(targets)
    rank = config["r"]
    expected: dict[str, tuple[int, ...]] = {}  # file name -> shape, of every tensor to load
    for name, module in model.named_modules():
        if name and name_matches(name, targets) and isinstance(module, nn.Linear):
            expected[f"{name}.lora_A.weight"] = (rank, module.in_features)
            expected[f"{name}.lora_B.weight"] = (module.out_features, rank)
    lora_keys = set(expected)
    extras = _saved_modules(model, config.get("modules_to_save"), folder)
    expected.update({k: tuple(t.shape) for k, t in extras.items()})
    factors = {k for k in saved if k.endswith((".lora_A.weight", ".lora_B.weight"))}
    missing = sorted(expected.keys() - saved.keys())
    unexpected = sorted(factors - lora_keys)
    if missing or unexpected:
        raise ValueError(
            f"{folder} does not fit this model: missing {missing[:3]}, unexpected "
            f"{unexpected[:3]}; load it into the architecture the adapter was trained on"
        )
    ignored = sorted(saved.keys() - expected.keys())
    if ignored:
        warnings.warn(
            f"{folder}: ignoring {len(ignored)} tensor(s) that are neither LoRA factors of the "
            f"target modules nor in modules_to_save, as PEFT does: {ignored[:3]}",
            stacklevel=2,
        )
    bad = [k for k, shape in expected.items() if tuple(saved[k].shape) != shape]
    if bad:
        raise ValueError(
            f"shape mismatch for {bad[0]!r}: file {tuple(saved[bad[0]].shape)}, model "
            f"{expected[bad[0]]}; was the adapter trained on this architecture?"
        )
    broken = [
        k
        for k in sorted(expected)
        if saved[k].is_floating_point() and not saved[k].isfinite().all()
    ]
    if broken:
        raise ValueError(
            f"{folder} holds non-finite values (NaN / inf) in {len(broken)} tensor(s), e.g. "
            f"{broken[0]!r}: the adapter is broken (e.g. training diverged); export it again "
            "from a good model"
        )
    paths = inject_lora(  # checks the targets once more, before replacing any layer
        model,
        targets,
        rank=rank,
        alpha=config["lora_alpha"],
        dropout=config["lora_dropout"],
        rslora=config["use_rslora"],
    )
    params = dict(model.named_parameters())  # after injection: the new lora_A / lora_B
    with torch.no_grad():
        for key in lora_keys:
            params[key.removesuffix(".weight")].copy_(saved[key])
        for key, tensor in extras.items():  # the same objects as before the injection
            tensor.copy_(saved[key])
    if trainable:
        mark_only_adapters_trainable(model)
        for tensor in extras.values():
            if isinstance(tensor, nn.Parameter):
                tensor.requires_grad_(True)
    else:
        model.requires_grad_(False)
    return paths
