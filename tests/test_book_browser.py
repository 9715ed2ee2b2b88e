"""Browser test of the real HTML book, offline: maths typeset, figures drawn, links followed, nothing fetched remotely.

Builds book.toml with the first lecture executed quickly (``MINIDIT_QUICK=1``; the other notebooks are rendered with
their stored outputs), opens it from disk in headless Chromium whose network is cut three ways (DevTools offline
emulation, a proxy that refuses, a host resolver that resolves nothing), records every request the pages make, and
asserts that none left the machine. Talks to Chromium over the DevTools protocol (``websocket-client``); skipped only
when no Chromium is installed (.ci/run installs it).
"""
from __future__ import annotations

import base64
import json
import re
import shutil
import struct
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from minidit.course.book import build_book, load_book

ROOT = Path(__file__).resolve().parents[1]
BROWSER = next((shutil.which(name) for name in ("chromium", "chromium-browser", "google-chrome") if shutil.which(name)), None)
pytestmark = pytest.mark.skipif(
    BROWSER is None, reason="no Chromium found; enable this test with `apt-get install chromium` (Debian) or any Chrome on PATH"
)
websocket = pytest.importorskip("websocket", reason="the browser test needs websocket-client: pip install websocket-client")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--remote-debugging-port=0", "--window-size=1000,800",
         "--proxy-server=127.0.0.1:9", "--host-resolver-rules=MAP * ~NOTFOUND")  # every remote request fails
LOCAL = ("file:", "data:", "about:", "blob:")
BOOK = load_book(ROOT / "book.toml")
LECTURE = next(chapter for chapter in BOOK.chapters if chapter.lecture)  # executed: its figures must show
LECTURE_PAGE = Path(LECTURE.lecture).with_suffix(".html").as_posix()
# MathJax looks for locally installed TeX fonts before using the STIX-Web web font it is configured with (the only
# one jupyter-server-mathjax ships); those look-ups of files under the book are the only loads allowed to fail.
MATHJAX_FONT_PROBES = "/_static/mathjax/fonts/HTML-CSS/TeX/otf/"


class Browser:
    """Headless Chromium driven over the DevTools protocol, offline, recording every request a page makes."""

    def __init__(self, user_data_dir: Path, timeout: float = 60):
        self.process = subprocess.Popen([BROWSER, *FLAGS, f"--user-data-dir={user_data_dir}", "about:blank"],
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
        self.message_id, self.events = 0, []
        self.command("Network.enable")
        self.command("Network.emulateNetworkConditions", offline=True, latency=0, downloadThroughput=-1, uploadThroughput=-1)

    def command(self, method: str, **params) -> dict:
        self.message_id += 1
        self.socket.send(json.dumps({"id": self.message_id, "method": method, "params": params}))
        while True:  # keep events (requests, failures) until the answer to this command arrives
            message = json.loads(self.socket.recv())
            if message.get("id") == self.message_id:
                if "error" in message:
                    raise RuntimeError(f"{method} failed: {message['error']}")
                return message["result"]
            self.events.append(message)

    def evaluate(self, expression: str):
        return self.command("Runtime.evaluate", expression=expression, returnByValue=True)["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 30):
        deadline = time.monotonic() + timeout
        while not (value := self._evaluate_unless_navigating(expression)):
            if time.monotonic() > deadline:
                raise TimeoutError(f"waited {timeout} s for: {expression}; page is {self.evaluate('location.href')}")
            time.sleep(0.1)
        return value

    def _evaluate_unless_navigating(self, expression: str):
        """``evaluate``, or ``None`` when the page navigated away while it ran (a click's new page is loading)."""
        try:
            return self.evaluate(expression)
        except RuntimeError as error:
            if "navigated or closed" in str(error):
                return None
            raise

    def click_link(self, text: str, page: str) -> None:
        """Click the first link whose text is ``text`` and wait until ``page`` (a path ending) has loaded."""
        self.evaluate(f"[...document.querySelectorAll('a')].find(a => a.textContent === {json.dumps(text)}).click()")
        self.wait_for(f"location.href.endsWith({json.dumps('/' + page)}) && document.readyState === 'complete'")

    def requests(self) -> list[str]:
        return [e["params"]["request"]["url"] for e in self.events if e.get("method") == "Network.requestWillBeSent"]

    def failed_requests(self) -> list[str]:
        urls = {e["params"]["requestId"]: e["params"]["request"]["url"] for e in self.events
                if e.get("method") == "Network.requestWillBeSent"}
        return [urls.get(e["params"]["requestId"], "?") for e in self.events if e.get("method") == "Network.loadingFailed"]

    def close(self) -> None:
        self.socket.close()
        self.process.terminate()
        self.process.wait(timeout=30)


def first_png_width(page: Path) -> int:
    """Width in pixels of the first PNG embedded in ``page`` (read from its IHDR header)."""
    data = re.search(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page.read_text(encoding="utf-8")).group(1)
    return struct.unpack(">I", base64.b64decode(data[:64])[16:20])[0]


@pytest.fixture(scope="module")
def real_book(tmp_path_factory) -> Path:
    """The course's book, its first lecture executed in quick mode."""
    out = tmp_path_factory.mktemp("real_book") / "_book"
    build_book(ROOT, out, execute=[LECTURE.lecture], quick=True, timeout=600)
    return out


def test_real_book_typesets_maths_and_shows_figures_with_the_network_off(real_book, tmp_path):
    browser = Browser(tmp_path / "profile")
    try:
        browser.command("Page.navigate", url=(real_book / "index.html").as_uri())
        browser.wait_for(f"document.readyState === 'complete' && document.title === {json.dumps(BOOK.title)}")
        browser.evaluate(f"document.querySelector('#toc a[href={json.dumps(LECTURE_PAGE)}]').click()")
        browser.wait_for(f"location.href.endsWith({json.dumps('/' + LECTURE_PAGE)}) && document.readyState === 'complete'")
        assert browser.evaluate("document.title") == f"{LECTURE.title} (lecture)"

        browser.evaluate("window.typeset = false; (function wait() { if (window.MathJax && MathJax.Hub) "
                         "MathJax.Hub.Queue(() => { window.typeset = true; }); else setTimeout(wait, 50); })()")
        browser.wait_for("window.typeset", timeout=60)
        assert browser.evaluate("document.querySelectorAll('.MathJax, .MathJax_Display').length") > 10
        assert browser.evaluate("document.querySelectorAll('.merror').length") == 0, "a TeX error in the lecture"
        markdown = browser.evaluate("[...document.querySelectorAll('.jp-RenderedMarkdown')].map(e => e.innerText).join('\\n')")
        assert re.findall(r"\$[^$\n]+\$", markdown) == [], "maths left as raw $...$"

        browser.wait_for("[...document.images].every(img => img.complete)")
        drawn = browser.evaluate("[...document.querySelectorAll('img[src^=\"data:image/png\"]')]"
                                 ".filter(img => img.naturalWidth > 0).map(img => img.naturalWidth)")
        assert drawn, "the executed lecture shows no inline figure"
        assert drawn[0] == first_png_width(real_book / LECTURE_PAGE)
        text = browser.evaluate("document.body.innerText")
        assert "IProgress not found" not in text and "Reference full run" in text
        screenshot = base64.b64decode(browser.command("Page.captureScreenshot", format="png")["data"])
        assert screenshot.startswith(b"\x89PNG")
        (ROOT / "runs").mkdir(exist_ok=True)
        (ROOT / "runs" / "book_screenshot.png").write_bytes(screenshot)

        browser.click_link("solution", LECTURE.solutions[0].replace(".ipynb", ".html"))
        assert browser.evaluate("document.title") == f"{LECTURE.title} (solution)"
        browser.click_link("lecture", LECTURE_PAGE)
        browser.click_link("Contents", "index.html")
        several = next(chapter for chapter in BOOK.chapters if len(chapter.solutions) > 1)
        name = Path(several.solutions[1]).stem
        browser.click_link(f"solution {name}", f"solutions/{name}.html")
        assert browser.evaluate("document.title") == f"{several.title} (solution {name})"
        browser.click_link("← previous", f"exercises/{name}.html")
        assert browser.evaluate("document.title") == f"{several.title} (exercise {name})"

        requests = browser.requests()
        assert any(url.endswith("/_static/mathjax/MathJax.js?config=TeX-AMS-MML_HTMLorMML-full,Safe") for url in requests)
        assert [url for url in requests if not url.startswith(LOCAL)] == [], "a request left the machine"
        assert [url for url in browser.failed_requests() if MATHJAX_FONT_PROBES not in url and not url.startswith("about:")] == []
    finally:
        browser.close()
