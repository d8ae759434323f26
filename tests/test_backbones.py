from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import huggingface_hub
import pytest
import timm
import timm.models._hub as timm_hub
import torch
from safetensors.torch import save_file
from timm.models.swin_transformer import SwinTransformer

from mtlora_lite.course import backbones
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


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every host name fails to resolve, as on a machine without a network (nothing is sent)."""

    def offline(*args: object, **kwargs: object) -> None:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known (no network in tests)")

    monkeypatch.setattr(socket, "getaddrinfo", offline)


def _count_downloads(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """Record, for each hf_hub_download timm makes, whether it was restricted to the cache."""
    calls: list[bool] = []
    real = timm_hub.hf_hub_download

    def counted(*args: object, **kwargs: object) -> str:
        calls.append(bool(kwargs.get("local_files_only")))
        return real(*args, **kwargs)

    monkeypatch.setattr(timm_hub, "hf_hub_download", counted)
    return calls


@pytest.mark.usefixtures("no_network")
def test_pretrained_without_network_fails_at_once_with_the_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = _count_downloads(monkeypatch)
    tic = time.perf_counter()
    with pytest.raises(
        OSError, match=r"hub could not be reached.*pretrained=False.*HF_HUB_OFFLINE=1"
    ):
        load_backbone("test_vit", pretrained=True, cache_dir=tmp_path)
    assert time.perf_counter() - tic < 10  # timm and the hub's retries alone took 55 s
    assert calls == [True]  # looked in the cache, asked the hub once, never began the retries
    assert timm_hub.hf_hub_download.__name__ == "counted"  # timm's function is put back


@pytest.mark.usefixtures("no_network")
def test_offline_mode_without_cached_weights_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # as HF_HUB_OFFLINE=1
    tic = time.perf_counter()
    with pytest.raises(OSError, match=r"HF_HUB_OFFLINE is set and they are not in the hub cache"):
        load_backbone("test_vit", pretrained=True, cache_dir=tmp_path)
    assert time.perf_counter() - tic < 10


@pytest.mark.usefixtures("no_network")
def test_cached_weights_load_without_the_network(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    torch.manual_seed(0)
    weights = timm.create_model("test_vit", pretrained=False).state_dict()
    cached = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in weights.items()}, str(cached))

    def from_cache(*args: object, local_files_only: bool = False, **kwargs: object) -> str:
        assert local_files_only, "the hub was asked although the weights are cached"
        return str(cached)

    monkeypatch.setattr(timm_hub, "hf_hub_download", from_cache)
    model = load_backbone("test_vit", pretrained=True)
    assert torch.equal(model.patch_embed.proj.weight, weights["patch_embed.proj.weight"])


def test_a_card_without_sha256_says_so(tmp_path: Path) -> None:
    save_course_checkpoint(fp16_exact_model(), tmp_path)
    card = json.loads((tmp_path / CARD_NAME).read_text())
    del card["sha256"]
    (tmp_path / CARD_NAME).write_text(json.dumps(card))
    with pytest.raises(ValueError, match=r"the card .*course_swin\.json has no sha256 entry"):
        load_backbone("course", checkpoint_dir=tmp_path)
    (tmp_path / CARD_NAME).write_text('{"config": ')  # cut short
    with pytest.raises(ValueError, match=r"course_swin\.json is not a readable checkpoint card"):
        load_backbone("course", checkpoint_dir=tmp_path)


def test_a_checkpoint_save_cut_short_keeps_the_old_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = save_course_checkpoint(fp16_exact_model(seed=0), tmp_path)
    good = path.read_bytes(), (tmp_path / CARD_NAME).read_text()

    def cut_short(state: dict, filename: str) -> None:
        Path(filename).write_bytes(b"half a checkpoint")
        raise KeyboardInterrupt  # a kill while the weights are written

    monkeypatch.setattr(backbones, "save_file", cut_short)
    with pytest.raises(KeyboardInterrupt):
        save_course_checkpoint(fp16_exact_model(seed=1), tmp_path)
    assert (path.read_bytes(), (tmp_path / CARD_NAME).read_text()) == good
    assert sorted(p.name for p in tmp_path.iterdir()) == [CARD_NAME, CHECKPOINT_NAME]
    load_backbone("course", checkpoint_dir=tmp_path)  # still the last good checkpoint
