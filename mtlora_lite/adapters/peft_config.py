"""Reading a PEFT LoRA folder: its config checked key by key, its tensors checked to be finite.

    config = read_peft_config(folder)     # dict; ValueError names the file, the key and the fix
    tensors = read_peft_tensors(folder)   # {name: tensor} of adapter_model.safetensors

A config must be a JSON object with ``peft_type="LORA"``; ``r`` a positive integer; ``lora_alpha``
a positive number; ``lora_dropout`` in [0, 1); ``use_rslora`` a boolean; ``target_modules`` a
list of module names or a regex string that compiles; ``modules_to_save`` null or a list of
names; and none of the PEFT options mtlora_lite does not implement (``UNSUPPORTED``). Absent keys
take PEFT's defaults. Only ``adapter_model.safetensors`` is read: the older
``adapter_model.bin`` is a pickle, and unpickling a file can run code.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import Tensor

from mtlora_lite.adapters.checks import check_count, check_dropout, check_positive

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
# PEFT LoRA options we do not implement, with the value that means "off". Absent means off too.
UNSUPPORTED = {
    "use_dora": (False, "DoRA (weight-decomposed LoRA)"),
    "bias": ("none", "bias training"),
    "lora_bias": (False, "a bias on lora_B"),
    "fan_in_fan_out": (False, "transposed (Conv1D) weights"),
    "rank_pattern": ({}, "per-layer ranks"),
    "alpha_pattern": ({}, "per-layer alphas"),
    "layers_to_transform": (None, "layer selection by index"),
    "layers_pattern": (None, "layer selection by index"),
    "exclude_modules": (None, "excluded modules"),
    "layer_replication": (None, "layer replication"),
    "target_parameters": (None, "LoRA on parameters instead of modules"),
    "trainable_token_indices": (None, "trainable tokens"),
    "use_qalora": (False, "QA-LoRA"),
}
PLAIN_INITS = (True, False, "gaussian")  # the others (PiSSA, OLoRA, LoftQ, ...) change W
DEFAULTS = {"r": 8, "lora_alpha": 8, "lora_dropout": 0.0, "use_rslora": False}  # PEFT's


def _names(value: Any, key: str, path: Path) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ValueError(f"{path}: {key} must be a list of module names, got {value!r}")
    return value


def _check_values(config: dict[str, Any], path: Path) -> None:
    """Types and ranges of the keys ``import_peft`` uses (module docstring)."""
    try:
        check_count(config["r"], "r")
        check_positive(config["lora_alpha"], "lora_alpha")
        check_dropout(config["lora_dropout"], "lora_dropout")
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from err
    if not isinstance(config["use_rslora"], bool):
        raise ValueError(f"{path}: use_rslora must be true or false, got {config['use_rslora']!r}")
    targets = config.get("target_modules")
    if isinstance(targets, str):
        try:
            re.compile(targets)
        except re.error as err:
            raise ValueError(
                f"{path}: target_modules {targets!r} is not a valid regular expression ({err})"
            ) from err
    elif targets is not None:
        _names(targets, "target_modules", path)
    if config.get("modules_to_save") is not None:
        _names(config["modules_to_save"], "modules_to_save", path)


def read_peft_config(folder: str | Path) -> dict[str, Any]:
    """The folder's ``adapter_config.json`` with PEFT's defaults filled in, checked to be a LoRA
    that ``import_peft`` can load (module docstring); ``ValueError`` names what is wrong."""
    path = Path(folder) / CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: is {folder} a PEFT adapter folder?")
    try:
        config = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path} is not readable JSON ({err}); is it a PEFT config?") from err
    if not isinstance(config, dict):
        raise ValueError(
            f"{path} holds a JSON {type(config).__name__}, not an object of PEFT options"
        )
    if config.get("peft_type") != "LORA":
        raise ValueError(
            f"{path}: peft_type {config.get('peft_type')!r}; only PEFT's LoRA can be imported"
        )
    used = [
        f"{key}={config[key]!r} ({what})"
        for key, (off, what) in UNSUPPORTED.items()
        if config.get(key, off) not in (off, None)
    ]
    if config.get("init_lora_weights", True) not in PLAIN_INITS:
        used.append(
            f"init_lora_weights={config['init_lora_weights']!r} (the adapter expects a modified "
            "base model; convert it to plain LoRA with PEFT first)"
        )
    if config.get("target_modules") in (None, "all-linear"):
        used.append(f"target_modules={config.get('target_modules')!r} (list the modules instead)")
    if used:
        raise ValueError(
            f"{path} uses PEFT options that mtlora_lite does not implement: {'; '.join(used)}. "
            "Load it with peft itself, or export the adapter without them"
        )
    config = {**DEFAULTS, **{k: v for k, v in config.items() if v is not None}}
    _check_values(config, path)
    return config


def read_peft_tensors(folder: str | Path) -> dict[str, Tensor]:
    """The tensors of the folder's ``adapter_model.safetensors``; a folder with only the pickled
    ``adapter_model.bin`` is refused with the way to convert it."""
    path = Path(folder) / WEIGHTS_NAME
    if not path.is_file():
        if path.with_suffix(".bin").is_file():
            raise ValueError(
                f"{folder} holds adapter_model.bin (a pickle) but no {WEIGHTS_NAME}; import_peft "
                "reads safetensors only, since unpickling a file can run code. Convert it with "
                "PEFT: PeftModel.from_pretrained(model, folder).save_pretrained(folder) writes "
                "safetensors"
            )
        raise FileNotFoundError(f"{path} does not exist: is {folder} a PEFT adapter folder?")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as err:
        raise ValueError(f"{path} is not a readable safetensors file ({err})") from err
