"""Course tooling: automatic checks for exercises, exercise generation from solutions, and the HTML book.

Learners call ``check(name, fn)`` at the end of an exercise; maintainers run ``python -m minidit.course
build-exercises | check-exercises | build-book | outline`` (see ``minidit/course/__main__.py`` and book.toml).
"""
from minidit.course.checks import CHECKS, Case, Check, CheckResult, check, register

__all__ = ["CHECKS", "Case", "Check", "CheckResult", "check", "register"]
