"""PEFT's LoRA format: what export_peft writes, PEFT loads and computes alike; and back."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import load_file
from torch import nn

from mtlora_lite import (
    BlockLoRALinear,
    LoRALinear,
    MTLoRALinear,
    adapter_layers,
    export_peft,
    import_peft,
    inject_lora,
    inject_multihead_lora,
    inject_qkv_lora,
    mark_only_adapters_trainable,
    merge_adapters,
)
from mtlora_lite.adapters.peft import CONFIG_NAME, WEIGHTS_NAME

X = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def tiny_vit(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    vit = timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, depth=2, num_classes=3
    )
    return vit.eval()


def trained(model: nn.Module) -> nn.Module:
    """Non-zero B and a changed head, as after fine-tuning, so that equal outputs mean something."""
    mark_only_adapters_trainable(model, extra=["head"])
    with torch.no_grad():
        for a in adapter_layers(model).values():
            a.lora_B.normal_(std=0.2)
        model.head.weight.normal_()
    return model


def ours_lora(rank: int = 4, **options: object) -> nn.Module:
    vit = tiny_vit()
    inject_lora(vit, ["attn.qkv", "attn.proj", "mlp.fc1"], rank=rank, **options)
    return trained(vit)


def outputs(model: nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(X)


def edit_config(folder: Path, **changes: object) -> None:
    path = folder / CONFIG_NAME
    config = json.loads(path.read_text())
    config.update(changes)
    path.write_text(json.dumps(config))


def test_peft_loads_the_export_and_computes_the_same(tmp_path: Path) -> None:
    peft = pytest.importorskip("peft")
    model = ours_lora(alpha=6, rslora=True, dropout=0.1)
    export_peft(model, tmp_path)
    loaded = peft.PeftModel.from_pretrained(tiny_vit(), tmp_path)
    assert (outputs(model) - outputs(tiny_vit())).abs().max() > 0.1  # the adapter matters
    torch.testing.assert_close(outputs(loaded), outputs(model), atol=1e-4, rtol=1e-4)
    config = loaded.peft_config["default"]
    assert (config.r, config.lora_alpha, config.use_rslora, config.lora_dropout) == (
        4,
        6,
        True,
        0.1,
    )


def test_config_and_tensor_names_are_what_peft_itself_writes(tmp_path: Path) -> None:
    peft = pytest.importorskip("peft")
    export_peft(ours_lora(), tmp_path / "ours")
    ours = json.loads((tmp_path / "ours" / CONFIG_NAME).read_text())
    assert ours["peft_type"] == "LORA" and ours["task_type"] is None
    assert ours["target_modules"] == ["attn.proj", "attn.qkv", "mlp.fc1"]  # "proj": patch_embed
    assert ours["modules_to_save"] == ["head"]
    loaded = peft.PeftModel.from_pretrained(tiny_vit(), tmp_path / "ours")
    loaded.save_pretrained(tmp_path / "theirs")
    mine = load_file(str(tmp_path / "ours" / WEIGHTS_NAME))
    theirs = load_file(str(tmp_path / "theirs" / WEIGHTS_NAME))
    assert sorted(mine) == sorted(theirs)
    assert "base_model.model.blocks.0.attn.qkv.lora_A.weight" in mine
    assert "base_model.model.head.weight" in mine
    assert all(torch.equal(mine[k], theirs[k]) for k in mine)


def test_import_of_an_adapter_made_by_peft(tmp_path: Path) -> None:
    peft = pytest.importorskip("peft")
    config = peft.LoraConfig(
        r=3,
        lora_alpha=5,
        use_rslora=True,
        target_modules=r".*\.(qkv|fc2)",  # a string is a regex, full match
        modules_to_save=["head"],
        init_lora_weights=False,  # random B: a non-trivial adapter
    )
    theirs = peft.get_peft_model(tiny_vit(), config)
    with torch.no_grad():
        theirs.base_model.model.head.modules_to_save["default"].weight.normal_()
    theirs.save_pretrained(tmp_path)
    model = tiny_vit()
    paths = import_peft(model, tmp_path)
    assert paths == [f"blocks.{i}.{n}" for i in range(2) for n in ("attn.qkv", "mlp.fc2")]
    layer = model.get_submodule(paths[0])
    assert isinstance(layer, LoRALinear)
    assert (layer.rank, layer.alpha, layer.rslora) == (3, 5.0, True)
    torch.testing.assert_close(outputs(model), outputs(theirs), atol=1e-4, rtol=1e-4)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {f"{p}.lora_{m}" for p in paths for m in "AB"} | {
        "head.weight",
        "head.bias",
    }


def test_round_trip_ours_peft_ours_is_identical(tmp_path: Path) -> None:
    model = ours_lora(alpha=2)
    export_peft(model, tmp_path)
    back = tiny_vit()
    assert import_peft(back, tmp_path) == list(adapter_layers(model))
    assert torch.equal(outputs(back), outputs(model))
    export_peft(back, tmp_path / "again")  # and the folder it writes is the same
    assert json.loads((tmp_path / "again" / CONFIG_NAME).read_text()) == json.loads(
        (tmp_path / CONFIG_NAME).read_text()
    )
    import_peft(frozen := tiny_vit(), tmp_path, trainable=False)
    assert not any(p.requires_grad for p in frozen.parameters())


def test_qv_lora_exports_as_plain_lora_with_zero_k_rows(tmp_path: Path) -> None:
    model = tiny_vit()
    inject_qkv_lora(model, ("q", "v"), rank=4)
    trained(model)
    export_peft(model, tmp_path)
    d = model.embed_dim
    B = load_file(str(tmp_path / WEIGHTS_NAME))["base_model.model.blocks.1.attn.qkv.lora_B.weight"]
    assert B.shape == (3 * d, 4) and torch.equal(B[d : 2 * d], torch.zeros(d, 4))
    back = tiny_vit()
    import_peft(back, tmp_path)  # plain LoRALinear now: the same function
    assert isinstance(back.get_submodule("blocks.1.attn.qkv"), LoRALinear)
    assert isinstance(model.get_submodule("blocks.1.attn.qkv"), BlockLoRALinear)
    torch.testing.assert_close(outputs(back), outputs(model), atol=1e-5, rtol=1e-5)
    peft = pytest.importorskip("peft")
    loaded = peft.PeftModel.from_pretrained(tiny_vit(), tmp_path)
    torch.testing.assert_close(outputs(loaded), outputs(model), atol=1e-4, rtol=1e-4)


def test_export_refuses_what_peft_cannot_express(tmp_path: Path) -> None:
    multihead = tiny_vit()
    inject_multihead_lora(multihead, ["attn.qkv"], n_heads=2, rank=2)
    with pytest.raises(ValueError, match="PEFT has no format for MTLoRA"):
        export_peft(multihead, tmp_path)
    mtlora = nn.Sequential(MTLoRALinear(nn.Linear(4, 4), 2, task_ranks={"a": 1}))
    with pytest.raises(ValueError, match="multi-head LoRA"):
        export_peft(mtlora, tmp_path)
    mixed = tiny_vit()
    inject_lora(mixed, "attn.qkv", rank=4)
    inject_lora(mixed, "mlp.fc1", rank=2)
    mark_only_adapters_trainable(mixed)
    with pytest.raises(ValueError, match="one rank for all layers"):
        export_peft(mixed, tmp_path)
    loose = ours_lora()
    loose.cls_token.requires_grad_(True)  # a parameter of the model itself, not a whole module
    with pytest.raises(ValueError, match="not a whole module"):
        export_peft(loose, tmp_path)
    export_peft(loose, tmp_path, include_trainable=False)  # LoRA weights only
    assert json.loads((tmp_path / CONFIG_NAME).read_text())["modules_to_save"] is None
    loose.cls_token.requires_grad_(False)
    loose.blocks[0].attn.qkv.base_layer.bias.requires_grad_(True)  # bias training
    with pytest.raises(ValueError, match="inside an adapter's base layer"):
        export_peft(loose, tmp_path)
    merge_adapters(loose)
    with pytest.raises(RuntimeError, match="unmerge"):
        export_peft(loose, tmp_path)
    with pytest.raises(ValueError, match="no adapters"):
        export_peft(tiny_vit(), tmp_path)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"use_dora": True}, "DoRA"),
        ({"bias": "all"}, "bias training"),
        ({"rank_pattern": {"qkv": 8}}, "per-layer ranks"),
        ({"fan_in_fan_out": True}, "Conv1D"),
        ({"init_lora_weights": "pissa"}, "modified base model"),
        ({"target_modules": "all-linear"}, "list the modules"),
        ({"peft_type": "IA3"}, "only PEFT's LoRA"),
    ],
)
def test_import_refuses_unsupported_options(
    tmp_path: Path, changes: dict[str, object], message: str
) -> None:
    export_peft(ours_lora(), tmp_path)
    edit_config(tmp_path, **changes)
    model = tiny_vit()
    with pytest.raises(ValueError, match=message):
        import_peft(model, tmp_path)
    assert not adapter_layers(model)


def test_import_refuses_another_architecture(tmp_path: Path) -> None:
    export_peft(ours_lora(), tmp_path)
    deeper = timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, depth=3, num_classes=3
    )
    with pytest.raises(ValueError, match="does not fit this model: missing"):
        import_peft(deeper, tmp_path)
    wider_head = tiny_vit()
    wider_head.reset_classifier(5)
    with pytest.raises(ValueError, match=r"shape mismatch for 'head\.(weight|bias)'"):
        import_peft(wider_head, tmp_path)
    assert not adapter_layers(deeper) and not adapter_layers(wider_head)
    with pytest.raises(FileNotFoundError, match="PEFT adapter folder"):
        import_peft(tiny_vit(), tmp_path / "nothing")
