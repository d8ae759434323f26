"""The contract every adapter kind keeps, one table over all of them: at init the model computes
its base function; merged equals unmerged (or merge refuses, touching nothing); only adapters
train and the base stays as it was; save / load round-trips exactly; ``disable_adapters`` gives
the base function with the same modules; ``unload_adapters`` gives the plain model back; merge
refuses non-finite updates."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path

import pytest
import timm
import torch
from torch import nn

from mtlora_lite.adapters.blocks import inject_qkv_lora
from mtlora_lite.adapters.freezing import mark_only_adapters_trainable
from mtlora_lite.adapters.lora import inject_lora
from mtlora_lite.adapters.merging import (
    disable_adapters,
    merge_adapters,
    unload_adapters,
    unmerge_adapters,
)
from mtlora_lite.adapters.mtlora import MTLoRAConfig, MTLoRALinear
from mtlora_lite.adapters.multihead import inject_multihead_lora
from mtlora_lite.adapters.saving import load_adapters, save_adapters
from mtlora_lite.adapters.swin import SwinTaskEncoder, inject_mtlora
from mtlora_lite.adapters.targets import adapter_layers, inject_adapters
from mtlora_lite.course.backbones import build_course_swin

D = 12  # width of the toy model; its "qkv" layer has 3 * D outputs


class Toy(nn.Module):
    """(B, N, D) -> (B, N, 3): a fused qkv-sized Linear, an MLP and a head."""

    def __init__(self) -> None:
        super().__init__()
        self.qkv = nn.Linear(D, 3 * D)
        self.fc = nn.Linear(3 * D, D)
        self.head = nn.Linear(D, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.fc(torch.relu(self.qkv(x)))))


def _mtlora(tasks: dict[str, int]) -> Callable[[nn.Module], None]:
    config = MTLoRAConfig(dropout=0.1)

    def inject(model: nn.Module) -> None:
        make = lambda lin: MTLoRALinear(lin, 3, tasks, config)  # noqa: E731
        inject_adapters(model, ["qkv", "fc"], make)

    return inject


KINDS: dict[str, Callable[[nn.Module], object]] = {
    "lora": lambda m: inject_lora(m, ["qkv", "fc"], rank=3, alpha=6, dropout=0.1),
    "lora_rslora": lambda m: inject_lora(m, ["qkv", "fc"], rank=4, alpha=2, rslora=True),
    "block_lora": lambda m: [  # q / v of the fused qkv, and plain LoRA beside it
        inject_qkv_lora(m, ("q", "v"), rank=2, targets="qkv"),
        inject_lora(m, "fc", rank=2),
    ],
    "hydra": lambda m: inject_multihead_lora(m, ["qkv", "fc"], n_heads=3, rank=2, init="hydra"),
    "rlora": lambda m: inject_multihead_lora(m, ["qkv", "fc"], n_heads=3, rank=2, dropout=0.2),
    "rlora_centered": lambda m: inject_multihead_lora(
        m, ["qkv", "fc"], n_heads=2, rank=2, init="rlora_centered"
    ),
    "rlora_no_router": lambda m: inject_multihead_lora(
        m, ["qkv", "fc"], n_heads=3, rank=2, router=False
    ),
    "ta_lora": _mtlora({}),  # MTLoRA's shared branch alone (as in "shared_lora")
    "mtlora": _mtlora({"a": 2, "b": 1}),  # with task-specific branches
}
MERGEABLE = {"lora", "lora_rslora", "block_lora", "rlora_no_router", "ta_lora", "mtlora"}
UNLOADABLE = MERGEABLE - {"mtlora"}  # task branches have no place in a plain layer


def build(kind: str, seed: int = 0) -> tuple[nn.Module, nn.Module]:
    """(base model, the same weights with adapters of ``kind``), both in eval mode."""
    torch.manual_seed(0)
    base = Toy().eval()
    model = copy.deepcopy(base)
    torch.manual_seed(seed)
    KINDS[kind](model)
    return base, model.eval()


def randomize(model: nn.Module, seed: int = 1, std: float = 0.3) -> None:
    """Every adapter tensor drawn at random (non-zero B), so the checks mean something."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for adapter in adapter_layers(model).values():
            for _, p in adapter.adapter_parameters():
                p.normal_(0.0, std)


def x_in() -> torch.Tensor:
    return torch.randn(2, 5, D, generator=torch.Generator().manual_seed(7))


def streams(model: nn.Module) -> list[tuple[nn.Linear, torch.Tensor, torch.Tensor]]:
    """(base layer, input x, task outputs (T, 4, out)) of every layer with task branches
    (MTLoRA): the task streams, which a plain forward does not show."""
    out = []
    for layer in adapter_layers(model).values():
        if len(getattr(layer, "tasks", ())) > 0:
            x = torch.randn(4, layer.in_features, generator=torch.Generator().manual_seed(3))
            out.append((layer.base_layer, x, layer.forward_streams(x)[1]))
    return out


def task_outputs(model: nn.Module) -> list[torch.Tensor]:
    return [tasks for _, _, tasks in streams(model)]


@pytest.mark.parametrize("kind", KINDS)
def test_at_init_the_model_is_the_base(kind: str) -> None:
    base, model = build(kind)
    torch.testing.assert_close(model(x_in()), base(x_in()), rtol=1e-5, atol=1e-5)
    if kind not in ("rlora", "rlora_centered", "rlora_no_router"):  # B = 0: dropout changes nothing
        torch.testing.assert_close(model.train()(x_in()), base(x_in()), rtol=0, atol=1e-6)


@pytest.mark.parametrize("kind", KINDS)
def test_merged_equals_unmerged_or_merge_refuses(kind: str) -> None:
    _, model = build(kind)
    randomize(model)
    before = model(x_in())
    tasks_before = task_outputs(model)
    weights = {n: p.detach().clone() for n, p in model.named_parameters() if "base_layer" in n}
    if kind not in MERGEABLE:
        with pytest.raises(RuntimeError, match="depends on the input"):
            merge_adapters(model)
    else:
        assert merge_adapters(model) == 2
        torch.testing.assert_close(model(x_in()), before, rtol=1e-5, atol=1e-5)
        for merged, unmerged in zip(task_outputs(model), tasks_before, strict=True):
            torch.testing.assert_close(merged, unmerged, rtol=1e-5, atol=1e-5)
        unmerge_adapters(model)
    for n, p in model.named_parameters():
        if n in weights:
            torch.testing.assert_close(p, weights[n], rtol=0, atol=1e-6)
    torch.testing.assert_close(model(x_in()), before, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_only_adapters_train_and_the_base_stays(kind: str) -> None:
    _, model = build(kind)
    model.train()
    mark_only_adapters_trainable(model)
    ours = {
        f"{path}.{n}"
        for path, a in adapter_layers(model).items()
        for n, _ in a.adapter_parameters()
    }
    assert {n for n, p in model.named_parameters() if p.requires_grad} == ours
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if n not in ours}
    adapters = {n: p.detach().clone() for n, p in model.named_parameters() if n in ours}
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    for _ in range(2):
        model(x_in()).pow(2).mean().backward()
        opt.step()
        opt.zero_grad(set_to_none=False)
    for n, p in model.named_parameters():
        if n in frozen:
            assert p.grad is None and torch.equal(p, frozen[n]), n
    assert any(not torch.equal(p, adapters[n]) for n, p in model.named_parameters() if n in ours)


@pytest.mark.parametrize("kind", KINDS)
def test_save_load_round_trip_is_exact(kind: str, tmp_path: Path) -> None:
    _, model = build(kind)
    randomize(model)
    save_adapters(model, tmp_path / "a.safetensors")
    _, other = build(kind, seed=5)  # same base, other adapter init (other R-LoRA offsets)
    assert not torch.equal(other(x_in()), model(x_in()))
    load_adapters(other, tmp_path / "a.safetensors")
    assert torch.equal(other(x_in()), model(x_in()))
    for a, b in zip(task_outputs(other), task_outputs(model), strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("kind", KINDS)
def test_disable_gives_the_base_function_with_the_same_modules(kind: str) -> None:
    base, model = build(kind)
    randomize(model)
    adapted, tasks_before = model(x_in()), task_outputs(model)
    modules = list(model.modules())
    with disable_adapters(model) as same:
        assert same is model and list(model.modules()) == modules  # nothing copied or swapped
        torch.testing.assert_close(model(x_in()), base(x_in()), rtol=1e-5, atol=1e-5)
        for base_layer, x, tasks in streams(model):  # every task stream: W x + b
            torch.testing.assert_close(tasks, base_layer(x).expand_as(tasks))
    assert torch.equal(model(x_in()), adapted)
    for a, b in zip(task_outputs(model), tasks_before, strict=True):
        assert torch.equal(a, b)
    with pytest.raises(KeyError), disable_adapters(model):  # restored after an error too
        raise KeyError("inside")
    assert torch.equal(model(x_in()), adapted)


@pytest.mark.parametrize("kind", KINDS)
def test_unload_gives_the_plain_model_back(kind: str) -> None:
    _, model = build(kind)
    randomize(model)
    adapted = model(x_in())
    if kind not in UNLOADABLE:
        with pytest.raises(RuntimeError, match=r"depends on the input|task-specific branches"):
            unload_adapters(model)
        layers = adapter_layers(model).values()  # nothing changed
        assert len(layers) == 2 and not any(a.merged for a in layers)
        return
    plain = unload_adapters(model)
    assert plain is model and not adapter_layers(plain)
    torch.testing.assert_close(plain(x_in()), adapted, rtol=1e-5, atol=1e-5)
    fresh = Toy()
    fresh.load_state_dict(plain.state_dict(), strict=True)  # the keys of the model before
    torch.testing.assert_close(fresh.eval()(x_in()), adapted, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", sorted(MERGEABLE))
def test_merge_refuses_non_finite_updates(kind: str) -> None:
    _, model = build(kind)
    randomize(model)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    last = list(adapter_layers(model).values())[-1]
    with torch.no_grad():
        last.lora_B[0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"NaN or inf.*nothing was merged"):
        merge_adapters(model)
    assert not any(a.merged for a in adapter_layers(model).values())
    for n, p in model.named_parameters():
        if "base_layer" in n:
            assert torch.equal(p, before[n]), n
    if kind in UNLOADABLE:
        with pytest.raises(ValueError, match="NaN or inf"):
            unload_adapters(model)
        assert len(adapter_layers(model)) == 2


def test_disable_refuses_merged_adapters_and_models_without_any() -> None:
    _, model = build("lora")
    merge_adapters(model)
    with pytest.raises(RuntimeError, match="unmerge_adapters"), disable_adapters(model):
        pass
    with pytest.raises(ValueError, match="no adapters"), disable_adapters(Toy()):
        pass


def tiny_vit() -> nn.Module:
    torch.manual_seed(0)
    return timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, depth=2, num_classes=3
    ).eval()


@pytest.mark.parametrize("kind", ["lora", "qv_lora", "multihead_no_router"])
def test_unloaded_timm_model_loads_into_a_stock_one_strictly(kind: str) -> None:
    model = tiny_vit()
    if kind == "lora":
        inject_lora(model, ["attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2"], rank=4)
    elif kind == "qv_lora":
        inject_qkv_lora(model, ("q", "v"), rank=4)
    else:
        inject_multihead_lora(model, ["attn.qkv", "mlp.fc1"], n_heads=2, rank=2, router=False)
    randomize(model)
    x = torch.randn(2, 3, 32, 32)
    adapted = model(x)
    stock = tiny_vit()
    stock.load_state_dict(unload_adapters(model).state_dict(), strict=True)
    torch.testing.assert_close(stock(x), adapted, rtol=1e-4, atol=1e-4)


def test_mtlora_on_a_swin_disables_to_the_base_features_and_unloads_as_shared_lora() -> None:
    torch.manual_seed(0)
    swin = build_course_swin().eval()
    tasks = ["seg", "depth"]
    ts, shared = copy.deepcopy(swin), copy.deepcopy(swin)
    inject_mtlora(ts, tasks, shared_rank=4, task_rank=2, dropout=0.0)
    inject_mtlora(shared, tasks, shared_rank=4, task_stages=(), dropout=0.0)
    randomize(ts)
    x = torch.randn(2, 3, 64, 64)
    reference = SwinTaskEncoder(swin, tasks)(x)
    encoder = SwinTaskEncoder(ts, tasks)
    adapted = encoder(x)
    with disable_adapters(ts):
        off = encoder(x)
    for task in tasks:
        for got, want, trained in zip(off[task], reference[task], adapted[task], strict=True):
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
            assert not torch.allclose(trained, want, atol=1e-3)
    with pytest.raises(RuntimeError, match="task-specific branches"):
        unload_adapters(ts)
    randomize(shared, std=0.05)  # moderate updates: 12 merged blocks round in float32
    adapted_shared = SwinTaskEncoder(shared, tasks)(x)["seg"]
    stock = copy.deepcopy(swin)
    stock.load_state_dict(unload_adapters(shared).state_dict(), strict=True)
    for got, want in zip(SwinTaskEncoder(stock, tasks)(x)["seg"], adapted_shared, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
