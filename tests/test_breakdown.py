"""Parameter breakdowns are exact and grouped by structure."""

from __future__ import annotations

import timm
from torch import nn

from mtlora_lite.adapters.breakdown import count_parameters, trainable_breakdown
from mtlora_lite.adapters.freezing import mark_only_adapters_trainable
from mtlora_lite.adapters.lora import inject_lora


def test_breakdown_on_swin_tiny_is_exact() -> None:
    model = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False)
    inject_lora(model, ["attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2"], rank=16)
    mark_only_adapters_trainable(model, extra=["head", nn.LayerNorm])
    table = trainable_breakdown(model, {"head": "head"})
    # Per block, rank r adds r * (C + 3C) + r * (C + C) + r * (C + 4C) + r * (4C + C) = 16 C r.
    blocks = [(96, 2), (192, 2), (384, 6), (768, 2)]
    assert table.rows["lora"] == (16 * 16 * sum(c * n for c, n in blocks),) * 2
    assert table.rows["lora"][0] == 1_130_496
    assert table.rows["head"] == (768 * 1000 + 1000,) * 2
    norms = sum(
        p.numel() for m in model.modules() if isinstance(m, nn.LayerNorm) for p in m.parameters()
    )
    assert table.rows["norms"] == (norms, norms)
    assert table.rows["position bias"][0] == 0
    assert (table.trainable, table.total) == count_parameters(model)
    assert "lora" in str(table) and "trainable" in table._repr_html_()


def test_tied_parameters_count_once() -> None:
    lin = nn.Linear(4, 4)
    model = nn.Sequential(lin, nn.ReLU(), lin)
    table = trainable_breakdown(model)
    assert table.total == count_parameters(model)[1] == 20


def test_model_defined_groups() -> None:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.encoder = nn.Linear(4, 4)
            self.decoders = nn.ModuleDict({"a": nn.Linear(4, 2)})

        def breakdown_groups(self) -> dict[str, str]:
            return {"decoders": "decoders"}

    net = Net()
    inject_lora(net, "encoder", rank=2)
    mark_only_adapters_trainable(net, extra=["decoders"])
    table = trainable_breakdown(net)
    assert table.rows["decoders"] == (10, 10)
    assert table.rows["lora"] == (16, 16)
    assert table.rows["other"] == (0, 20)  # the frozen base layer inside the adapter
