"""The built pages and downloads as a reader gets them, read from ``_build/html`` (run by ``make site-test``).

Every chapter page of the built book is parsed (Python's HTML parser, no browser) and checked for what a reader
trusts: every figure numbered and captioned with alt text that describes it, code and verdict lines that fit the
column (88 characters), no warning or claim record printed into a page; and every page for one search box,
thebe's configuration at most once, and no path of the machine that built the book. Every downloadable notebook
(``_notebooks/``) carries the build's outputs, a setup note and no MyST role text; one of them is executed with
the environment ``make venv`` sets up, and prints what the book printed. Each check is first shown failing on a
made-up bad page and passing on a good one.
"""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
HTML = ROOT / "_build" / "html"
NOTEBOOKS = HTML / "_notebooks"
COLUMN = 88
# A verdict's first line (diffnotes.claims.Claim.verdict): "<status> [<id>]: measured ..."
VERDICT = re.compile(r"^\S.* \[[A-Za-z0-9_.+\-]+\]: measured ")
# MyST roles that Jupyter would show as literal text: {cite}`x`, {func}`y`, ...
ROLE = re.compile(r"\{[a-z]+(:[a-z]+)?\}`")
HASH_ALT = re.compile(r"^[0-9a-f]{16,}$")
VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


class Element:
    def __init__(self, tag: str, attrs: dict, parent: Element | None):
        self.tag, self.attrs, self.parent, self.children = tag, attrs, parent, []

    @property
    def classes(self) -> set[str]:
        return set((self.attrs.get("class") or "").split())

    def text(self) -> str:
        return "".join(c if isinstance(c, str) else c.text() for c in self.children)

    def iter(self):
        for child in self.children:
            if isinstance(child, Element):
                yield child
                yield from child.iter()

    def find_all(self, tag: str, cls: str | None = None) -> list[Element]:
        return [e for e in self.iter() if e.tag == tag and (cls is None or cls in e.classes)]

    def ancestors(self):
        node = self.parent
        while node is not None:
            yield node
            node = node.parent


class _Builder(HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.root = self.node = Element("#document", {}, None)

    def handle_starttag(self, tag, attrs):
        element = Element(tag, dict(attrs), self.node)
        self.node.children.append(element)
        if tag not in VOID:
            self.node = element

    def handle_endtag(self, tag):
        node = self.node
        while node is not None and node.tag != tag:
            node = node.parent
        if node is not None and node.parent is not None:
            self.node = node.parent

    def handle_data(self, data):
        self.node.children.append(data)


def parse(html: str) -> Element:
    builder = _Builder()
    builder.feed(html)
    builder.close()
    return builder.root


def chapter_pages() -> list[Path]:
    """The built pages of the chapters: those with a downloadable notebook."""
    return sorted(
        HTML / nb.relative_to(NOTEBOOKS).with_suffix(".html") for nb in NOTEBOOKS.rglob("*.ipynb")
    )


# ------------------------------------------------------------------------------------- the checks


def figure_problems(page: Element) -> list[str]:
    """Every image of a cell's output sits in a numbered <figure> with a caption and a describing alt text."""
    problems = []
    for img in page.find_all("img"):
        if not any("cell_output" in a.classes for a in img.ancestors()):
            continue
        src = img.attrs.get("src", "?")
        figure = next((a for a in img.ancestors() if a.tag == "figure"), None)
        if figure is None:
            problems.append(f"{src}: not in a figure")
            continue
        captions = figure.find_all("figcaption")
        if not captions or not captions[0].find_all("span", "caption-number"):
            problems.append(f"{src}: figure without a numbered caption")
        alt = (img.attrs.get("alt") or "").strip()
        if len(alt) < 20 or HASH_ALT.match(alt):
            problems.append(f"{src}: alt text {alt!r} does not describe the figure")
    return problems


def stray_outputs(page: Element) -> list[str]:
    """Warnings a cell printed into the page (stderr outputs that name a Warning), and claim records shown under
    their verdicts (a ``check(...);`` whose ``;`` did not silence the result)."""
    warnings = [
        "warning: " + next(line for line in div.text().splitlines() if "Warning" in line)
        for div in page.find_all("div", "stderr")
        if "Warning" in div.text()
    ]
    records = [
        "claim record: " + div.text().strip()[:60]
        for div in page.find_all("div", "cell_output")
        if "Claim(id=" in div.text()
    ]
    return warnings + records


def long_lines(page: Element) -> list[str]:
    """Code lines of the cells' inputs, and verdict lines of their outputs, longer than the column."""
    problems = []
    for cell_input in page.find_all("div", "cell_input"):
        for pre in cell_input.find_all("pre"):
            problems += [f"code: {line}" for line in pre.text().splitlines() if len(line) > COLUMN]
    for cell_output in page.find_all("div", "cell_output"):
        for pre in cell_output.find_all("pre"):
            in_verdict = False
            for line in pre.text().splitlines():
                in_verdict = bool(VERDICT.match(line)) or (in_verdict and line.startswith("  "))
                if in_verdict and len(line) > COLUMN:
                    problems.append(f"verdict: {line}")
    return problems


def chrome_problems(html: str) -> list[str]:
    """One search box (the header's; the theme's copy in the left sidebar is removed), thebe's configuration at
    most once, no path of the build machine."""
    problems = []
    if html.count("THEBE_JS_URL") > 1:
        problems.append("thebe's configuration appears more than once")
    for sidebar in parse(html).find_all("div", "bd-sidebar-primary"):
        if any(c.startswith("search") for e in sidebar.iter() for c in e.classes):
            problems.append("a second search box, in the left sidebar")
    leaked = [path for path in (str(ROOT), "/tmp/", "site-packages") if path in html]
    if leaked:
        problems.append(f"the build machine's path {leaked[0]!r} appears")
    return problems


def notebook_problems(notebook: dict) -> list[str]:
    """A download opens cleanly in Jupyter: a setup note first, outputs kept, no MyST role text."""
    problems = []
    cells = notebook["cells"]
    if not cells or cells[0]["cell_type"] != "markdown" or "make venv" not in "".join(cells[0]["source"]):
        problems.append("no setup note in the first cell")
    code = [c for c in cells if c["cell_type"] == "code"]
    if code and not any(c.get("outputs") for c in code):
        problems.append("no outputs")
    for cell in cells:
        if cell["cell_type"] == "markdown" and ROLE.search("".join(cell["source"])):
            problems.append(f"MyST role text: {ROLE.search(''.join(cell['source'])).group(0)}")
    return problems


# ------------------------------------------------------------------------------------- the checks fail on bad pages

BAD_PAGE = f"""<html><head><script>const THEBE_JS_URL = 1</script><script>const THEBE_JS_URL = 1</script></head>
<body><div class="bd-sidebar-primary"><button class="search-button-field"></button></div><p>{ROOT}/book/x.md</p>
<div class="cell_input"><pre>{"x" * 89}</pre></div>
<div class="cell_output"><pre>reproduced [T1]: measured 1, theory 1 +/- 0.1
  {"q " * 45}</pre><img src="a.png" alt="0123456789abcdef0123"></div>
<div class="output stderr"><pre>/x/1.py:11: UserWarning: The figure layout has changed to tight</pre></div>
<div class="cell_output"><pre>Claim(id='T1', quantity='q')</pre></div>
<div class="cell_output"><figure><img src="b.png" alt="Two panels of the error against steps"><figcaption>
<p>no number</p></figcaption></figure></div>
</body></html>"""
GOOD_PAGE = """<html><body><img src="logo.png" alt="">
<div class="cell_input"><pre>x = 1</pre></div>
<div class="cell_output"><pre>reproduced [T1]: measured 1, theory 1 +/- 0.1
  the quantity
a table line that is long but not a verdict ............................................................</pre>
<figure><img src="b.png" alt="Two panels of the error against steps"><figcaption><p><span class="caption-number">
Fig. 1 </span>The error.</p></figcaption></figure></div></body></html>"""


def test_the_checks_catch_a_bad_page_and_pass_a_good_one():
    bad, good = parse(BAD_PAGE), parse(GOOD_PAGE)
    assert figure_problems(bad) == [
        "a.png: not in a figure",
        "b.png: figure without a numbered caption",
    ]
    assert [p.split(":")[0] for p in long_lines(bad)] == ["code", "verdict"]
    assert stray_outputs(bad) == [
        "warning: /x/1.py:11: UserWarning: The figure layout has changed to tight",
        "claim record: Claim(id='T1', quantity='q')",
    ]
    assert len(chrome_problems(BAD_PAGE)) == 3
    assert figure_problems(good) == [] and long_lines(good) == [] and stray_outputs(good) == []
    assert chrome_problems(GOOD_PAGE) == []
    note = {"cell_type": "markdown", "source": "Run `make venv`."}
    assert notebook_problems({"cells": [note, {"cell_type": "code", "source": "1", "outputs": []},
                                        {"cell_type": "markdown", "source": "see {cite}`x`"}]}) == [
        "no outputs", "MyST role text: {cite}`"]


# ------------------------------------------------------------------------------------- the built book

needs_build = pytest.mark.skipif(not (HTML / "index.html").exists(), reason="build the book first (make book)")


@needs_build
def test_every_chapter_page_has_captioned_figures_and_lines_that_fit():
    pages = chapter_pages()
    assert len(pages) >= 30, "the chapters' downloads are missing"
    problems, figures = {}, 0
    for path in pages:
        tree = parse(path.read_text(encoding="utf-8"))
        figures += len(tree.find_all("figure"))
        found = figure_problems(tree) + long_lines(tree)
        if found:
            problems[str(path.relative_to(HTML))] = found[:5] + [f"({len(found)} in all)"]
    assert not problems, json.dumps(problems, indent=1)
    assert figures >= 60


@needs_build
def test_no_page_repeats_thebe_shows_two_search_boxes_or_a_build_path():
    problems = {}
    for path in sorted(HTML.rglob("*.html")):
        if "_static" in path.parts or "_sources" in path.parts:
            continue
        found = chrome_problems(path.read_text(encoding="utf-8"))
        if found:
            problems[str(path.relative_to(HTML))] = found
    assert not problems, json.dumps(problems, indent=1)


@needs_build
def test_every_download_has_a_setup_note_outputs_and_no_myst_roles():
    notebooks = sorted(NOTEBOOKS.rglob("*.ipynb"))
    assert len(notebooks) >= 30
    problems = {}
    for path in notebooks:
        found = notebook_problems(json.loads(path.read_text(encoding="utf-8")))
        if found:
            problems[str(path.relative_to(NOTEBOOKS))] = found
    assert not problems, json.dumps(problems, indent=1)


def _printed(notebook) -> list[str]:
    """What each code cell printed (its stdout, however the streams were split into outputs)."""
    return ["".join("".join(o["text"]) for o in c.get("outputs", []) if o.get("name") == "stdout")
            for c in notebook.cells if c.cell_type == "code"]


@needs_build
def test_a_downloaded_chapter_runs_in_the_readme_environment_and_prints_what_the_book_printed(tmp_path, monkeypatch):
    """The Part 2 exercises, downloaded, run by a fresh kernel of this environment (the one ``make venv`` makes),
    from a folder outside the repository, with one thread as the book ran them: every cell runs and every printed
    line is the book's."""
    import nbformat
    from nbclient import NotebookClient

    downloaded = nbformat.read(NOTEBOOKS / "book" / "part2" / "exercises.ipynb", as_version=4)
    book_printed = _printed(downloaded)
    assert any(book_printed), "the download carries no printed output to compare with"
    fresh = nbformat.from_dict(json.loads(json.dumps(downloaded)))
    for cell in fresh.cells:
        if cell.cell_type == "code":
            cell.outputs = []
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        monkeypatch.setenv(name, "1")
    monkeypatch.delenv("DIFFNOTES_CLAIMS_DIR", raising=False)
    NotebookClient(fresh, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    assert _printed(fresh) == book_printed
