"""Exercise notebooks generated from solution notebooks, so the two can never drift apart.

In a solution's code cells a region between ``# BEGIN SOLUTION`` and ``# END SOLUTION`` (optionally followed by
``# GOAL: text`` lines: what the code must produce and the tensor shapes, not how) becomes
``raise NotImplementedError("Exercise: text")`` at the region's indentation; a line ``name = value  # ANSWER`` (the
solution's answer to a question) becomes ``name = None  # your answer``; lines ending in ``# SOLUTION-ONLY`` are dropped.
Markdown cells containing the line ``<!-- SOLUTION-ONLY -->`` (the answers to the questions) are dropped, and all
outputs are stripped. Hints live with the checks (``minidit.course.hint``), not in the notebooks.
This is course tooling, not a paper's method; it turns solutions/NN_topic.ipynb into exercises/NN_topic.ipynb.
"""
from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

BEGIN, END, GOAL, SOLUTION_ONLY, ANSWER = "# BEGIN SOLUTION", "# END SOLUTION", "# GOAL:", "# SOLUTION-ONLY", "# ANSWER"
SOLUTION_ONLY_CELL = "<!-- SOLUTION-ONLY -->"
DEFAULT_GOAL = "complete this code (see the text above)"
ANSWER_LINE = re.compile(r"^(?P<indent>\s*)(?P<name>[A-Za-z_]\w*)\s*=\s*\S.*#\s*ANSWER\s*$")
NOTEBOOK_NAME = re.compile(r"^\d\d_[a-z0-9_]+\.ipynb$")


def require_nbformat() -> Any:
    """Import ``nbformat``, or raise ``ImportError`` saying how to install it."""
    try:
        import nbformat
    except ImportError as error:
        raise ImportError("the course tools need nbformat: pip install -e '.[dev]' (or pip install nbformat)") from error
    return nbformat


def exercise_source(source: str, where: str = "cell") -> str:
    """Turn one solution code cell's source into the exercise's.

    Args:
        source: the cell's code.
        where: used in error messages, e.g. ``"solutions/01_interpolants.ipynb, cell 3"``.
    Returns:
        the code with every solution region replaced by ``raise NotImplementedError("Exercise: <goal>")`` and every
        answer line by ``name = None  # your answer``.
    Raises:
        ValueError: for a ``# BEGIN SOLUTION`` without ``# END SOLUTION`` or the reverse, nested regions, or a line
            marked ``# ANSWER`` that is not ``name = value  # ANSWER``.
    """
    out: list[str] = []
    region: dict[str, Any] | None = None  # the open region: indentation, goal lines, whether goal lines may follow
    for number, line in enumerate(source.splitlines(), start=1):
        stripped = line.strip()
        if stripped == BEGIN:
            if region is not None:
                raise ValueError(f"{where}, line {number}: nested {BEGIN!r}; close the first region with {END!r}")
            region = {"indent": line[: len(line) - len(line.lstrip())], "goal": [], "reading_goal": True}
        elif stripped == END:
            if region is None:
                raise ValueError(f"{where}, line {number}: {END!r} without a matching {BEGIN!r}")
            goal = " ".join(region["goal"]) or DEFAULT_GOAL
            out.append(f'{region["indent"]}raise NotImplementedError({"Exercise: " + goal!r})')
            region = None
        elif region is not None:
            if region["reading_goal"] and stripped.startswith(GOAL):
                region["goal"].append(stripped[len(GOAL):].strip())
            else:
                region["reading_goal"] = False
        elif line.rstrip().endswith(ANSWER):
            match = ANSWER_LINE.match(line)
            if match is None:
                raise ValueError(f"{where}, line {number}: {ANSWER!r} marks a line `name = value  {ANSWER}`; got {line.strip()!r}")
            out.append(f'{match["indent"]}{match["name"]} = None  # your answer')
        elif not line.rstrip().endswith(SOLUTION_ONLY):
            out.append(line)
    if region is not None:
        raise ValueError(f"{where}: {BEGIN!r} without a matching {END!r}; add it after the solution code")
    return "\n".join(out)


def exercise_notebook(solution: Any, name: str = "notebook") -> Any:
    """Return the exercise version of a solution notebook (an ``nbformat.NotebookNode``); the input is not modified."""
    exercise = copy.deepcopy(solution)
    kept = []
    for index, cell in enumerate(exercise.cells):  # index: the cell's position in the solution, for error messages
        if cell.cell_type == "markdown" and SOLUTION_ONLY_CELL in cell.source.splitlines():
            continue
        if cell.cell_type == "code":
            cell.source = exercise_source(cell.source, f"{name}, cell {index}")
            cell.outputs = []
            cell.execution_count = None
            cell.metadata.pop("execution", None)
        kept.append(cell)
    exercise.cells = kept
    return exercise


def _solution_paths(solutions_dir: Path) -> list[Path]:
    paths = sorted(solutions_dir.glob("*.ipynb"))
    for path in paths:
        if not NOTEBOOK_NAME.match(path.name):
            raise ValueError(f"{path}: solution notebooks are named NN_topic.ipynb (two digits, lower case), e.g. 01_interpolants.ipynb")
    return paths


def render_exercises(solutions_dir: Path | str) -> dict[str, str]:
    """Map each exercise file name to its text, generated from ``solutions_dir/NN_topic.ipynb``."""
    nbformat = require_nbformat()
    rendered = {}
    for path in _solution_paths(Path(solutions_dir)):
        solution = nbformat.read(path, as_version=4)
        rendered[path.name] = nbformat.writes(exercise_notebook(solution, str(path))) + "\n"
    return rendered


def build_exercises(solutions_dir: Path | str = "solutions", exercises_dir: Path | str = "exercises") -> list[Path]:
    """Write every exercise notebook; remove exercises whose solution is gone. Returns the written paths."""
    exercises_dir = Path(exercises_dir)
    exercises_dir.mkdir(parents=True, exist_ok=True)
    rendered = render_exercises(solutions_dir)
    for stale in set(p.name for p in exercises_dir.glob("*.ipynb")) - set(rendered):
        (exercises_dir / stale).unlink()
    written = []
    for file_name, text in rendered.items():
        (exercises_dir / file_name).write_text(text, encoding="utf-8")
        written.append(exercises_dir / file_name)
    return written


def outdated_exercises(solutions_dir: Path | str = "solutions", exercises_dir: Path | str = "exercises") -> list[str]:
    """Problems that make ``exercises_dir`` differ from a fresh build (empty when it is up to date)."""
    exercises_dir = Path(exercises_dir)
    rendered = render_exercises(solutions_dir)
    problems = [f"{exercises_dir / name}: no solution notebook generates it" for name in
                sorted(set(p.name for p in exercises_dir.glob("*.ipynb")) - set(rendered))]
    for file_name, text in rendered.items():
        path = exercises_dir / file_name
        if not path.exists():
            problems.append(f"{path}: missing")
        elif path.read_text(encoding="utf-8") != text:
            problems.append(f"{path}: differs from its solution")
    return problems
