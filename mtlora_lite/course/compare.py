"""Compare two methods seed by seed, and say in words what the seeds show.

    v = paired({0: 41.2, 1: 40.8, 2: 42.0}, {0: 39.9, 1: 40.1, 2: 40.3}, names=("LoRA", "full"))
    print(v)  # LoRA is better than full on 3 of 3 seeds, by 1.2 ± 0.5 points

A seed fixes the data (scenes and shuffling) and the initialisation, so two methods run with the
same seed see the same images: their *difference* on that seed cancels what the seed does to both,
and the differences over seeds are what a comparison must look at (a paired comparison), not the
two means and their spreads side by side.

The rule for a verdict is deliberately simple, so a learner can check it by eye: A is "better"
(or "worse") than B only if A wins (or loses) on **every** seed and the mean difference is larger
than the seed-to-seed spread (sample standard deviation) of the differences; otherwise the
difference is "within noise". With 3 seeds this is a weak test (three coin flips agree one time
in four), which is why the wording always says how many seeds agree and by how much.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

Values = Mapping[int, float] | Sequence[float]


def _by_seed(values: Values) -> dict[int, float]:
    if isinstance(values, Mapping):
        return {int(seed): float(v) for seed, v in values.items()}
    return {i: float(v) for i, v in enumerate(values)}


def _num(x: float) -> str:
    """``x`` with one decimal, or two significant digits when it is below 1 in size."""
    return f"{x:.1f}" if abs(x) >= 1 else f"{x:.2g}"


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """The mean and the sample standard deviation (0.0 for one value) of ``values``."""
    values = [float(v) for v in values]
    if not values:
        raise ValueError("mean_std needs at least one value")
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


@dataclass(frozen=True)
class Paired:
    """A seed-by-seed comparison of method ``a`` with method ``b`` (see ``paired``).

    ``gains[seed]`` is how much better ``a`` did than ``b`` on that seed, in ``unit``, with the
    sign turned so that positive always means "``a`` better" (also for lower-is-better metrics).
    """

    a: str
    b: str
    gains: dict[int, float]
    unit: str = "points"

    @property
    def n(self) -> int:
        """How many seeds were compared."""
        return len(self.gains)

    @property
    def mean(self) -> float:
        """The mean gain of ``a`` over ``b``."""
        return mean_std(list(self.gains.values()))[0]

    @property
    def std(self) -> float:
        """The sample standard deviation of the gains over seeds (0.0 for one seed)."""
        return mean_std(list(self.gains.values()))[1]

    @property
    def wins(self) -> int:
        """Seeds on which ``a`` did better than ``b``."""
        return sum(g > 0 for g in self.gains.values())

    @property
    def losses(self) -> int:
        """Seeds on which ``a`` did worse than ``b``."""
        return sum(g < 0 for g in self.gains.values())

    @property
    def outcome(self) -> str:
        """ "better", "worse" or "within noise" (module docstring: the rule)."""
        if self.n > 1 and abs(self.mean) > self.std:
            if self.wins == self.n:
                return "better"
            if self.losses == self.n:
                return "worse"
        return "within noise"

    def __str__(self) -> str:
        size = f"{_num(abs(self.mean))} ± {_num(self.std)} {self.unit}"
        if self.n == 1:
            gain = self.mean
            side = "higher" if gain > 0 else "lower" if gain < 0 else "the same"
            return (
                f"{self.a} vs {self.b}: one seed only ({self.a} {side}, {'+' if gain >= 0 else '-'}"
                f"{_num(abs(gain))} {self.unit}); "
                "one seed cannot tell a difference from noise"
            )
        if self.outcome == "better":
            return f"{self.a} is better than {self.b} on {self.n} of {self.n} seeds, by {size}"
        if self.outcome == "worse":
            return f"{self.a} is worse than {self.b} on {self.n} of {self.n} seeds, by {size}"
        return (
            f"{self.a} vs {self.b}: within noise ({self.a} better on {self.wins} of {self.n} "
            f"seeds, mean gain {'+' if self.mean >= 0 else '-'}{_num(abs(self.mean))} ± "
            f"{_num(self.std)} {self.unit})"
        )


def paired(
    a: Values,
    b: Values,
    *,
    names: tuple[str, str] = ("A", "B"),
    higher_is_better: bool = True,
    unit: str = "points",
) -> Paired:
    """Compare ``a`` with ``b`` seed by seed: one value per seed each, as ``{seed: value}`` (or
    sequences in the same seed order). Only seeds present in both are compared; there must be at
    least one, and every value must be finite.

    ``higher_is_better=False`` for metrics such as an error in degrees: the gains are then
    ``b - a``, so that a positive gain still means "``a`` better".
    """
    a_by_seed, b_by_seed = _by_seed(a), _by_seed(b)
    seeds = sorted(set(a_by_seed) & set(b_by_seed))
    if not seeds:
        raise ValueError(
            f"no seed in common between {names[0]} (seeds {sorted(a_by_seed)}) and {names[1]} "
            f"(seeds {sorted(b_by_seed)}): run both methods with the same seeds"
        )
    bad = [s for s in seeds if not (math.isfinite(a_by_seed[s]) and math.isfinite(b_by_seed[s]))]
    if bad:
        raise ValueError(f"values must be finite numbers; seeds {bad} are not")
    sign = 1.0 if higher_is_better else -1.0
    gains = {s: sign * (a_by_seed[s] - b_by_seed[s]) for s in seeds}
    return Paired(a=names[0], b=names[1], gains=gains, unit=unit)


def shift(verdict: Paired, digits: int = 2) -> str:
    """Words for a paired difference that is no "better" or "worse", such as an entropy or a
    rank: "higher on 3 of 3 seeds, by 0.12 ± 0.03 nats", a's values against b's, seed by seed,
    in the direction of the mean (for ``paired(a, b)`` with the default ``higher_is_better``)."""
    side, agree = ("higher", verdict.wins) if verdict.mean >= 0 else ("lower", verdict.losses)
    unit = f" {verdict.unit}" if verdict.unit else ""
    return (
        f"{side} on {agree} of {verdict.n} seed{'s' if verdict.n > 1 else ''}, by "
        f"{abs(verdict.mean):.{digits}f} ± {verdict.std:.{digits}f}{unit}"
    )
