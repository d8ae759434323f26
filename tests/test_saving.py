"""Adapter-only save / load: exact round trips and loud failures on mismatches."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from mtlora_lite.adapters import saving
from mtlora_lite.adapters.freezing import mark_only_adapters_trainable
from mtlora_lite.adapters.lora import inject_lora
from mtlora_lite.adapters.merging import merge_adapters
from mtlora_lite.adapters.saving import (
    FORMAT,
    FORMAT_V1,
    adapter_state_dict,
    base_fingerprint,
    load_adapters,
    save_adapters,
)
from mtlora_lite.adapters.targets import adapter_layers


def make_model(seed: int, rank: int = 3) -> nn.Module:
    torch.manual_seed(0)  # the same "pretrained" base every time
    model = nn.Sequential(
        nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 8), nn.LayerNorm(8), nn.Linear(8, 2)
    )
    torch.manual_seed(seed)  # adapters differ with the seed
    inject_lora(model, ["0", "2"], rank=rank)
    mark_only_adapters_trainable(model, extra=["4"])
    return model


def fine_tune(model: nn.Module) -> None:
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    for _ in range(3):
        model(torch.randn(8, 8)).pow(2).sum().backward()
        opt.step()
        opt.zero_grad()


def test_round_trip_is_bit_identical(tmp_path: Path) -> None:
    trained = make_model(seed=1)
    fine_tune(trained)
    path = save_adapters(trained, tmp_path / "adapters.safetensors")
    stored = load_file(str(path))
    assert set(stored) == {"0.lora_A", "0.lora_B", "2.lora_A", "2.lora_B", "4.weight", "4.bias"}

    fresh = make_model(seed=2)
    x = torch.randn(5, 8)
    assert not torch.equal(fresh(x), trained(x))
    load_adapters(fresh, path)
    assert torch.equal(fresh(x), trained(x))


def test_state_dict_without_extras() -> None:
    state = adapter_state_dict(make_model(seed=1), include_trainable=False)
    assert set(state) == {"0.lora_A", "0.lora_B", "2.lora_A", "2.lora_B"}


def test_mismatched_rank_is_rejected(tmp_path: Path) -> None:
    path = save_adapters(make_model(seed=1, rank=3), tmp_path / "a.safetensors")
    other = make_model(seed=1, rank=4)
    before = {k: v.clone() for k, v in adapter_state_dict(other).items()}
    with pytest.raises(ValueError, match="adapter configs differ"):
        load_adapters(other, path)
    after = adapter_state_dict(other)
    assert all(torch.equal(before[k], after[k]) for k in before)  # nothing partially loaded


def test_mismatched_layers_are_rejected(tmp_path: Path) -> None:
    path = save_adapters(make_model(seed=1), tmp_path / "a.safetensors")
    torch.manual_seed(0)
    other = nn.Sequential(
        nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 8), nn.LayerNorm(8), nn.Linear(8, 2)
    )
    inject_lora(other, ["0"], rank=3)
    with pytest.raises(ValueError, match="adapter configs differ"):
        load_adapters(other, path)


def test_unexpected_tensors_are_rejected(tmp_path: Path) -> None:
    path = save_adapters(make_model(seed=1), tmp_path / "a.safetensors")
    other = make_model(seed=1)
    other[4] = nn.Identity()  # no head parameters any more: the file's head tensors are unexpected
    with pytest.raises(ValueError, match="unexpected"):
        load_adapters(other, path)


def test_merged_models_refuse_save_and_load(tmp_path: Path) -> None:
    model = make_model(seed=1)
    path = save_adapters(model, tmp_path / "a.safetensors")
    merge_adapters(model)
    with pytest.raises(RuntimeError, match="unmerge"):
        save_adapters(model, tmp_path / "b.safetensors")
    with pytest.raises(RuntimeError, match="unmerge"):
        load_adapters(model, path)
    assert len(adapter_layers(model)) == 2


def test_non_adapter_file_is_rejected(tmp_path: Path) -> None:
    save_file({"w": torch.zeros(2)}, str(tmp_path / "x.safetensors"))
    with pytest.raises(ValueError, match="not an mtlora_lite adapter file"):
        load_adapters(make_model(seed=1), tmp_path / "x.safetensors")


def _unchanged(model: nn.Module, before: dict[str, torch.Tensor]) -> bool:
    return all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_flipped_bytes_are_found(tmp_path: Path) -> None:
    trained = make_model(seed=1)
    fine_tune(trained)
    path = save_adapters(trained, tmp_path / "a.safetensors")
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x40  # one bit of the last tensor's data: loads quietly without a checksum
    path.write_bytes(bytes(data))
    fresh = make_model(seed=2)
    before = {k: v.clone() for k, v in fresh.state_dict().items()}
    with pytest.raises(ValueError, match=r"a\.safetensors do not match their sha256.*corrupt"):
        load_adapters(fresh, path)
    assert _unchanged(fresh, before)


def test_adapters_trained_on_another_base_are_refused(tmp_path: Path) -> None:
    path = save_adapters(make_model(seed=1), tmp_path / "a.safetensors")
    other = make_model(seed=1)
    with torch.no_grad():
        other[2].base_layer.weight[0, 0] += 1e-3  # another "pretrained" base
    before = {k: v.clone() for k, v in other.state_dict().items()}
    with pytest.raises(ValueError, match=r"trained on another base model.*check_base=False"):
        load_adapters(other, path)
    assert _unchanged(other, before)
    load_adapters(other, path, check_base=False)  # the caller's decision
    assert torch.equal(other[2].lora_A, load_file(str(path))["2.lora_A"])


def test_base_fingerprint_covers_the_wrapped_layers_only() -> None:
    model = make_model(seed=1)
    fingerprint = base_fingerprint(model)
    assert fingerprint == base_fingerprint(make_model(seed=2))  # adapters do not count
    with torch.no_grad():
        model[3].weight += 1.0  # a LayerNorm outside any adapter
    assert base_fingerprint(model) == fingerprint
    with torch.no_grad():
        model[0].base_layer.bias[0] += 1.0
    assert base_fingerprint(model) != fingerprint


def test_a_trainable_extra_missing_from_the_file_is_an_error(tmp_path: Path) -> None:
    path = save_adapters(make_model(seed=1), tmp_path / "a.safetensors", include_trainable=False)
    model = make_model(seed=2)  # frozen, with a trainable head "4"
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=r"trains 2 parameter\(s\).*'4\.bias', '4\.weight'"):
        load_adapters(model, path)
    assert _unchanged(model, before)
    load_adapters(model, path, allow_missing_extras=True)
    assert torch.equal(model[0].lora_A, load_file(str(path))["0.lora_A"])
    assert torch.equal(model[4].weight, before["4.weight"])  # kept, as asked
    torch.manual_seed(0)
    unfrozen = nn.Sequential(
        nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 8), nn.LayerNorm(8), nn.Linear(8, 2)
    )
    inject_lora(unfrozen, ["0", "2"], rank=3)
    load_adapters(unfrozen, path)  # nothing frozen yet: no extras to miss


def _damaged_files(good: bytes) -> dict[str, bytes]:
    return {
        "truncated": good[: len(good) // 2],
        "empty": b"",
        "random": bytes(range(256)) * 4,
        "json": b'{"0.lora_A": [1, 2, 3]}',
    }


@pytest.mark.parametrize("kind", ["truncated", "empty", "random", "json"])
def test_unreadable_files_name_the_file_and_what_was_expected(tmp_path: Path, kind: str) -> None:
    good = save_adapters(make_model(seed=1), tmp_path / "good.safetensors").read_bytes()
    path = tmp_path / f"{kind}.safetensors"
    path.write_bytes(_damaged_files(good)[kind])
    model = make_model(seed=2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=rf"{kind}\.safetensors is not a readable.*save_adapters"):
        load_adapters(model, path)
    assert _unchanged(model, before)
    with pytest.raises(FileNotFoundError, match="no adapter file"):
        load_adapters(model, tmp_path / "absent.safetensors")


def test_foreign_or_incomplete_metadata_is_a_clear_error(tmp_path: Path) -> None:
    state = adapter_state_dict(make_model(seed=1))
    cases = {
        "plain": None,
        "no_configs": {"format": FORMAT},
        "bad_configs": {"format": FORMAT, "adapters": "{not json"},
        "no_sha": {"format": FORMAT, "adapters": "{}"},
        "newer": {"format": "mtlora_lite.adapters/9"},
    }
    messages = {
        "plain": "not an mtlora_lite adapter file",
        "no_configs": "no readable adapter configs",
        "bad_configs": "no readable adapter configs",
        "no_sha": "lacks its sha256",
        "newer": "newer mtlora_lite",
    }
    for name, meta in cases.items():
        path = tmp_path / f"{name}.safetensors"
        save_file({k: v.contiguous() for k, v in state.items()}, str(path), metadata=meta)
        with pytest.raises(ValueError, match=rf"{name}\.safetensors.*{messages[name]}"):
            load_adapters(make_model(seed=2), path)


def test_old_format_files_load_with_a_warning(tmp_path: Path) -> None:
    trained = make_model(seed=1)
    fine_tune(trained)
    configs = {p: a.adapter_config() for p, a in adapter_layers(trained).items()}
    path = tmp_path / "v1.safetensors"
    state = {k: v.contiguous() for k, v in adapter_state_dict(trained).items()}
    save_file(state, str(path), metadata={"format": FORMAT_V1, "adapters": json.dumps(configs)})
    fresh = make_model(seed=2)
    with pytest.warns(UserWarning, match=r"old format .*cannot be checked.*Save it again"):
        load_adapters(fresh, path)
    x = torch.randn(3, 8)
    assert torch.equal(fresh(x), trained(x))


@pytest.mark.parametrize("fault", [KeyboardInterrupt(), OSError(errno.ENOSPC, "No space left")])
def test_a_save_cut_short_keeps_the_old_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fault: BaseException
) -> None:
    trained = make_model(seed=1)
    path = save_adapters(trained, tmp_path / "a.safetensors")
    good = path.read_bytes()
    fine_tune(trained)

    def cut_short(state: dict, filename: str, metadata: dict) -> None:
        Path(filename).write_bytes(b"half a file")  # what a kill or a full disk leaves behind
        raise fault

    monkeypatch.setattr(saving, "save_file", cut_short)
    with pytest.raises(type(fault)):
        save_adapters(trained, path)
    assert path.read_bytes() == good and list(tmp_path.iterdir()) == [path]
    load_adapters(make_model(seed=2), path)  # still the last good save


def test_trainable_modules_keep_their_statistics(tmp_path: Path) -> None:
    """A trained BatchNorm's running mean / variance travel with its weights."""

    def model_with_norm() -> nn.Module:
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.Linear(6, 2))
        inject_lora(model, ["0"], rank=2)
        mark_only_adapters_trainable(model, extra=["1", "2"])
        return model

    trained = model_with_norm().train()
    for _ in range(3):
        trained(torch.randn(16, 4) * 3 + 1)  # moves the running statistics
    save_adapters(trained, tmp_path / "a.safetensors")
    fresh = model_with_norm()
    load_adapters(fresh, tmp_path / "a.safetensors")
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        assert torch.equal(getattr(fresh[1], name), getattr(trained[1], name)), name
    x = torch.randn(5, 4)
    torch.testing.assert_close(fresh.eval()(x), trained.eval()(x))
