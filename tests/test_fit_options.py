"""fit's precision (bf16 / fp16 with a GradScaler / fp32), periodic validation with the best one,
and the warm-up's starting value."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from test_train import TASKS, StopAt, TwoHeads, loaders
from torch import Tensor, nn

from mtlora_lite.multitask import precision
from mtlora_lite.multitask.evaluation import evaluate
from mtlora_lite.multitask.history import Callback, History, Validation
from mtlora_lite.multitask.schedule import lr_factor
from mtlora_lite.multitask.train import fit


@pytest.fixture
def cpu_autocast(monkeypatch: pytest.MonkeyPatch) -> None:
    """Let fit autocast on the CPU, so that the fp16 path (GradScaler) runs without a GPU."""
    monkeypatch.setattr(precision, "AUTOCAST_DEVICES", ("cuda", "cpu"))


class Spy(TwoHeads):
    """Records, per forward pass: training mode, autocast on the CPU, the trunk's output dtype."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[bool, bool, torch.dtype]] = []

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        h = self.trunk(x)
        self.seen.append((self.training, torch.is_autocast_enabled("cpu"), h.dtype))
        return super().forward(x)


class InfGradAt(Callback):
    """Makes the gradient of ``cls.weight`` infinite during the given steps (1-based)."""

    def __init__(self, model: TwoHeads, steps: set[int] | None) -> None:
        self.steps, self.step = steps, 0
        model.cls.weight.register_hook(lambda g: g * math.inf if self._now() else g)
        self.weights: dict[int, Tensor] = {}

    def _now(self) -> bool:
        return self.steps is None or self.step + 1 in self.steps

    def on_step_end(self, step: int, model: nn.Module, logs: dict) -> None:
        self.step = step
        self.weights[step] = model.cls.weight.detach().clone()


def test_unknown_precision_is_refused_and_cpu_trains_in_fp32() -> None:
    train, _ = loaders()
    with pytest.raises(ValueError, match=r"precision must be one of \('bf16', 'fp16', 'fp32'\)"):
        fit(TwoHeads(), TASKS, train, max_steps=1, precision="half", progress=False)
    model = Spy()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # bf16, the default, falls back quietly
        fit(model, TASKS, train, max_steps=2, progress=False)
    assert {dtype for _, _, dtype in model.seen} == {torch.float32}
    with pytest.warns(UserWarning, match="precision='fp16' needs CUDA.*trains in fp32"):
        history = fit(TwoHeads(), TASKS, train, max_steps=2, precision="fp16", progress=False)
    assert "loss_scale" not in history.steps[0] and history.skipped_steps == []


@pytest.mark.usefixtures("cpu_autocast")
def test_training_autocasts_and_validation_runs_in_fp32() -> None:
    model, (train, val) = Spy(), loaders()
    fit(model, TASKS, train, val, max_steps=3, precision="bf16", progress=False)
    steps = [s for s in model.seen if s[0]]
    evals = [s for s in model.seen if not s[0]]
    assert steps and all(autocast and dtype == torch.bfloat16 for _, autocast, dtype in steps)
    assert evals and all(not autocast and dtype == torch.float32 for _, autocast, dtype in evals)
    model.seen.clear()
    evaluate(model, TASKS, val)
    assert all(not autocast for _, autocast, _ in model.seen)
    fit(model, TASKS, train, max_steps=1, precision="fp32", progress=False)
    assert model.seen[-1][1:] == (False, torch.float32)


@pytest.mark.usefixtures("cpu_autocast")
def test_fp16_skips_steps_with_inf_gradients_and_counts_them() -> None:
    torch.manual_seed(0)
    model, (train, _) = TwoHeads(), loaders()
    spy = InfGradAt(model, {3})
    history = fit(
        model, TASKS, train, max_steps=5, precision="fp16", callbacks=[spy], progress=False
    )
    assert history.skipped_steps == [3]
    scales = [r["loss_scale"] for r in history.steps]
    assert scales[:3] == [65536.0] * 3 and scales[3:] == [32768.0] * 2  # halved after the skip
    assert torch.equal(spy.weights[3], spy.weights[2])  # the update was skipped
    assert not torch.equal(spy.weights[4], spy.weights[3])
    assert math.isinf(history.steps[2]["grad_norm"]) and history.steps[2]["lr"] > 0
    json.dumps(history.to_dict())


@pytest.mark.usefixtures("cpu_autocast")
def test_fp16_stops_when_every_step_is_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    from mtlora_lite.multitask import step

    monkeypatch.setattr(step, "MAX_SKIPPED_IN_A_ROW", 4)
    model = TwoHeads()
    with pytest.raises(FloatingPointError, match="skipped the last 4 steps") as info:
        fit(model, TASKS, loaders()[0], max_steps=20, precision="fp16", progress=False,
            callbacks=[InfGradAt(model, None)])  # fmt: skip
    assert info.value.history.skipped_steps == [1, 2, 3, 4]


@pytest.mark.usefixtures("cpu_autocast")
def test_fp16_non_finite_loss_is_a_skipped_step_not_an_error() -> None:
    class NaNOnce(TwoHeads):
        calls = 0

        def forward(self, x: Tensor) -> dict[str, Tensor]:
            out = super().forward(x)
            self.calls += 1
            return {**out, "dense": out["dense"] * (math.nan if self.calls == 2 else 1.0)}

    history = fit(NaNOnce(), TASKS, loaders()[0], max_steps=4, precision="fp16", progress=False)
    assert history.skipped_steps == [2] and math.isnan(history.steps[1]["loss"])


@pytest.mark.usefixtures("cpu_autocast")
def test_fp16_loss_scale_is_checkpointed_and_restored(tmp_path: Path) -> None:
    def run(checkpoint_dir: Path | None, stop: int | None = None) -> tuple[History, TwoHeads]:
        torch.manual_seed(0)
        model, (train, _) = TwoHeads(), loaders()
        callbacks: list[Callback] = [InfGradAt(model, {2, 3})]
        if stop:
            callbacks.append(StopAt(stop, KeyboardInterrupt()))
        kwargs = dict(epochs=2, seed=1, precision="fp16", progress=False)
        return fit(model, TASKS, train, callbacks=callbacks, checkpoint_dir=checkpoint_dir,
                   **kwargs), model  # fmt: skip

    whole, reference = run(None)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path, stop=12)  # pass 1 (8 steps, two skipped) is checkpointed
    with safe_open(str(tmp_path / "checkpoint.safetensors"), "pt") as f:
        assert json.loads(f.metadata()["scaler"])["scale"] == 16384.0
    resumed, model = run(tmp_path)
    assert resumed.skipped_steps == whole.skipped_steps == [2, 3]
    assert [r["loss_scale"] for r in resumed.steps] == [r["loss_scale"] for r in whole.steps]
    for p, q in zip(model.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(p, q)


def test_fp16_weights_and_mismatched_inputs_get_clear_messages() -> None:
    train, val = loaders()
    with pytest.raises(TypeError, match=r"float16 parameters; on cpu .*model\.float\(\)"):
        fit(TwoHeads().half(), TASKS, train, max_steps=1, progress=False)
    doubles = [(x.double(), y) for x, y in val]
    for dtype in (torch.float64, torch.float16, torch.bfloat16):
        batches = [(x.to(dtype), y) for x, y in val]
        with pytest.raises(TypeError, match=rf"{dtype} images; its parameters are torch.float32"):
            evaluate(TwoHeads(), TASKS, batches)
    with pytest.raises(TypeError, match=r"images\.to\(torch\.float32\)"):
        fit(TwoHeads(), TASKS, doubles, max_steps=1, progress=False)


def test_periodic_validation_keeps_every_one_and_the_best() -> None:
    model, (train, val) = TwoHeads(), loaders()
    history = fit(model, TASKS, train, val, epochs=5, eval_every=2, lr=3e-2, progress=False)
    assert [(v.step, v.epoch) for v in history.validations] == [(16, 2), (32, 4), (40, 5)]
    assert history.final == history.evals[-1]["metrics"]
    best = history.best(lambda m: m["cls"]["acc"])
    accs = [v.metrics["cls"]["acc"] for v in history.validations]
    assert isinstance(best, Validation) and best.metrics["cls"]["acc"] == max(accs)
    first_max = next(v for v in history.validations if v.metrics["cls"]["acc"] == max(accs))
    assert best.step == first_max.step  # ties: the earliest
    lowest = history.best(lambda m: m["dense"]["mae"], maximize=False)
    assert lowest.metrics["dense"]["mae"] == min(
        v.metrics["dense"]["mae"] for v in history.validations
    )
    assert history.best(lambda m: math.nan if m is history.final else 0.0).step == 16
    with pytest.raises(ValueError, match="no validation to choose from"):
        History().best(lambda m: 0.0)
    short = fit(TwoHeads(), TASKS, train, val, max_steps=12, eval_every=3, progress=False)
    assert [v.step for v in short.validations] == [12]  # only the last step's
    with pytest.raises(ValueError, match="eval_every must be a positive integer"):
        fit(TwoHeads(), TASKS, train, val, eval_every=0, progress=False)


def test_warmup_starts_at_warmup_start_lr() -> None:
    train, _ = loaders()
    history = fit(TwoHeads(), TASKS, train, max_steps=20, lr=1.0, warmup=0.2,
                  warmup_start_lr=0.2, progress=False)  # fmt: skip
    lrs = history.curve("lr")[1]
    assert lrs[:5] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0])  # 4 warm-up steps, then the peak
    assert lr_factor(0, 20, 4) == pytest.approx(0.25)  # the default: lr / warm-up steps
    with pytest.raises(ValueError, match=r"warmup_start_lr must be in \[0, 1\]"):
        fit(TwoHeads(), TASKS, train, lr=1.0, warmup_start_lr=2.0, progress=False)
