"""Task decoders: shapes, the official parameter count, a hand-computed forward, errors."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from mtlora_lite.multitask.decoders import (
    ClassificationHead,
    DenseDecoder,
    build_decoder,
    default_channels,
)


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def course_features(batch: int = 2) -> list[torch.Tensor]:
    shapes = [(64, 8, 8), (128, 4, 4), (256, 2, 2), (256, 2, 2)]
    return [torch.randn(batch, *s) for s in shapes]


def test_dense_decoder_shapes_square_and_not() -> None:
    torch.manual_seed(0)
    decoder = DenseDecoder([64, 128, 256, 256], 5)
    feats = course_features()
    assert decoder(feats, (64, 64)).shape == (2, 5, 64, 64)
    assert decoder(feats, (48, 80)).shape == (2, 5, 48, 80)
    assert default_channels(4) == [18, 36, 72, 144]


def test_dense_decoder_matches_the_official_parameter_count() -> None:
    # Swin-T stage features as the official code feeds them: 192 / 384 / 768 / 768 channels.
    for out in (21, 7, 1, 3):
        decoder = DenseDecoder([192, 384, 768, 768], out, [18, 36, 72, 144])
        projections = 192 * 18 + 384 * 36 + 768 * 72 + 768 * 144  # 1x1 convs without bias
        fused = 270
        head = fused * 4 * fused + 4 * fused + 2 * 4 * fused + 4 * fused * out + out
        assert n_params(decoder) == projections + head
    assert projections == 183_168


def test_dense_decoder_forward_by_hand() -> None:
    torch.manual_seed(0)
    decoder = DenseDecoder([4, 6], 3, channels=[2, 2], expansion=2).eval()
    f0, f1 = torch.randn(1, 4, 4, 4), torch.randn(1, 6, 2, 2)
    p0 = F.conv2d(f0, decoder.project[0].weight)
    p1 = F.interpolate(F.conv2d(f1, decoder.project[1].weight), (4, 4), mode="bilinear")
    conv1, bn, _, conv2 = decoder.head
    h = F.relu(bn(conv1(torch.cat([p0, p1], 1))))
    expected = F.interpolate(conv2(h), (8, 12), mode="bilinear")
    torch.testing.assert_close(decoder([f0, f1], (8, 12)), expected)
    # The finest map need not come first.
    torch.testing.assert_close(
        DenseDecoder([6], 3, [2])([f1], (8, 8)).shape, torch.Size([1, 3, 8, 8])
    )


def test_classification_head_pools_the_last_map() -> None:
    torch.manual_seed(0)
    head = ClassificationHead(256, 10)
    feats = course_features()
    expected = head.fc(head.norm(feats[-1].mean(dim=(2, 3))))
    torch.testing.assert_close(head(feats, (64, 64)), expected)
    assert head(feats).shape == (2, 10)


def test_build_decoder_by_task_kind() -> None:
    dense = SimpleNamespace(out_channels=4, dense=True)
    label = SimpleNamespace(out_channels=6, dense=False)
    assert isinstance(build_decoder(dense, [64, 128, 256, 256]), DenseDecoder)
    head = build_decoder(label, [64, 128, 256, 256])
    assert isinstance(head, ClassificationHead) and head.fc.in_features == 256


def test_decoder_errors() -> None:
    with pytest.raises(ValueError, match="one projection width per feature map"):
        DenseDecoder([64, 128], 3, channels=[18, 36, 72])
    with pytest.raises(ValueError, match="one projection width per feature map"):
        DenseDecoder([], 3)
    with pytest.raises(ValueError, match="expected 4 feature maps, got 3"):
        DenseDecoder([64, 128, 256, 256], 3)(course_features()[:3], (64, 64))
