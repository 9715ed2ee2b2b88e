"""The committed reference full runs: one per lecture, in the format the notebooks and the book read.

Each lecture's quick run (executed by nbval) asserts in ``Report.finish`` that it judged exactly the claims of its
reference file; this test checks the reference files themselves without running anything.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from minidit.course.book import load_book
from minidit.course.reference import REFERENCE_DIR
from minidit.verdict import OUTCOMES

ROOT = Path(__file__).resolve().parents[1]
LECTURES = [chapter.lecture for chapter in load_book(ROOT / "book.toml").chapters if chapter.lecture]


@pytest.mark.parametrize("lecture", LECTURES)
def test_every_lecture_has_a_full_reference_run_naming_the_claims_of_its_notebook(lecture):
    stem = Path(lecture).stem
    path = ROOT / REFERENCE_DIR / f"{stem}.json"
    assert path.exists(), f"{path} is missing: run `make reference NOTEBOOKS={lecture}` and commit the result"
    reference = json.loads(path.read_text())
    assert reference["notebook"] == lecture and reference["mode"] == "full"
    assert reference["run_time_s"] > 0 and reference["machine"] and reference["claims"]
    source = (ROOT / lecture).read_text()
    claims = [c["claim"] for c in reference["claims"]]
    assert len(set(claims)) == len(claims), f"{path}: a claim appears twice"
    for claim in reference["claims"]:
        assert claim["verdict"] in OUTCOMES and claim["reason"]
        # A claim built with an f-string appears in the source at least up to its first substituted part.
        assert claim["claim"][:20] in source, f"{lecture} no longer states the claim '{claim['claim']}'"
    for figure in reference["figures"]:
        assert (ROOT / REFERENCE_DIR / figure).is_file(), f"{path} names a missing figure {figure}"
