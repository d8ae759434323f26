"""LoRA core: zero-init equivalence, merge exactness, structural freezing, injection errors."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
import timm
import torch
from torch import nn

from mtlora_lite.adapters.base import AdapterLayer
from mtlora_lite.adapters.freezing import mark_only_adapters_trainable
from mtlora_lite.adapters.functional import dropout_mask
from mtlora_lite.adapters.lora import LoRALinear, inject_lora
from mtlora_lite.adapters.merging import merge_adapters, unmerge_adapters
from mtlora_lite.adapters.mtlora import MTLoRAConfig
from mtlora_lite.adapters.multihead import inject_multihead_lora
from mtlora_lite.adapters.swin import inject_mtlora
from mtlora_lite.adapters.targets import TIMM_TARGETS, adapter_layers, linear_names, name_matches
from mtlora_lite.course.backbones import build_course_swin


class TinyNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.block = nn.ModuleDict(
            {"qkv": nn.Linear(8, 24), "proj": nn.Linear(8, 8), "norm": nn.LayerNorm(8)}
        )
        self.conv = nn.Conv2d(3, 3, 1)
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q = self.block["qkv"](x)[..., :8]
        return self.head(self.block["norm"](self.block["proj"](q)))


def randomize_b(model: nn.Module) -> None:
    """Non-zero B so that merge checks mean something."""
    torch.manual_seed(1)
    for a in adapter_layers(model).values():
        nn.init.normal_(a.lora_B, std=0.5)


def test_wraps_the_base_by_composition() -> None:
    base = nn.Linear(16, 12)
    lora = LoRALinear(base, rank=4, alpha=8, dropout=0.1)
    assert lora.base_layer is base  # composition: the very same module, not a copy
    assert torch.equal(lora.lora_B, torch.zeros(12, 4)) and lora.lora_A.abs().sum() > 0


def test_forward_formula_and_leading_dims() -> None:
    torch.manual_seed(0)
    base = nn.Linear(16, 12)
    lora = LoRALinear(base, rank=4, alpha=8)
    nn.init.normal_(lora.lora_B)
    x = torch.randn(2, 3, 5, 16)
    ref = x @ base.weight.T + base.bias + 2.0 * (x @ lora.lora_A.T @ lora.lora_B.T)
    out = lora(x)
    assert out.shape == (2, 3, 5, 12)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("rslora,expected", [(False, 16 / 4), (True, 16 / 2)])
def test_scaling(rslora: bool, expected: float) -> None:
    assert LoRALinear(nn.Linear(4, 4), rank=4, alpha=16, rslora=rslora).scaling == expected


def test_default_alpha_gives_unit_scale() -> None:
    assert LoRALinear(nn.Linear(4, 4), rank=8).scaling == 1.0


@pytest.mark.parametrize("frozen", [True, False])
def test_dropout_only_on_lora_branch(frozen: bool) -> None:
    torch.manual_seed(0)
    base = nn.Linear(16, 16).requires_grad_(not frozen)  # frozen: the fused path
    lora = LoRALinear(base, rank=4, dropout=0.5).train()
    x = torch.randn(64, 16)
    # With B = 0 dropout cannot change the output; with non-zero B it changes only the LoRA term.
    torch.testing.assert_close(lora(x), base(x))
    nn.init.normal_(lora.lora_B)
    torch.manual_seed(3)
    out1 = lora(x)
    torch.manual_seed(3)
    x_a = x.masked_fill(dropout_mask(x.shape, 0.5, x.device), 0.0) / 0.5
    ref = base(x) + lora.scaling * (x_a @ lora.lora_A.T @ lora.lora_B.T)
    torch.testing.assert_close(out1, ref)
    ref_eval = base(x) + lora.scaling * (x @ lora.lora_A.T @ lora.lora_B.T)
    torch.testing.assert_close(lora.eval()(x), ref_eval)  # no dropout in eval mode


def test_merge_flags_and_errors() -> None:
    """(merged equals unmerged for every adapter kind: test_adapter_contract.py)"""
    model = TinyNet()
    inject_lora(model, ["qkv", "proj"], rank=3, alpha=6)
    randomize_b(model)
    assert merge_adapters(model) == 2
    assert all(a.merged for a in adapter_layers(model).values())
    model.eval()  # eval never merges or unmerges anything by itself
    assert all(a.merged for a in adapter_layers(model).values())
    with pytest.raises(RuntimeError, match="already merged"):
        merge_adapters(model)
    unmerge_adapters(model)
    with pytest.raises(RuntimeError, match="none of the 2 adapters is merged"):
        unmerge_adapters(model)


def test_merged_layer_is_plain_base_forward() -> None:
    lora = LoRALinear(nn.Linear(8, 8), rank=2)
    nn.init.normal_(lora.lora_B)
    lora.merge()
    x = torch.randn(3, 8)
    assert torch.equal(lora(x), lora.base_layer(x))
    with pytest.raises(RuntimeError, match="not merged"):
        LoRALinear(nn.Linear(8, 8), rank=2).unmerge()


def test_eval_does_not_merge() -> None:
    model = TinyNet()
    inject_lora(model, "qkv", rank=2)
    model.eval()
    model.train()
    assert not any(a.merged for a in adapter_layers(model).values())


def test_only_adapters_and_extras_get_gradients_and_base_unchanged() -> None:
    torch.manual_seed(0)
    model = TinyNet()
    inject_lora(model, ["qkv", "proj"], rank=2, dropout=0.1)
    mark_only_adapters_trainable(model, extra=["head"])
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {
        "block.qkv.lora_A",
        "block.qkv.lora_B",
        "block.proj.lora_A",
        "block.proj.lora_B",
        "head.weight",
        "head.bias",
    }
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.1)
    for _ in range(2):
        model(torch.randn(4, 8)).pow(2).mean().backward()
        opt.step()
        opt.zero_grad(set_to_none=False)
    for n, p in model.named_parameters():
        if n in frozen:
            assert p.grad is None, n
            assert torch.equal(p, frozen[n]), n
    assert model.block["qkv"].lora_B.abs().sum() > 0  # adapters did learn


def test_extra_by_type_and_unknown_extra() -> None:
    model = TinyNet()
    inject_lora(model, "qkv", rank=2)
    mark_only_adapters_trainable(model, extra=[nn.LayerNorm])
    assert model.block["norm"].weight.requires_grad
    assert not model.block["qkv"].base_layer.weight.requires_grad
    with pytest.raises(ValueError, match="matches no module"):
        mark_only_adapters_trainable(model, extra=["decoder"])


def test_name_matching_rules() -> None:
    name = "layers.0.blocks.1.attn.qkv"
    assert name_matches(name, "qkv")
    assert name_matches(name, ".attn.qkv")
    assert name_matches(name, [name])
    assert not name_matches(name, "kv")  # only on dot boundaries
    assert name_matches(name, re.compile(r"layers\.0\..*qkv"))
    assert not name_matches(name, re.compile(r"qkv"))  # regex must match the full name


def test_injection_returns_paths_and_regex() -> None:
    model = TinyNet()
    paths = inject_lora(model, re.compile(r"block\.(qkv|proj)"), rank=2)
    assert paths == ["block.qkv", "block.proj"]
    assert isinstance(model.block["qkv"], LoRALinear)
    assert "block.qkv" not in linear_names(model)  # base layers inside adapters are not offered


def test_injection_errors() -> None:
    model = TinyNet()
    with pytest.raises(ValueError, match="rank must be a positive integer"):
        inject_lora(model, "qkv", rank=0)
    with pytest.raises(ValueError, match=r"no module matches.*block\.qkv"):
        inject_lora(model, ["fc9"], rank=2)
    with pytest.raises(ValueError, match="match no module"):
        inject_lora(model, ["qkv", "fc9"], rank=2)
    with pytest.raises(ValueError, match=r"Conv2d, not nn\.Linear"):
        inject_lora(model, ["conv"], rank=2)
    inject_lora(model, ["qkv"], rank=2)
    with pytest.raises(ValueError, match="already has an adapter"):
        inject_lora(model, ["qkv"], rank=2)
    with pytest.raises(ValueError, match="dropout"):
        LoRALinear(nn.Linear(2, 2), rank=1, dropout=1.0)
    with pytest.raises(TypeError, match=r"nn\.Linear"):
        AdapterLayer(nn.Conv2d(1, 1, 1))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "name,expected",
    [("swin_tiny_patch4_window7_224", 48), ("vit_small_patch16_224", 48)],
)
def test_timm_models(name: str, expected: int) -> None:
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=5).eval()
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        ref = model(x)
    paths = inject_lora(model, ["attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2"], rank=4)
    assert len(paths) == expected
    mark_only_adapters_trainable(model, extra=["head"])
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref)  # B = 0: still the base model
    randomize_b(model)
    out = model(x)
    out.sum().backward()
    grads = {n for n, p in model.named_parameters() if p.grad is not None}
    assert grads and all(("lora_" in n) or n.startswith("head") for n in grads)
    with torch.no_grad():
        ref = model(x)
        merge_adapters(model)
        torch.testing.assert_close(model(x), ref, rtol=1e-4, atol=1e-4)


def test_merge_refuses_before_touching_any_weight() -> None:
    model = TinyNet()
    inject_lora(model, ["qkv"], rank=2)
    inject_multihead_lora(model, ["proj"], n_heads=2, rank=2)  # routed: input-dependent update
    qkv = model.block["qkv"]
    nn.init.normal_(qkv.lora_B)
    w0 = qkv.base_layer.weight.detach().clone()
    with pytest.raises(RuntimeError, match="nothing was merged"):
        merge_adapters(model)
    assert not qkv.merged
    assert torch.equal(qkv.base_layer.weight, w0)


@pytest.mark.parametrize("alpha", [0, -2.0, math.nan, math.inf, "8", True])
def test_bad_alpha_is_refused_with_the_fix(alpha: object) -> None:
    with pytest.raises(ValueError, match=r"alpha must be a (finite|positive) number"):
        LoRALinear(nn.Linear(4, 4), rank=2, alpha=alpha)  # type: ignore[arg-type]
    model = TinyNet()
    with pytest.raises(ValueError, match="alpha"):
        inject_lora(model, ["qkv"], rank=2, alpha=alpha)  # type: ignore[arg-type]
    assert not adapter_layers(model)  # checked before the model was touched


@pytest.mark.parametrize("dropout", [-0.1, 1.0, math.nan, True, "0.1"])
def test_bad_dropout_is_refused(dropout: object) -> None:
    with pytest.raises(ValueError, match=r"dropout must be in \[0, 1\)"):
        inject_lora(TinyNet(), ["qkv"], rank=2, dropout=dropout)  # type: ignore[arg-type]


def test_ranks_of_any_integer_type_but_not_floats() -> None:
    lora = LoRALinear(nn.Linear(4, 4), rank=np.int64(2), alpha=np.float32(4.0))
    assert type(lora.rank) is int and lora.scaling == 2.0
    assert json.dumps(lora.adapter_config())  # plain Python numbers: saved as metadata
    with pytest.raises(ValueError, match=r"rank must be a positive integer, got 2\.0.*e\.g\. 2"):
        LoRALinear(nn.Linear(4, 4), rank=2.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="rank must be a positive integer"):
        inject_lora(TinyNet(), ["qkv"], rank=True)


def _inject(kind: str, model: nn.Module) -> None:
    """Adapters with dropout of each kind on every Linear of a small Swin."""
    if kind == "lora":
        inject_lora(model, TIMM_TARGETS, rank=2, dropout=0.5)
    elif kind == "multihead":
        inject_multihead_lora(model, TIMM_TARGETS, n_heads=2, rank=2, dropout=0.5)
    else:
        inject_mtlora(model, ["a", "b"], MTLoRAConfig(shared_rank=2, task_rank=2, dropout=0.5))


@pytest.mark.parametrize("kind", ["lora", "multihead", "mtlora"])
def test_injection_keeps_the_wrapped_layers_mode(kind: str) -> None:
    torch.manual_seed(0)
    model = build_course_swin(depths=(1, 1, 1, 1), num_classes=0).eval()
    _inject(kind, model)
    assert not any(m.training for m in model.modules())  # eval model -> adapters in eval too
    randomize_b(model)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x), model(x))  # no dropout in an eval model
        model.train()
        assert not torch.equal(model(x), model(x))  # and dropout is back in train mode
    trained = build_course_swin(depths=(1, 1, 1, 1), num_classes=0).train()
    _inject(kind, trained)
    assert all(a.training for a in adapter_layers(trained).values())


def test_one_extra_name_or_class_is_one_item() -> None:
    model = TinyNet()
    inject_lora(model, ["qkv"], rank=2)
    mark_only_adapters_trainable(model, extra="head")  # not "h", "e", "a", "d"
    assert model.head.weight.requires_grad and not model.block["proj"].weight.requires_grad
    mark_only_adapters_trainable(model, extra=nn.LayerNorm)
    assert model.block["norm"].weight.requires_grad and not model.head.weight.requires_grad
