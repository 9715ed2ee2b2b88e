"""Executing course notebooks, as the book builder and the reference runs do.

``execute_notebook`` runs a notebook in place with nbclient in quick (``MINIDIT_QUICK=1``) or full mode, with
``MINIDIT_STATIC=1`` so that interactive helpers draw static figures; ``machine_description`` names the machine that
measured a run time. Used by ``minidit.course.book`` (``make book``) and ``minidit.course.reference``
(``make reference``). Course tooling, not a paper's method.
"""
from __future__ import annotations

import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def _environment(**values: str):
    """Set environment variables for the duration of a ``with`` block (a kernel started inside inherits them)."""
    previous = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in previous.items():
            if value is None:
                del os.environ[name]
            else:
                os.environ[name] = value


def execute_notebook(notebook: object, directory: Path, quick: bool = True, timeout: int = 600) -> float:
    """Execute ``notebook`` in place with nbclient (working directory ``directory``); return the seconds it took.

    The kernel gets ``MINIDIT_QUICK`` = 1 (``quick``) or 0, and ``MINIDIT_STATIC=1``: nobody can move a slider in a
    notebook executed without a browser, so interactive helpers draw a static figure instead of a widget.
    Widget states (tqdm's progress bars) are saved in the notebook's metadata.
    """
    try:
        from nbclient import NotebookClient
    except ImportError as error:
        raise ImportError("executing the book needs nbclient: pip install -e '.[dev]'") from error
    with _environment(MINIDIT_QUICK="1" if quick else "0", MINIDIT_STATIC="1"):
        start = time.perf_counter()
        NotebookClient(notebook, timeout=timeout, kernel_name="python3", store_widget_state=True,
                       resources={"metadata": {"path": str(directory)}}).execute()
        return time.perf_counter() - start


def machine_description() -> str:
    """A short description of this machine for measured run times, e.g. ``"2 CPU cores, Python 3.11"``.

    When ``OMP_NUM_THREADS`` limits torch (and so the notebook kernels, which inherit it) to fewer threads than
    cores, the description says so: ``"2 CPU cores (torch on 1 thread), Python 3.11"``.
    """
    cores = f"{os.cpu_count()} CPU cores"
    threads = os.environ.get("OMP_NUM_THREADS", "")
    if threads.isdigit() and int(threads) < (os.cpu_count() or 1):
        cores += f" (torch on {threads} thread{'s' if int(threads) > 1 else ''})"
    return f"{cores}, Python {sys.version_info.major}.{sys.version_info.minor}"
