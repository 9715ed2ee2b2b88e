"""Browser test of the HTML book: headless Chromium follows a table-of-contents link and renders a figure.

Talks to Chromium over the DevTools protocol (``websocket-client``); skipped when no Chromium is installed.
"""
from __future__ import annotations

import base64
import io
import json
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

import matplotlib
import pytest

from minidit.course.book import build_book
from minidit.course.exercises import require_nbformat

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)

ROOT = Path(__file__).resolve().parents[1]
BROWSER = next((shutil.which(name) for name in ("chromium", "chromium-browser", "google-chrome") if shutil.which(name)), None)
pytestmark = pytest.mark.skipif(
    BROWSER is None, reason="no Chromium found; enable this test with `apt-get install chromium` (Debian) or any Chrome on PATH"
)
websocket = pytest.importorskip("websocket", reason="the browser test needs websocket-client: pip install websocket-client")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--remote-debugging-port=0", "--window-size=1000,800")


class Browser:
    """Headless Chromium driven over the DevTools protocol: evaluate JavaScript, wait, take screenshots."""

    def __init__(self, user_data_dir: Path, url: str, timeout: float = 60):
        self.process = subprocess.Popen([BROWSER, *FLAGS, f"--user-data-dir={user_data_dir}", url],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        port_file, deadline = user_data_dir / "DevToolsActivePort", time.monotonic() + timeout
        while not (port_file.exists() and port_file.read_text().strip()):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{BROWSER} did not start its DevTools server (exit code {self.process.poll()})")
            time.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        targets = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=timeout))
        page = next(target for target in targets if target["type"] == "page")
        self.socket = websocket.create_connection(page["webSocketDebuggerUrl"], timeout=timeout, suppress_origin=True)
        self.message_id = 0

    def command(self, method: str, **params) -> dict:
        self.message_id += 1
        self.socket.send(json.dumps({"id": self.message_id, "method": method, "params": params}))
        while True:  # skip events until the answer to this command arrives
            message = json.loads(self.socket.recv())
            if message.get("id") == self.message_id:
                if "error" in message:
                    raise RuntimeError(f"{method} failed: {message['error']}")
                return message["result"]

    def evaluate(self, expression: str):
        return self.command("Runtime.evaluate", expression=expression, returnByValue=True)["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 30):
        deadline = time.monotonic() + timeout
        while not (value := self.evaluate(expression)):
            if time.monotonic() > deadline:
                raise TimeoutError(f"waited {timeout} s for: {expression}; page is {self.evaluate('location.href')}")
            time.sleep(0.1)
        return value

    def close(self) -> None:
        self.socket.close()
        self.process.terminate()
        self.process.wait(timeout=30)


def figure_output(nbformat):
    """A notebook output holding a real matplotlib PNG."""
    figure, axes = plt.subplots(figsize=(3, 2))
    axes.plot([0, 1, 2], [0, 1, 0])
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    return nbformat.v4.new_output("display_data", data={"image/png": base64.b64encode(buffer.getvalue()).decode(), "text/plain": "<Figure>"})


@pytest.fixture(scope="module")
def tiny_book(tmp_path_factory) -> Path:
    """A two-chapter book whose second lecture shows a figure and whose second chapter has two exercises."""
    nbformat = require_nbformat()
    root = tmp_path_factory.mktemp("tiny_book")
    (root / "notebooks").mkdir()
    for number, name in ((1, "alpha"), (2, "beta")):
        cell = nbformat.v4.new_code_cell("plt.plot([0, 1, 2], [0, 1, 0])", outputs=[figure_output(nbformat)], execution_count=1)
        notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell(f"# Lecture {name}"), cell])
        nbformat.write(notebook, root / "notebooks" / f"0{number}_{name}.ipynb")
    for folder in ("exercises", "solutions"):
        (root / folder).mkdir()
        for name in ("03_gamma", "04_delta"):
            notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell(f"# {folder} {name}")])
            nbformat.write(notebook, root / folder / f"{name}.ipynb")
    (root / "book.toml").write_text(
        'title = "Tiny book"\n'
        '[[chapter]]\nid = "alpha"\ntitle = "Alpha chapter"\nlecture = "notebooks/01_alpha.ipynb"\n'
        '[[chapter]]\nid = "beta"\ntitle = "Beta chapter"\nlecture = "notebooks/02_beta.ipynb"\nprerequisites = ["alpha"]\n'
        'exercises = ["exercises/03_gamma.ipynb", "exercises/04_delta.ipynb"]\n'
        'solutions = ["solutions/03_gamma.ipynb", "solutions/04_delta.ipynb"]\n'
    )
    build_book(root, root / "_book")
    return root / "_book"


def test_toc_link_opens_the_chapter_page_and_its_figure_renders(tiny_book, tmp_path):
    browser = Browser(tmp_path / "profile", (tiny_book / "index.html").as_uri())
    try:
        browser.wait_for("document.readyState === 'complete' && document.title === 'Tiny book'")
        browser.evaluate("document.querySelector('#toc a[href$=\"02_beta.html\"]').click()")
        browser.wait_for("location.href.endsWith('/notebooks/02_beta.html') && document.readyState === 'complete'")
        assert browser.evaluate("document.title") == "Beta chapter (lecture)"
        width = browser.wait_for("(() => { const img = document.querySelector('img[src^=\"data:image/png\"]');"
                                 " return img && img.complete ? img.naturalWidth : 0; })()")
        assert width == 300  # figsize 3 inches at matplotlib's default 100 dpi
        screenshot = base64.b64decode(browser.command("Page.captureScreenshot", format="png")["data"])
        assert screenshot.startswith(b"\x89PNG")
        (ROOT / "runs").mkdir(exist_ok=True)
        (ROOT / "runs" / "book_screenshot.png").write_bytes(screenshot)
        browser.evaluate("[...document.querySelectorAll('a')].find(a => a.textContent === 'solution 04_delta').click()")
        browser.wait_for("location.href.endsWith('/solutions/04_delta.html') && document.readyState === 'complete'")
        assert browser.evaluate("document.title") == "Beta chapter (solution 04_delta)"
        browser.evaluate("[...document.querySelectorAll('a')].find(a => a.textContent === 'lecture').click()")
        browser.wait_for("location.href.endsWith('/notebooks/02_beta.html') && document.readyState === 'complete'")
        browser.evaluate("[...document.querySelectorAll('a')].find(a => a.textContent === '← previous').click()")
        browser.wait_for("location.href.endsWith('/notebooks/01_alpha.html') && document.readyState === 'complete'")
        assert browser.evaluate("document.title") == "Alpha chapter (lecture)"
    finally:
        browser.close()
