"""The package's CUDA paths against their references: skipped without a CUDA GPU.

Each check compares the device result with a float64 reference computed on the CPU from the same
inputs, by the relative error ||got - ref|| / ||ref||: fused LoRA and fused multi-head LoRA
(forward and every gradient, fp32 and bf16 autocast, with and without a dropout mask injected
into both the fused and the unfused path), ``dropout_mask`` (rate, seed), an MTLoRA training
step, adapters saved on the device and loaded on the CPU, and ``torch.compile`` of a LoRA and an
MTLoRA model (no graph breaks, same outputs and gradients as eager).

``MTLORA_TEST_DEVICE`` (default ``cuda``) picks the device. ``benchmarks/gpu_check.py`` runs
this file on the GPU; its ``--dry-run`` sets ``MTLORA_TEST_DEVICE=cpu``, so that the same test
bodies run on the CPU before any GPU time is spent on them.
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

import mtlora_lite.adapters.functional as functional_module
from mtlora_lite.adapters.freezing import mark_only_adapters_trainable
from mtlora_lite.adapters.functional import dropout_mask, fused_lora_linear
from mtlora_lite.adapters.lora import LoRALinear, inject_lora
from mtlora_lite.adapters.multihead import MultiHeadLoRALinear, inject_multihead_lora
from mtlora_lite.adapters.saving import adapter_state_dict, load_adapters, save_adapters
from mtlora_lite.adapters.targets import TIMM_TARGETS
from mtlora_lite.course.backbones import build_course_swin
from mtlora_lite.course.data import make_loaders
from mtlora_lite.course.experiments import DECODER_CHANNELS, DENSE_TASKS
from mtlora_lite.course.scene_tasks import build_tasks
from mtlora_lite.multitask.models import build_model
from mtlora_lite.multitask.train import fit

DEVICE = torch.device(os.environ.get("MTLORA_TEST_DEVICE", "cuda"))
pytestmark = pytest.mark.skipif(
    DEVICE.type == "cuda" and not torch.cuda.is_available(),
    reason="needs a CUDA GPU (MTLORA_TEST_DEVICE=cpu runs these checks on the CPU)",
)

PRECISIONS = ("fp32", "bf16")
# Largest relative error accepted against the float64 reference: float32 GEMMs land far below
# 1e-5 (TF32, if someone enabled it, near 3e-4, and would fail); bf16 operands near 3e-3.
TOLERANCE = {"fp32": 1e-5, "bf16": 2e-2}
CPU64 = {"device": torch.device("cpu"), "dtype": torch.float64}


@pytest.fixture
def ieee_fp32() -> Iterator[None]:
    """float32 convolutions without TF32 (cuDNN's default on Ampere and later, about 1e-3
    relative error), so that float32 results on the GPU can be compared with the CPU's, and
    eager with compiled, at float32 precision. Matmuls use no TF32 by default."""
    assert not torch.backends.cuda.matmul.allow_tf32
    with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
        yield


def autocast(precision: str) -> contextlib.AbstractContextManager:
    """bf16 autocast on DEVICE for "bf16", nothing for "fp32"."""
    if precision == "bf16":
        return torch.autocast(DEVICE.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def rel_err(got: Tensor, want: Tensor) -> float:
    """||got - want|| / ||want|| in float64 on the CPU; fails on a non-finite ``got`` or a zero
    ``want`` (a check on zeros would prove nothing)."""
    got, want = got.detach().double().cpu(), want.detach().double().cpu()
    assert got.shape == want.shape and torch.isfinite(got).all()
    assert want.norm() > 0, "the reference is zero"
    return ((got - want).norm() / want.norm()).item()


def assert_close(got: Tensor, want: Tensor, precision: str, what: str) -> None:
    err = rel_err(got, want)
    assert err < TOLERANCE[precision], f"{what}: relative error {err:.2e} ({precision})"


def leaves(*tensors: Tensor, device: torch.device, dtype: torch.dtype) -> list[Tensor]:
    """Copies of ``tensors`` on ``device`` in ``dtype`` that require grad."""
    return [t.detach().to(device, dtype).requires_grad_(True) for t in tensors]


def lora_reference(x, weight, bias, a, b, s, drop=None):
    """x W^T + b + s (x_a A^T) B^T, x_a = x with the ``drop`` entries zeroed."""
    x_a = x if drop is None else x.masked_fill(drop, 0.0)
    return x @ weight.T + bias + s * (x_a @ a.T) @ b.T


@pytest.mark.parametrize("with_drop", [False, True])
@pytest.mark.parametrize("precision", PRECISIONS)
def test_fused_lora_linear_matches_float64(precision: str, with_drop: bool) -> None:
    torch.manual_seed(10 + with_drop)
    d_in, d_out, rank, s = 96, 80, 8, 1.5
    x, g = torch.randn(4, 37, d_in), torch.randn(4, 37, d_out)
    weight, bias = torch.randn(d_out, d_in) / d_in**0.5, torch.randn(d_out)
    a, b = torch.randn(rank, d_in) / d_in**0.5, torch.randn(d_out, rank) / rank**0.5
    drop = torch.rand(x.shape) < 0.25 if with_drop else None

    xd, ad, bd = leaves(x, a, b, device=DEVICE, dtype=torch.float32)
    dropd = None if drop is None else drop.to(DEVICE)
    with autocast(precision):
        y = fused_lora_linear(xd, weight.to(DEVICE), bias.to(DEVICE), ad, bd, s, dropd)
    assert y.dtype == (torch.bfloat16 if precision == "bf16" else torch.float32)
    assert y.device.type == DEVICE.type
    grads = torch.autograd.grad(y, (xd, ad, bd), g.to(DEVICE, y.dtype))
    assert all(t.dtype == torch.float32 for t in grads)  # gradients in the leaves' dtype

    x64, a64, b64 = leaves(x, a, b, **CPU64)
    ref = lora_reference(x64, weight.double(), bias.double(), a64, b64, s, drop)
    ref_grads = torch.autograd.grad(ref, (x64, a64, b64), g.double())
    assert_close(y, ref, precision, "output")
    for name, got, want in zip(("x", "A", "B"), grads, ref_grads, strict=True):
        assert_close(got, want, precision, f"grad {name}")


@pytest.mark.parametrize("with_drop", [False, True])
@pytest.mark.parametrize("precision", PRECISIONS)
def test_lora_linear_fused_and_unfused_paths_match_float64(
    precision: str, with_drop: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """LoRALinear on a frozen base (fused path) and on a trainable one (plain autograd), with the
    same injected dropout mask, against the float64 formula with inverted dropout."""
    torch.manual_seed(20 + with_drop)
    p = 0.25 if with_drop else 0.0
    layer = LoRALinear(nn.Linear(96, 80).requires_grad_(False), rank=8, alpha=16, dropout=p)
    with torch.no_grad():
        layer.lora_B.normal_(0.0, 0.3)  # non-zero B, so the LoRA branch counts
    fused = layer.to(DEVICE).train()
    unfused = copy.deepcopy(fused)
    unfused.base_layer.requires_grad_(True)
    x, g = torch.randn(3, 41, 96), torch.randn(3, 41, 80)
    drop = torch.rand(x.shape) < p

    def injected_mask(shape: torch.Size, p_: float, device: torch.device) -> Tensor:
        assert tuple(shape) == x.shape and p_ == p and device.type == DEVICE.type
        return drop.to(device)

    monkeypatch.setattr(functional_module, "dropout_mask", injected_mask)
    base = layer.base_layer
    w64, b64 = base.weight.detach().double().cpu(), base.bias.detach().double().cpu()
    x64, a64, bb64 = leaves(x, layer.lora_A, layer.lora_B, **CPU64)
    ref = lora_reference(x64, w64, b64, a64, bb64, layer.scaling / (1 - p), drop if p else None)
    ref.backward(g.double())

    for path, model in (("fused", fused), ("unfused", unfused)):
        (xd,) = leaves(x, device=DEVICE, dtype=torch.float32)
        with autocast(precision):
            y = model(xd)
        assert ("FusedLoRALinear" in type(y.grad_fn).__name__) == (path == "fused")
        y.backward(g.to(DEVICE, y.dtype))
        assert_close(y, ref, precision, f"{path} output")
        assert_close(xd.grad, x64.grad, precision, f"{path} grad x")
        assert_close(model.lora_A.grad, a64.grad, precision, f"{path} grad A")
        assert_close(model.lora_B.grad, bb64.grad, precision, f"{path} grad B")
    assert fused.base_layer.weight.grad is None and unfused.base_layer.weight.grad is not None


def multihead_reference(m: MultiHeadLoRALinear, x, a, b, router, keep):
    """W x + b + s sum_i w_i B_i (keep_i * A x) - s B0 A0 x in float64, one head at a time:
    x (..., in), a (r, in), b (out, n, r), router (n, in) or None, keep (..., n, r) the keep-mask
    scaled by 1 / (1 - p); W, b and the offsets are read from ``m``."""
    base = m.base_layer
    y = x @ base.weight.detach().double().cpu().T + base.bias.detach().double().cpu()
    u = x @ a.T  # (..., r)
    w = torch.softmax(x @ router.T, -1) if router is not None else None
    for i in range(m.n_heads):
        head = (keep[..., i, :] * u) @ b[:, i, :].T
        y = y + m.scaling * (head if w is None else w[..., i : i + 1] * head)
    if m.offset_A is not None:
        off_a, off_b = m.offset_A.double().cpu(), m.offset_B.double().cpu()
        y = y - m.scaling * (x @ off_a.T) @ off_b.T
    return y


@pytest.mark.parametrize(("init", "router"), [("hydra", True), ("rlora", True), ("rlora", False)])
@pytest.mark.parametrize("with_drop", [False, True])
@pytest.mark.parametrize("precision", PRECISIONS)
def test_multihead_fused_and_unfused_paths_match_float64(
    precision: str, with_drop: bool, init: str, router: bool
) -> None:
    """MultiHeadLoRALinear (per_head_ax dropout) on a frozen base (``fused_multihead_linear``) and on a
    trainable one (plain autograd), one injected mask for both, against a per-head loop."""
    torch.manual_seed(30 + with_drop)
    p, n, r = (0.3 if with_drop else 0.0), 4, 4
    m = MultiHeadLoRALinear(
        nn.Linear(96, 80).requires_grad_(False),
        n_heads=n, rank=r, alpha=8, dropout=p, dropout_mode="per_head_ax", init=init,
        router=router,
    )  # fmt: skip
    with torch.no_grad():
        m.lora_B.normal_(0.0, 0.3)
        if m.router is not None:
            m.router.normal_(0.0, 0.3)
    fused = m.to(DEVICE).train()
    unfused = copy.deepcopy(fused)
    unfused.base_layer.requires_grad_(True)
    x, g = torch.randn(3, 41, 96), torch.randn(3, 41, 80)
    keep = (torch.rand(3, 41, n, r) >= p).double() / (1 - p)  # all ones without dropout

    def injected_mask(shape: tuple[int, ...], like: Tensor) -> Tensor:
        assert math.prod(shape) == keep.numel() and p > 0
        return keep.reshape(shape).to(like.device, like.dtype)

    for layer in (fused, unfused):
        layer._dropout_mask = injected_mask  # type: ignore[method-assign]
    names = ["lora_A", "lora_B"] + (["router"] if router else [])
    x64, *params64 = leaves(x, *(getattr(m, k) for k in names), **CPU64)
    ref = multihead_reference(m, x64, *params64[:2], params64[2] if router else None, keep)
    ref.backward(g.double())

    for path, layer in (("fused", fused), ("unfused", unfused)):
        (xd,) = leaves(x, device=DEVICE, dtype=torch.float32)
        with autocast(precision):
            y = layer(xd)
        assert ("FusedMultiHead" in type(y.grad_fn).__name__) == (path == "fused")
        y.backward(g.to(DEVICE, y.dtype))
        assert_close(y, ref, precision, f"{path} output")
        assert_close(xd.grad, x64.grad, precision, f"{path} grad x")
        for name, want in zip(names, params64, strict=True):
            assert_close(getattr(layer, name).grad, want.grad, precision, f"{path} grad {name}")


@pytest.mark.parametrize("p", [0.05, 0.3])
def test_dropout_mask_rate_and_seed(p: float) -> None:
    shape = (1000, 2000)
    torch.manual_seed(0)
    mask = dropout_mask(shape, p, DEVICE)
    assert mask.dtype == torch.bool and mask.shape == shape and mask.device.type == DEVICE.type
    sigma = (p * (1 - p) / mask.numel()) ** 0.5
    assert abs(mask.float().mean().item() - p) < 5 * sigma
    halves = mask[:, :1000].float().mean() - mask[:, 1000:].float().mean()
    assert abs(halves.item()) < 10 * sigma  # no pattern across the tensor
    assert not torch.equal(dropout_mask(shape, p, DEVICE), mask)  # the next draw differs
    torch.manual_seed(0)
    assert torch.equal(dropout_mask(shape, p, DEVICE), mask)  # the same seed, the same mask
    torch.manual_seed(1)
    assert not torch.equal(dropout_mask(shape, p, DEVICE), mask)
    assert not dropout_mask((10_000,), 0.0, DEVICE).any()


def mtlora_model(seed: int = 0, **options: object) -> nn.Module:
    """The course Swin (random weights, always the same) with MTLoRA on the four dense tasks;
    adapters and decoders drawn from ``seed``."""
    torch.manual_seed(0)
    swin = build_course_swin()
    torch.manual_seed(seed)
    return build_model(
        swin,
        build_tasks(DENSE_TASKS),
        "mtlora",
        features="stage",
        decoder_channels=DECODER_CHANNELS,
        **options,
    )


def test_mtlora_training_step() -> None:
    """Two ``fit`` steps on DEVICE (bf16 autocast on CUDA, as the course trains): finite losses,
    gradients on trainable parameters only, every adapter moved, frozen weights unchanged."""
    tasks = build_tasks(DENSE_TASKS)
    model = mtlora_model()  # MTLoRA's official options: dropout 0.05, trainable norms
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    train, val = make_loaders(list(tasks), n_train=16, n_val=8, seed=0, batch_size=8)
    history = fit(model, tasks, train, val, max_steps=2, lr=1e-3, device=DEVICE, progress=False)
    assert len(history.steps) == 2 and all(math.isfinite(s["loss"]) for s in history.steps)
    assert all(math.isfinite(v) for m in history.final.values() for v in m.values())
    swin = model.encoder.backbone
    last_block = (
        f"encoder.backbone.layers.{len(swin.layers) - 1}.blocks.{len(swin.layers[-1].blocks) - 1}."
    )
    unread = set()  # trainable, but no task reads them: the shared stream of the last block
    for name, param in model.named_parameters():
        assert param.device.type == DEVICE.type
        if not param.requires_grad:
            assert param.grad is None, name
            assert torch.equal(param.detach().cpu(), before[name]), f"frozen {name} changed"
        elif param.grad is None:
            unread.add(name)
        else:
            assert torch.isfinite(param.grad).all(), name
    assert all(n.startswith(last_block) and ".tasks." not in n for n in unread), unread
    adapters = [n for n, _ in model.named_parameters() if ".lora_" in n and n not in unread]
    assert any(".tasks." in n for n in adapters) and any(".tasks." not in n for n in adapters)
    for name in adapters:
        moved = not torch.equal(model.get_parameter(name).detach().cpu(), before[name])
        assert moved, f"adapter {name} did not move"


def rlora_model(seed: int = 0) -> nn.Module:
    """The course Swin (random weights, always the same) with a 7-way head and R-LoRA (random
    heads and their offset buffers, drawn from ``seed``) on qkv / proj / fc1 / fc2."""
    torch.manual_seed(0)
    swin = build_course_swin(num_classes=7)
    torch.manual_seed(seed)
    inject_multihead_lora(swin, TIMM_TARGETS, n_heads=4, rank=4, init="rlora", dropout=0.1)
    mark_only_adapters_trainable(swin, extra=["head"])
    return swin


@pytest.mark.parametrize("kind", ["mtlora", "rlora"])
@pytest.mark.usefixtures("ieee_fp32")
def test_save_on_device_load_on_cpu(kind: str, tmp_path: Path) -> None:
    build = mtlora_model if kind == "mtlora" else rlora_model
    model = randomize_b(build()).to(DEVICE)  # non-zero B, so the round trip means something
    path = save_adapters(model, tmp_path / f"{kind}.safetensors")
    fresh = build(seed=1)  # on the CPU: the same base, other adapters (and offsets) until loaded
    saved, loaded = adapter_state_dict(model), adapter_state_dict(fresh)
    assert saved.keys() == loaded.keys()
    assert not all(torch.equal(t.cpu(), loaded[k]) for k, t in saved.items())
    load_adapters(fresh, path)
    loaded = adapter_state_dict(fresh)
    assert next(fresh.parameters()).device.type == "cpu"
    for name, tensor in saved.items():
        assert torch.equal(tensor.cpu(), loaded[name]), name
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        out_dev, out_cpu = model.eval()(x.to(DEVICE)), fresh.eval()(x)
    pairs = out_dev.items() if isinstance(out_dev, dict) else [("logits", out_dev)]
    for task, got in pairs:
        want = out_cpu[task] if isinstance(out_cpu, dict) else out_cpu
        assert rel_err(got, want) < 1e-4, task


def randomize_b(model: nn.Module, seed: int = 5) -> nn.Module:
    """Every adapter's B (shared and per task) drawn at random, so that A gets a gradient and
    the adapters change the outputs; returns ``model``."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("lora_B"):
                param.normal_(0.0, 0.1)
    return model


# The compile checks use a shallower course Swin (stage 1 keeps its shifted-window block; every
# other stage keeps one block, which MTLoRA gives task branches): the same module types as the
# course's, at half the tracing and compile time.
COMPILE_DEPTHS = (2, 1, 1, 1)


def lora_model(dropout: float) -> nn.Module:
    """A shallow course Swin with LoRA r=4 on qkv / proj / fc1 / fc2 and a 7-way head."""
    torch.manual_seed(0)
    swin = build_course_swin(num_classes=7, depths=COMPILE_DEPTHS)
    inject_lora(swin, TIMM_TARGETS, rank=4, alpha=8, dropout=dropout)
    mark_only_adapters_trainable(swin, extra=["head"])
    return randomize_b(swin)


def shallow_mtlora_model(dropout: float) -> nn.Module:
    """A shallow course Swin with MTLoRA on two dense tasks."""
    torch.manual_seed(0)
    swin = build_course_swin(depths=COMPILE_DEPTHS)
    tasks = build_tasks(["semseg", "normals"])
    model = build_model(
        swin, tasks, "mtlora", features="stage", decoder_channels=DECODER_CHANNELS, dropout=dropout
    )
    return randomize_b(model)


def scalar_loss(out: Tensor | dict[str, Tensor]) -> Tensor:
    """A loss that reads every output: the sum of mean squares."""
    outs = out.values() if isinstance(out, dict) else [out]
    return sum(o.float().square().mean() for o in outs)  # type: ignore[return-value]


COMPILED = {"lora": lora_model, "mtlora": shallow_mtlora_model}


@pytest.mark.parametrize("kind", COMPILED)
def test_compile_traces_the_training_forward_in_one_graph(kind: str) -> None:
    """Dynamo traces the training forward (dropout on, bf16 autocast, as the course and the
    benchmark train) in one graph: no graph breaks."""
    torch._dynamo.reset()
    model = COMPILED[kind](dropout=0.05).to(DEVICE).train()
    x = torch.randn(4, 3, 64, 64, device=DEVICE)
    with torch.autocast(DEVICE.type, dtype=torch.bfloat16):
        explained = torch._dynamo.explain(model)(x)
    torch._dynamo.reset()
    reasons = [r.reason.splitlines()[0] for r in explained.break_reasons]
    assert explained.graph_break_count == 0, f"{explained.graph_break_count} breaks: {reasons}"
    assert explained.graph_count == 1


@pytest.mark.usefixtures("ieee_fp32")
@pytest.mark.parametrize("kind", COMPILED)
def test_compiled_training_step_matches_eager(kind: str) -> None:
    """The compiled model (dropout off, so that neither draws random numbers) gives eager's
    outputs and gradients."""
    torch._dynamo.reset()
    eager = COMPILED[kind](dropout=0.0).to(DEVICE).train()
    compiled_model = copy.deepcopy(eager)
    compiled = torch.compile(compiled_model)
    x = torch.randn(4, 3, 64, 64, device=DEVICE)
    out_eager, out_compiled = eager(x), compiled(x)
    scalar_loss(out_eager).backward()
    scalar_loss(out_compiled).backward()
    torch._dynamo.reset()
    pairs = out_eager.items() if isinstance(out_eager, dict) else [("logits", out_eager)]
    for task, want in pairs:
        got = out_compiled[task] if isinstance(out_compiled, dict) else out_compiled
        assert rel_err(got, want) < 1e-4, f"output {task}"
    grads = {n: p.grad for n, p in eager.named_parameters() if p.grad is not None}
    # the same parameters get gradients: all trainable ones but those that no output reads
    compiled_grads = {n for n, p in compiled_model.named_parameters() if p.grad is not None}
    assert grads and compiled_grads == set(grads)
    # Per parameter, relative to its own size, with a floor for gradients that are zero in exact
    # arithmetic (a bias before a batch norm) and only rounding noise here.
    floor = 1e-6 * torch.cat([g.flatten() for g in grads.values()]).norm().item()
    for name, want in grads.items():
        diff = (compiled_model.get_parameter(name).grad - want).norm().item()
        assert diff <= 1e-3 * want.norm().item() + floor, f"grad {name}: {diff:.2e}"
