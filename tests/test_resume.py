"""Resuming never mixes two runs: every setting, the frozen base and the data are compared, a
changed byte is found, and callbacks continue at the step the run continues from."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from test_train import TASKS, StopAt, TwoHeads, loaders
from torch import nn
from torch.utils.data import DataLoader, Subset

from mtlora_lite.adapters.multihead import inject_multihead_lora
from mtlora_lite.multitask.history import Callback, HeadSimilarityRecorder, History
from mtlora_lite.multitask.train import fit

CHECKPOINT = "checkpoint.safetensors"


def run(
    checkpoint_dir: Path,
    *,
    model: nn.Module | None = None,
    stop: int | None = None,
    callbacks: tuple[Callback, ...] = (),
    data_seed: int = 0,
    **changes: Any,
) -> History:
    """3 passes of 8 steps; ``stop``: interrupt after that step (pass 1 ends at step 8)."""
    torch.manual_seed(0)
    model = TwoHeads() if model is None else model
    train, val = loaders(data_seed)
    kwargs: dict[str, Any] = dict(epochs=3, lr=3e-2, seed=5, progress=False)
    kwargs.update(checkpoint_dir=checkpoint_dir, **changes)
    if stop is not None:
        callbacks = (*callbacks, StopAt(stop, KeyboardInterrupt()))
    return fit(model, TASKS, train, kwargs.pop("val", val), callbacks=list(callbacks), **kwargs)


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize(("change", "message"), [({"lr": 1e-2}, "lr: 0.03 there, 0.01 here"),
                                                 ({"seed": 6}, "seed: 5 there, 6 here")])  # fmt: skip
def test_a_finished_run_is_not_resumed_with_other_settings(
    tmp_path: Path, change: dict, message: str
) -> None:
    done = run(tmp_path)
    model = TwoHeads()
    before = snapshot(model)
    with pytest.raises(ValueError, match=rf"other settings \({message}\).*another checkpoint_dir"):
        run(tmp_path, model=model, **change)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # untouched
    again = run(tmp_path)  # the same settings: the finished run's History, 0 more steps
    assert again.to_dict()["steps"] == done.to_dict()["steps"]


@pytest.mark.parametrize(
    ("change", "key"),
    [
        ({"lr": 1e-2}, "lr"),
        ({"weight_decay": 0.1}, "weight_decay"),
        ({"grad_clip": 0.5}, "grad_clip"),
        ({"grad_clip": None}, "grad_clip"),
        ({"seed": 6}, "seed"),
        ({"min_lr": 0.1}, "min_lr"),
        ({"warmup": 0.2}, "warmup"),
        ({"warmup_start_lr": 1e-4}, "warmup_start_lr"),
        ({"no_weight_decay": "cls"}, "no_weight_decay"),
        ({"loss_weights": {"dense": 2.0}}, "loss_weights"),
        ({"eval_every": 2}, "eval_every"),
        ({"epochs": 4}, "steps"),
    ],
)
def test_an_interrupted_run_is_not_resumed_with_other_settings(
    tmp_path: Path, change: dict, key: str
) -> None:
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path, stop=12)
    with pytest.raises(ValueError, match=rf"other settings \({key}: .* there, .* here\)") as info:
        run(tmp_path, **change)
    assert "resume=False" in str(info.value)
    assert len(run(tmp_path, resume=False, **change).steps) > 0  # afresh, as the message says


def test_changed_bytes_in_a_checkpoint_are_found(tmp_path: Path) -> None:
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path, stop=12)
    path = tmp_path / CHECKPOINT
    data = bytearray(path.read_bytes())
    header = 8 + int.from_bytes(data[:8], "little")
    middle = (header + len(data)) // 2
    data[middle : middle + 48] = bytes(b ^ 0xFF for b in data[middle : middle + 48])
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"do not match its sha256 checksum: the file is corrupt"):
        run(tmp_path)


def test_another_frozen_base_or_other_data_is_refused(tmp_path: Path) -> None:
    def frozen_trunk(seed: int) -> TwoHeads:
        torch.manual_seed(seed)
        model = TwoHeads()
        model.trunk.requires_grad_(False)
        return model

    with pytest.raises(KeyboardInterrupt):
        run(tmp_path, model=frozen_trunk(0), stop=12)
    with pytest.raises(
        ValueError, match=r"another frozen base: .*other values .*'trunk.bias'.*afresh"
    ):
        run(tmp_path, model=frozen_trunk(1))
    with pytest.raises(ValueError, match=r"other train data \(another first example"):
        run(tmp_path, model=frozen_trunk(0), data_seed=1)  # same size, other images
    smaller = DataLoader(Subset(loaders()[1].dataset, range(32)), batch_size=32)
    with pytest.raises(ValueError, match=r"other val data \(64 examples there, 32 here\)"):
        run(tmp_path, model=frozen_trunk(0), val=smaller)
    with pytest.raises(ValueError, match=r"other val data \(none here\)"):
        run(tmp_path, model=frozen_trunk(0), val=None)
    assert len(run(tmp_path, model=frozen_trunk(0)).steps) == 24  # the same run resumes


def multihead_model() -> TwoHeads:
    torch.manual_seed(0)
    model = TwoHeads()
    inject_multihead_lora(model, "cls", n_heads=2, rank=2, init="rlora")
    return model


def test_callbacks_continue_at_the_step_the_run_resumes_from(tmp_path: Path) -> None:
    kept = HeadSimilarityRecorder(every=2)  # one recorder through both calls
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path, model=multihead_model(), stop=12, callbacks=(kept,), epochs=2)
    assert kept.steps == [0, 2, 4, 6, 8, 10, 12]
    fresh = HeadSimilarityRecorder(every=2)  # or a new one in the resumed call
    run(tmp_path, model=multihead_model(), callbacks=(kept, fresh), epochs=2)
    assert kept.steps == list(range(0, 17, 2))  # 10 and 12 once: from the resumed call
    assert fresh.steps == [8, 10, 12, 14, 16]  # not [0, 10, ...]: the model is at step 8


def test_tensorboard_shows_each_step_once_after_a_resume(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from mtlora_lite.multitask.tensorboard import TensorBoardLogger

    for logs, reuse in (("kept", True), ("fresh", False)):
        tb = TensorBoardLogger(tmp_path / logs)
        with pytest.raises(KeyboardInterrupt):
            run(tmp_path / f"ckpt-{logs}", stop=12, callbacks=(tb,), epochs=2)
        if not reuse:
            tb.close()
            tb = TensorBoardLogger(tmp_path / logs)
        run(tmp_path / f"ckpt-{logs}", callbacks=(tb,), epochs=2)
        tb.close()
        events = EventAccumulator(str(tmp_path / logs))
        events.Reload()
        assert [e.step for e in events.Scalars("train/loss")] == list(range(1, 17)), logs
        assert [e.step for e in events.Scalars("val/cls/acc")] == [8, 16], logs


def test_a_callback_without_start_step_is_refused_before_training(tmp_path: Path) -> None:
    class Old(Callback):
        def on_fit_start(self, model: nn.Module) -> None:  # type: ignore[override]
            raise AssertionError("never called")

    with pytest.raises(TypeError, match=r"Old.on_fit_start must accept \(model, start_step\)"):
        run(tmp_path, callbacks=(Old(),))
    assert not (tmp_path / CHECKPOINT).exists()
