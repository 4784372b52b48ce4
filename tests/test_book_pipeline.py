"""The chapters are executed once (make test) and the book is assembled from them: the pieces that make it work."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def load_chapters():
    spec = importlib.util.spec_from_file_location("chapters_ext", REPO / "book" / "_ext" / "chapters.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_chapter_in_the_toc_is_found_and_named_by_its_docname():
    chapters = load_chapters()
    found = {chapters.docname(p) for p in chapters.chapter_sources()}
    toc = (REPO / "_toc.yml").read_text()
    listed = {line.split("file:")[1].strip() for line in toc.splitlines() if "file: book/part" in line}
    assert listed and listed <= found


def test_the_executed_notebook_matches_the_cache_key_of_the_book_build(tmp_path):
    """The notebook executed by the tests must hash like the one MyST-NB reads at build time, or the book would
    execute every chapter a second time."""
    pytest.importorskip("myst_nb")
    from jupyter_cache import get_cache
    from jupyter_cache.base import CacheBundleIn
    from myst_nb.core.config import NbParserConfig
    from myst_nb.core.read import create_nb_reader
    from myst_parser.config.main import MdParserConfig

    chapters = load_chapters()
    source = REPO / "book" / "part2" / "samplers.md"
    ours = chapters.read_chapter(source)
    cache = get_cache(str(tmp_path / "cache"))
    cache.cache_notebook_bundle(CacheBundleIn(ours, str(source)), check_validity=False, overwrite=True)
    text = source.read_text(encoding="utf-8")
    reader = create_nb_reader(str(source), MdParserConfig(), NbParserConfig(), text)
    assert cache.match_cache_notebook(reader.read(text)) is not None
    # A changed code cell is a different notebook: the build then executes it itself.
    changed = reader.read(text.replace("```{code-cell} ipython3\n", "```{code-cell} ipython3\n# edited\n", 1))
    with pytest.raises(KeyError):
        cache.match_cache_notebook(changed)
