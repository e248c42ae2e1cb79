"""The built book in a real browser: headless Chromium, served from 127.0.0.1, with no network.

For every page of the built site (``index.html``, the book's pages, the indices):

- the math is typeset: every ``.math`` element holds an ``<mjx-container>``, no raw TeX (``$$``,
  a ``$...$`` pair, a control word such as ``\\frac``, ``\\begin{``, ``\\(``...) is left in the
  text outside code and typeset math, MathJax reports no error (``<mjx-merror>``) and no undefined
  macro (MathJax 3 renders one as red ``<mjx-mtext>``);
- every image loads (``naturalWidth > 0``);
- every same-site link points to a file that exists, and its ``#anchor`` to an id in that file;
- nothing is requested from another host (requests leaving 127.0.0.1 are blocked, so this is the
  book offline: MathJax and its fonts must come from the site itself), nothing answers 4xx/5xx;
- the console shows no error at all (Jupyter Book 1.0.4's duplicated inline scripts, which logged
  "Identifier 'THEBE_JS_URL' has already been declared", are removed by ``book/_ext/minigen_book.py``);
- at a phone's width (375 px) the page does not scroll sideways: long names wrap, wide equations
  and tables scroll inside their own box.

On a phone both sidebar buttons open their panel (the book's contents, the page's sections), and
on a desktop the contents button hides and shows the left sidebar. The API page documents the
package's model classes, with no docstring inherited from ``torch.nn.Module``.

Each chapter page also offers its executed ``.ipynb`` for download and a Binder launch button
(classic interface, opening the chapter's ``.md`` through jupytext).

Skipped, with the reason, when the site is not built (``jupyter-book build .``) or no Chromium is
installed. ``MINIGEN_HTML_DIR`` points at another build (default ``_build/html``),
``MINIGEN_CHROMIUM`` at a browser binary. Chromium is driven through the DevTools protocol by
Playwright's Python package with the system browser (``executable_path``); Playwright never
downloads a browser here.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from functools import lru_cache
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
HTML = Path(os.environ.get("MINIGEN_HTML_DIR", ROOT / "_build" / "html")).resolve()
PHONE = {"width": 375, "height": 812}
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run",
         "--disable-component-update", "--disable-sync"]  # Playwright adds --headless, a temp profile
NOT_PAGES = {"_static", "_sources", "_images", "_downloads", "jupyter_execute"}


def chromium_binary() -> str | None:
    explicit = os.environ.get("MINIGEN_CHROMIUM")
    if explicit:
        return explicit
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        if path := shutil.which(name):
            return path
    return None


def site_pages() -> list[str]:
    """Every HTML page of the built site, relative to its root (``index.html`` first)."""
    if not (HTML / "index.html").exists():
        return []
    pages = [p.relative_to(HTML).as_posix() for p in sorted(HTML.rglob("*.html"))
             if not NOT_PAGES & set(p.relative_to(HTML).parts)]
    return sorted(pages, key=lambda p: (p != "index.html", p))


def skip_reason() -> str | None:
    if not (HTML / "index.html").exists():
        return f"no built book at {HTML} (run `jupyter-book build .`, or set MINIGEN_HTML_DIR)"
    if chromium_binary() is None:
        return "no chromium binary on PATH (apt-get install chromium, or set MINIGEN_CHROMIUM)"
    return None


def page_params():
    reason = skip_reason()
    if reason:
        return [pytest.param("(site)", marks=pytest.mark.skip(reason=reason))]
    return [p for p in site_pages() if p != "index.html"]


# -- the site on 127.0.0.1 and one browser for the module --------------------------------------------

@pytest.fixture(scope="module")
def site():
    if reason := skip_reason():
        pytest.skip(reason)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "http.server", "--bind", "127.0.0.1", str(port), "--directory",
         str(HTML)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"http.server on port {port} did not start")
                time.sleep(0.1)
        yield f"http://127.0.0.1:{port}/"
    finally:
        server.terminate()
        server.wait(timeout=10)


@pytest.fixture(scope="module")
def browser(site):
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("Chromium and a built book are here but the `playwright` package is not: "
                    "pip install -r requirements.txt (never `playwright install`)")
    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=chromium_binary(), args=FLAGS)
        try:
            yield chromium
        finally:
            chromium.close()


class Visit:
    """One page opened in a fresh browser context: what it logged, requested and failed to load."""

    def __init__(self, browser, site: str, path: str):
        self.site, self.path = site, path
        self.console: list[str] = []
        self.failed: list[str] = []
        self.context = browser.new_context(service_workers="block")
        # The book offline: any request leaving the local server is refused (and reported).
        self.context.route(lambda url: not url.startswith(site) and url.startswith("http"),
                           lambda route: (self.failed.append(f"external request {route.request.url}"),
                                          route.abort("internetdisconnected")))
        self.page = self.context.new_page()
        self.page.on("console", self._console)
        self.page.on("pageerror", lambda err: self.console.append(f"uncaught: {err}"))
        self.page.on("requestfailed", lambda r: self.failed.append(f"{r.url}: {r.failure}")
                     if r.url.startswith(site) else None)
        self.page.on("response", lambda r: self.failed.append(f"{r.url}: HTTP {r.status}")
                     if r.status >= 400 else None)

    def _console(self, msg) -> None:
        if msg.type != "error":
            return
        if urlsplit(msg.location.get("url", "")).path == "/favicon.ico":
            return  # the browser's own request for /favicon.ico, not one the page makes
        self.console.append(f"{msg.text} [{msg.location.get('url', '')}:{msg.location.get('lineNumber', '')}]")

    def open(self):
        response = self.page.goto(self.site + self.path, wait_until="load", timeout=60_000)
        assert response is not None and response.ok, f"{self.path}: HTTP {response and response.status}"
        return self

    def close(self) -> None:
        self.context.close()


# -- what the page looks like once MathJax has finished ----------------------------------------------

RAW_TEX_JS = r"""
(root) => {
  const skip = 'script, style, pre, code, textarea, kbd, samp, mjx-container, .highlight, .pre, .sig';
  const blockOf = (el) => el.closest('p, li, dt, dd, td, th, h1, h2, h3, h4, h5, h6, figcaption, caption, blockquote, div, section, body');
  const patterns = [
    /\$\$/,                                       // display math left as text
    /\\begin\{|\\\(|\\\)|\\\[|\\\]/,              // environments and \( \) \[ \] delimiters
    /\\[A-Za-z]{2,}/,                             // a control word: \frac, \theta, \mathbb
    // a $...$ pair (Pandoc's rule: no space inside either dollar, no digit after the closing
    // one, so "$5 and $10" is prose)
    /(?:^|[^\\$\w])\$[^\s$\u0001](?:[^$\u0001]*[^\s$\\\u0001])?\$(?![\w])/,
  ];
  const texts = new Map();
  const add = (el, text) => { const b = blockOf(el); texts.set(b, (texts.get(b) || '') + text); };
  const walker = document.createTreeWalker(root, NodeFilter.SHOW_ELEMENT | NodeFilter.SHOW_TEXT, {
    acceptNode(node) {
      if (node.nodeType === Node.ELEMENT_NODE && node.matches(skip)) {
        add(node, '\u0001');
        return NodeFilter.FILTER_REJECT;
      }
      return NodeFilter.FILTER_ACCEPT;
    }});
  for (let node = walker.nextNode(); node; node = walker.nextNode()) {
    if (node.nodeType === Node.TEXT_NODE && node.parentElement) add(node.parentElement, node.textContent);
  }
  const found = [];
  for (const text of texts.values()) {
    for (const re of patterns) {
      const m = re.exec(text);
      if (m) {
        const at = Math.max(0, m.index - 40);
        found.push(text.slice(at, m.index + m[0].length + 40).replace(/\u0001/g, ' ').replace(/\s+/g, ' ').trim());
        break;
      }
    }
  }
  return found;
}
"""

INSPECT_JS = r"""
async () => {
  const rawTexIn = """ + RAW_TEX_JS + r""";
  const timeout = (ms) => new Promise((resolve) => setTimeout(() => resolve('timeout'), ms));
  const out = {mathjax: 'absent'};
  if (window.MathJax && MathJax.startup && MathJax.startup.promise) {
    out.mathjax = await Promise.race([MathJax.startup.promise.then(() => 'done'), timeout(30000)]);
  }
  const snippet = (el) => (el.closest('p, li, td, dt, dd, div') || el).textContent.trim().slice(0, 120);

  // TeX source of every typeset formula, by its container (MathJax's own list of math items).
  const texOf = new Map();
  try {
    for (const item of MathJax.startup.document.math) texOf.set(item.typesetRoot, item.math);
  } catch (e) {}
  const tex = (container) => texOf.get(container) || snippet(container);

  out.containers = document.querySelectorAll('mjx-container').length;
  out.mathElements = document.querySelectorAll('.math').length;
  out.untypeset = Array.from(document.querySelectorAll('.math'))
    .filter((el) => !el.querySelector('mjx-container')).map((el) => el.textContent.trim().slice(0, 120));
  out.mathErrors = Array.from(document.querySelectorAll('mjx-merror')).map((el) => {
    const c = el.closest('mjx-container');
    return `${el.getAttribute('data-mjx-error') || 'error'} in ${tex(c)}`;
  });
  // MathJax 3 (noundefined) renders an unknown macro \foo as <mtext mathcolor="red">\foo</mtext>,
  // i.e. <mjx-mtext style="color: red;">; an author's \color{red}{...} is an <mjx-mstyle> instead.
  out.undefinedMacros = Array.from(document.querySelectorAll('mjx-container mjx-mtext'))
    .filter((el) => el.style.color === 'red' && !el.closest('mjx-merror'))
    .map((el) => {
      const c = el.closest('mjx-container');
      const names = Array.from(c.querySelectorAll('mjx-assistive-mml mtext[mathcolor="red"]'),
                               (m) => m.textContent);
      return `${names.join(' ') || 'red text'} in ${tex(c)}`;
    });

  // Raw TeX left in the text (outside code, scripts and typeset math), read block by block so that
  // a formula split by inline markup ($a_<em>i</em>$) is still seen; text on either side of a
  // skipped element (code, typeset math) is kept apart by \u0001, so no pair spans one.
  // (.pre and .sig: Sphinx's literals and signatures, e.g. a default value xlabel='$\theta_1$')
  out.rawTex = rawTexIn(document.body);

  // Images: wait for those still loading (lazy ones made eager), then check their pixels.
  const images = Array.from(document.images);
  images.forEach((img) => { if (img.loading === 'lazy') img.loading = 'eager'; });
  await Promise.race([
    Promise.all(images.map((img) => img.complete ? null
      : new Promise((resolve) => { img.onload = img.onerror = resolve; }))),
    timeout(15000)]);
  out.images = images.length;
  out.brokenImages = images.filter((img) => !(img.complete && img.naturalWidth > 0))
    .map((img) => img.currentSrc || img.src || img.outerHTML.slice(0, 120));

  out.links = Array.from(document.querySelectorAll('a[href]'), (a) => a.href);
  return out;
}
"""


class _Ids(HTMLParser):
    def __init__(self):
        super().__init__()
        self.ids: set[str] = set()

    def handle_starttag(self, tag, attrs):
        for key, value in attrs:
            if key == "id" or (key == "name" and tag == "a"):
                self.ids.add(value or "")


@lru_cache(maxsize=None)
def anchors_in(file: Path) -> frozenset[str]:
    parser = _Ids()
    parser.feed(file.read_text(encoding="utf-8", errors="replace"))
    return frozenset(parser.ids)


def broken_links(links: list[str], site: str, page: str) -> list[str]:
    """Same-site links whose file, or whose #anchor in that file, does not exist."""
    problems = []
    for link in sorted(set(links)):
        if not link.startswith(site):
            continue  # another host (GitHub, Binder): not reachable offline, not ours to check
        parts = urlsplit(link)
        rel = unquote(parts.path)[1:]
        target = HTML / rel
        if rel == "" or rel.endswith("/"):
            target = target / "index.html"
        if not target.is_file():
            problems.append(f"{link} -> no file {target.relative_to(HTML)}")
        elif parts.fragment and target.suffix == ".html":
            if unquote(parts.fragment) not in anchors_in(target):
                problems.append(f"{link} -> no id '{unquote(parts.fragment)}' in {rel}")
    return problems


def page_problems(report: dict, visit: Visit) -> list[str]:
    problems = []
    if report["mathElements"] and report["mathjax"] != "done":
        problems.append(f"MathJax did not finish ({report['mathjax']}) on a page with math")
    problems += [f"math not typeset: {t}" for t in report["untypeset"]]
    problems += [f"MathJax error: {t}" for t in report["mathErrors"]]
    problems += [f"undefined macro: {t}" for t in report["undefinedMacros"]]
    problems += [f"raw TeX in the text: {t!r}" for t in report["rawTex"]]
    problems += [f"image does not load: {src}" for src in report["brokenImages"]]
    problems += [f"broken link: {b}" for b in broken_links(report["links"], visit.site, visit.path)]
    problems += [f"failed request: {f}" for f in visit.failed]
    problems += [f"console error: {c}" for c in visit.console]
    return problems


# What makes a page wider than the screen: the innermost visible elements whose right edge passes
# the window's, outside any box that scrolls or clips horizontally.
OVERFLOW_JS = r"""
() => {
  const width = window.innerWidth;
  const out = {width, scrollWidth: document.documentElement.scrollWidth, culprits: []};
  const contained = (el) => {
    for (let a = el.parentElement; a && a !== document.body; a = a.parentElement) {
      if (getComputedStyle(a).overflowX !== 'visible') return true;
    }
    return false;
  };
  const wide = Array.from(document.body.querySelectorAll('*')).filter((el) => {
    const r = el.getBoundingClientRect();
    return r.width > 0 && r.right > width + 1 && el.checkVisibility({visibilityProperty: true})
      && !contained(el);
  });
  const innermost = wide.filter((el) => !wide.some((other) => other !== el && el.contains(other)));
  out.culprits = innermost.slice(0, 6).map((el) => {
    const r = el.getBoundingClientRect();
    const name = el.tagName.toLowerCase() + (el.className && typeof el.className === 'string'
      ? '.' + el.className.trim().split(/\s+/).join('.') : '');
    return `${name} (right edge ${Math.round(r.right)} px): ${el.textContent.trim().slice(0, 80)}`;
  });
  return out;
}
"""


def overflow_problems(visit: Visit) -> list[str]:
    """At a phone's width the page must not scroll sideways (``scrollWidth <= innerWidth``)."""
    visit.page.set_viewport_size(PHONE)
    visit.page.wait_for_timeout(300)  # let the layout settle
    report = visit.page.evaluate(OVERFLOW_JS)
    if report["scrollWidth"] <= report["width"]:
        return []
    return [f"at {report['width']} px the page is {report['scrollWidth']} px wide; sticking out: "
            + "; ".join(report["culprits"] or ["(no single element found)"])]


@pytest.mark.parametrize("path", page_params())
def test_page_in_browser(browser, site, path):
    visit = Visit(browser, site, path).open()
    try:
        report = visit.page.evaluate(INSPECT_JS)
        visit.page.wait_for_timeout(200)  # let late console messages arrive
        problems = page_problems(report, visit)
        problems += overflow_problems(visit)
    finally:
        visit.close()
    assert not problems, f"{path} in Chromium ({report['containers']} formulas, " \
        f"{report['images']} images):\n  " + "\n  ".join(problems)


def test_index_redirects_to_the_first_page(browser, site):
    visit = Visit(browser, site, "index.html").open()
    try:
        visit.page.wait_for_url(re.compile(r".*/book/intro\.html$"), timeout=15_000)
        title = visit.page.title()
    finally:
        visit.close()
    assert "minigen" in title.lower(), title


# -- the sidebars: both header buttons open their panel -----------------------------------------------

# (button, the dialog it opens on a narrow screen, links that panel must then show)
SIDEBARS = [(".primary-toggle", "#pst-primary-sidebar-modal", "nav.bd-docs-nav a"),
            (".secondary-toggle", "#pst-secondary-sidebar-modal", "#pst-page-toc-nav a")]


def chapter_page() -> str:
    """A chapter's page (it has both sidebars: the book's contents and the page's sections)."""
    names = chapters()
    return f"{names[0] if names else yaml.safe_load((ROOT / '_toc.yml').read_text())['root']}.html"


def test_sidebar_buttons_open_the_panels_on_a_phone(browser, site):
    """At 375 px every visible sidebar button opens its panel as a dialog, with its links shown.

    (sphinx-book-theme 1.3.0 and pydata-sphinx-theme 0.17.1 wire only the first of the two buttons
    of each kind, and the first is hidden: ``book/_static/minigen-site.js`` wires the others.)
    """
    visit = Visit(browser, site, chapter_page())
    visit.page.set_viewport_size(PHONE)
    visit.open()
    problems = []
    try:
        for button, dialog, links in SIDEBARS:
            visible = [b for b in visit.page.query_selector_all(button) if b.is_visible()]
            if not visible:
                problems.append(f"no visible {button} button at {PHONE['width']} px")
            for i, b in enumerate(visible):
                b.click()
                try:
                    visit.page.wait_for_function(f"document.querySelector('{dialog}').open", timeout=3000)
                except Exception:
                    problems.append(f"visible {button} #{i}: click did not open {dialog}")
                    continue
                shown = [a for a in visit.page.query_selector_all(f"{dialog} {links}") if a.is_visible()]
                if not shown:
                    problems.append(f"visible {button} #{i}: {dialog} opened without its links ({links})")
                visit.page.keyboard.press("Escape")
                visit.page.wait_for_function(f"!document.querySelector('{dialog}').open", timeout=3000)
        problems += [f"console error: {c}" for c in visit.console]
    finally:
        visit.close()
    assert not problems, f"{visit.path} at {PHONE['width']} px:\n  " + "\n  ".join(problems)


def test_contents_button_hides_and_shows_the_sidebar_on_a_desktop(browser, site):
    visit = Visit(browser, site, chapter_page())
    visit.page.set_viewport_size({"width": 1280, "height": 800})
    visit.open()
    try:
        sidebar = visit.page.locator("#pst-primary-sidebar")
        visible = [b for b in visit.page.query_selector_all(".primary-toggle") if b.is_visible()]
        assert visible, "no visible .primary-toggle button at 1280 px"
        states = []
        for _ in range(2):
            visible[0].click()
            visit.page.wait_for_timeout(600)  # the sidebar slides
            states.append(sidebar.is_visible())
        console = list(visit.console)
    finally:
        visit.close()
    assert states == [False, True], f"the left sidebar after one and two clicks: visible {states}"
    assert not console, console


@pytest.fixture
def blank_page(browser):
    context = browser.new_context()
    try:
        yield context.new_page()
    finally:
        context.close()


RAW_TEX_CASES = [
    ("<p>the density $p_\\theta(x)$ of the model</p>", True),
    ("<p>a single $x$ in prose</p>", True),
    ("<p>split by markup $a_<em>i</em>$ here</p>", True),
    ("<p>the ratio \\frac{1}{2} as text</p>", True),
    ("<p>display $$x$$ left over</p>", True),
    ("<p>a \\(x\\) left over</p>", True),
    ("<p>it costs $5 and $10</p>", False),
    ("<p>one dollar sign $ alone</p>", False),
    ("<p>code <code>$x$ \\frac</code> and <span class='pre'>\\theta</span> are fine</p>", False),
    ("<pre>$x$ \\frac{a}{b}</pre>", False),
    ("<p>$<code>a</code> and <code>b</code>$</p>", False),
]


@pytest.mark.parametrize("html, raw", RAW_TEX_CASES, ids=[f"case{i}" for i in range(len(RAW_TEX_CASES))])
def test_raw_tex_detector(blank_page, html, raw):
    """The raw-TeX check of every page flags TeX left as text and nothing else."""
    blank_page.set_content(f"<html><body><div>{html}</div></body></html>")
    found = blank_page.evaluate(f"({RAW_TEX_JS})(document.body)")
    assert bool(found) == raw, f"{html!r}: found {found}"


def test_overflow_detector(blank_page):
    """The sideways-scroll check sees a long unbreakable word and ignores a scrolling box."""
    blank_page.set_viewport_size(PHONE)
    long = "x" * 200
    blank_page.set_content(f"<html><body><div style='overflow-x:auto'>{long}</div></body></html>")
    report = blank_page.evaluate(OVERFLOW_JS)
    assert report["scrollWidth"] <= report["width"], report
    blank_page.set_content(f"<html><body><p>a <code>{long}</code></p></body></html>")
    report = blank_page.evaluate(OVERFLOW_JS)
    assert report["scrollWidth"] > report["width"] and "code" in report["culprits"][0], report


# -- the API page ------------------------------------------------------------------------------------

API_CLASSES = ["minigen.train.Model", "minigen.train.fit", "minigen.train.FitResult",
               "minigen.flows.Flow", "minigen.mmd.MMDGenerator", "minigen.gan.GAN",
               "minigen.diffusion.Diffusion", "minigen.diffusion.ReverseSDE",
               "minigen.flow_matching.FlowMatching", "minigen.ode.Solver", "minigen.metrics.Sampler"]


def inherited_docstrings() -> list[str]:
    """First lines of the docstrings a minigen class would show if it inherited one from torch."""
    import typing

    import torch

    lines = set()
    for cls in (torch.nn.Module, typing.Protocol, typing.Generic, object):
        for obj in [cls, *vars(cls).values()]:
            doc = getattr(obj, "__doc__", None)
            if isinstance(doc, str) and len(doc.strip().splitlines()[0]) > 20:
                lines.add(doc.strip().splitlines()[0].strip())
    return sorted(lines)


def test_api_page_documents_the_package():
    page = HTML / "book" / "api.html"
    if not page.exists():
        pytest.skip(f"no API page in {HTML}")
    html = page.read_text(encoding="utf-8")
    missing = [name for name in API_CLASSES if f'id="{name}"' not in html]
    assert not missing, f"api.html does not document {missing}"
    text = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html))
    leaked = [line for line in inherited_docstrings() if re.sub(r"\s+", " ", line) in text]
    assert not leaked, f"api.html shows docstrings inherited from torch/typing: {leaked}"


MENU_CHECK_JS = r"""
async () => {
  const started = window.MathJax && MathJax.startup && MathJax.startup.promise;
  if (!started) return {renderer: null, speech: 0, svg: 0, mathjax: 'absent'};
  const timedOut = await Promise.race([
    started.then(() => false), new Promise((resolve) => setTimeout(() => resolve(true), 30000))]);
  if (timedOut) return {renderer: null, speech: 0, svg: 0, mathjax: 'timeout'};
  for (let i = 0; i < 50 && !document.querySelector('[data-semantic-speech], mjx-container[jax="SVG"] svg'); i++) {
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  return {
    renderer: (document.querySelector('mjx-container') || {}).getAttribute?.('jax') || null,
    speech: document.querySelectorAll('[data-semantic-speech]').length,
    svg: document.querySelectorAll('mjx-container[jax="SVG"] svg').length,
  };
}
"""


@pytest.mark.parametrize("settings, expect", [
    ({"explorer": True}, "speech"),  # Accessibility > Activate: semantic enrichment, speech (SRE)
    ({"renderer": "SVG"}, "svg"),    # Math Settings > Math Renderer > SVG
], ids=["accessibility-explorer", "svg-renderer"])
def test_mathjax_menu_options_load_offline(browser, site, settings, expect):
    """What a reader can switch on in MathJax's menu also loads from the site itself.

    The menu stores its settings in localStorage and applies them when a page loads (switching the
    explorer on in the middle of a page blanks its math in MathJax 3.2.2, files or not).
    """
    root = yaml.safe_load((ROOT / "_toc.yml").read_text(encoding="utf-8"))["root"]
    visit = Visit(browser, site, f"{root}.html").open()
    try:
        # Let the first load finish its math and fonts: a reload aborts the font requests still
        # in flight, which would be reported as failed requests.
        visit.page.evaluate("async () => { if (window.MathJax && MathJax.startup) "
                            "await MathJax.startup.promise; await document.fonts.ready; }")
        visit.page.evaluate("(s) => localStorage.setItem('MathJax-Menu-Settings', JSON.stringify(s))",
                            settings)
        visit.page.reload(wait_until="load")
        result = visit.page.evaluate(MENU_CHECK_JS)
        visit.page.wait_for_timeout(200)
        problems = [f"failed request: {f}" for f in visit.failed]
        problems += [f"console error: {c}" for c in visit.console]
    finally:
        visit.close()
    assert not problems, f"{root}.html with MathJax menu settings {settings}:\n  " + "\n  ".join(problems)
    assert result[expect] > 0, f"{root}.html with MathJax menu settings {settings}: {result}"


# -- download and launch buttons (static HTML, no browser needed) -------------------------------------

def chapters() -> list[str]:
    """Names of the executable chapters (MyST notebooks) listed in _toc.yml."""
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text(encoding="utf-8"))
    files = [c["file"] for part in toc.get("parts", []) for c in part.get("chapters", [])]
    out = []
    for f in files:
        src = ROOT / f"{f}.md"
        if src.exists() and "kernelspec:" in src.read_text(encoding="utf-8")[:600]:
            out.append(f)
    return out


@pytest.mark.parametrize("chapter", chapters())
def test_chapter_has_download_and_binder_buttons(chapter):
    page = HTML / f"{chapter}.html"
    if not (HTML / "index.html").exists():
        pytest.skip(f"no built book at {HTML}")
    if not page.exists():
        pytest.skip(f"{chapter} is not in this build ({HTML})")
    html = page.read_text(encoding="utf-8")
    name = Path(chapter).name

    download = re.search(rf'href="([^"]*_sources/{re.escape(chapter)}\.ipynb)"', html)
    assert download, f"{page.name}: no download link to {name}.ipynb"
    notebook = (page.parent / download.group(1)).resolve()
    assert notebook.is_file(), f"{page.name}: download link {download.group(1)} has no file"
    nb = json.loads(notebook.read_text(encoding="utf-8"))
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert code and any(c.get("outputs") or c.get("execution_count") for c in code), \
        f"{notebook.name} is not the executed notebook"

    config = yaml.safe_load((ROOT / "_config.yml").read_text(encoding="utf-8"))
    repo = urlsplit(config["repository"]["url"]).path.strip("/")
    branch = config["repository"].get("branch", "main")
    assert config["launch_buttons"]["notebook_interface"] == "classic"  # opens .md via jupytext
    binder = f"{config['launch_buttons']['binderhub_url'].rstrip('/')}/v2/gh/{repo}/{branch}" \
             f"?urlpath=tree/{chapter}.md"
    assert f'href="{binder}"' in html, f"{page.name}: no Binder button to {binder}"


def requirement_names(path: Path) -> set[str]:
    lines = [line.split("#")[0].strip() for line in path.read_text(encoding="utf-8").splitlines()]
    return {re.split(r"[=<>~!\[ ;]", line)[0].lower().replace("_", "-") for line in lines
            if line and not line.startswith("-")}


def test_binder_environment_opens_markdown_notebooks():
    """Binder builds from binder/ (it ignores the root requirements.txt when that folder exists)."""
    names = requirement_names(ROOT / "binder" / "requirements.txt")
    assert "jupytext" in names, "Binder needs jupytext to open the chapters' .md as notebooks"
    assert "notebook" in names, "the launch button uses the classic (notebook) interface"
    reqs = (ROOT / "binder" / "requirements.txt").read_text(encoding="utf-8")
    assert "download.pytorch.org/whl/cpu" in reqs, "Binder must install the CPU build of torch"
    missing = names - {"notebook"} - requirement_names(ROOT / "requirements.txt")
    assert not missing, f"binder/requirements.txt has {sorted(missing)}, which requirements.txt " \
        "lacks: keep the two in step"
    post_build = ROOT / "binder" / "postBuild"
    assert os.access(post_build, os.X_OK), "binder/postBuild must be executable"
    assert "pip install" in post_build.read_text() and "-e ." in post_build.read_text(), \
        "binder/postBuild must install the minigen package"


def test_every_image_has_alt_text_that_is_not_its_file_path():
    pages = sorted((HTML / "book").glob("*.html")) if HTML.exists() else []
    if not pages:
        pytest.skip(f"no built pages in {HTML}")
    bad = []
    for page in pages:
        for tag in re.findall(r"<img\b[^>]*>", page.read_text(encoding="utf-8")):
            alt = re.search(r'\balt="([^"]*)"', tag)
            src = re.search(r'\bsrc="([^"]*)"', tag)
            if alt is None or not alt.group(1).strip() or (src and alt.group(1) == src.group(1)):
                bad.append(f"{page.name}: {tag[:120]}")
    assert not bad, f"{len(bad)} images without alt text (or with their path as alt): {bad[:5]}"
