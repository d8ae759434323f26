"""What would fail after an epoch of training fails before the first step, with the fix."""

from __future__ import annotations

import errno
import tempfile
import threading
from pathlib import Path

import pytest
import torch
from test_train import TASKS, Scenes, TwoHeads, loaders
from torch import Tensor, nn
from torch.utils.data import DataLoader

from mtlora_lite.multitask.evaluation import evaluate
from mtlora_lite.multitask.history import Callback
from mtlora_lite.multitask.train import fit


class Steps(Callback):
    def __init__(self) -> None:
        self.steps: list[int] = []

    def on_step_end(self, step: int, model: nn.Module, logs: dict) -> None:
        self.steps.append(step)


def without(task: str, batches: DataLoader) -> list[tuple[Tensor, dict[str, Tensor]]]:
    return [(x, {k: v for k, v in y.items() if k != task}) for x, y in batches]


def test_an_unwritable_checkpoint_dir_fails_before_training(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "a-file").write_text("not a folder")
    steps, (train, _) = Steps(), loaders()
    with pytest.raises(OSError, match=r"cannot write to .*a-file/run.*another checkpoint_dir"):
        fit(TwoHeads(), TASKS, train, checkpoint_dir=tmp_path / "a-file" / "run",
            callbacks=[steps], progress=False)  # fmt: skip

    def full(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(tempfile, "TemporaryFile", full)
    with pytest.raises(OSError, match=r"cannot write to .*run: No space left") as info:
        fit(TwoHeads(), TASKS, train, checkpoint_dir=tmp_path / "run", callbacks=[steps],
            progress=False)  # fmt: skip
    assert info.value.errno == errno.ENOSPC and steps.steps == []


def test_a_tensorboard_folder_that_cannot_be_written_fails_before_training(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("tensorboard")
    from tensorboard.summary.writer import record_writer

    from mtlora_lite.multitask.tensorboard import TensorBoardLogger

    (tmp_path / "a-file").write_text("not a folder")
    with pytest.raises(OSError, match=r"TensorBoardLogger cannot write to .*a-file/logs"):
        TensorBoardLogger(tmp_path / "a-file" / "logs")
    tb, steps = TensorBoardLogger(tmp_path / "logs"), Steps()

    def full(self: object, data: bytes) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    died: list[BaseException | None] = []  # what ended TensorBoard's writer thread
    monkeypatch.setattr(threading, "excepthook", lambda args: died.append(args.exc_value))
    monkeypatch.setattr(record_writer.RecordWriter, "write", full)  # the disk fills up
    with pytest.raises(OSError, match=r"TensorBoardLogger cannot write to .*logs: No space left"):
        fit(TwoHeads(), TASKS, loaders()[0], callbacks=[tb, steps], progress=False)
    assert steps.steps == []
    with pytest.raises(OSError, match="No space left"):  # close() waits for the thread's end
        tb.close()
    assert [getattr(e, "errno", None) for e in died] == [errno.ENOSPC]


def test_an_empty_validation_loader_fails_before_training() -> None:
    steps, (train, _) = Steps(), loaders()
    for empty in (DataLoader(Scenes(0, 0), batch_size=4), []):
        with pytest.raises(ValueError, match=r"val_loader yields no batches.*val_loader=None"):
            fit(TwoHeads(), TASKS, train, empty, callbacks=[steps], progress=False)
    assert steps.steps == []
    with pytest.raises(ValueError, match="the evaluation loader yields no batches"):
        evaluate(TwoHeads(), TASKS, [])


def test_a_loader_without_a_task_is_named_before_any_step() -> None:
    steps, (train, val) = Steps(), loaders()
    with pytest.raises(KeyError, match=r"val_loader gives no targets for tasks \['dense'\]"):
        fit(TwoHeads(), TASKS, train, without("dense", val), callbacks=[steps], progress=False)
    model = TwoHeads()
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(KeyError, match=r"train_loader gives no targets for tasks \['cls'\]"):
        fit(model, TASKS, without("cls", train), max_steps=2, callbacks=[steps], progress=False)
    assert steps.steps == [] and all(
        torch.equal(p, q) for p, q in zip(model.parameters(), before, strict=True)
    )
    with pytest.raises(KeyError, match=r"evaluation loader gives no targets for tasks \['cls'\]"):
        evaluate(TwoHeads(), TASKS, without("cls", val))
