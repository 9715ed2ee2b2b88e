"""The course as a book: book.toml lists the chapters, and this module checks, outlines and renders them as HTML.

Each chapter pairs a lecture notebook with exercises and their solutions; ``build_book`` (optionally) executes the
notebooks with ``MINIDIT_QUICK=1`` and ``MINIDIT_STATIC=1`` and writes one HTML page per notebook (figures embedded as
data URIs) with links between a chapter's pages, previous / next, and an index with the table of contents. A lecture's
page ends with its committed reference full run (``book_reference``); the book renders with the network off, its maths
typeset by a MathJax copied from the install (``book_offline``).
This is course tooling, not a paper's method; it renders notebooks/, exercises/ and solutions/.
"""
from __future__ import annotations

import html
import os
import tomllib
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

from minidit.course.book_offline import book_exporter, check_offline, copy_mathjax, mathjax_url, static_widget_outputs
from minidit.course.book_reference import reference_markdown
from minidit.course.exercises import require_nbformat
from minidit.course.execute import execute_notebook
from minidit.validation import check_choice

NOT_MEASURED = "not measured yet"
CHAPTER_STATUSES = ("ready", "planned")
NOTEBOOK_DIRS = ("notebooks", "exercises", "solutions")
LIST_KEYS = ("exercises", "solutions", "prerequisites")
CHAPTER_KEYS = ("id", "title", "lecture", *LIST_KEYS, "status", "quick_run_time", "full_run_time")


@dataclass(frozen=True)
class Chapter:
    """One entry of book.toml; notebook paths are relative to the repository root.

    ``exercises[i]`` is generated from ``solutions[i]`` (same file name); ``lecture`` is ``None`` when absent.
    """

    id: str
    title: str
    lecture: str | None = None
    exercises: tuple[str, ...] = ()
    solutions: tuple[str, ...] = ()
    prerequisites: tuple[str, ...] = ()
    status: str = "ready"
    quick_run_time: str = NOT_MEASURED
    full_run_time: str = NOT_MEASURED

    def notebooks(self) -> list[tuple[str, str]]:
        """``(kind, path)`` for each notebook the chapter lists: the lecture, then each exercise followed by its solution."""
        lecture = [("lecture", self.lecture)] if self.lecture else []
        return lecture + [notebook for exercise, solution in zip(self.exercises, self.solutions)
                          for notebook in (("exercise", exercise), ("solution", solution))]

    def label(self, kind: str, path: str) -> str:
        """Name of a notebook within the chapter: its kind, plus its file name when the chapter has several of that kind."""
        if sum(other_kind == kind for other_kind, _ in self.notebooks()) == 1:
            return kind
        return f"{kind} {Path(path).stem}"


@dataclass(frozen=True)
class Book:
    """The course manifest: a title and the chapters in reading order."""

    title: str
    chapters: tuple[Chapter, ...]


def load_book(path: Path | str = "book.toml") -> Book:
    """Read and validate the course manifest.

    Raises:
        ValueError: for an unknown key (listing the valid ones), a missing title or id, a list key given as a
            single string, a duplicate id, a prerequisite that is not an earlier chapter, an unknown status, or an
            exercise without its solution.
    """
    with open(path, "rb") as file:
        data = tomllib.load(file)
    if "title" not in data:
        raise ValueError(f"{path}: add a top-level title = \"...\"")
    chapters: list[Chapter] = []
    for number, entry in enumerate(data.get("chapter", []), start=1):
        where = f"{path}, chapter {number}"
        unknown = sorted(set(entry) - set(CHAPTER_KEYS))
        if unknown:
            raise ValueError(f"{where}: unknown key(s) {unknown}; valid keys are {list(CHAPTER_KEYS)}")
        if "id" not in entry or "title" not in entry:
            raise ValueError(f"{where}: every chapter needs an id and a title")
        for key in LIST_KEYS:
            if not isinstance(entry.get(key, []), list):
                raise ValueError(f"{where}: {key} must be a list, e.g. {key} = [{entry[key]!r}]")
        chapter = Chapter(**{**entry, **{key: tuple(entry.get(key, ())) for key in LIST_KEYS}})
        check_choice("chapter status", chapter.status, CHAPTER_STATUSES)
        if chapter.id in (c.id for c in chapters):
            raise ValueError(f"{where}: duplicate chapter id {chapter.id!r}")
        earlier = [c.id for c in chapters]
        for prerequisite in chapter.prerequisites:
            if prerequisite not in earlier:
                raise ValueError(f"{where}: prerequisite {prerequisite!r} must be the id of an earlier chapter: {earlier}")
        _check_exercises_have_solutions(chapter, where)
        if not chapter.notebooks():
            raise ValueError(f"{where}: list at least one notebook (lecture, exercise or solution)")
        chapters.append(chapter)
    return Book(data["title"], tuple(chapters))


def _check_exercises_have_solutions(chapter: Chapter, where: str) -> None:
    """Raise ``ValueError`` unless ``solutions[i]`` is the notebook that generates ``exercises[i]`` (same file name)."""
    if len(chapter.exercises) != len(chapter.solutions):
        raise ValueError(f"{where}: list every exercise with its solution; got {len(chapter.exercises)} exercise(s) "
                         f"{list(chapter.exercises)} and {len(chapter.solutions)} solution(s) {list(chapter.solutions)}")
    for exercise, solution in zip(chapter.exercises, chapter.solutions):
        if Path(exercise).name != Path(solution).name:
            raise ValueError(f"{where}: exercise {exercise!r} is generated from the solution of the same file name; "
                             f"list solutions in the order of exercises (found {solution!r} in its place)")


def missing_notebooks(book: Book, root: Path | str = ".") -> list[str]:
    """Listed notebooks that do not exist, except the lectures of chapters with ``status = "planned"``."""
    root = Path(root)
    return [f"{path} (chapter {chapter.id!r}, {kind})" for chapter in book.chapters for kind, path in chapter.notebooks()
            if not (root / path).exists() and not (kind == "lecture" and chapter.status == "planned")]


def unlisted_notebooks(book: Book, root: Path | str = ".") -> list[str]:
    """Notebooks in notebooks/, exercises/ or solutions/ that no chapter lists."""
    root = Path(root)
    listed = {path for chapter in book.chapters for _, path in chapter.notebooks()}
    found = {path.relative_to(root).as_posix() for folder in NOTEBOOK_DIRS for path in (root / folder).glob("*.ipynb")}
    return sorted(found - listed)


def outline(book: Book) -> str:
    """The course outline as Markdown (one numbered entry per chapter), for the README's "Course outline"."""
    lines = [f"*{book.title}*", ""]
    titles = {chapter.id: chapter.title for chapter in book.chapters}
    for number, chapter in enumerate(book.chapters, start=1):
        planned = " *(planned)*" if chapter.status == "planned" else ""
        lines.append(f"{number}. **{chapter.title}**{planned}")
        for kind, path in chapter.notebooks():
            lines.append(f"   - {kind}: [`{path}`]({path})")
        if chapter.prerequisites:
            lines.append("   - prerequisites: " + ", ".join(titles[p] for p in chapter.prerequisites))
        lines.append(f"   - run time: quick {chapter.quick_run_time}; full {chapter.full_run_time}")
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class Page:
    """One rendered notebook: its chapter, kind, source path and output path (relative to the book folder)."""

    chapter: Chapter
    kind: str
    source: str
    target: str

    @property
    def label(self) -> str:
        """The notebook's name within its chapter, e.g. ``"solution"`` or ``"exercise 06_patchify_adaln"``."""
        return self.chapter.label(self.kind, self.source)


def _pages(book: Book, root: Path) -> list[Page]:
    return [Page(chapter, kind, path, str(Path(path).with_suffix(".html").as_posix()))
            for chapter in book.chapters for kind, path in chapter.notebooks() if (root / path).exists()]


def _link(from_page: str, to_page: str, text: str) -> str:
    """Markdown link from one page of the book to another, by relative path."""
    return f"[{text}]({Path(os.path.relpath(to_page, Path(from_page).parent)).as_posix()})"


def _navigation(page: Page, pages: list[Page]) -> str:
    """Markdown navigation bar: contents, the chapter's other pages, previous and next."""
    index = pages.index(page)
    siblings = [f"**{p.label}**" if p is page else _link(page.target, p.target, p.label) for p in pages if p.chapter is page.chapter]
    parts = [_link(page.target, "index.html", "Contents"), f"{page.chapter.title}: " + " | ".join(siblings)]
    if index > 0:
        parts.append(_link(page.target, pages[index - 1].target, "← previous"))
    if index + 1 < len(pages):
        parts.append(_link(page.target, pages[index + 1].target, "next →"))
    return " · ".join(parts)


def _index_html(book: Book, pages: list[Page]) -> str:
    targets = {p.source: p.target for p in pages}
    titles = {chapter.id: chapter.title for chapter in book.chapters}
    items = []
    for chapter in book.chapters:
        labels = [(chapter.label(kind, path), path) for kind, path in chapter.notebooks()]
        links = [f'<a href="{html.escape(targets[path])}">{html.escape(label)}</a>' if path in targets
                 else f"{html.escape(label)} (planned)" for label, path in labels]
        prerequisites = ", ".join(html.escape(titles[p]) for p in chapter.prerequisites) or "none"
        items.append(
            f'<li><span class="chapter">{html.escape(chapter.title)}</span><br>{" | ".join(links)}<br>'
            f"<small>prerequisites: {prerequisites}; run time: quick {html.escape(chapter.quick_run_time)}, "
            f"full {html.escape(chapter.full_run_time)}</small></li>"
        )
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(book.title)}</title>'
        "<style>body{font-family:sans-serif;max-width:50em;margin:2em auto;line-height:1.5}"
        "li{margin-bottom:1em}.chapter{font-weight:bold}</style></head>\n"
        f'<body><h1>{html.escape(book.title)}</h1>\n<nav id="toc"><ol>\n' + "\n".join(items) + "\n</ol></nav></body></html>\n"
    )


def build_book(
    root: Path | str = ".",
    out: Path | str = "_book",
    book_file: str = "book.toml",
    execute: bool | Collection[str] = False,
    quick: bool = True,
    timeout: int = 600,
) -> dict[str, float]:
    """Render every existing notebook of the book as HTML under ``out``, plus ``out/index.html``.

    Pages load MathJax from ``out/_static/mathjax`` (copied from the install) and nothing over the network; a
    lecture's page ends with its "Reference full run" section.

    Args:
        root: repository root (book.toml and the notebook folders live there).
        out: output folder; page ``notebooks/x.ipynb`` becomes ``out/notebooks/x.html``.
        book_file: manifest path relative to ``root``.
        execute: run each notebook with nbclient before rendering (``True``), or only the notebooks whose paths
            are listed; the others are rendered with their stored outputs.
        quick: with ``execute``, set ``MINIDIT_QUICK=1`` (else 0).
        timeout: seconds allowed per cell when executing.
    Returns:
        seconds each notebook took to execute, keyed by its path (empty without ``execute``).
    Raises:
        ValueError: when a path listed in ``execute`` is not a page of the book, or a page would still load a
            resource over the network (naming the page and the URL).
    """
    nbformat = require_nbformat()
    root, out = Path(root), Path(out)
    book = load_book(root / book_file)
    pages = _pages(book, root)
    to_execute = {page.source for page in pages} if execute is True else set(execute or ())
    unknown = sorted(to_execute - {page.source for page in pages})
    if unknown:
        raise ValueError(f"cannot execute {unknown}: not notebooks of {book_file}; choose from {[p.source for p in pages]}")
    copy_mathjax(out)
    exporter = book_exporter()
    timings = {}
    for page in pages:
        notebook = nbformat.read(root / page.source, as_version=4)
        if page.source in to_execute:
            timings[page.source] = execute_notebook(notebook, (root / page.source).parent, quick, timeout)
        static_widget_outputs(notebook)
        navigation = _navigation(page, pages)
        reference = ([nbformat.v4.new_markdown_cell(reference_markdown(page.source, root, out, page.target))]
                     if page.kind == "lecture" else [])
        notebook.cells = [nbformat.v4.new_markdown_cell(navigation), *notebook.cells, *reference,
                          nbformat.v4.new_markdown_cell(navigation)]
        notebook.metadata["title"] = f"{page.chapter.title} ({page.label})"
        exporter.mathjax_url = mathjax_url(page.target)
        body, _ = exporter.from_notebook_node(notebook)
        (out / page.target).parent.mkdir(parents=True, exist_ok=True)
        (out / page.target).write_text(body, encoding="utf-8")
    (out / "index.html").write_text(_index_html(book, pages), encoding="utf-8")
    check_offline(out)
    return timings


def chapter_run_times(book: Book, timings: dict[str, float]) -> dict[str, float]:
    """Total execution seconds per chapter id, over the chapter's notebooks that were executed."""
    totals = {}
    for chapter in book.chapters:
        seconds = [timings[path] for _, path in chapter.notebooks() if path in timings]
        if seconds:
            totals[chapter.id] = sum(seconds)
    return totals
