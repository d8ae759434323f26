"""The exercise framework: a stub the learner fills, a check that names what is wrong, hints and
the reference solution on request (the design is described in ``exercises/__init__.py``).

A check function receives the learner's answer and either returns (correct; it may return a
short note to show) or raises:

- ``NotAnswered``: the stub is untouched (``raise NotImplementedError``, ``...`` or ``None``);
- ``Wrong(message)``: the answer runs but is wrong; the message says what (a shape, a sign, a
  missing scale, which element differs and by how much) and how to fix it.

Any other exception comes from the learner's code; ``Exercise.evaluate`` reports it with its
type and message, never letting it escape into the notebook. The helpers below (``call``,
``compare``, ``compare_number``) produce those specific messages: ``compare`` first tries the
exercise's list of typical mistakes (what a wrong answer of each kind would give), then a
constant factor (a missing scale) or a flipped sign, then names the element that differs most.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import textwrap
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor

Status = Literal["correct", "wrong", "unanswered", "error"]


class NotAnswered(Exception):
    """The stub has not been filled in yet."""


class Wrong(Exception):
    """The answer is wrong; the message says what and how to fix it."""


def unanswered(answer: Any) -> bool:
    """Whether ``answer`` is an untouched value stub: ``...`` or ``None``."""
    return answer is None or answer is Ellipsis


def call(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)`` for the learner's function or class: a stub that raises
    ``NotImplementedError`` or returns ``None`` / ``...`` is ``NotAnswered``."""
    if unanswered(fn):
        raise NotAnswered
    if not callable(fn):
        raise Wrong(f"expected a function or class here, got a {type(fn).__name__}")
    try:
        out = fn(*args, **kwargs)
    except NotImplementedError:
        raise NotAnswered from None
    if unanswered(out):
        raise NotAnswered("it returned None (is a `return` missing?)")
    return out


def as_tensor(value: Any, what: str) -> Tensor:
    """``value`` if it is a tensor, else ``Wrong`` naming its type."""
    if not isinstance(value, Tensor):
        raise Wrong(f"{what} should be a torch.Tensor, got {type(value).__name__}")
    return value


def check_shape(got: Tensor, shape: Sequence[int], what: str, layout: str = "") -> None:
    """``Wrong`` unless ``got`` has ``shape``; says so when it is the transpose."""
    shape = tuple(shape)
    if tuple(got.shape) == shape:
        return
    named = f" {layout}" if layout else ""
    if got.dim() == 2 and len(shape) == 2 and tuple(got.shape) == shape[::-1]:
        raise Wrong(
            f"{what} has shape {tuple(got.shape)}, expected {shape}{named}: it is transposed "
            "(swap the factors' order or transpose them)"
        )
    raise Wrong(f"{what} has shape {tuple(got.shape)}, expected {shape}{named}")


def _close(a: Tensor, b: Tensor, atol: float, rtol: float) -> bool:
    return a.shape == b.shape and torch.allclose(a.double(), b.double(), atol=atol, rtol=rtol)


def _fmt(x: float) -> str:
    return f"{x:.4g}"


def compare(
    got: Any,
    want: Tensor,
    what: str,
    mistakes: Mapping[str, Tensor] | None = None,
    *,
    atol: float = 1e-5,
    rtol: float = 1e-4,
    layout: str = "",
) -> None:
    """``Wrong`` unless the tensor ``got`` equals ``want`` (to ``atol`` / ``rtol``).

    ``mistakes`` maps a message to what a typical wrong answer computes; the first one that
    ``got`` equals is the message raised. Otherwise a constant factor (a missing or extra scale)
    or a flipped sign is named, else the element that differs most, with both values.
    """
    got = as_tensor(got, what).detach()
    want = want.detach()
    check_shape(got, want.shape, what, layout)
    if not torch.isfinite(got).all():
        raise Wrong(f"{what} holds NaN or inf values")
    if _close(got, want, atol, rtol):
        return
    for message, variant in (mistakes or {}).items():
        if _close(got, variant.detach(), atol, rtol):
            raise Wrong(message)
    g, w = got.double().flatten(), want.double().flatten()
    if w.norm() > 0 and g.norm() > 0:
        k = float(g @ w / (w @ w))
        if _close(got.double(), k * want.double(), atol, rtol):
            if math.isclose(k, -1.0, rel_tol=1e-3):
                raise Wrong(f"{what} has the wrong sign: it is minus the expected value")
            raise Wrong(
                f"{what} is {_fmt(k)} times the expected value: a scale factor is missing, "
                "extra or inverted"
            )
    i = int((g - w).abs().argmax())
    index = tuple(int(j) for j in torch.unravel_index(torch.tensor(i), want.shape))
    where = f"[{', '.join(map(str, index))}]" if index else ""
    raise Wrong(
        f"{what}{where} is {_fmt(g[i].item())}, expected {_fmt(w[i].item())} (the largest "
        f"difference of all {want.numel()} elements: {_fmt((g - w).abs().max().item())})"
    )


def as_number(value: Any, what: str) -> float:
    """``value`` as a float (numbers and one-element tensors), else ``Wrong``."""
    if isinstance(value, Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise Wrong(f"{what} should be a number, got {type(value).__name__}")
    return float(value)


def compare_number(
    got: Any,
    want: float,
    what: str,
    mistakes: Mapping[str, float] | None = None,
    *,
    rel: float = 1e-6,
    abs_tol: float = 1e-9,
) -> None:
    """``Wrong`` unless the number ``got`` equals ``want``; typical mistakes as in ``compare``."""
    value = as_number(got, what)
    if not math.isfinite(value):
        raise Wrong(f"{what} is {value}, expected a finite number")
    if math.isclose(value, want, rel_tol=rel, abs_tol=abs_tol):
        return
    for message, variant in (mistakes or {}).items():
        if math.isclose(value, variant, rel_tol=rel, abs_tol=abs_tol):
            raise Wrong(message)
    raise Wrong(f"{what} is {_fmt(value)}, expected {_fmt(want)}")


@dataclass(frozen=True)
class Feedback:
    """The outcome of checking one answer: ``status`` and the message shown to the learner."""

    status: Status
    message: str

    @property
    def correct(self) -> bool:
        return self.status == "correct"


SYMBOL = {"correct": "✓", "wrong": "✗", "unanswered": "…", "error": "✗"}


def source_of(obj: Any) -> str:
    """The source code of a function or class, else its ``repr``."""
    try:
        return textwrap.dedent(inspect.getsource(obj)).rstrip()
    except (TypeError, OSError):
        return repr(obj)


@dataclass
class Exercise:
    """One exercise: a check of the learner's answer, hints, and the reference solution.

    ``check_answer(answer)`` follows the module docstring's contract. ``solution_obj`` is what
    ``check`` hands back when the answer is missing or wrong (and always with ``solutions``), so
    the cells below can still run; ``solution()`` shows its source. ``explanation`` is shown
    with the solution (e.g. why a prediction is right). ``stub`` is the learner's starting cell
    (it assumes ``torch`` and ``from torch import nn`` are imported); ``check_cell`` the cell
    after it. A notebook holds both verbatim (a test compares them).
    """

    title: str
    check_answer: Callable[[Any], str | None]
    solution_obj: Any
    hints: tuple[str, ...]
    explanation: str = ""
    stub: str = ""
    number: int = 0
    notebook: str = ""
    solutions: bool = False
    last: Feedback | None = field(default=None, repr=False)

    @property
    def label(self) -> str:
        return f"Exercise {self.number} ({self.title})"

    @property
    def check_cell(self) -> str:
        """The check cell's source: ``<title> = ex.qN.check(<title>)`` and where to get help."""
        q = f"ex.q{self.number}"
        return f"{self.title} = {q}.check({self.title})  # {q}.hint(), {q}.solution()"

    def evaluate(self, answer: Any) -> Feedback:
        """Check ``answer`` without printing; never raises for a learner's mistake.

        Runs under a forked, fixed random state, so a check never moves the notebook's seeds.
        """
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            try:
                if unanswered(answer):
                    raise NotAnswered
                note = self.check_answer(answer)
            except NotAnswered as err:
                why = f" ({err})" if str(err) else ""
                return Feedback("unanswered", f"not answered yet{why}")
            except Wrong as err:
                return Feedback("wrong", str(err))
            except Exception as err:  # the learner's code failed: report it, do not crash
                return Feedback("error", f"your code raised {type(err).__name__}: {err}")
        return Feedback("correct", "correct" + (f". {note}" if note else "."))

    def check(self, answer: Any) -> Any:
        """Check ``answer``, print the verdict, and return what the cells below should use: the
        answer if it is correct, else the reference solution (saying so).

        With ``solutions`` (the notebook's ``SOLUTIONS = True``, as in ``make course`` and the
        tests) the reference solution is checked and returned whatever ``answer`` is, and a
        failing check raises ``AssertionError``, so that an automated run fails.
        """
        if self.solutions:
            feedback = self.evaluate(self.solution_obj)
            self.last = feedback
            if not feedback.correct:
                raise AssertionError(
                    f"{self.notebook} {self.label}: the reference solution fails its own check: "
                    f"{feedback.message}"
                )
            print(f"✓ {self.label}: SOLUTIONS = True, so the reference solution is used (checked).")
            return self.solution_obj
        feedback = self.last = self.evaluate(answer)
        lines = [f"{SYMBOL[feedback.status]} {self.label}: {feedback.message}"]
        if not feedback.correct:
            more = "" if feedback.status == "unanswered" else "try again, "
            lines.append(
                f"  The cells below use the reference solution for now ({more}or see "
                f"ex.q{self.number}.hint() and ex.q{self.number}.solution())."
            )
        print("\n".join(lines))
        return answer if feedback.correct else self.solution_obj

    def hint(self, n: int = 1) -> None:
        """Print hint ``n`` (1 first; later ones say more)."""
        if not 1 <= n <= len(self.hints):
            raise ValueError(f"{self.label} has hints 1 to {len(self.hints)}, not {n}")
        more = f" (more: ex.q{self.number}.hint({n + 1}))" if n < len(self.hints) else ""
        print(f"Hint {n} of {len(self.hints)} for {self.label}{more}:\n{self.hints[n - 1]}")

    def solution(self) -> None:
        """Print the reference solution's source code (and the explanation, if any)."""
        print(f"Solution of {self.label}:")
        if self.explanation:
            print(self.explanation + "\n")
        print(source_of(self.solution_obj))


class ExerciseSet:
    """The exercises of one notebook as ``ex.q1``, ``ex.q2``, ...; iterate for all of them."""

    def __init__(self, notebook: str, exercises: Sequence[Exercise], solutions: bool) -> None:
        self.notebook = notebook
        self._exercises = [
            dataclasses.replace(e, number=i, notebook=notebook, solutions=solutions, last=None)
            for i, e in enumerate(exercises, 1)
        ]
        self.solutions = solutions

    def __getattr__(self, name: str) -> Exercise:
        if name.startswith("q") and name[1:].isdigit():
            k = int(name[1:])
            if 1 <= k <= len(self._exercises):
                return self._exercises[k - 1]
        raise AttributeError(
            f"notebook {self.notebook} has exercises q1 to q{len(self._exercises)}, not {name!r}"
        )

    def __iter__(self) -> Iterator[Exercise]:
        return iter(self._exercises)

    def __len__(self) -> int:
        return len(self._exercises)

    def summary(self) -> dict[str, int]:
        """How many exercises were checked correct, wrong, unanswered, or never checked."""
        counts = {"correct": 0, "wrong": 0, "unanswered": 0, "unchecked": 0}
        for e in self._exercises:
            status = "unchecked" if e.last is None else e.last.status
            counts["wrong" if status == "error" else status] += 1
        return counts

    def report(self) -> str:
        """One sentence on the exercises, for a notebook's takeaways."""
        c = self.summary()
        if self.solutions:
            return (
                f"Exercises: SOLUTIONS = True, so the {c['correct']} of {len(self)} checked "
                "exercises ran on the reference solutions."
            )
        return (
            f"Exercises: {c['correct']} of {len(self)} correct"
            + (f", {c['wrong']} not yet right" if c["wrong"] else "")
            + (f", {c['unanswered']} not answered" if c["unanswered"] else "")
            + (f", {c['unchecked']} not checked" if c["unchecked"] else "")
            + "."
        )
