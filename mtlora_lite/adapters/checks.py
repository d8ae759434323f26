"""Checks of numeric options at the API boundary: each returns the value as a plain Python number or
raises ``ValueError`` saying what was wrong and what to pass instead.

    rank = check_count(rank, "rank")             # 4, np.int64(4) -> 4; 4.0, True, 0 -> ValueError
    alpha = check_positive(alpha, "alpha")       # finite and > 0; nan, inf, 0, -1 -> ValueError
    p = check_dropout(p)                         # a real number in [0, 1)

Integral types (Python and NumPy integers) count as integers, ``bool`` does not, and a float such
as ``4.0`` is refused rather than truncated.
"""

from __future__ import annotations

import math
import numbers


def check_count(value: object, name: str, minimum: int = 1) -> int:
    """``value`` as an ``int`` if it is an integer (``numbers.Integral``, not ``bool``) >= ``minimum``."""
    what = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
    if not isinstance(value, numbers.Integral) or isinstance(value, bool):
        hint = f" (e.g. {int(value)})" if isinstance(value, float) and value.is_integer() else ""
        raise ValueError(
            f"{name} must be {what}, got {value!r} ({type(value).__name__}); pass an int{hint}"
        )
    if value < minimum:
        raise ValueError(f"{name} must be {what}, got {value!r}")
    return int(value)


def check_positive(value: object, name: str, fix: str = "") -> float:
    """``value`` as a ``float`` if it is a real number, finite and > 0; ``fix`` ends the message."""
    if not isinstance(value, numbers.Real) or isinstance(value, bool):
        raise ValueError(
            f"{name} must be a positive number, got {value!r} ({type(value).__name__})"
        )
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}{fix and '; ' + fix}")
    return float(value)


def check_dropout(p: object, name: str = "dropout") -> float:
    """``p`` as a ``float`` if it is a real number in [0, 1) (a probability of dropping)."""
    if not isinstance(p, numbers.Real) or isinstance(p, bool) or not 0.0 <= p < 1.0:
        raise ValueError(
            f"{name} must be in [0, 1) (the probability of dropping an entry), got {p!r}; "
            "use 0.0 for no dropout"
        )
    return float(p)
