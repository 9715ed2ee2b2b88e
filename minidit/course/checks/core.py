"""The check machinery shared by every chapter: run a learner's function against minidit's reference, give hints
in levels, and check the answers to the exercises' questions against values minidit computes.

A check runs the learner's function and the reference on the same few deterministic cases and reports the first
mismatch (which input, expected versus got, the first hint); an unfinished exercise (``NotImplementedError``) is
reported as "not implemented yet" instead of a traceback, so an exercise notebook runs to the end as shipped. When the
learner's function fails and it calls another function the learner wrote for an earlier check (``qk_norm`` calling
``rms_norm``), that helper is checked too and a wrong helper is named in the message. A question's answer is compared
with a value computed by minidit's code when ``check_answer`` runs, never with a stored constant.
This is course tooling, not a paper's method; the chapter modules next to this one register the checks, hints and
questions that the notebooks in exercises/ use.

Example:
    >>> result = check("interpolant", my_interpolant)   # prints "✓ interpolant: all 9 cases pass"
    >>> hint("interpolant", 2)                          # prints the second, more specific hint
    >>> check_answer("peak_speed_path", "vp")           # prints "✓ peak_speed_path: ..." with the measured values
"""
from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from minidit.validation import check_choice

STATUSES = ("pass", "fail", "not_implemented", "not_answered")


@dataclass(frozen=True)
class CheckResult:
    """Outcome of ``check`` or ``check_answer``: ``status`` is ``"pass"``, ``"fail"``, ``"not_implemented"`` or
    ``"not_answered"``; ``message`` is what was printed."""

    name: str
    status: str
    message: str

    def __post_init__(self) -> None:
        check_choice("check status", self.status, STATUSES)

    @property
    def passed(self) -> bool:
        """True when every case matched the reference (or the answer matched minidit's value)."""
        return self.status == "pass"


@dataclass(frozen=True)
class Case:
    """One input: ``args`` are passed positionally to both the learner's function and the reference."""

    label: str
    args: tuple[Any, ...]


@dataclass(frozen=True)
class Check:
    """A registered check.

    Attributes:
        name: registry key, e.g. ``"interpolant"``; also the name ``hint`` takes.
        reference: minidit's implementation, called with the same arguments as the learner's function.
        cases: builds the list of ``Case`` (fresh tensors on each call, so in-place edits cannot leak).
        hints: at least two hints, from a nudge towards the idea to one close to the recipe; the first is shown
            with a failure, the others by ``hint(name, level)``.
        helpers: names of other checks whose functions the learner's function may call under the same name
            (``"rms_norm"`` for ``qk_norm``); when the function fails, a wrong helper is named instead.
        output_names: names of the parts of a tuple output, for clearer failure messages.
        evaluate: turns a function's return value into the value compared (identity by default; a check
            whose functions return a function evaluates it here).
        atol, rtol: tolerances of the comparison.
    """

    name: str
    reference: Callable[..., Any]
    cases: Callable[[], list[Case]]
    hints: Sequence[str]
    helpers: Sequence[str] = ()
    output_names: Sequence[str] = ()
    evaluate: Callable[[Any], Any] = field(default=lambda output: output)
    atol: float = 1e-5
    rtol: float = 1e-4

    def __post_init__(self) -> None:
        if len(self.hints) < 2:
            raise ValueError(f"check {self.name!r} has {len(self.hints)} hint(s); give at least two levels, the last close to the recipe")


@dataclass(frozen=True)
class Question:
    """A conceptual or prediction question whose answer is a choice or a number, checked by ``check_answer``.

    Attributes:
        name: registry key, also the variable the learner writes the answer into, e.g. ``"peak_speed_path"``.
        prompt: the question in one line (repeated while it is not answered).
        compute: runs minidit's code and returns ``(expected answer, the measurement in one sentence)``; called at
            check time. The expected answer is a string from ``choices``, a number, or a tuple of numbers.
        choices: the valid answers of a choice question; empty for a numeric one.
        atol, rtol: tolerances for a numeric answer.
    """

    name: str
    prompt: str
    compute: Callable[[], tuple[Any, str]]
    choices: Sequence[str] = ()
    atol: float = 0.0
    rtol: float = 0.0


CHECKS: dict[str, Check] = {}
QUESTIONS: dict[str, Question] = {}


def register(new_check: Check) -> Check:
    """Add ``new_check`` to ``CHECKS`` (its name must be new) and return it."""
    if new_check.name in CHECKS:
        raise ValueError(f"a check named {new_check.name!r} is already registered; pick another name")
    CHECKS[new_check.name] = new_check
    return new_check


def register_question(question: Question) -> Question:
    """Add ``question`` to ``QUESTIONS`` (its name must be new and not a check's) and return it."""
    if question.name in QUESTIONS or question.name in CHECKS:
        raise ValueError(f"a check or question named {question.name!r} is already registered; pick another name")
    QUESTIONS[question.name] = question
    return question


def generator(seed: int) -> torch.Generator:
    """A CPU generator seeded with ``seed``: every case and question draws from its own."""
    return torch.Generator().manual_seed(seed)


def _describe(value: Any) -> str:
    """Short description of a value for messages: shape for tensors, repr otherwise."""
    if isinstance(value, Tensor):
        return f"tensor of shape {tuple(value.shape)}"
    if isinstance(value, (tuple, list)):
        return f"{type(value).__name__} of {len(value)}: (" + ", ".join(_describe(v) for v in value) + ")"
    return repr(value)


def _mismatch(expected: Any, got: Any, output_names: Sequence[str], atol: float, rtol: float, where: str) -> str | None:
    """Return a description of the first difference between ``expected`` and ``got``, or ``None`` if they match."""
    if isinstance(expected, (tuple, list)):
        if not isinstance(got, (tuple, list)) or len(got) != len(expected):
            return f"{where}expected {_describe(expected)}, got {_describe(got)}"
        names = output_names if len(output_names) == len(expected) else [f"[{i}]" for i in range(len(expected))]
        for part_name, e, g in zip(names, expected, got):
            problem = _mismatch(e, g, (), atol, rtol, f"{where}{part_name}: ")
            if problem:
                return problem
        return None
    expected_tensor = torch.as_tensor(expected, dtype=torch.float64)
    try:
        got_tensor = torch.as_tensor(got, dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError):
        return f"{where}expected {_describe(expected)}, got {_describe(got)}"
    if got_tensor.shape != expected_tensor.shape:
        return f"{where}expected shape {tuple(expected_tensor.shape)}, got shape {tuple(got_tensor.shape)}"
    if torch.allclose(got_tensor, expected_tensor, rtol=rtol, atol=atol, equal_nan=True):
        return None
    error = (got_tensor - expected_tensor).abs().nan_to_num(nan=math.inf)
    index = tuple(int(i) for i in torch.unravel_index(error.argmax(), error.shape))
    return (f"{where}values differ (shape {tuple(expected_tensor.shape)}, max abs error {error.max().item():.3g}); "
            f"at index {index}: expected {expected_tensor[index].item():.6g}, got {got_tensor[index].item():.6g}")


def _hint_pointer(spec: Check) -> str:
    return f"hint: {spec.hints[0]} (more: hint({spec.name!r}, 2) ... hint({spec.name!r}, {len(spec.hints)}))"


def _run(spec: Check, fn: Callable[..., Any]) -> tuple[str, str]:
    """Run every case; return ``(status, detail)``, the detail without the check's name (empty on a pass)."""
    expected_cases, learner_cases = spec.cases(), spec.cases()
    for index, (reference_case, case) in enumerate(zip(expected_cases, learner_cases), start=1):
        where = f"case {index} of {len(learner_cases)} ({case.label})"
        try:
            got = spec.evaluate(fn(*case.args))
        except NotImplementedError:
            return "not_implemented", "not implemented yet (replace the `raise NotImplementedError` and run again)"
        except Exception as error:  # noqa: BLE001 - any learner error becomes a readable verdict
            return "fail", f"{where} raised {type(error).__name__}: {error}\n  {_hint_pointer(spec)}"
        expected = spec.evaluate(spec.reference(*reference_case.args))
        problem = _mismatch(expected, got, spec.output_names, spec.atol, spec.rtol, "")
        if problem:
            return "fail", f"{where}: {problem}\n  {_hint_pointer(spec)}"
    return "pass", f"all {len(learner_cases)} cases pass"


def learner_helpers(spec: Check, fn: Callable[..., Any]) -> dict[str, Callable[..., Any]]:
    """The learner's functions named in ``spec.helpers`` that ``fn`` calls (found through its globals and closure)."""
    if not inspect.isfunction(fn):
        return {}
    variables = inspect.getclosurevars(fn)
    visible = {**variables.globals, **variables.nonlocals}
    return {name: visible[name] for name in spec.helpers if callable(visible.get(name))}


def _finish(name: str, status: str, message: str) -> CheckResult:
    print(message)
    return CheckResult(name, status, message)


def check(name: str, fn: Callable[..., Any]) -> CheckResult:
    """Compare the learner's ``fn`` with minidit's reference for check ``name`` and print a verdict.

    Never raises for a wrong or unfinished ``fn``: a ``NotImplementedError`` gives status ``"not_implemented"``,
    any other exception or mismatch gives ``"fail"`` with the input, expected versus got and the first hint. When
    ``fn`` fails (or is unfinished) and calls a helper of the learner's (``Check.helpers``) that fails its own check
    (or is unfinished), the message names the helper and shows the helper's failure instead.

    Args:
        name: a key of ``CHECKS`` (e.g. ``"interpolant"``, ``"convert"``, ``"euler_step"``).
        fn: the learner's function, with the signature the exercise describes.
    Returns:
        ``CheckResult(name, status, message)``.
    Raises:
        ValueError: for an unknown check name, listing the valid ones.
    """
    spec = CHECKS[check_choice("check", name, CHECKS)]
    status, detail = _run(spec, fn)
    if status in ("fail", "not_implemented"):
        for helper_name, helper in learner_helpers(spec, fn).items():
            helper_status, helper_detail = _run(CHECKS[helper_name], helper)
            if helper_status == status == "fail":
                return _finish(name, "fail", f"✗ {name}: your `{helper_name}` is wrong, fix it first: {helper_detail}")
            if helper_status == status == "not_implemented":
                return _finish(name, status, f"… {name}: not implemented yet (it calls your `{helper_name}`, which is not written yet)")
    symbol = {"pass": "✓", "fail": "✗", "not_implemented": "…"}[status]
    return _finish(name, status, f"{symbol} {name}: {detail}")


def hint(name: str, level: int = 1) -> None:
    """Print hint number ``level`` of check ``name``: 1 is a nudge, the last is close to the recipe.

    Raises:
        ValueError: for an unknown name or a level outside ``1 .. len(hints)``, listing the valid ones.
    """
    spec = CHECKS[check_choice("hint", name, CHECKS)]
    if not (isinstance(level, int) and 1 <= level <= len(spec.hints)):
        raise ValueError(f"hint {name!r} has levels 1 to {len(spec.hints)}; got {level!r}")
    print(f"hint {name} ({level} of {len(spec.hints)}): {spec.hints[level - 1]}")


def _answer_mismatch(question: Question, expected: Any, answer: Any) -> str | None:
    """Why ``answer`` is not ``expected`` (``None`` when it is right); for a choice, also an answer not among the choices."""
    if question.choices:
        if not isinstance(answer, str) or answer.strip().lower() not in question.choices:
            return f"{answer!r} is not one of {', '.join(repr(c) for c in question.choices)}"
        return None if answer.strip().lower() == expected else f"you answered {answer.strip().lower()!r}"
    try:
        got = torch.as_tensor(answer, dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError):
        return f"{answer!r} is not a number (or a tuple of numbers)"
    want = torch.as_tensor(expected, dtype=torch.float64)
    if got.shape != want.shape:
        return f"expected {want.numel()} number(s), got {answer!r}"
    return None if torch.allclose(got, want, atol=question.atol, rtol=question.rtol) else f"you answered {answer!r}"


def check_answer(name: str, answer: Any) -> CheckResult:
    """Check the learner's ``answer`` to question ``name`` against the value minidit computes now, and print why.

    ``None`` (the exercise as shipped) gives status ``"not_answered"``. A choice is compared case-insensitively; a
    number or tuple of numbers within the question's tolerance.

    Returns:
        ``CheckResult(name, status, message)``.
    Raises:
        ValueError: for an unknown question name, listing the valid ones.
    """
    question = QUESTIONS[check_choice("question", name, QUESTIONS)]
    if answer is None:
        return _finish(name, "not_answered", f"… {name}: not answered yet ({question.prompt} Write your answer into `{name}` and run again)")
    expected, measured = question.compute()
    problem = _answer_mismatch(question, expected, answer)
    if problem is None:
        return _finish(name, "pass", f"✓ {name}: right. {measured}")
    return _finish(name, "fail", f"✗ {name}: {problem}; minidit computes {_format(expected)}. {measured}")


def _format(value: Any) -> str:
    """A computed answer for a message: a choice quoted, numbers to 4 significant digits."""
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, (tuple, list)):
        return "(" + ", ".join(_format(v) for v in value) + ")"
    return f"{float(value):.4g}"
