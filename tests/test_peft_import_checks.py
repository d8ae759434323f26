"""import_peft takes nothing foreign from a folder: only LoRA factors and the modules_to_save the
config names, a config checked key by key, finite values only, safetensors only."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from test_peft import edit_config, ours_lora, tiny_vit

from mtlora_lite import adapter_layers, export_peft, import_peft
from mtlora_lite.adapters.peft import PREFIX
from mtlora_lite.adapters.peft_config import CONFIG_NAME, WEIGHTS_NAME


def edit_tensors(folder: Path, **changes: torch.Tensor) -> None:
    path = folder / WEIGHTS_NAME
    tensors = load_file(str(path))
    tensors.update({PREFIX + k.replace("__", "."): v for k, v in changes.items()})
    save_file(tensors, str(path))


def test_a_base_weight_in_the_file_is_ignored_not_loaded(tmp_path: Path) -> None:
    export_peft(ours_lora(), tmp_path)
    edit_tensors(tmp_path, blocks__0__attn__qkv__weight=torch.zeros(576, 192))
    model = tiny_vit()
    base = model.blocks[0].attn.qkv.weight.detach().clone()
    with pytest.warns(UserWarning, match=r"ignoring 1 tensor.*'blocks\.0\.attn\.qkv\.weight'"):
        import_peft(model, tmp_path)
    layer = model.blocks[0].attn.qkv
    assert torch.equal(layer.base_layer.weight, base) and not layer.base_layer.weight.requires_grad


def test_only_the_modules_to_save_the_config_names_are_loaded(tmp_path: Path) -> None:
    export_peft(ours_lora(), tmp_path)  # the head is in the file and in modules_to_save
    edit_config(tmp_path, modules_to_save=None)
    model = tiny_vit()
    head = model.head.weight.detach().clone()
    with pytest.warns(UserWarning, match=r"ignoring 2 tensor.*head"):
        import_peft(model, tmp_path)
    assert torch.equal(model.head.weight, head) and not model.head.weight.requires_grad
    edit_config(tmp_path, modules_to_save=["classifier"])
    with pytest.raises(ValueError, match="modules_to_save names 'classifier', which matches no"):
        import_peft(tiny_vit(), tmp_path)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"use_rslora": "yes"}, "use_rslora must be true or false, got 'yes'"),
        ({"r": "4"}, r"r must be a positive integer, got '4' \(str\)"),
        ({"r": 0}, "r must be a positive integer, got 0"),
        ({"r": True}, "r must be a positive integer, got True"),
        ({"lora_alpha": -1}, "lora_alpha must be a finite number > 0"),
        ({"lora_dropout": 1.5}, r"lora_dropout must be in \[0, 1\)"),
        ({"target_modules": "(qkv"}, r"target_modules '\(qkv' is not a valid regular expression"),
        ({"target_modules": ["qkv", 3]}, "target_modules must be a list of module names"),
        ({"modules_to_save": "head"}, "modules_to_save must be a list of module names"),
    ],
)
def test_config_values_are_checked(tmp_path: Path, changes: dict, message: str) -> None:
    export_peft(ours_lora(), tmp_path)
    edit_config(tmp_path, **changes)
    model = tiny_vit()
    with pytest.raises(ValueError, match=rf"{CONFIG_NAME}: {message}"):
        import_peft(model, tmp_path)
    assert not adapter_layers(model)


@pytest.mark.parametrize(
    ("text", "message"),
    [("[1, 2]", "holds a JSON list, not an object"), ("{not json", "is not readable JSON")],
)
def test_a_config_that_is_not_a_json_object_is_named(
    tmp_path: Path, text: str, message: str
) -> None:
    export_peft(ours_lora(), tmp_path)
    (tmp_path / CONFIG_NAME).write_text(text)
    with pytest.raises(ValueError, match=message):
        import_peft(tiny_vit(), tmp_path)


def test_a_bin_only_folder_says_how_to_convert(tmp_path: Path) -> None:
    export_peft(ours_lora(), tmp_path)
    (tmp_path / WEIGHTS_NAME).rename(tmp_path / "adapter_model.bin")
    with pytest.raises(ValueError, match=r"adapter_model\.bin \(a pickle\).*save_pretrained"):
        import_peft(tiny_vit(), tmp_path)
    (tmp_path / WEIGHTS_NAME).write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}")
    with pytest.raises(ValueError, match="is not a readable safetensors file"):
        import_peft(tiny_vit(), tmp_path)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_factors_are_refused(tmp_path: Path, value: float) -> None:
    export_peft(ours_lora(), tmp_path)
    name = "blocks.1.mlp.fc1.lora_B.weight"
    shape = load_file(str(tmp_path / WEIGHTS_NAME))[PREFIX + name].shape
    edit_tensors(tmp_path, **{name.replace(".", "__"): torch.full(shape, value)})
    model = tiny_vit()
    with pytest.raises(ValueError, match=rf"non-finite values .*'{name}'"):
        import_peft(model, tmp_path)
    assert not adapter_layers(model)
    assert json.loads((tmp_path / CONFIG_NAME).read_text())["r"] == 4
