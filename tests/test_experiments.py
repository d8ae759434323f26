"""Course experiments: smoke runs record real metrics, and the cache returns exactly what was run."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mtlora_lite.course.experiments import recipe, run_dense, run_mixture
from mtlora_lite.course.records import RunResult, load_results


def _smoke_dense(method: str, cache_dir: Path | None, **options: object) -> RunResult:
    """A smoke-profile dense semseg run on CPU."""
    return run_dense(
        method,
        ["semseg"],
        profile="smoke",
        device="cpu",
        cache_dir=cache_dir,
        progress=False,
        **options,
    )


def test_dense_run_is_cached_by_its_spec(tmp_path: Path) -> None:
    first = _smoke_dense("shared_lora", tmp_path, shared_rank=2)
    assert not first.cached and first.tasks == ["semseg"]
    assert set(first.primary) == {"semseg"} and 0.0 <= first.primary["semseg"] <= 100.0  # mIoU in %
    assert 0 < first.trainable < first.total
    again = _smoke_dense("shared_lora", tmp_path, shared_rank=2)
    assert again.cached and again.primary == first.primary and again.loss_curve == first.loss_curve
    other = _smoke_dense("shared_lora", tmp_path, shared_rank=4)
    assert not other.cached  # a different option is a different run
    assert len(load_results(tmp_path)) == 2


def test_mixture_run_records_similarity_and_router(tmp_path: Path) -> None:
    result = run_mixture(
        "multihead",
        profile="smoke",
        device="cpu",
        cache_dir=None,
        progress=False,
        n_heads=2,
        rank=2,
        init="rlora",
        similarity_every=1,
    )
    assert result.options["n_heads"] == 2 and "answer" in result.primary
    curve = result.extras["similarity"]
    assert curve["steps"][0] == 0 and len(curve["values"]) == len(curve["steps"]) > 1
    assert all(-1.0 <= v <= 1.0 for row in curve["values"] for v in row.values() if v == v)
    layer = next(iter(result.extras["router"].values()))
    assert abs(sum(layer["mean_weight"]) - 1.0) < 1e-4
    lora = run_mixture(
        "lora", profile="smoke", device="cpu", cache_dir=None, progress=False, n_heads=2, rank=2
    )
    assert lora.options["rank"] == 4 and "similarity" not in lora.extras


def test_bad_profile_and_adapter_are_clear_errors() -> None:
    with pytest.raises(ValueError, match="unknown profile"):
        recipe("dense", "huge")
    with pytest.raises(ValueError, match="adapter must be"):
        run_mixture("prefix", profile="smoke")


def test_a_run_does_not_depend_on_earlier_random_state() -> None:
    torch.manual_seed(1)
    first = _smoke_dense("decoders", None)
    torch.manual_seed(2)
    again = _smoke_dense("decoders", None)
    assert again.primary == first.primary and again.loss_curve == first.loss_curve
