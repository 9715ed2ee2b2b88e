"""Course tooling: automatic checks, hints and question answers for exercises, exercise generation from solutions,
and the HTML book.

Learners call ``check(name, fn)`` after writing a function, ``hint(name, level)`` when stuck and
``check_answer(name, answer)`` for a question (``minidit/course/checks/``); maintainers run ``python -m minidit.course
build-exercises | check-exercises | build-book | outline`` (see ``minidit/course/__main__.py`` and book.toml).
"""
from minidit.course.checks import CHECKS, QUESTIONS, check, check_answer, hint

__all__ = ["CHECKS", "QUESTIONS", "check", "check_answer", "hint"]
