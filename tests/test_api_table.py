"""The API index's table of chapters and modules matches the modules each chapter really imports, and every module
has its own API page, listed under the index in the table of contents and in the index's list of modules."""

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
LEFT_OUT = {"plotting", "claims"}  # the figure style and the scorecard, imported by every chapter


def chapter_modules(source: str) -> set[str]:
    """The diffnotes modules a chapter imports, from its `from diffnotes... import` lines."""
    found = set()
    for line in source.splitlines():
        m = re.match(r"\s*from diffnotes\.(\w+) import ", line)
        if m:
            found.add(m.group(1))
            continue
        m = re.match(r"\s*from diffnotes import (.+)$", line)
        if m:
            found |= {part.split(" as ")[0].strip() for part in m.group(1).split(",")}
    return found - LEFT_OUT


def chapters() -> list[str]:
    """The executed chapters in the order of the table of contents."""
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = [c["file"] for part in toc["parts"] for c in part["chapters"]]
    return [f for f in files if "jupytext:" in (ROOT / f"{f}.md").read_text().split("\n---", 1)[0]]


def table() -> dict[str, set[str]]:
    rows = {}
    text = (ROOT / "book/appendix/api.md").read_text()
    for m in re.finditer(r"^\| \{doc\}`\.\./([\w/-]+)` \| (.*) \|$", text, re.M):
        rows["book/" + m.group(1)] = set(re.findall(r"\{mod\}`diffnotes\.(\w+)`", m.group(2)))
    return rows


def test_the_table_lists_every_chapter_with_the_modules_it_imports():
    rows = table()
    wanted = {f: chapter_modules((ROOT / f"{f}.md").read_text()) for f in chapters()}
    assert list(rows) == list(wanted), "the table's chapters differ from the table of contents (order included)"
    wrong = {f: (sorted(rows[f]), sorted(wanted[f])) for f in wanted if rows[f] != wanted[f]}
    assert not wrong, f"table rows (listed, imported) that disagree: {wrong}"


def api_pages() -> list[str]:
    """The module of each API page, in the order of the table of contents (the sections of the index's entry)."""
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    entry = next(c for part in toc["parts"] for c in part["chapters"] if c["file"] == "book/appendix/api")
    return [s["file"].removeprefix("book/appendix/api/") for s in entry.get("sections", [])]


def test_every_module_has_its_own_api_page():
    modules = sorted(p.stem for p in (ROOT / "diffnotes").glob("*.py") if not p.stem.startswith("_"))
    pages = api_pages()
    assert sorted(pages) == modules, "the API pages in the table of contents differ from the modules of diffnotes"
    for m in pages:
        text = (ROOT / f"book/appendix/api/{m}.md").read_text()
        assert text.startswith(f"# `diffnotes.{m}`: "), f"{m}.md: the title names the module as code"
        assert re.findall(r"^\.\. automodule:: diffnotes\.(\w+)", text, re.M) == [m], f"{m}.md: one automodule"
    index = (ROOT / "book/appendix/api.md").read_text()
    assert "automodule" not in index, "the index documents no module itself (one description per object)"
    listed = re.findall(r"^- \{mod\}`diffnotes\.(\w+)`: ", index, re.M)
    assert listed == pages, "the index lists every module once, in the order of the table of contents"


def test_the_import_parser():
    src = "from diffnotes import metrics, acceleration as acc\nfrom diffnotes.samplers import ddim\n" \
          "from diffnotes.plotting import COLORS\nimport numpy as np\n"
    assert chapter_modules(src) == {"metrics", "acceleration", "samplers"}
