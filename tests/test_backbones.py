from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from timm.models.swin_transformer import SwinTransformer

from mtlora_lite.course.backbones import (
    CARD_NAME,
    CHECKPOINT_NAME,
    COURSE_SWIN_CONFIG,
    build_course_swin,
    data_dir,
    load_backbone,
    load_course_card,
    save_course_checkpoint,
)
from mtlora_lite.multitask.backbones import feature_channels, stage_features


def fp16_exact_model(seed: int = 0) -> SwinTransformer:
    """A course Swin whose weights survive fp16 storage exactly."""
    torch.manual_seed(seed)
    model = build_course_swin()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.half().float())
    return model.eval()


def test_course_config_shapes_and_size() -> None:
    model = load_backbone("course", pretrained=False)
    assert isinstance(model, SwinTransformer)
    assert sum(p.numel() for p in model.parameters()) == 2_675_174
    feats = stage_features(model, torch.randn(2, 3, 64, 64))
    assert [tuple(f.shape) for f in feats] == [
        (2, 32, 16, 16),
        (2, 64, 8, 8),
        (2, 128, 4, 4),
        (2, 256, 2, 2),
    ]
    assert feature_channels(model) == [32, 64, 128, 256]
    assert model(torch.randn(2, 3, 64, 64)).shape == (2, 256)  # pooled, no classifier


def test_round_trip_through_data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MTLORA_LITE_DATA", str(tmp_path))
    assert data_dir() == tmp_path
    model = fp16_exact_model()
    path = save_course_checkpoint(model, card={"steps": 3})
    assert path == tmp_path / CHECKPOINT_NAME and path.stat().st_size < 6_000_000  # fp16
    card = load_course_card()
    assert card["steps"] == 3 and card["config"]["depths"] == [2, 2, 4, 2]
    loaded = load_backbone("course").eval()
    assert all(p.dtype == torch.float32 for p in loaded.parameters())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        for a, b in zip(stage_features(model, x), stage_features(loaded, x), strict=True):
            assert torch.equal(a, b)


def test_fp32_checkpoint_and_explicit_folder(tmp_path: Path) -> None:
    torch.manual_seed(1)
    model = build_course_swin().eval()
    save_course_checkpoint(model, tmp_path, dtype=torch.float32)
    loaded = load_backbone("course", checkpoint_dir=tmp_path).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))


def test_missing_file_says_how_to_create_it(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"python -m mtlora_lite\.course\.pretrain"):
        load_backbone("course", checkpoint_dir=tmp_path)
    assert load_backbone("course", pretrained=False, checkpoint_dir=tmp_path) is not None


def test_sha_mismatch_raises(tmp_path: Path) -> None:
    path = save_course_checkpoint(fp16_exact_model(), tmp_path)
    data = bytearray(path.read_bytes())
    data[-1] ^= 1  # flip one bit of the last weight
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="sha256"):
        load_backbone("course", checkpoint_dir=tmp_path)


def test_config_mismatch_raises(tmp_path: Path) -> None:
    save_course_checkpoint(fp16_exact_model(), tmp_path)
    card = json.loads((tmp_path / CARD_NAME).read_text())
    card["config"]["embed_dim"] = 48
    (tmp_path / CARD_NAME).write_text(json.dumps(card))
    with pytest.raises(ValueError, match="config"):
        load_backbone("course", checkpoint_dir=tmp_path)
    assert COURSE_SWIN_CONFIG["embed_dim"] == 32


@pytest.mark.parametrize(
    ("name", "channels", "sizes"),
    [
        ("swin_tiny_patch4_window7_224", [96, 192, 384, 768], [56, 28, 14, 7]),
        ("vit_small_patch16_224", [384], [14]),
    ],
)
def test_stage_features_on_timm_models(name: str, channels: list[int], sizes: list[int]) -> None:
    model = load_backbone(name, pretrained=False).eval()
    assert feature_channels(model) == channels
    with torch.no_grad():
        feats = stage_features(model, torch.randn(1, 3, 224, 224))
    assert [tuple(f.shape) for f in feats] == [
        (1, c, s, s) for c, s in zip(channels, sizes, strict=True)
    ]


def test_stage_features_rejects_plain_modules() -> None:
    with pytest.raises(TypeError, match="timm"):
        stage_features(torch.nn.Linear(2, 2), torch.randn(1, 2))


def test_bundled_checkpoint_loads_and_its_card_shows_a_benefit() -> None:
    bundled = Path(__file__).resolve().parents[1] / "mtlora_lite" / "course" / "data"
    model = load_backbone("course", checkpoint_dir=bundled).eval()
    with torch.no_grad():
        assert torch.isfinite(model(torch.randn(2, 3, 64, 64))).all()
    card = load_course_card(bundled)
    assert card["device"] and card["sha256"] and card["heldout_metrics"]
    probe = card["probe"]["linear_probe"]
    assert all(probe["pretrained"][t] > probe["random"][t] for t in probe["random"])
