"""Backbones from timm: any model by name, and the multi-scale feature maps of any of them.

swin = timm_backbone("swin_tiny_patch4_window7_224", pretrained=True, img_size=448)
maps = stage_features(swin, images)        # [(B, C_i, H_i, W_i)], finest first

Hub weights (``pretrained=True``) come from the Hugging Face hub, or from its local cache. Without
a network, timm would try each file name it knows for the weights, each after the hub's retries
(about a minute in all) and end with a hub error. ``timm_backbone`` instead asks the hub once,
without retries, before downloading a file that is not cached, and fails at once with the ways
out in the message (``pretrained=False``; cached weights and ``HF_HUB_OFFLINE=1``; a download
where there is internet).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import huggingface_hub
import timm
import timm.models._hub as timm_hub  # where timm keeps the hf_hub_download it calls (wrapped below)
from huggingface_hub import get_hf_file_metadata, hf_hub_url
from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError
from timm.models import FeatureDictNet, FeatureListNet
from timm.models.swin_transformer import SwinTransformer
from torch import Tensor, nn

from mtlora_lite.adapters.swin import swin_channels, swin_features


class _HubUnreachable(Exception):
    """The hub did not answer and the file is not cached (not an ``EntryNotFoundError``, so timm
    does not go on to its next file name)."""


def _fail_fast(download: Callable[..., str]) -> Callable[..., str]:
    """``download`` (``hf_hub_download``) that first looks in the cache, then, unless the hub is
    in offline mode, sends one HEAD request without retries: if that gets no answer it raises
    ``_HubUnreachable`` instead of starting the hub's retries. Otherwise it downloads as before."""

    def wrapped(*args: Any, **kwargs: Any) -> str:
        try:
            return download(*args, **{**kwargs, "local_files_only": True})  # the cache only
        except LocalEntryNotFoundError:
            pass  # not cached: the hub must answer
        if not huggingface_hub.constants.HF_HUB_OFFLINE:
            named = {**dict(zip(("repo_id", "filename"), args, strict=False)), **kwargs}
            url = hf_hub_url(named["repo_id"], named["filename"], revision=named.get("revision"))
            try:
                get_hf_file_metadata(url)
            except HfHubHTTPError:
                pass  # the hub answered (e.g. no such file): the download reports it as usual
            except Exception as err:  # no answer: DNS, connection, timeout, proxy
                raise _HubUnreachable(f"{type(err).__name__}: {err}") from err
        return download(*args, **kwargs)

    return wrapped


@contextlib.contextmanager
def _hub_fails_fast() -> Iterator[None]:
    """Within this block timm's hub downloads go through ``_fail_fast`` (nothing changes if this
    timm version keeps ``hf_hub_download`` elsewhere)."""
    download = getattr(timm_hub, "hf_hub_download", None)
    if download is None:
        yield
        return
    timm_hub.hf_hub_download = _fail_fast(download)
    try:
        yield
    finally:
        timm_hub.hf_hub_download = download


def _offline_message(name: str, err: BaseException, cache_dir: Any) -> str:
    cache = cache_dir or huggingface_hub.constants.HF_HUB_CACHE
    if isinstance(err, LocalEntryNotFoundError) and huggingface_hub.constants.HF_HUB_OFFLINE:
        why = f"HF_HUB_OFFLINE is set and they are not in the hub cache ({cache})"
        cached = "unset HF_HUB_OFFLINE, or copy the hub cache of a machine that has them"
    else:
        why = (
            f"the Hugging Face hub could not be reached and they are not cached in {cache} ({err})"
        )
        cached = (
            "download them once where there is internet (they are cached under HF_HOME), then set "
            "HF_HUB_OFFLINE=1 before starting Python to use the cache without the network"
        )
    return (
        f"cannot load the pretrained weights of {name!r}: {why}. Use pretrained=False for random "
        f"weights (or load_backbone('course') for the course Swin, bundled), or {cached}."
    )


def timm_backbone(name: str, *, pretrained: bool = False, **timm_kwargs: Any) -> nn.Module:
    """``timm.create_model(name, pretrained=pretrained, num_classes=0, **timm_kwargs)``: a
    feature backbone without classifier. Hub weights (``pretrained=True``) need internet or the
    hub cache; without either this fails at once with an ``OSError`` that says what to do
    (module docstring)."""
    if not pretrained:
        return timm.create_model(name, pretrained=False, num_classes=0, **timm_kwargs)
    try:
        with _hub_fails_fast():
            return timm.create_model(name, pretrained=True, num_classes=0, **timm_kwargs)
    except (_HubUnreachable, LocalEntryNotFoundError) as err:
        raise OSError(_offline_message(name, err, timm_kwargs.get("cache_dir"))) from err


def _is_swin(model: nn.Module) -> bool:
    return isinstance(model, SwinTransformer)


def _is_feature_net(model: nn.Module) -> bool:
    """A timm model built with ``features_only=True``: it returns its maps itself."""
    return isinstance(model, FeatureListNet | FeatureDictNet)


def _feature_indices(model: nn.Module) -> list[int]:
    """Which blocks/stages ``stage_features`` returns: every stage if strides differ, else the last."""
    info = getattr(model, "feature_info", None)
    if not info or not hasattr(model, "forward_intermediates"):
        raise TypeError(
            f"{type(model).__name__} gives no multi-scale features: a multi-task model needs a "
            "timm backbone with feature_info and forward_intermediates (Swin, ViT, ConvNeXt, "
            "ResNet, ...), or one built with timm.create_model(..., features_only=True)"
        )
    reductions = {f["reduction"] for f in info}
    return list(range(len(info))) if len(reductions) > 1 else [len(info) - 1]


def _check_features(model: nn.Module, features: str) -> None:
    if features not in ("stage", "merged"):
        raise ValueError(f"features must be 'stage' or 'merged', got {features!r}")
    if features == "merged" and not _is_swin(model):
        raise ValueError(
            f"features='merged' (each stage's maps after the next stage's patch merging, as "
            f"MTLoRA's decoders read them) needs a timm Swin; {type(model).__name__} has "
            "features='stage'"
        )


def feature_channels(model: nn.Module, features: str = "stage") -> list[int]:
    """Channels of each map ``stage_features`` returns, e.g. [32, 64, 128, 256] for the course Swin."""
    _check_features(model, features)
    if _is_swin(model):
        return swin_channels(model, features)
    if _is_feature_net(model):
        return list(model.feature_info.channels())
    return [model.feature_info[i]["num_chs"] for i in _feature_indices(model)]


def stage_features(model: nn.Module, x: Tensor, features: str = "stage") -> list[Tensor]:
    """Feature maps of a timm backbone, finest first, each (B, C_i, H_i, W_i).

    Hierarchical models (Swin, ConvNeXt, ResNet) give one map per stage, e.g. a Swin
    (B, C_i, H / 2^(i+2), W / 2^(i+2)). Plain ViTs are single scale: one map from the last block,
    (B, C, H / patch, W / patch) (class token dropped, no final norm). A model built with
    ``features_only=True`` gives the maps it was built for. ``features="merged"`` (a Swin only):
    each stage's maps after the next stage's patch merging. A Swin's maps come from
    ``adapters.swin.swin_features``, the loop MTLoRA's task streams run in; the others' from
    timm's ``forward_intermediates``.
    """
    _check_features(model, features)
    if _is_swin(model):
        return swin_features(model, x, features)
    if _is_feature_net(model):
        maps = model(x)
        return list(maps.values()) if isinstance(maps, dict) else list(maps)
    indices = _feature_indices(model)
    return model.forward_intermediates(x, indices=indices, intermediates_only=True)
