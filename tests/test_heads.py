"""Head similarity, its recorder, router statistics and their plots, on hand-computable cases."""

from __future__ import annotations

import io
import math

import pytest
import torch
from matplotlib.figure import Figure
from torch import Tensor, nn

from mtlora_lite.adapters.head_plots import (
    plot_head_cosine_matrix,
    plot_head_similarity,
    plot_head_similarity_curves,
    split_layer_name,
)
from mtlora_lite.adapters.heads import (
    adapter_spectra,
    collapsed_head,
    effective_rank,
    head_cosine_matrix,
    head_similarity,
    head_spectra,
    router_statistics,
)
from mtlora_lite.adapters.lora import LoRALinear
from mtlora_lite.adapters.multihead import MultiHeadLoRALinear, inject_multihead_lora
from mtlora_lite.course import plots as course_plots
from mtlora_lite.course.compare import paired
from mtlora_lite.course.plots import (
    plot_head_spectra,
    plot_paired_gains,
    plot_per_task_accuracy,
    plot_router_collapse,
    plot_seed_scatter,
)
from mtlora_lite.multitask.history import HeadSimilarityRecorder
from mtlora_lite.multitask.train import fit


def layer(
    n_heads: int = 2, rank: int = 2, d_in: int = 3, d_out: int = 2, **kw
) -> MultiHeadLoRALinear:
    torch.manual_seed(0)
    return MultiHeadLoRALinear(nn.Linear(d_in, d_out), n_heads=n_heads, rank=rank, **kw)


def set_heads(m: MultiHeadLoRALinear, *heads: list[list[float]]) -> None:
    with torch.no_grad():
        m.lora_B.copy_(torch.tensor(heads).permute(1, 0, 2))  # heads (n, out, r) -> (out, n, r)


def test_identical_heads_have_similarity_one() -> None:
    m = layer(n_heads=3)
    set_heads(m, [[1.0, 2.0], [3.0, -1.0]], [[1.0, 2.0], [3.0, -1.0]], [[2.0, 4.0], [6.0, -2.0]])
    model = nn.Sequential(m)
    for mode in ("B", "delta"):
        assert head_similarity(model, mode) == {"0": pytest.approx(1.0)}
        torch.testing.assert_close(
            head_cosine_matrix(m, mode), torch.ones(3, 3, dtype=torch.double)
        )


def test_two_known_heads_by_hand() -> None:
    m = layer(n_heads=2, rank=2, d_in=2, d_out=2, init="hydra")
    set_heads(m, [[1.0, 0.0], [0.0, 0.0]], [[1.0, 1.0], [0.0, 0.0]])
    # Flattened B_1 = (1, 0, 0, 0), B_2 = (1, 1, 0, 0): cosine 1 / sqrt(2).
    assert head_similarity(nn.Sequential(m))["0"] == pytest.approx(1 / math.sqrt(2))
    with torch.no_grad():
        m.lora_A.copy_(torch.tensor([[1.0, 0.0], [1.0, 0.0]]))
    # B_1 A = [[1, 0], [0, 0]], B_2 A = [[2, 0], [0, 0]]: parallel updates, cosine 1.
    assert head_similarity(nn.Sequential(m), mode="delta")["0"] == pytest.approx(1.0)


def test_delta_mode_equals_dense_computation() -> None:
    m = layer(n_heads=4, rank=3, d_in=7, d_out=5)
    deltas = torch.stack([(m.lora_B[:, i] @ m.lora_A).flatten() for i in range(4)]).double()
    dense = nn.functional.cosine_similarity(deltas[:, None], deltas[None, :], dim=-1)
    torch.testing.assert_close(head_cosine_matrix(m, "delta"), dense.detach())
    with pytest.raises(ValueError, match="mode must be one of"):
        head_cosine_matrix(m, "A")


def test_zero_heads_single_head_and_centred_pairs() -> None:
    assert math.isnan(head_similarity(nn.Sequential(layer(init="hydra")))["0"])
    assert math.isnan(head_similarity(nn.Sequential(layer(n_heads=1)))["0"])
    centred = layer(n_heads=2, rank=4, d_in=8, d_out=8, init="rlora_centered")
    assert head_similarity(nn.Sequential(centred))["0"] == pytest.approx(-1.0)
    with pytest.raises(ValueError, match="no MultiHeadLoRALinear"):
        head_similarity(nn.Linear(2, 2))


def test_effective_rank_counts_equal_directions() -> None:
    assert effective_rank(torch.ones(5)) == pytest.approx(5.0)
    assert effective_rank(torch.tensor([3.0, 0.0, 0.0])) == pytest.approx(1.0)
    assert effective_rank(torch.tensor([2.0, 2.0, 0.0])) == pytest.approx(2.0)
    assert effective_rank(7 * torch.tensor([2.0, 1.0])) == pytest.approx(
        effective_rank(torch.tensor([2.0, 1.0]))
    )
    assert math.isnan(effective_rank(torch.zeros(3)))


def _moved(m: MultiHeadLoRALinear) -> MultiHeadLoRALinear:
    """``m`` with A and the heads moved away from their init (a stand-in for training)."""
    with torch.no_grad():
        m.lora_A.add_(0.3 * torch.randn_like(m.lora_A))
        m.lora_B.add_(0.3 * torch.randn_like(m.lora_B))
    return m


@pytest.mark.parametrize(("init", "router"), [("hydra", True), ("rlora", True), ("rlora", False)])
def test_head_spectra_equal_dense_svd(init: str, router: bool) -> None:
    m = _moved(layer(n_heads=3, rank=2, d_in=9, d_out=7, init=init, router=router, alpha=3.0))
    s, B, A = m.scaling, m.lora_B.detach().double(), m.lora_A.detach().double()
    spectra = head_spectra(m)
    stacked = torch.cat([s * B[:, i] @ A for i in range(3)], 1)  # (out, n in)
    torch.testing.assert_close(spectra.heads, torch.linalg.svdvals(stacked)[:6])
    update = s * B.sum(1) @ A / (3 if router else 1)
    if m.offset_A is not None:  # R-LoRA's offset: rank up to 2 r
        update = update - s * m.offset_B.double() @ m.offset_A.double()
    k = len(spectra.update)
    assert k == (4 if init == "rlora" else 2)
    torch.testing.assert_close(spectra.update, torch.linalg.svdvals(update)[:k])
    if not router:  # the router-free update is what merging folds in
        torch.testing.assert_close(update, m.delta_weight().detach().double())


def test_similar_heads_write_fewer_directions() -> None:
    """n identical heads of rank r write r directions: the layer acts like a rank-r LoRA."""
    m = _moved(layer(n_heads=4, rank=2, d_in=12, d_out=10, init="rlora"))
    diverse = effective_rank(head_spectra(m).heads)
    with torch.no_grad():
        m.lora_B.copy_(m.lora_B[:, :1].expand_as(m.lora_B))  # every head = head 0
    alike = head_spectra(m).heads
    assert (alike[2:] < 1e-9).all() and effective_rank(alike) <= 2.0 + 1e-9
    assert diverse > 2 * effective_rank(alike) - 1


def test_lora_spectra_and_model_level() -> None:
    torch.manual_seed(0)
    lora = LoRALinear(nn.Linear(6, 5), rank=3, alpha=6.0)
    with torch.no_grad():
        lora.lora_B.normal_()
    spectra = head_spectra(lora)
    expected = torch.linalg.svdvals(lora.delta_weight().detach().double())[:3]
    torch.testing.assert_close(spectra.heads, expected)
    torch.testing.assert_close(spectra.update, expected)
    model = nn.Sequential(lora, layer(d_in=5, d_out=4))
    assert list(adapter_spectra(model)) == ["0", "1"]
    with pytest.raises(ValueError, match="inject_multihead_lora or inject_lora"):
        adapter_spectra(nn.Linear(2, 2))
    with pytest.raises(TypeError, match="MultiHeadLoRALinear or LoRALinear"):
        head_spectra(nn.Linear(2, 2))  # type: ignore[arg-type]


def test_collapsed_head_rule() -> None:
    assert collapsed_head([0.02, 0.95, 0.03]) == 1
    assert collapsed_head([0.9, 0.1]) == 0  # at the threshold counts
    assert collapsed_head([0.25, 0.25, 0.25, 0.25]) is None
    assert collapsed_head([0.8, 0.2]) is None
    assert collapsed_head([0.8, 0.2], threshold=0.75) == 0
    with pytest.raises(ValueError, match="threshold"):
        collapsed_head([0.5, 0.5], threshold=0.5)  # two heads could pass it
    with pytest.raises(ValueError, match="one mean routing weight per head"):
        collapsed_head([])


class Images(nn.Module):
    """(B, 3, 2, 2) images -> (B, 4, 3) tokens -> two multi-head layers -> {"y": (B, 1)}."""

    def __init__(self, init: str) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(nn.Linear(3, 3) for _ in range(2))
        self.head = nn.Linear(3, 1)
        inject_multihead_lora(self, ["blocks.0", "blocks.1"], n_heads=3, rank=2, init=init)

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        x = images.flatten(2).transpose(1, 2)  # (B, 4, 3)
        for block in self.blocks:
            x = torch.tanh(block(x))
        return {"y": self.head(x.mean(1))}


class Regression:
    name = "y"

    def loss(self, pred: Tensor, target: Tensor) -> Tensor:
        return nn.functional.mse_loss(pred, target)

    def new_metric(self) -> None:
        return None


def batches(n: int, size: int = 4) -> list[tuple[Tensor, dict[str, Tensor]]]:
    gen = torch.Generator().manual_seed(0)
    out = []
    for _ in range(n):
        images = torch.randn(size, 3, 2, 2, generator=gen)
        task = torch.arange(size) % 2
        out.append(
            (images, {"y": images.mean((1, 2, 3))[:, None], "answer": torch.stack([task, task], 1)})
        )
    return out


def test_recorder_during_fit() -> None:
    model = Images(init="hydra")
    recorder = HeadSimilarityRecorder(every=2)
    fit(
        model,
        {"y": Regression()},
        batches(3),
        max_steps=5,
        lr=0.05,
        device="cpu",
        progress=False,
        callbacks=[recorder],
    )
    assert recorder.steps == [0, 2, 4]
    assert set(recorder.values[0]) == {"blocks.0", "blocks.1"}
    steps, mean = recorder.curve()
    assert steps == [0, 2, 4] and math.isnan(mean[0])  # all heads zero before the first step
    assert all(-1.0 <= v <= 1.0 for v in mean[1:])
    assert recorder.curve("blocks.1")[1][2] == recorder.values[2]["blocks.1"]
    assert recorder.to_dict()["steps"] == [0, 2, 4]
    with pytest.raises(ValueError, match="every"):
        HeadSimilarityRecorder(every=0)


def test_router_statistics_uniform_router_and_per_task() -> None:
    model = Images(init="rlora")  # zero router: every weight 1/3
    stats = router_statistics(model, batches(2), task_of=lambda t: t["answer"][:, 1])
    s = stats["blocks.0"]
    assert s.tokens == 2 * 4 * 4
    assert s.mean_weight == pytest.approx([1 / 3] * 3)
    assert s.entropy == pytest.approx(math.log(3))
    assert sorted(s.per_task) == [0, 1] and s.per_task[1].tokens == 16


def test_router_statistics_match_hand_computation() -> None:
    model = Images(init="rlora")
    with torch.no_grad():
        model.blocks[0].router.copy_(torch.tensor([[1.0, 0, 0], [0, 2.0, 0], [0, 0, 0]]))
    data = batches(2)
    stats = router_statistics(model, data, task_of=lambda t: t["answer"][:, 1])["blocks.0"]
    tokens = torch.cat([images for images, _ in data]).flatten(2).transpose(1, 2)  # (8, 4, 3)
    w = torch.softmax(tokens @ model.blocks[0].router.T, -1).double()  # (8, 4, 3)
    assert stats.mean_weight == pytest.approx(w.mean((0, 1)).tolist())
    assert stats.entropy == pytest.approx(-(w * w.log()).sum(-1).mean().item())
    odd = w[torch.arange(8) % 2 == 1]
    assert stats.per_task[1].mean_weight == pytest.approx(odd.mean((0, 1)).tolist())
    assert model.training  # mode restored
    with pytest.raises(ValueError, match="with a router"):
        router_statistics(nn.Sequential(layer(router=False)), data)


def test_split_layer_name() -> None:
    assert split_layer_name("layers.0.blocks.1.attn.qkv") == ("layers.0.blocks.1", "attn.qkv")
    assert split_layer_name("blocks.3.mlp.fc2") == ("blocks.3", "mlp.fc2")
    assert split_layer_name("proj") == ("", "proj")
    assert split_layer_name("encoder.0") == ("", "encoder.0")


def test_plots_return_labelled_figures() -> None:
    sim = {
        "layers.0.blocks.0.attn.qkv": 0.9,
        "layers.0.blocks.0.mlp.fc1": 0.1,
        "layers.0.blocks.1.attn.qkv": math.nan,
        "layers.1.blocks.0.mlp.fc1": -0.3,
    }
    fig = plot_head_similarity(sim)
    ax = fig.axes[0]
    assert isinstance(fig, Figure) and len(fig.axes) == 2  # heatmap + colour bar
    assert [t.get_text() for t in ax.get_xticklabels()] == ["attn.qkv", "mlp.fc1"]
    assert len(ax.get_yticklabels()) == 3 and ax.get_title() and ax.get_xlabel()
    grid = ax.images[0].get_array()
    assert grid[0, 0] == 0.9 and grid[2, 1] == -0.3
    assert grid.mask[1, 0] and grid.mask[2, 0]  # NaN and missing cells stay blank
    fig = plot_head_cosine_matrix(head_cosine_matrix(layer(n_heads=4)))
    assert fig.axes[0].get_xlabel() == "head j" and len(fig.axes) == 2
    fig = plot_head_similarity_curves(
        {
            "hydra": ([0, 10, 20], [math.nan, 0.9, 0.95]),
            "rlora": ([0, 10, 20], [[0.0, 0.1, 0.2], [0.0, 0.2, 0.3]]),
        }
    )
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert labels == ["hydra", "rlora (2 seeds)"] and fig.axes[0].get_ylabel()
    fig = plot_per_task_accuracy(
        {
            "LoRA r=32": {"count": [0.8, 0.82], "shape": [0.7, 0.74]},
            "R-LoRA": {"count": [0.85, 0.8], "shape": [0.71, 0.7]},
        }
    )
    ax = fig.axes[0]
    assert ax.get_ylabel() == "accuracy" and "2 seed" in ax.get_title()
    assert len(ax.patches) == 4 and [t.get_text() for t in ax.get_xticklabels()] == [
        "count",
        "shape",
    ]
    fig.savefig(io.BytesIO(), format="png")  # renders without error


def test_the_head_figures_are_the_librarys_and_exported() -> None:
    import mtlora_lite
    import mtlora_lite.adapters as adapters

    assert course_plots.plot_head_similarity is plot_head_similarity  # the course re-exports them
    assert adapters.plot_head_similarity_curves is plot_head_similarity_curves
    assert mtlora_lite.plot_head_similarity is plot_head_similarity
    assert mtlora_lite.head_cosine_matrix is head_cosine_matrix


def test_plots_of_collapse_spectra_and_paired_gains() -> None:
    fig = plot_router_collapse(
        {
            "encoder.layers.2.blocks.0.attn.qkv": [0.4, 0.5],
            "encoder.layers.3.blocks.1.mlp.fc2": [0.97, 0.95],
        }
    )
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["2.0 attn.qkv", "3.1 mlp.fc2"]
    colours = [tuple(c) for coll in ax.collections for c in coll.get_facecolors()]
    assert len(colours) == 4 and len(set(colours[:2])) == 1 and colours[0] != colours[2]
    with pytest.raises(ValueError, match="max_weight is empty"):
        plot_router_collapse({})
    fig = plot_head_spectra(
        {"hydra": [4.0, 2.0, 0.1, 0.0], "rlora": [2.0, 1.9, 1.8, 1.7]},
        {"hydra": {"heads": [2.1, 2.3], "update": [1.5, 1.6]}, "rlora": {"heads": [3.9, 3.8]}},
        references={"r": 2, "n r": 4},
        layer="fc1",
    )
    ax_sv, ax_er = fig.axes
    assert ax_sv.lines[0].get_ydata()[0] == 1.0 and "fc1" in ax_sv.get_title()
    assert len(ax_er.patches) == 4  # 2 variants x 2 measures (rlora's "update" is a NaN bar)
    assert [t.get_text() for t in ax_er.get_legend().get_texts()] == ["heads", "update"]
    verdicts = [
        paired([50.0, 52.0, 49.0], [48.0, 50.0, 48.5], names=("R-LoRA", "HydraLoRA")),
        paired([50.0, 47.0, 49.0], [48.0, 50.0, 48.5], names=("no router", "R-LoRA")),
    ]
    fig = plot_paired_gains(verdicts, title="gains")
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert labels == [
        "no router vs R-LoRA (2 of 3 seeds higher)",
        "R-LoRA vs HydraLoRA (3 of 3 seeds higher)",
    ]
    assert ax.patches[0].get_width() == pytest.approx(verdicts[0].mean)
    with pytest.raises(ValueError, match="verdicts is empty"):
        plot_paired_gains([])
    fig = plot_seed_scatter(
        {"a": [1.0, 2.0], "b": [3.0]}, {"a": [50.0, 52.0], "b": [49.0]}, "rank", "acc"
    )
    ax = fig.axes[0]
    assert ax.get_xlabel() == "rank" and len(ax.lines) == 4  # dots and a mean cross per variant
    assert ax.lines[1].get_xdata()[0] == 1.5 and ax.lines[1].get_ydata()[0] == 51.0
    with pytest.raises(ValueError, match="one per seed"):
        plot_seed_scatter({"a": [1.0]}, {"a": [1.0, 2.0]}, "x", "y")
    for fig in (plot_router_collapse({"x": [0.5]}), plot_paired_gains(verdicts)):
        fig.savefig(io.BytesIO(), format="png")  # renders without error
