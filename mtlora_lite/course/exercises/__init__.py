"""Exercises for the course notebooks: write a piece, check it, get a hint, see the solution.

Every notebook loads its exercises once, in its set-up cell (``SOLUTIONS`` comes from the
``parameters`` cell)::

    ex = load_exercises("01", solutions=SOLUTIONS)      # or: nb = setup(...); ex = nb.exercises

Each exercise is then two cells. The *stub* cell is the learner's: a function or class whose
body is ``raise NotImplementedError`` (or a value ``= ...``), to be replaced by their code::

    def delta_m_by_hand(multi, single, higher_is_better):
        \"\"\"Mean over tasks of the signed relative change vs single-task, in %.\"\"\"
        raise NotImplementedError  # your code here

The *check* cell passes the answer to ``check`` and keeps what it returns::

    delta_m_by_hand = ex.q2.check(delta_m_by_hand)  # ex.q2.hint(), ex.q2.solution()

``check`` prints one of: correct; not answered yet; what is wrong (a shape, a sign, a missing
scale, a transposed factor, a wrong initialisation, which element differs and by how much); or
the exception the learner's code raised. It returns the answer when it is correct and the
reference solution otherwise (and says so), so a learner who skips an exercise can still run
the notebook top to bottom. ``ex.qN.hint()`` (``hint(2)`` for the next) and
``ex.qN.solution()`` (the reference's source code) are there on request. A check never moves
the notebook's random state.

Automated runs: ``make course`` (``scripts/run_course.py``) and the notebook tests set the
papermill parameter ``SOLUTIONS = True``. Then ``check`` ignores the stub, checks the reference
solution and returns it; if the reference failed its own check, ``check`` raises and the run
fails. So every check runs in CI, and the notebook's later cells run on the reference.

``ex.report()`` gives one sentence for a notebook's takeaways (how many exercises are right).
The exercises of each notebook live in ``nb00`` ... ``nb07`` (reference solutions written as a
learner would, checks, hints); ``core`` holds the framework.
"""

from __future__ import annotations

from mtlora_lite.course.exercises import nb00, nb01, nb02, nb03, nb04, nb05, nb06, nb07
from mtlora_lite.course.exercises.core import (
    Exercise,
    ExerciseSet,
    Feedback,
    NotAnswered,
    Wrong,
)

_BY_NOTEBOOK = {
    "00": nb00,
    "01": nb01,
    "02": nb02,
    "03": nb03,
    "04": nb04,
    "05": nb05,
    "06": nb06,
    "07": nb07,
}
NOTEBOOKS = tuple(_BY_NOTEBOOK)


def load_exercises(notebook: str, solutions: bool = False) -> ExerciseSet:
    """The exercises of ``notebook`` ("01", or a name such as "01_lora_from_scratch") as
    ``ex.q1``, ``ex.q2``, ...; ``solutions=True`` makes every ``check`` use (and check) the
    reference solution (module docstring)."""
    key = str(notebook)[:2]
    if key not in NOTEBOOKS:
        raise ValueError(f"no exercises for notebook {notebook!r}; notebooks are {NOTEBOOKS}")
    return ExerciseSet(key, _BY_NOTEBOOK[key].EXERCISES, solutions=bool(solutions))


__all__ = [
    "NOTEBOOKS",
    "Exercise",
    "ExerciseSet",
    "Feedback",
    "NotAnswered",
    "Wrong",
    "load_exercises",
]
