"""Claims, verdicts and reference results of the lecture notebooks.

A lecture states a paper's claims and measures them at toy scale. ``Report`` is the notebook's log of them: every
claim goes through ``minidit.verdict.judge``, is printed with its reason, and is written to ``runs/<name>/claims.json``
(``runs/<name>/quick/`` in quick mode).
A quick run (``MINIDIT_QUICK=1``) is a smoke run: tiny budgets cannot show most effects, so each verdict is printed
as "smoke run" next to the committed **reference full run** of the same claim, read from
``notebooks/reference/<name>.json``. ``run_reference`` (``make reference``) executes lectures in full mode and writes
those reference files: claims, measured values, verdicts, run time and machine, plus the run's figures.
Course tooling, not a paper's method.
"""
from __future__ import annotations

import datetime
import json
import os
import platform
import shutil
import time
from pathlib import Path

from minidit.course.execute import execute_notebook, machine_description
from minidit.runs import quick_mode, repo_root, run_dir
from minidit.verdict import Measurement, Verdict, judge

REFERENCE_DIR = Path("notebooks") / "reference"


def reference_path(name: str, root: Path | None = None) -> Path:
    """``<repo>/notebooks/reference/<name>.json``: the committed full-run results of lecture ``name``."""
    return (root or repo_root()) / REFERENCE_DIR / f"{name}.json"


def load_reference(name: str, root: Path | None = None) -> dict | None:
    """The reference results of lecture ``name``, or ``None`` when none are committed yet."""
    path = reference_path(name, root)
    return json.loads(path.read_text()) if path.exists() else None


class Report:
    """The claims of one lecture notebook: judged, printed, saved, and in quick mode set beside the reference run.

    Example:
        >>> report = Report("02_flows_2d")
        >>> report.judge("the ODE beats the SDE at NFE 4", Measurement(0.10, 0.01), Measurement(0.25, 0.01),
        ...              names=("ODE", "SDE"))
        >>> report.finish()
    """

    def __init__(self, name: str, quick: bool | None = None):
        self.name = name
        self.quick = quick_mode() if quick is None else quick
        self.verdicts: list[Verdict] = []
        self.reference = load_reference(name)
        self.reference_claims = {c["claim"]: c for c in self.reference["claims"]} if self.reference else {}
        self.start, self.start_cpu = time.perf_counter(), time.process_time()

    def judge(self, claim: str, a: Measurement, b: Measurement, **options) -> Verdict:
        """``minidit.verdict.judge(claim, a, b, **options)``, printed (with the reference in quick mode) and logged."""
        if any(v.claim == claim for v in self.verdicts):
            raise ValueError(f"claim '{claim}' was judged twice in {self.name}; each claim is judged once")
        verdict = judge(claim, a, b, **options)
        self.verdicts.append(verdict)
        if not self.quick:
            print(f"claim '{claim}': {verdict.outcome.upper()} ({verdict.reason})")
            return verdict
        print(f"claim '{claim}'\n  smoke run (quick): {verdict.outcome} ({verdict.reason})")
        reference = self.reference_claims.get(claim)
        if reference is None:
            print("  reference full run: none committed yet (make reference)")
        else:
            print(f"  reference full run: {reference['verdict'].upper()} ({reference['reason']})")
        return verdict

    def finish(self) -> None:
        """Print the table of verdicts, write ``claims.json`` into ``run_dir(name)`` and check the claims match the
        reference's.

        Raises:
            AssertionError: when a reference file exists and names other claims than this run (a claim was added,
                renamed or dropped without re-running ``make reference``).
        """
        width = max([len(v.claim) for v in self.verdicts] + [5])
        print(f"\n{'claim':<{width}} | {'this run':<14} | reference full run")
        for v in self.verdicts:
            reference = self.reference_claims.get(v.claim, {}).get("verdict", "-")
            print(f"{v.claim:<{width}} | {v.outcome:<14} | {reference}")
        out = run_dir(self.name, self.quick) / "claims.json"
        out.write_text(json.dumps({
            "notebook": self.name, "mode": "quick" if self.quick else "full",
            "seconds": round(time.perf_counter() - self.start, 1),
            "cpu_seconds": round(time.process_time() - self.start_cpu, 1),
            "claims": [{"claim": v.claim, "verdict": v.outcome, "reason": v.reason,
                        "values": {k: round(x, 6) for k, x in v.values.items()}} for v in self.verdicts],
        }, indent=1))
        if self.reference is not None:
            ours, theirs = [v.claim for v in self.verdicts], list(self.reference_claims)
            assert ours == theirs, (f"{self.name}: claims differ from {reference_path(self.name)}: only here "
                                    f"{sorted(set(ours) - set(theirs))}, only in the reference {sorted(set(theirs) - set(ours))}"
                                    "; run `make reference` after changing a claim")


def run_reference(lectures: list[str], root: Path, timeout: int = 3600) -> list[Path]:
    """Execute each lecture notebook in full mode and write ``notebooks/reference/<stem>.json`` and its figures.

    Args:
        lectures: notebook paths relative to ``root``.
        root: the repository root.
        timeout: seconds one cell may take.
    Returns:
        the reference files written.
    """
    import nbformat
    import torch


    written = []
    for lecture in lectures:
        stem = Path(lecture).stem
        notebook = nbformat.read(root / lecture, as_version=4)
        print(f"{lecture}: running in full mode ...", flush=True)
        runs = run_dir(stem, quick=False)
        started = time.time()
        seconds = execute_notebook(notebook, (root / lecture).parent, quick=False, timeout=timeout)
        claims = json.loads((runs / "claims.json").read_text())
        if claims["mode"] != "full":
            raise RuntimeError(f"{lecture} ran in quick mode; unset MINIDIT_QUICK for the reference run")
        figures_dir = root / REFERENCE_DIR / stem
        shutil.rmtree(figures_dir, ignore_errors=True)
        figures_dir.mkdir(parents=True)
        figures = []
        for figure in sorted([*runs.glob("*.png"), *runs.glob("*.gif")]):
            if figure.stat().st_mtime < started:
                continue  # a figure of an earlier run, not of this one
            shutil.copy2(figure, figures_dir / figure.name)
            figures.append(f"{stem}/{figure.name}")
        path = reference_path(stem, root)
        path.write_text(json.dumps({
            "notebook": lecture, "mode": "full", "run_time_s": round(seconds, 1), "machine": machine_description(),
            # Wall time depends on what else ran: the kernel's CPU seconds and the load average say how busy it was.
            "cpu_time_s": claims.get("cpu_seconds"), "load_average": [round(x, 2) for x in os.getloadavg()],
            "python": platform.python_version(), "torch": torch.__version__,
            "date": datetime.date.today().isoformat(), "claims": claims["claims"], "figures": figures,
        }, indent=1) + "\n")
        print(f"{lecture}: {seconds:.0f} s, {len(claims['claims'])} claims -> {path}", flush=True)
        written.append(path)
    return written
