"""Save and load only what fine-tuning changed: adapter weights (+ any trainable extras), as safetensors.

A file of format ``mtlora_lite.adapters/2`` holds the tensors and, in its metadata:

- ``adapters``: each adapter's config (JSON), compared with the model's on load;
- ``sha256``: a checksum of those configs and of every tensor's name, dtype, shape and bytes, so
  that flipped bits or a partial copy are found on load ("the file is corrupt");
- ``base_sha256``: ``base_fingerprint(model)`` at save time, the checksum of the frozen weights
  the adapters sit on, so that adapters loaded onto another base (e.g. a randomly initialised
  backbone instead of the pretrained one) are refused ("trained on another base");
- ``base_weights``: the ``weights_fingerprint`` of those weights (``adapters.fingerprint``), so
  that a base that differs by rounding only (merged and unmerged again) is still accepted, and
  the refusal of another one says what differs (its dtype, shapes or values).

``load_adapters`` checks the file, then the configs, tensor names and shapes, the base and the
trainable extras, and copies nothing unless everything fits. Files of the previous format
``mtlora_lite.adapters/1`` (no checksums) still load, with a warning that neither the data nor the
base could be checked; saving them again upgrades them. ``save_adapters`` writes atomically (a
crash leaves the old file or none, never half of one).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import safe_open, save_file
from torch import Tensor, nn

from mtlora_lite.adapters.atomic import atomic_path
from mtlora_lite.adapters.fingerprint import tensor_digest, weights_difference, weights_fingerprint
from mtlora_lite.adapters.targets import adapter_layers

FORMAT = "mtlora_lite.adapters/2"
FORMAT_V1 = "mtlora_lite.adapters/1"  # before checksums: loaded with a warning
EXPECTED = f"expected an adapter file written by save_adapters (safetensors, format {FORMAT!r})"


def adapter_state_dict(model: nn.Module, include_trainable: bool = True) -> dict[str, Tensor]:
    """Adapter parameters and buffers by full name, plus every other trainable parameter.

    With ``include_trainable`` (default) parameters outside adapters that have ``requires_grad``
    (task heads, decoders, norms you unfroze) are included, and so are the persistent buffers of
    the modules that own them (a decoder's BatchNorm statistics), so the file restores the whole
    fine-tuned model on top of the same pretrained base.
    """
    state: dict[str, Tensor] = {}
    for path, adapter in adapter_layers(model).items():
        tensors = [*adapter.named_parameters(), *adapter.named_buffers()]
        for name, t in tensors:
            if not name.startswith("base_layer."):
                state[f"{path}.{name}"] = t.detach()
    if include_trainable:
        persistent = model.state_dict(keep_vars=True).keys()
        for mod_name, module in model.named_modules():
            own = list(module.named_parameters(recurse=False))
            if not any(p.requires_grad for _, p in own):
                continue
            prefix = f"{mod_name}." if mod_name else ""
            trained = [(n, p) for n, p in own if p.requires_grad]
            for name, t in [*trained, *module.named_buffers(recurse=False)]:
                full = prefix + name
                if full in persistent and full not in state:
                    state[full] = t.detach()
    return state


def _base_tensors(model: nn.Module) -> list[tuple[str, Tensor]]:
    layers = sorted(adapter_layers(model).items())
    return [
        (f"{p}.base_layer.{n}", t) for p, a in layers for n, t in a.base_layer.named_parameters()
    ]


def base_fingerprint(model: nn.Module) -> str:
    """A checksum of the frozen base the adapters sit on: sha256 over the name, dtype, shape and
    bytes of the weight and bias of every layer an adapter wraps, by module path.

    It covers exactly those layers (not norms, embeddings or layers without an adapter), costs one
    read of their weights (a fraction of a second for a Swin-T), and is the same on every device.
    Adapters must be unmerged. ``load_adapters`` also compares the sketch of those weights
    (``adapters.fingerprint``), so a base that differs by rounding only (after merge and unmerge)
    still counts as the same, and one cast to another dtype is named as such.
    """
    return tensor_digest(_base_tensors(model))


def _configs(model: nn.Module) -> dict[str, dict[str, object]]:
    return {path: a.adapter_config() for path, a in adapter_layers(model).items()}


def _check_unmerged(model: nn.Module) -> None:
    if any(a.merged for a in adapter_layers(model).values()):
        raise RuntimeError("adapters are merged into the base weights; unmerge_adapters() first")


def save_adapters(model: nn.Module, path: str | Path, include_trainable: bool = True) -> Path:
    """Write ``adapter_state_dict(model)``, the adapter configs, the data checksum and the base
    fingerprint (module docstring) to a ``.safetensors`` file, atomically; returns its path."""
    _check_unmerged(model)
    state = {
        k: v.contiguous().cpu() for k, v in adapter_state_dict(model, include_trainable).items()
    }
    if not state:
        raise ValueError("the model has no adapters and no trainable parameters to save")
    configs = json.dumps(_configs(model), sort_keys=True)
    base = weights_fingerprint(_base_tensors(model))
    meta = {
        "format": FORMAT,
        "adapters": configs,
        "sha256": tensor_digest(sorted(state.items()), configs),
        "base_sha256": base["sha256"],
        "base_weights": json.dumps(base),
    }
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata=meta)
    return Path(path)


def _read(path: Path) -> tuple[dict[str, str], dict[str, object], dict[str, Tensor]]:
    """Metadata, adapter configs and tensors of an adapter file, its checksum verified.

    Every problem with the file itself is a ``ValueError`` naming it (``FileNotFoundError`` if it
    does not exist).
    """
    if not path.is_file():
        raise FileNotFoundError(f"no adapter file at {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except SafetensorError as err:
        raise ValueError(
            f"{path} is not a readable safetensors file ({err}): it is truncated, damaged or of "
            f"another kind; {EXPECTED}"
        ) from err
    fmt = meta.get("format")
    if fmt not in (FORMAT, FORMAT_V1):
        newer = isinstance(fmt, str) and fmt.startswith("mtlora_lite.adapters/")
        raise ValueError(
            f"{path} was written by a newer mtlora_lite (format {fmt!r}); upgrade the package"
            if newer
            else f"{path} is not an mtlora_lite adapter file (format {fmt!r}); {EXPECTED}"
        )
    try:
        configs = json.loads(meta["adapters"])
        if not isinstance(configs, dict):
            raise TypeError(type(configs).__name__)
    except (KeyError, TypeError, json.JSONDecodeError) as err:
        raise ValueError(
            f"{path} has no readable adapter configs in its metadata ({err!r}): the file is "
            "damaged; save the adapters again"
        ) from err
    if fmt == FORMAT_V1:
        warnings.warn(
            f"{path} has the old format {FORMAT_V1!r}, without checksums: its tensor data and the "
            "base model it was trained on cannot be checked. Save it again with save_adapters "
            "to add them.",
            stacklevel=3,
        )
    elif "sha256" not in meta or "base_sha256" not in meta:
        raise ValueError(f"{path} lacks its sha256 / base_sha256 metadata: the file is damaged")
    elif tensor_digest(sorted(tensors.items()), meta["adapters"]) != meta["sha256"]:
        raise ValueError(
            f"the tensor data of {path} do not match their sha256 checksum: the file is corrupt "
            "(changed bytes or a partial copy). Save the adapters again or restore a good copy."
        )
    return meta, configs, tensors


def _check_base(path: Path, meta: dict[str, str], model: nn.Module) -> None:
    """Refuse adapters trained on another base (module docstring), saying what differs."""
    now = weights_fingerprint(_base_tensors(model))
    if now["sha256"] == meta["base_sha256"]:
        return
    why = "other values"  # a file without the sketch (older): the checksum is all there is
    if "base_weights" in meta:
        try:
            why = weights_difference(json.loads(meta["base_weights"]), now)
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"{path} has a damaged base_weights entry ({err!r})") from err
    if why is None:
        return  # the same weights up to rounding (e.g. merged and unmerged again)
    fix = (
        "cast the model back to the dtype it was trained in (e.g. model.float())"
        if why.startswith("another dtype")
        else "build the model from the same pretrained weights (e.g. pretrained=True, or "
        "load_backbone('course') rather than random initialisation) before injecting"
    )
    raise ValueError(
        f"the adapters in {path} were trained on another base model: the layers they wrap have "
        f"{why} (base fingerprint). {fix[0].upper()}{fix[1:]}, or pass check_base=False if you "
        "changed the base on purpose."
    )


def load_adapters(
    model: nn.Module,
    path: str | Path,
    *,
    check_base: bool = True,
    allow_missing_extras: bool = False,
) -> None:
    """Load a file written by ``save_adapters`` into a model injected the same way.

    Args:
        check_base: refuse the file unless ``base_fingerprint(model)`` equals the one saved with
            it, i.e. unless the layers the adapters wrap hold the same weights as when they were
            trained. Pass False only when the base changed on purpose and the adapters still
            suit it: e.g. it was cast to another dtype, or it is a fine-tuned variant.
        allow_missing_extras: once a model has been frozen (some parameter outside the adapters
            has ``requires_grad=False``), each trainable parameter outside its adapters (a task
            head, unfrozen norms) is an extra trained with them, and a file that lacks one would
            leave it at its current values: that is a ``ValueError`` unless this is True (e.g.
            swapping adapters that each carry only their own task's head). An unfrozen model
            (everything trainable) has no extras to check.

    Raises ``ValueError`` if the file is unreadable, not an adapter file or corrupt (checksum), or
    if the configs, tensor names, shapes, the base or the extras differ (each message says which),
    and ``RuntimeError`` if the model's adapters are merged. Nothing is loaded unless everything
    fits.
    """
    _check_unmerged(model)
    path = Path(path)
    meta, saved_cfg, saved = _read(path)
    model_cfg = _configs(model)
    if saved_cfg != model_cfg:
        diff = sorted(
            k for k in saved_cfg.keys() | model_cfg.keys() if saved_cfg.get(k) != model_cfg.get(k)
        )
        raise ValueError(
            f"adapter configs differ at {len(diff)} layer(s), e.g. {diff[0]!r}: {path} has "
            f"{saved_cfg.get(diff[0])}, model has {model_cfg.get(diff[0])}. Inject the model with "
            "the same targets and hyper-parameters before loading."
        )
    tensors = {**dict(model.named_parameters()), **dict(model.named_buffers())}
    own = adapter_state_dict(model, include_trainable=False).keys()
    missing = sorted(own - saved.keys())
    unexpected = sorted(saved.keys() - tensors.keys())
    if missing or unexpected:
        raise ValueError(
            f"tensor names of {path} differ from the model's: missing {missing[:5]}, unexpected "
            f"{unexpected[:5]}"
        )
    bad = [k for k, v in saved.items() if v.shape != tensors[k].shape]
    if bad:
        raise ValueError(
            f"shape mismatch for {bad[0]!r}: {path} has {tuple(saved[bad[0]].shape)}, the model "
            f"{tuple(tensors[bad[0]].shape)}"
        )
    if check_base and "base_sha256" in meta:
        _check_base(path, meta, model)
    frozen = any(not p.requires_grad for n, p in model.named_parameters() if n not in own)
    extras = sorted(adapter_state_dict(model).keys() - own - saved.keys()) if frozen else []
    if extras and not allow_missing_extras:
        raise ValueError(
            f"the model trains {len(extras)} parameter(s) outside its adapters that {path} does "
            f"not hold, e.g. {extras[:5]}; loading would leave them at their current values. "
            "Load a file saved with include_trainable=True from a model with the same trainable "
            "parts, freeze them, or pass allow_missing_extras=True to keep their values."
        )
    with torch.no_grad():
        for k, v in saved.items():
            tensors[k].copy_(v)
