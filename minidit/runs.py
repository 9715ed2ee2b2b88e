"""Where notebooks and the demo put their results, and how they pick quick or full experiments.

Every notebook reads ``MINIDIT_QUICK=1`` (set by ``make test`` and CI) to shrink steps and sizes so that it runs in
about a minute on 2 CPU cores; without it, it runs the full experiment. Figures go to ``runs/<name>/`` at the
repository root (or under ``MINIDIT_RUNS`` when set), as PNG files; a quick run's go to ``runs/<name>/quick/``, so
a smoke run (``make test``) never overwrites or mixes with the figures and claims of a full run, even one in progress.
"""
from __future__ import annotations

import os
from pathlib import Path


def quick_mode() -> bool:
    """True when ``MINIDIT_QUICK`` is set to ``1`` (or ``true``/``yes``)."""
    return os.environ.get("MINIDIT_QUICK", "0").strip().lower() in ("1", "true", "yes")


def repo_root() -> Path:
    """The nearest folder above the current one holding ``pyproject.toml``; outside a checkout, the current folder."""
    here = Path.cwd().resolve()
    return next((p for p in (here, *here.parents) if (p / "pyproject.toml").exists()), here)


def run_dir(name: str, quick: bool | None = None) -> Path:
    """Create and return the folder for results named ``name``: ``$MINIDIT_RUNS/name`` or ``<repo>/runs/name``, with
    ``/quick`` appended for a quick run (``quick``; ``None`` reads ``quick_mode()``).

    The repository root is ``repo_root()``.
    """
    base = os.environ.get("MINIDIT_RUNS")
    if base is None:
        base = repo_root() / "runs"
    path = Path(base) / name
    quick = quick_mode() if quick is None else quick
    if quick:
        path = path / "quick"
    path.mkdir(parents=True, exist_ok=True)
    return path
