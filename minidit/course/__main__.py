"""Command line for the course tooling: ``python -m minidit.course <command>`` from the repository root.

Commands: ``build-exercises`` (solutions/ -> exercises/), ``check-exercises`` (exit 1 when exercises/ is stale),
``build-book [--execute] [--full] [--out _book]`` (HTML site), ``outline`` (Markdown outline of book.toml) and
``reference [NOTEBOOK ...]`` (full runs of the lectures into notebooks/reference/).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from minidit.course.book import build_book, chapter_run_times, load_book, outline
from minidit.course.execute import machine_description
from minidit.course.exercises import build_exercises, outdated_exercises
from minidit.course.reference import run_reference


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns the process exit status."""
    parser = argparse.ArgumentParser(prog="python -m minidit.course", description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=".", help="repository root (default: the current folder)")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("build-exercises", help="regenerate exercises/ from solutions/")
    commands.add_parser("check-exercises", help="fail when exercises/ differs from a fresh build")
    book_parser = commands.add_parser("build-book", help="render the notebooks listed in book.toml as HTML")
    book_parser.add_argument("--execute", action="store_true", help="execute the notebooks first (MINIDIT_QUICK=1)")
    book_parser.add_argument("--full", action="store_true", help="with --execute, run the full versions (MINIDIT_QUICK=0)")
    book_parser.add_argument("--out", default="_book", help="output folder (default: _book)")
    book_parser.add_argument("--timeout", type=int, default=600, help="seconds allowed per cell when executing")
    commands.add_parser("outline", help="print the course outline from book.toml as Markdown")
    reference_parser = commands.add_parser("reference", help="run lectures in full mode; write notebooks/reference/")
    reference_parser.add_argument("notebooks", nargs="*", help="lecture notebooks (default: every lecture in book.toml)")
    reference_parser.add_argument("--timeout", type=int, default=3600, help="seconds allowed per cell (default: 3600)")
    args = parser.parse_args(argv)
    root = Path(args.root)

    if args.command == "build-exercises":
        for path in build_exercises(root / "solutions", root / "exercises"):
            print(f"wrote {path}")
    elif args.command == "check-exercises":
        problems = outdated_exercises(root / "solutions", root / "exercises")
        if problems:
            print("exercises/ is out of date; run `python -m minidit.course build-exercises`:\n  " + "\n  ".join(problems))
            return 1
        print("exercises/ is up to date")
    elif args.command == "build-book":
        timings = build_book(root, args.out, execute=args.execute, quick=not args.full, timeout=args.timeout)
        print(f"wrote {Path(args.out) / 'index.html'}")
        field = "full_run_time" if args.full else "quick_run_time"
        for chapter_id, seconds in chapter_run_times(load_book(root / "book.toml"), timings).items():
            print(f'measured {chapter_id}: {field} = "{seconds:.0f} s ({machine_description()})"')
    elif args.command == "reference":
        lectures = args.notebooks or [c.lecture for c in load_book(root / "book.toml").chapters if c.lecture]
        run_reference(lectures, root.resolve(), timeout=args.timeout)
    else:
        print(outline(load_book(root / "book.toml")), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
