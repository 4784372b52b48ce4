"""The built book as a reader sees it: headless Chromium opens pages of ``_build/html`` (run by ``make site-test``).

Pages are served from a local HTTP server on the loopback interface; Chromium is Debian's (``/usr/bin/chromium``),
driven through Playwright, which downloads no browser. For each page the test checks that

* the math is typeset by the MathJax bundled in the site (``mjx-container`` elements, no ``$$`` or ``\\(`` left
  in the text, and no script loaded from another host),
* every image has loaded (``naturalWidth > 0``),
* every local link resolves to a file of the site,
* the console shows no error,

and saves a screenshot of the page, at a 1300-px window, under ``_build/screenshots``.
"""

from __future__ import annotations

import functools
import http.server
import shutil
import threading
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest

ROOT = Path(__file__).resolve().parents[2]
HTML = ROOT / "_build" / "html"
SHOTS = ROOT / "_build" / "screenshots"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"

# The intro, a theory chapter, an application-style chapter (a trained network on image data) and the Scorecard.
PAGES = [
    "book/intro.html",
    "book/part4/sampling-theory.html",
    "book/part3/score-approximation.html",
    "book/appendix/scorecard.html",
]
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 - the signature of the base class
        pass


@pytest.fixture(scope="module")
def server():
    if not (HTML / "index.html").exists():
        pytest.fail("no built book in _build/html: run `make book` first")
    handler = functools.partial(QuietHandler, directory=str(HTML))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


@pytest.fixture(scope="module")
def browser():
    playwright = pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).exists():
        pytest.fail("Debian's chromium is not installed (apt-get install chromium; .ci/run installs it)")
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        yield browser
        browser.close()


def local_target(base: str, href: str) -> Path | None:
    """The file of the site a link points to, or None for a link that leaves the site."""
    url = urlparse(href)
    if url.scheme not in ("http", "https") or not href.startswith(base):
        return None
    path = unquote(url.path).lstrip("/")
    target = HTML / path
    return target / "index.html" if target.is_dir() else target


@pytest.mark.parametrize("page", PAGES)
def test_page_renders_for_a_reader(server, browser, page):
    assert (HTML / page).exists(), f"{page} was not built"
    context = browser.new_context(viewport={"width": 1300, "height": 900})
    tab = context.new_page()
    errors: list[str] = []
    foreign: list[str] = []
    tab.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    tab.on("pageerror", lambda exc: errors.append(str(exc)))
    tab.on("request", lambda req: foreign.append(req.url) if not req.url.startswith(server) else None)
    tab.on(
        "response",
        lambda res: errors.append(f"HTTP {res.status}: {res.url}")
        if res.status >= 400 and not res.url.endswith("/favicon.ico")
        else None,
    )
    tab.goto(f"{server}/{page}", wait_until="networkidle")
    has_math = tab.evaluate("() => document.querySelectorAll('.math, span.math, div.math').length") > 0
    if has_math:
        tab.wait_for_selector("mjx-container", state="attached", timeout=20_000)
        tab.wait_for_function("() => !document.querySelector('.math:not(:has(mjx-container))')", timeout=20_000)
    SHOTS.mkdir(parents=True, exist_ok=True)
    tab.screenshot(path=str(SHOTS / (page.replace("/", "_").replace(".html", ".png"))), full_page=False)

    text = tab.evaluate("() => document.querySelector('main, article, body').innerText")
    if has_math:
        assert tab.evaluate("() => document.querySelectorAll('mjx-container').length") > 0
        assert "$$" not in text and "\\(" not in text and "\\begin{" not in text, "raw TeX left on the page"
    scripts = tab.evaluate("() => [...document.scripts].map(s => s.src).filter(Boolean)")
    assert all(src.startswith(server) for src in scripts), f"scripts from another host: {scripts}"
    broken = tab.evaluate(
        "() => [...document.images].filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.src)"
    )
    assert not broken, f"images that did not load: {broken}"
    hrefs = tab.evaluate("() => [...document.querySelectorAll('a[href]')].map(a => a.href)")
    missing = sorted({h for h in hrefs if (t := local_target(server, h)) is not None and not t.exists()})
    assert not missing, f"local links that do not resolve: {missing}"
    assert not foreign, f"requests that leave the site: {foreign[:5]}"
    # Known and left for the page-chrome work: sphinx-thebe declares its configuration twice on every page.
    known = ("Identifier 'THEBE_JS_URL' has already been declared",)
    # The browser's own request for /favicon.ico is not a page resource; a failed page resource is reported above
    # as an "HTTP 4xx" entry.
    errors = [e for e in errors if e not in known and not e.startswith("Failed to load resource")]
    assert not errors, f"console errors: {errors}"
    context.close()


def test_scorecard_fits_a_1300_px_window(server, browser):
    tab = browser.new_page(viewport={"width": 1300, "height": 900})
    tab.goto(f"{server}/book/appendix/scorecard.html", wait_until="networkidle")
    overflow = tab.evaluate(
        """() => [...document.querySelectorAll('table.diffnotes-scorecard')].map(t => {
              const r = t.getBoundingClientRect(); const m = t.closest('main, article').getBoundingClientRect();
              return r.right - m.right; })"""
    )
    assert overflow and max(overflow) <= 1, f"the Scorecard is wider than its column by {max(overflow)} px"
    headers = tab.evaluate("() => [...document.querySelectorAll('table.diffnotes-scorecard th')].map(h => h.innerText)")
    assert "Verdict" in headers
    tab.close()
