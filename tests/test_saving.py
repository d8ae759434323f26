"""Adapter-only save / load: exact round trips and loud failures on mismatches."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from mtlora_lite.adapters.lora import (
    adapter_layers,
    inject_lora,
    mark_only_adapters_trainable,
    merge_adapters,
)
from mtlora_lite.adapters.saving import adapter_state_dict, load_adapters, save_adapters


def make_model(seed: int, rank: int = 3) -> nn.Module:
    torch.manual_seed(0)  # the same "pretrained" base every time
    model = nn.Sequential(
        nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 8), nn.LayerNorm(8), nn.Linear(8, 2)
    )
    torch.manual_seed(seed)  # adapters differ with the seed
    inject_lora(model, ["0", "2"], rank=rank)
    mark_only_adapters_trainable(model, extra=["4"])
    return model


def fine_tune(model: nn.Module) -> None:
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    for _ in range(3):
        model(torch.randn(8, 8)).pow(2).sum().backward()
        opt.step()
        opt.zero_grad()


def test_round_trip_is_bit_identical(tmp_path: Path) -> None:
    trained = make_model(seed=1)
    fine_tune(trained)
    path = save_adapters(trained, tmp_path / "adapters.safetensors")
    stored = load_file(str(path))
    assert set(stored) == {"0.lora_A", "0.lora_B", "2.lora_A", "2.lora_B", "4.weight", "4.bias"}

    fresh = make_model(seed=2)
    x = torch.randn(5, 8)
    assert not torch.equal(fresh(x), trained(x))
    load_adapters(fresh, path)
    assert torch.equal(fresh(x), trained(x))


def test_state_dict_without_extras() -> None:
    state = adapter_state_dict(make_model(seed=1), include_trainable=False)
    assert set(state) == {"0.lora_A", "0.lora_B", "2.lora_A", "2.lora_B"}


def test_mismatched_rank_is_rejected(tmp_path: Path) -> None:
    path = save_adapters(make_model(seed=1, rank=3), tmp_path / "a.safetensors")
    other = make_model(seed=1, rank=4)
    before = {k: v.clone() for k, v in adapter_state_dict(other).items()}
    with pytest.raises(ValueError, match="adapter configs differ"):
        load_adapters(other, path)
    after = adapter_state_dict(other)
    assert all(torch.equal(before[k], after[k]) for k in before)  # nothing partially loaded


def test_mismatched_layers_are_rejected(tmp_path: Path) -> None:
    path = save_adapters(make_model(seed=1), tmp_path / "a.safetensors")
    torch.manual_seed(0)
    other = nn.Sequential(
        nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 8), nn.LayerNorm(8), nn.Linear(8, 2)
    )
    inject_lora(other, ["0"], rank=3)
    with pytest.raises(ValueError, match="adapter configs differ"):
        load_adapters(other, path)


def test_unexpected_tensors_are_rejected(tmp_path: Path) -> None:
    path = save_adapters(make_model(seed=1), tmp_path / "a.safetensors")
    other = make_model(seed=1)
    other[4] = nn.Identity()  # no head parameters any more: the file's head tensors are unexpected
    with pytest.raises(ValueError, match="unexpected"):
        load_adapters(other, path)


def test_merged_models_refuse_save_and_load(tmp_path: Path) -> None:
    model = make_model(seed=1)
    path = save_adapters(model, tmp_path / "a.safetensors")
    merge_adapters(model)
    with pytest.raises(RuntimeError, match="unmerge"):
        save_adapters(model, tmp_path / "b.safetensors")
    with pytest.raises(RuntimeError, match="unmerge"):
        load_adapters(model, path)
    assert len(adapter_layers(model)) == 2


def test_non_adapter_file_is_rejected(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(tmp_path / "x.safetensors"))
    with pytest.raises(ValueError, match="not an mtlora_lite adapter file"):
        load_adapters(make_model(seed=1), tmp_path / "x.safetensors")
