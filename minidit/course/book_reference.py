"""The "Reference full run" section of a lecture's page in the HTML book.

A quick run is a smoke run; what a lecture's claims come to at full scale is in its committed reference file
``notebooks/reference/<stem>.json`` (written by ``make reference``, see ``minidit.course.reference``). The book shows
it after the lecture: run time and machine, a table claim | verdict | reason | values, and the reference figures,
copied into the book. Course tooling used by ``minidit.course.book``, not a paper's method.
"""
from __future__ import annotations

import html
import os
import shutil
from pathlib import Path

from minidit.course.reference import REFERENCE_DIR, load_reference, reference_path
from minidit.verdict import OUTCOMES

BOOK_REFERENCE_DIR = "reference"  # the figures' folder inside the book
REQUIRED_KEYS = ("notebook", "mode", "run_time_s", "machine", "date", "claims", "figures")


def _text(text: object) -> str:
    """``text`` as HTML on one line (a blank line would end the Markdown cell's HTML block); ``$...$`` stays for MathJax."""
    return html.escape(" ".join(str(text).split()), quote=False)


def _values(values: dict[str, float]) -> str:
    return ", ".join(f"{name} = {value:.4g}" if isinstance(value, float) else f"{name} = {value}"
                     for name, value in values.items())


def reference_markdown(lecture: str, root: Path | str, out: Path | str, page: str) -> str:
    """Markdown of the "Reference full run" section for ``lecture``, copying its figures into ``out/reference/``.

    Args:
        lecture: the lecture notebook, relative to ``root`` (e.g. ``notebooks/01_interpolants_1d.ipynb``).
        root: repository root; the reference file is ``root/notebooks/reference/<stem>.json``.
        out: the book folder.
        page: the lecture's page relative to ``out`` (figure links are relative to it).
    Returns:
        the section; one line saying so when no reference file exists yet.
    Raises:
        ValueError: when the reference file lacks a key, names another notebook, or has an unknown verdict.
        FileNotFoundError: when it names a figure that is not under ``notebooks/reference/``.
    """
    root, out, stem = Path(root), Path(out), Path(lecture).stem
    title = "## Reference full run\n\n"
    reference = load_reference(stem, root)
    if reference is None:
        return title + (f"No reference full run is committed for this lecture yet (`make reference NOTEBOOKS={lecture}` "
                        f"writes `{REFERENCE_DIR.as_posix()}/{stem}.json`).\n")
    where = reference_path(stem, root)
    missing = [key for key in REQUIRED_KEYS if key not in reference]
    if missing:
        raise ValueError(f"{where}: missing key(s) {missing}; regenerate it with `make reference NOTEBOOKS={lecture}`")
    if reference["notebook"] != lecture:
        raise ValueError(f"{where}: names notebook {reference['notebook']!r}, expected {lecture!r}")
    versions = ", ".join(f"{name} {reference[name]}" for name in ("python", "torch") if name in reference)
    busy = []  # wall time depends on what else ran; the kernel's CPU time and the load average say how busy it was
    if reference.get("cpu_time_s") is not None:
        busy.append(f"kernel CPU time {reference['cpu_time_s']:.0f} s")
    if reference.get("load_average"):
        busy.append("load average " + " / ".join(f"{x:.1f}" for x in reference["load_average"]))
    if reference.get("note"):
        busy.append(reference["note"])
    lines = [title + f"The committed {reference['mode']} run took **{reference['run_time_s']:.0f} s** on {_text(reference['machine'])}"
             + (f" ({versions})" if versions else "") + f", {reference['date']}"
             + (f"; {', '.join(busy)}" if busy else "") + ".", "",
             "<table>", "<tr><th>claim</th><th>verdict</th><th>reason</th><th>values</th></tr>"]
    for claim in reference["claims"]:
        if claim["verdict"] not in OUTCOMES:
            raise ValueError(f"{where}: claim {claim['claim']!r} has verdict {claim['verdict']!r}; one of {list(OUTCOMES)}")
        lines.append(f"<tr><td>{_text(claim['claim'])}</td><td><strong>{claim['verdict']}</strong></td>"
                     f"<td>{_text(claim['reason'])}</td><td>{_text(_values(claim.get('values', {})))}</td></tr>")
    lines += ["</table>", ""]
    for figure in reference["figures"]:
        source = root / REFERENCE_DIR / figure
        if not source.is_file():
            raise FileNotFoundError(f"{where} names figure {figure!r}, but {source} does not exist")
        target = out / BOOK_REFERENCE_DIR / figure
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target)
        link = Path(os.path.relpath(target, (out / page).parent)).as_posix()
        lines.append(f"![reference figure {_text(figure)}]({link})")
    return "\n".join(lines) + "\n"
