"""The HTML book renders offline, shows tqdm's bars statically, and ends each lecture with its reference full run.

The browser test (tests/test_book_browser.py) opens the real book; these tests check the builder on small books.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from minidit.course.book import build_book, load_book
from minidit.course.book_offline import mathjax_url, network_references, static_widget_outputs
from minidit.course.execute import machine_description
from minidit.course.exercises import require_nbformat

nbformat = require_nbformat()
ROOT = Path(__file__).resolve().parents[1]
LECTURE = "notebooks/01_tiny.ipynb"
PNG = bytes.fromhex("89504e470d0a1a0a0000000d4948445200000001000000010806000000"
                    "1f15c4890000000d4944415478da63f8cfc0f01f0005000201e2e0b1b30000000049454e44ae426082")  # 1x1 PNG


def tiny_book(root: Path, *cells) -> Path:
    """A one-chapter book whose lecture holds ``cells`` (markdown strings, or code cells)."""
    (root / "notebooks").mkdir(exist_ok=True)
    cells = [nbformat.v4.new_markdown_cell(c) if isinstance(c, str) else c for c in cells]
    nbformat.write(nbformat.v4.new_notebook(cells=cells), root / LECTURE)
    (root / "book.toml").write_text(f'title = "Tiny"\n[[chapter]]\nid = "tiny"\ntitle = "Tiny chapter"\nlecture = "{LECTURE}"\n')
    return root


def write_reference(root: Path, **changes) -> dict:
    reference = {"notebook": LECTURE, "mode": "full", "run_time_s": 123.4, "machine": "2 CPU cores, Python 3.11",
                 "python": "3.11.7", "torch": "2.5.1", "date": "2026-12-02",
                 "cpu_time_s": 98.2, "load_average": [2.04, 1.5, 0.75],
                 "claims": [{"claim": "linear paths cost less transport than VP", "verdict": "reproduced",
                             "reason": "differs by 12.3 standard errors", "values": {"linear": 0.951, "vp": 1.624}},
                            {"claim": "a | b < c", "verdict": "inconclusive", "reason": "cost $\\int_0^1 E|v|^2 dt$ within noise",
                              "values": {}}],
                 "figures": ["01_tiny/schedules.png"], **changes}
    folder = root / "notebooks" / "reference"
    (folder / "01_tiny").mkdir(parents=True, exist_ok=True)
    (folder / "01_tiny" / "schedules.png").write_bytes(PNG)
    (folder / "01_tiny.json").write_text(json.dumps(reference))
    return reference


# ---- offline -------------------------------------------------------------------------------------------------

def test_network_references_finds_every_kind_of_remote_resource_and_skips_links_and_local_files():
    page = """<html><head><script src="https://cdn.example/mathjax.js"></script>
    <link rel="stylesheet" href="//fonts.example/css"><script>import("https://cdn.example/mermaid.mjs")</script>
    <style>@import "http://x.example/a.css"; .a { background: url('https://x.example/b.png') }</style></head>
    <body><img src="data:image/png;base64,AAAA"><img src="../_static/local.png"><img srcset="pic.png 1x, https://x.example/2x.png 2x">
    <div style="background:url(http://x.example/c.png)"></div><a href="https://arxiv.org/abs/2401.08740">SiT</a>
    <script src="../_static/mathjax/MathJax.js?config=x"></script></body></html>"""
    assert network_references(page) == [
        "https://cdn.example/mathjax.js", "//fonts.example/css", "https://cdn.example/mermaid.mjs",
        "http://x.example/a.css", "https://x.example/b.png", "https://x.example/2x.png", "http://x.example/c.png"]


def test_book_pages_load_mathjax_from_the_book_and_nothing_from_the_network(tmp_path):
    tiny_book(tmp_path, "Maths: $x_t = \\alpha_t x_0 + \\sigma_t \\varepsilon$")
    build_book(tmp_path, tmp_path / "_book")
    page = (tmp_path / "_book" / "notebooks" / "01_tiny.html").read_text()
    assert network_references(page) == []
    src = re.search(r'<script src="([^"]*MathJax\.js[^"]*)"', page).group(1)
    assert src == mathjax_url("notebooks/01_tiny.html") == "../_static/mathjax/MathJax.js?config=TeX-AMS-MML_HTMLorMML-full,Safe"
    assert (tmp_path / "_book" / "notebooks" / src.split("?")[0]).is_file()
    assert (tmp_path / "_book" / "_static" / "mathjax" / "config" / "TeX-AMS-MML_HTMLorMML-full.js").is_file()
    assert "$x_t = \\alpha_t x_0 + \\sigma_t \\varepsilon$" in page  # left for MathJax to typeset


def test_build_book_fails_when_a_page_would_load_from_the_network(tmp_path):
    tiny_book(tmp_path, '<img src="https://example.org/logo.png">')
    with pytest.raises(ValueError, match=r"notebooks/01_tiny\.html: https://example\.org/logo\.png"):
        build_book(tmp_path, tmp_path / "_book")


def test_executed_tqdm_bar_becomes_a_static_progress_bar_and_the_kernel_sees_static_mode(tmp_path):
    code = ("import os\nfrom tqdm.auto import tqdm\nprint('static =', os.environ['MINIDIT_STATIC'])\n"
            "for _ in tqdm(range(40), desc='train'):\n    pass")
    tiny_book(tmp_path, nbformat.v4.new_code_cell(code))
    build_book(tmp_path, tmp_path / "_book", execute=[LECTURE], timeout=120)
    page = (tmp_path / "_book" / "notebooks" / "01_tiny.html").read_text()
    assert "static = 1" in page
    assert "IProgress not found" not in page and "TqdmWarning" not in page, "install ipywidgets so tqdm draws widget bars"
    bar = re.search(r'train:\W+100%</span><progress ([^>]*)></progress><span>\W+40/40', page)
    assert bar and 'max="40.0"' in bar.group(1) and 'value="40.0"' in bar.group(1)
    assert "application/vnd.jupyter.widget" not in page


def test_static_widget_outputs_rejects_a_widget_it_cannot_draw():
    state = {"s1": {"model_name": "IntSliderModel", "state": {"value": 3}}}
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("slider", outputs=[nbformat.v4.new_output(
        "display_data", data={"application/vnd.jupyter.widget-view+json": {"model_id": "s1"}})])])
    notebook.metadata["widgets"] = {"application/vnd.jupyter.widget-state+json": {"state": state}}
    with pytest.raises(ValueError, match="cannot draw a IntSliderModel widget.*MINIDIT_STATIC=1"):
        static_widget_outputs(notebook)


def test_build_book_rejects_executing_a_notebook_the_book_does_not_list(tmp_path):
    tiny_book(tmp_path, "text")
    with pytest.raises(ValueError, match=r"cannot execute \['notebooks/other.ipynb'\]"):
        build_book(tmp_path, tmp_path / "_book", execute=["notebooks/other.ipynb"])


# ---- reference full run -----------------------------------------------------------------------------------------

def test_lecture_page_shows_its_reference_run_time_table_and_figures(tmp_path):
    tiny_book(tmp_path, "# Tiny lecture")
    write_reference(tmp_path)
    build_book(tmp_path, tmp_path / "_book")
    page = (tmp_path / "_book" / "notebooks" / "01_tiny.html").read_text()
    section = page.split('id="Reference-full-run"', 1)[1]
    assert "123 s</strong> on 2 CPU cores, Python 3.11 (python 3.11.7, torch 2.5.1), 2026-12-02; kernel CPU time 98 s, load average 2.0 / 1.5 / 0.8." in section
    rows = re.findall(r"<tr>\s*<td>(.*?)</td>\s*<td><strong>(.*?)</strong></td>\s*<td>(.*?)</td>\s*<td>(.*?)</td>", section, re.S)
    assert rows == [("linear paths cost less transport than VP", "reproduced", "differs by 12.3 standard errors",
                     "linear = 0.951, vp = 1.624"), ("a | b &lt; c", "inconclusive", "cost $\\int_0^1 E|v|^2 dt$ within noise", "")]
    assert '<img alt="reference figure 01_tiny/schedules.png" src="../reference/01_tiny/schedules.png"' in section
    assert (tmp_path / "_book" / "reference" / "01_tiny" / "schedules.png").read_bytes() == PNG
    assert section.index("Reference full run") < section.index("Contents")  # before the bottom navigation


def test_lecture_page_without_a_reference_file_says_so_in_one_line(tmp_path):
    tiny_book(tmp_path, "# Tiny lecture")
    build_book(tmp_path, tmp_path / "_book")
    page = (tmp_path / "_book" / "notebooks" / "01_tiny.html").read_text()
    assert "No reference full run is committed for this lecture yet" in page


@pytest.mark.parametrize("changes, error", [
    ({"claims": [{"claim": "c", "verdict": "yes", "reason": "r", "values": {}}]}, "verdict 'yes'; one of"),
    ({"figures": ["01_tiny/missing.png"]}, "names figure '01_tiny/missing.png'"),
    ({"notebook": "notebooks/02_other.ipynb"}, "names notebook 'notebooks/02_other.ipynb'"),
])
def test_a_broken_reference_file_stops_the_build_with_its_problem(tmp_path, changes, error):
    tiny_book(tmp_path, "# Tiny lecture")
    write_reference(tmp_path, **changes)
    with pytest.raises((ValueError, FileNotFoundError), match=re.escape(error)):
        build_book(tmp_path, tmp_path / "_book")


# ---- make lab --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("user_id, allow_root", [("0", True), ("1000", False)])
def test_make_lab_opens_the_first_lecture_and_allows_root_only_for_root(user_id, allow_root):
    dry_run = subprocess.run(["make", "-n", "lab", f"USER_ID={user_id}"], cwd=ROOT,
                             capture_output=True, text=True, check=True, env={**os.environ, "MAKEFLAGS": ""}).stdout
    command = next(line for line in dry_run.splitlines() if "jupyter lab" in line)
    first_lecture = next(c.lecture for c in load_book(ROOT / "book.toml").chapters if c.lecture)
    assert "--ServerApp.root_dir=." in command
    assert f"--LabApp.default_url=/lab/tree/{first_lecture}" in command
    assert ("--allow-root" in command) == allow_root


@pytest.mark.parametrize("threads, expected", [("", "4 CPU cores, Python"), ("1", "4 CPU cores (torch on 1 thread), "),
                                               ("2", "4 CPU cores (torch on 2 threads), "), ("4", "4 CPU cores, ")])
def test_machine_description_names_a_thread_limit_below_the_core_count(monkeypatch, threads, expected):
    monkeypatch.setattr("os.cpu_count", lambda: 4)
    monkeypatch.setenv("OMP_NUM_THREADS", threads)
    assert machine_description().startswith(expected)
