"""Merging leaves no trap: merged adapters are frozen, a half-merged model is named as such, and
the base fingerprint tells rounding (merge + unmerge) and another dtype from another base."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from mtlora_lite.adapters.fingerprint import weights_difference, weights_fingerprint
from mtlora_lite.adapters.freezing import mark_only_adapters_trainable
from mtlora_lite.adapters.lora import inject_lora
from mtlora_lite.adapters.merging import merge_adapters, unmerge_adapters
from mtlora_lite.adapters.saving import load_adapters, save_adapters
from mtlora_lite.adapters.targets import adapter_layers


def make_model(seed: int = 1, base_seed: int = 0) -> nn.Module:
    torch.manual_seed(base_seed)  # the "pretrained" base
    model = nn.Sequential(nn.Linear(64, 64), nn.GELU(), nn.Linear(64, 64), nn.Linear(64, 3))
    torch.manual_seed(seed)
    inject_lora(model, ["0", "2"], rank=4)
    mark_only_adapters_trainable(model, extra=["3"])
    for adapter in adapter_layers(model).values():
        nn.init.normal_(adapter.lora_B, std=0.1)  # a trained-looking, non-zero update
    return model


def adapter_flags(model: nn.Module) -> set[bool]:
    return {
        p.requires_grad for a in adapter_layers(model).values() for _, p in a.adapter_parameters()
    }


def test_merged_adapters_are_frozen_and_unmerge_restores_what_trained() -> None:
    model = make_model()
    merge_adapters(model)
    assert adapter_flags(model) == {False}
    assert model[3].weight.requires_grad  # not an adapter: untouched
    model(torch.randn(2, 64)).sum().backward()  # a hand-written loop trains no merged adapter
    assert all(p.grad is None for p in model.parameters() if not p.requires_grad)
    unmerge_adapters(model)
    assert adapter_flags(model) == {True}
    model[0].lora_A.requires_grad_(False)  # frozen on purpose: stays frozen through a merge
    merge_adapters(model)
    unmerge_adapters(model)
    assert not model[0].lora_A.requires_grad and model[0].lora_B.requires_grad


def test_a_half_merged_model_is_named_and_unmerge_fixes_it() -> None:
    model = make_model()
    model[2].merge()  # one layer by hand
    with pytest.raises(
        RuntimeError, match=r"half-merged: 1 of 2 adapters are merged \('2'\), the others not"
    ):
        merge_adapters(model)
    assert not model[0].merged  # nothing changed
    assert unmerge_adapters(model) == 1 and not model[2].merged
    assert merge_adapters(model) == 2
    with pytest.raises(RuntimeError, match=r"all 2 adapters are already merged.*unmerge_adapters"):
        merge_adapters(model)
    unmerge_adapters(model)
    with pytest.raises(RuntimeError, match="none of the 2 adapters is merged"):
        unmerge_adapters(model)


def base_weights(model: nn.Module) -> list[torch.Tensor]:
    return [a.base_layer.weight.detach().clone() for a in adapter_layers(model).values()]


def test_adapters_saved_after_merge_and_unmerge_load_onto_a_fresh_base(tmp_path: Path) -> None:
    model = make_model()
    before = base_weights(model)
    merge_adapters(model)
    unmerge_adapters(model)
    changed = sum(int((a != b).sum()) for a, b in zip(base_weights(model), before, strict=True))
    assert changed > 0  # rounding: W + dW - dW is not W everywhere
    path = save_adapters(model, tmp_path / "a.safetensors")
    fresh = make_model(seed=2)
    load_adapters(fresh, path)  # the same base up to rounding
    torch.testing.assert_close(fresh[0].lora_B, model[0].lora_B, rtol=0, atol=0)
    with pytest.raises(
        ValueError, match=r"another base model: .*other values .*more than rounding"
    ):
        load_adapters(make_model(seed=2, base_seed=1), path)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float64])
def test_a_base_in_another_dtype_is_named(tmp_path: Path, dtype: torch.dtype) -> None:
    path = save_adapters(make_model(), tmp_path / "a.safetensors")
    other = make_model(seed=2)
    for adapter in adapter_layers(other).values():
        adapter.base_layer.to(dtype)
    with pytest.raises(ValueError, match=rf"another dtype: {dtype} here, torch.float32 when saved"):
        load_adapters(other, path)
    load_adapters(other, path, check_base=False)  # the caller's decision


def test_fingerprint_tolerance_is_rounding_only() -> None:
    torch.manual_seed(0)
    w = torch.randn(100, 100)
    saved = weights_fingerprint([("w", w)])
    ulp = w.abs() * torch.finfo(torch.float32).eps
    assert weights_difference(saved, weights_fingerprint([("w", w + ulp)])) is None
    nudged = w * (1 + 1e-4 * torch.randn_like(w))  # a small fine-tune, not rounding
    assert "other values" in weights_difference(saved, weights_fingerprint([("w", nudged)]))
    assert "other tensors" in weights_difference(saved, weights_fingerprint([("v", w)]))
