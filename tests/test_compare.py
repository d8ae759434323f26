"""The paired comparison of two methods over seeds (course.compare)."""

import math

import pytest

from mtlora_lite.course.compare import mean_std, paired, shift


def test_a_method_that_wins_on_every_seed_by_more_than_the_spread_is_better():
    v = paired({0: 41.2, 1: 40.8, 2: 42.0}, {0: 39.9, 1: 40.1, 2: 40.3}, names=("LoRA", "full"))
    assert v.gains == pytest.approx({0: 1.3, 1: 0.7, 2: 1.7})
    assert (v.n, v.wins, v.losses, v.outcome) == (3, 3, 0, "better")
    assert str(v) == "LoRA is better than full on 3 of 3 seeds, by 1.2 ± 0.5 points"


def test_a_split_verdict_is_within_noise_and_says_how_many_seeds_agree():
    v = paired([50.0, 52.0, 51.0], [51.0, 50.0, 50.5], names=("R-LoRA", "HydraLoRA"))
    assert (v.wins, v.losses, v.outcome) == (2, 1, "within noise")
    assert "within noise" in str(v) and "better on 2 of 3 seeds" in str(v)


def test_consistent_but_tiny_gains_against_a_wide_spread_are_within_noise():
    v = paired([1.0, 1.1, 4.0], [0.9, 1.0, 0.0])  # gains 0.1, 0.1, 4.0: mean 1.4 < std 2.3
    assert v.wins == 3 and v.outcome == "within noise"


def test_lower_is_better_metrics_turn_the_sign():
    v = paired(
        {1: 20.0, 2: 21.0, 3: 19.0},
        {1: 22.0, 2: 23.5, 3: 21.0},
        higher_is_better=False,
        names=("MTLoRA", "shared"),
        unit="degrees",
    )
    assert v.outcome == "better" and v.mean == pytest.approx(2.1666, abs=1e-3)
    assert str(v).endswith("by 2.2 ± 0.29 degrees")


def test_worse_and_single_seed_wording():
    assert paired([1.0, 2.0, 3.0], [2.0, 3.5, 4.0]).outcome == "worse"
    one = paired({7: 3.0}, {7: 2.5}, names=("a", "b"))
    assert one.outcome == "within noise" and "one seed cannot tell" in str(one)


def test_only_common_seeds_are_paired_and_none_in_common_is_refused():
    v = paired({0: 1.0, 1: 2.0, 2: 3.0}, {1: 1.0, 2: 1.0, 5: 0.0})
    assert sorted(v.gains) == [1, 2]
    with pytest.raises(ValueError, match=r"no seed in common.*same seeds"):
        paired({0: 1.0}, {1: 1.0})
    with pytest.raises(ValueError, match="finite"):
        paired([1.0, math.nan], [1.0, 2.0])


def test_mean_std():
    assert mean_std([2.0]) == (2.0, 0.0)
    assert mean_std([1.0, 3.0]) == pytest.approx((2.0, math.sqrt(2)))
    with pytest.raises(ValueError):
        mean_std([])


def test_shift_words_a_difference_without_better_or_worse():
    v = paired({0: 1.2, 1: 1.1, 2: 1.0}, {0: 1.0, 1: 1.0, 2: 1.05}, unit="nats")
    assert shift(v) == "higher on 2 of 3 seeds, by 0.08 ± 0.13 nats"
    v = paired([7.6, 7.7], [14.9, 15.0], unit="")
    assert shift(v, digits=1) == "lower on 2 of 2 seeds, by 7.3 ± 0.0"
    assert shift(paired([0.5], [0.4])).startswith("higher on 1 of 1 seed, by 0.10")
