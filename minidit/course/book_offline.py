"""The HTML book renders with the network off: its maths renderer ships with the install and no page loads anything remote.

Classrooms sit behind firewalls, so the book must not fetch MathJax, fonts or widget scripts from a CDN as nbconvert's
default template does. ``copy_mathjax`` copies the MathJax 2 tree of the pip package ``jupyter-server-mathjax`` into
the book, ``book_exporter`` renders pages that load it by a relative path and drops nbconvert's CDN scripts
(require.js, the widget manager, mermaid), ``static_widget_outputs`` turns the tqdm progress bars of an executed
notebook into plain HTML ``<progress>`` elements, and ``network_references`` lists every resource a page would still
load over the network (``build_book`` fails on any). Course tooling used by ``minidit.course.book``, not a paper's method.
"""
from __future__ import annotations

import html
import os
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path

MATHJAX_DIR = "_static/mathjax"  # relative to the book folder
MATHJAX_CONFIG = "TeX-AMS-MML_HTMLorMML-full,Safe"  # the combined configuration jupyter-server-mathjax ships
# nbconvert's lab template without the scripts it loads from CDNs: require.js and the widget manager (widget outputs
# are made static by static_widget_outputs) and mermaid (no notebook draws mermaid diagrams). MathJax is told to use
# the only web font jupyter-server-mathjax ships, STIX-Web (its default TeX fonts are not in the package).
BOOK_TEMPLATE = """{%- extends 'index.html.j2' -%}
{%- block html_head_js_requirejs -%}{%- endblock html_head_js_requirejs -%}
{%- block jupyter_widgets -%}{%- endblock jupyter_widgets -%}
{%- block html_head_js_mermaidjs -%}{%- endblock html_head_js_mermaidjs -%}
{%- block html_head_js_mathjax -%}
<script>window.MathJax = {"HTML-CSS": {availableFonts: [], preferredFont: null, webFont: "STIX-Web", imageFont: null}};</script>
{{ super() }}
{%- endblock html_head_js_mathjax -%}
"""
# http://, https://, ftp://, protocol-relative //host (not file://, which stays on the machine)
REMOTE = re.compile(r"^\s*(?:(?!file:)[a-z][a-z0-9+.-]*:)?//", re.IGNORECASE)
CSS_URL = re.compile(r"""url\(\s*['"]?([^'")\s]+)|@import\s+['"]([^'"]+)""", re.IGNORECASE)
SCRIPT_URL = re.compile(r"""['"]((?:https?:)?//[^'"\s]+)['"]""", re.IGNORECASE)


def mathjax_source() -> Path:
    """The MathJax 2 folder inside the installed ``jupyter-server-mathjax`` package (holds ``MathJax.js``)."""
    try:
        import jupyter_server_mathjax
    except ImportError as error:
        raise ImportError("the book ships MathJax from jupyter-server-mathjax: pip install -e '.[dev]'") from error
    source = Path(jupyter_server_mathjax.__file__).parent / "static"
    if not (source / "MathJax.js").is_file() or not (source / "config" / f"{MATHJAX_CONFIG.split(',')[0]}.js").is_file():
        raise FileNotFoundError(f"{source} lacks MathJax.js or its {MATHJAX_CONFIG} configuration; "
                                "reinstall jupyter-server-mathjax")
    return source


def copy_mathjax(out: Path | str) -> Path:
    """Copy MathJax into ``out/_static/mathjax`` (once; an existing copy is kept) and return that folder."""
    target = Path(out) / MATHJAX_DIR
    if not (target / "MathJax.js").is_file():
        shutil.copytree(mathjax_source(), target, dirs_exist_ok=True)
    return target


def mathjax_url(page: str) -> str:
    """URL of the book's MathJax as seen from ``page`` (a path relative to the book folder, e.g. ``notebooks/x.html``)."""
    relative = Path(os.path.relpath(Path(MATHJAX_DIR) / "MathJax.js", Path(page).parent)).as_posix()
    return f"{relative}?config={MATHJAX_CONFIG}"


def book_exporter():
    """An nbconvert ``HTMLExporter`` with the lab look that loads no script from a CDN (set ``mathjax_url`` per page)."""
    from jinja2 import DictLoader
    from nbconvert import HTMLExporter

    return HTMLExporter(template_name="lab", template_file="minidit_book.html.j2",
                        extra_loaders=[DictLoader({"minidit_book.html.j2": BOOK_TEMPLATE})])


def _widget_html(model_id: str, state: dict[str, dict]) -> str:
    """Static HTML for one widget of a saved widget state: boxes, HTML and label text, and progress bars (what tqdm draws)."""
    if model_id not in state:
        raise ValueError(f"widget {model_id} is not in the notebook's saved widget state; execute it with nbclient's "
                         "store_widget_state=True")
    model = state[model_id]
    name, values = model["model_name"], model["state"]
    if name in ("HBoxModel", "VBoxModel", "BoxModel"):
        children = [_widget_html(child.removeprefix("IPY_MODEL_"), state) for child in values["children"]]
        direction = "column" if name == "VBoxModel" else "row"
        return (f'<div class="widget-static" style="display:flex;flex-direction:{direction};align-items:center;gap:0.5em">'
                + "".join(children) + "</div>")
    if name == "HTMLModel":
        return f"<span>{values['value']}</span>"  # an HTML widget's value is HTML
    if name == "LabelModel":
        return f"<span>{html.escape(values['value'])}</span>"
    if name in ("FloatProgressModel", "IntProgressModel"):
        colour = {"success": "#4caf50", "danger": "#f44336", "warning": "#ff9800", "info": "#2196f3"}.get(values.get("bar_style"), "")
        style = f' style="accent-color:{colour}"' if colour else ""
        low, high = values["min"], values["max"]
        return f'<progress value="{values["value"] - low}" max="{high - low}"{style}></progress>'
    raise ValueError(f"the book cannot draw a {name} widget without a browser kernel; under MINIDIT_STATIC=1 the "
                     "notebook should show a static figure instead of this widget")


def static_widget_outputs(notebook) -> int:
    """Replace each widget output of an executed notebook by static HTML of its final state; return how many.

    The saved widget state (``notebook.metadata.widgets``) is dropped afterwards, so nbconvert does not load the widget
    manager from a CDN. tqdm's bar becomes ``description <progress> counts``, as JupyterLab drew it at the end.

    Raises:
        ValueError: for a widget other than boxes, HTML, labels and progress bars (the notebook should draw a static
            figure under ``MINIDIT_STATIC=1``), or a widget missing from the saved state.
    """
    widgets = notebook.metadata.pop("widgets", {})
    state = widgets.get("application/vnd.jupyter.widget-state+json", {}).get("state", {})
    count = 0
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            view = output.get("data", {}).get("application/vnd.jupyter.widget-view+json")
            if view is None:
                continue
            output.data = {"text/html": _widget_html(view["model_id"], state)}
            count += 1
    return count


class _ResourceCollector(HTMLParser):
    """Every URL a page loads by itself: ``src``/``srcset``/``data``/``poster`` attributes, ``<link href>``, CSS
    ``url(...)`` and ``@import`` in styles, and quoted absolute URLs in inline scripts. ``<a href>`` is a link to
    follow, not a resource, and is skipped."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.urls: list[str] = []
        self._in = ""

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        for name in ("src", "data", "poster"):
            if attrs.get(name):
                self.urls.append(attrs[name])
        if attrs.get("srcset"):
            self.urls += [part.split()[0] for part in attrs["srcset"].split(",") if part.strip()]
        if tag == "link" and attrs.get("href"):
            self.urls.append(attrs["href"])
        if attrs.get("style"):
            self.urls += [a or b for a, b in CSS_URL.findall(attrs["style"])]
        self._in = tag if tag in ("style", "script") else ""

    def handle_endtag(self, tag):
        self._in = ""

    def handle_data(self, data):
        if self._in == "style":
            self.urls += [a or b for a, b in CSS_URL.findall(data)]
        elif self._in == "script":
            self.urls += SCRIPT_URL.findall(data)


def network_references(page_html: str) -> list[str]:
    """The resources (scripts, styles, fonts, images, imports) a page would load over the network; ``[]`` when none."""
    collector = _ResourceCollector()
    collector.feed(page_html)
    return [url for url in collector.urls if REMOTE.match(url)]


def check_offline(out: Path | str) -> None:
    """Raise ``ValueError`` naming each page of the book under ``out`` and the network resources it would load."""
    problems = [f"{page.relative_to(out)}: {', '.join(urls)}" for page in sorted(Path(out).rglob("*.html"))
                if not page.is_relative_to(Path(out) / MATHJAX_DIR)
                and (urls := network_references(page.read_text(encoding="utf-8")))]
    if problems:
        raise ValueError("the book must render offline, but these pages load resources over the network:\n  "
                         + "\n  ".join(problems))
