"""The built book as a reader sees it: headless Chromium opens pages of ``_build/html`` (run by ``make site-test``).

Pages are served from a local HTTP server on the loopback interface; Chromium is Debian's (``/usr/bin/chromium``),
driven through Playwright, which downloads no browser. For each page the test checks that

* the math is typeset by the MathJax bundled in the site (``mjx-container`` elements, no ``$$`` or ``\\(`` left
  in the text, and no script loaded from another host),
* every image has loaded (``naturalWidth > 0``),
* every local link resolves to a file of the site,
* the console shows no error,

and saves a screenshot of the page, at a 1300-px window, under ``_build/screenshots``. The reader is offline:
every request that leaves the site is refused and reported. A last test breaks a copy of the site the two ways a
build can regress (MathJax pointed back at a CDN, a figure missing) and checks that the same inspection fails.
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import re
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


@contextlib.contextmanager
def serve(root: Path):
    """Serve ``root`` on the loopback interface; yields the base URL."""
    handler = functools.partial(QuietHandler, directory=str(root))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()


@pytest.fixture(scope="module")
def server():
    if not (HTML / "index.html").exists():
        pytest.fail("no built book in _build/html: run `make book` first")
    with serve(HTML) as base:
        yield base


@pytest.fixture(scope="module")
def browser():
    playwright = pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).exists():
        pytest.fail("Debian's chromium is not installed (apt-get install chromium; .ci/run installs it)")
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        yield browser
        browser.close()


def local_target(root: Path, base: str, href: str) -> Path | None:
    """The file of the site a link points to, or None for a link that leaves the site."""
    url = urlparse(href)
    if url.scheme not in ("http", "https") or not href.startswith(base):
        return None
    path = unquote(url.path).lstrip("/")
    target = root / path
    return target / "index.html" if target.is_dir() else target


def inspect_page(browser, base: str, root: Path, page: str, shot: Path | None = None,
                 math_timeout_ms: int = 20_000) -> list[str]:
    """Open ``page`` of the site served at ``base`` (files under ``root``) as an offline reader; the problems."""
    problems: list[str] = []
    context = browser.new_context(viewport={"width": 1300, "height": 900})
    errors: list[str] = []
    foreign: list[str] = []

    def route(r):
        if r.request.url.startswith(base):
            r.continue_()
        else:  # no network: what a reader without one would get
            foreign.append(r.request.url)
            r.abort()

    context.route("**/*", route)
    tab = context.new_page()
    tab.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    tab.on("pageerror", lambda exc: errors.append(str(exc)))
    tab.on(
        "response",
        lambda res: errors.append(f"HTTP {res.status}: {res.url}")
        if res.status >= 400 and not res.url.endswith("/favicon.ico")
        else None,
    )
    tab.goto(f"{base}/{page}", wait_until="networkidle")
    has_math = tab.evaluate("() => document.querySelectorAll('.math, span.math, div.math').length") > 0
    if has_math:
        try:
            tab.wait_for_selector("mjx-container", state="attached", timeout=math_timeout_ms)
            tab.wait_for_function("() => !document.querySelector('.math:not(:has(mjx-container))')",
                                  timeout=math_timeout_ms)
        except Exception as exc:  # playwright's TimeoutError
            problems.append(f"math was not typeset ({type(exc).__name__})")
    if shot is not None:
        shot.parent.mkdir(parents=True, exist_ok=True)
        tab.screenshot(path=str(shot), full_page=False)
    text = tab.evaluate("() => document.querySelector('main, article, body').innerText")
    if has_math:
        if tab.evaluate("() => document.querySelectorAll('mjx-container').length") == 0:
            problems.append("no MathJax output on a page with math")
        if "$$" in text or "\\(" in text or "\\begin{" in text:
            problems.append("raw TeX left on the page")
    scripts = tab.evaluate("() => [...document.scripts].map(s => s.src).filter(Boolean)")
    if outside := [src for src in scripts if not src.startswith(base)]:
        problems.append(f"scripts from another host: {outside}")
    broken = tab.evaluate(
        "() => [...document.images].filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.src)"
    )
    if broken:
        problems.append(f"images that did not load: {broken}")
    hrefs = tab.evaluate("() => [...document.querySelectorAll('a[href]')].map(a => a.href)")
    if missing := sorted({h for h in hrefs if (t := local_target(root, base, h)) is not None and not t.exists()}):
        problems.append(f"local links that do not resolve: {missing}")
    if foreign:
        problems.append(f"requests that leave the site: {foreign[:5]}")
    # The browser's own request for /favicon.ico is not a page resource; a failed page resource is reported above
    # as an "HTTP 4xx" entry, a refused foreign request as leaving the site.
    errors = [e for e in errors if not e.startswith("Failed to load resource")]
    if errors:
        problems.append(f"console errors: {errors}")
    context.close()
    return problems


def shot_path(page: str) -> Path:
    return SHOTS / page.replace("/", "_").replace(".html", ".png")


@pytest.mark.parametrize("page", PAGES)
def test_page_renders_for_a_reader(server, browser, page):
    assert (HTML / page).exists(), f"{page} was not built"
    problems = inspect_page(browser, server, HTML, page, shot=shot_path(page))
    assert not problems, "; ".join(problems)


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
    # The first claims table as a reader sees it at this width (every column in view).
    table = tab.locator("table.diffnotes-scorecard").nth(1)
    table.evaluate("t => t.scrollIntoView({block: 'start'})")
    SHOTS.mkdir(parents=True, exist_ok=True)
    tab.screenshot(path=str(SHOTS / "book_appendix_scorecard_table.png"), full_page=False)
    tab.close()


def test_the_inspection_fails_on_a_cdn_mathjax_and_a_missing_figure(browser, tmp_path):
    """Negative control: a copy of the site with MathJax loaded from a CDN and one figure deleted must fail."""
    page = "book/part4/sampling-theory.html"
    if not (HTML / page).exists():
        pytest.fail("no built book in _build/html: run `make book` first")
    root = tmp_path / "html"
    shutil.copytree(HTML, root)
    html = (root / page).read_text(encoding="utf-8")
    local = re.search(r'src="([^"]*_static/mathjax/tex-chtml\.js[^"]*)"', html)
    assert local, "the page does not load the bundled MathJax"
    html = html.replace(local.group(1), "https://cdn.jsdelivr.net/npm/mathjax@3/es5/tex-chtml.js")
    figure = re.search(r'<img[^>]+src="([^"]+\.png)"', html)
    assert figure, "the page has no figure"
    (root / page).parent.joinpath(figure.group(1)).resolve().unlink()
    (root / page).write_text(html, encoding="utf-8")
    with serve(root) as base:
        problems = " | ".join(inspect_page(browser, base, root, page, math_timeout_ms=3_000))
    assert "math was not typeset" in problems
    assert "scripts from another host" in problems
    assert "images that did not load" in problems
