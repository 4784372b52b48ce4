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


def _last_statement_is_a_bare_check(code: str) -> bool:
    import ast

    tree = ast.parse(code)
    if not tree.body or not isinstance(tree.body[-1], ast.Expr) or not isinstance(tree.body[-1].value, ast.Call):
        return False
    func = tree.body[-1].value.func
    name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", "")
    ends_with_semicolon = code.rstrip().endswith(";")
    return name == "check" and not ends_with_semicolon


def test_no_chapter_cell_displays_the_claim_record_under_its_verdict():
    """check() prints the verdict and returns the Claim; as a cell's last expression Jupyter would also show the
    record's repr under the verdict. A trailing ';' suppresses it."""
    chapters = load_chapters()
    offenders = []
    for path in sorted((REPO / "book").rglob("*.md")):
        for k, code in enumerate(chapters.code_cells(path.read_text(encoding="utf-8"))):
            if _last_statement_is_a_bare_check(code):
                offenders.append(f"{path.relative_to(REPO)} code cell {k}")
    assert not offenders, offenders
    assert _last_statement_is_a_bare_check('x = 1\ncheck("T1", "q", measured=1,\n      theory=1, tol=0)')
    assert not _last_statement_is_a_bare_check('check("T1", "q", measured=1, theory=1, tol=0);')
    cell = '```{code-cell} ipython3\n---\ntags: [hide-input]\n---\ncheck("T1", "q")\n```\n'
    assert [_last_statement_is_a_bare_check(c) for c in chapters.code_cells(cell)] == [True]


def load_extension():
    spec = importlib.util.spec_from_file_location("scorecard_ext", REPO / "book" / "_ext" / "scorecard.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    ("remote", "url"),
    [
        ("git@github.com:owner/diffnotes.git", "https://github.com/owner/diffnotes"),
        ("ssh://git@gitlab.example.org/group/diffnotes.git", "https://gitlab.example.org/group/diffnotes"),
        ("https://token@github.com/owner/diffnotes.git\n", "https://github.com/owner/diffnotes"),
        ("https://github.com/owner/diffnotes/", "https://github.com/owner/diffnotes"),
        ("/srv/git/diffnotes", ""),
        ("file:///srv/git/diffnotes", ""),
    ],
)
def test_a_git_remote_becomes_a_browsable_address(remote, url):
    assert load_extension().normalise_remote(remote) == url


def test_the_repository_address_comes_from_config_then_environment_then_the_origin_remote(tmp_path):
    import subprocess

    ext = load_extension()
    bare = tmp_path / "bare"
    subprocess.run(["git", "init", "-q", str(bare)], check=True)
    assert ext.repository_url("", bare, environ={}) == ""  # no remote: no address, nothing invented
    subprocess.run(["git", "-C", str(bare), "remote", "add", "origin", "git@github.com:o/r.git"], check=True)
    assert ext.repository_url("", bare, environ={}) == "https://github.com/o/r"
    actions = {"GITHUB_SERVER_URL": "https://github.com", "GITHUB_REPOSITORY": "o/actions"}
    assert ext.repository_url("", bare, environ=actions) == "https://github.com/o/actions"
    environ = dict(actions, DIFFNOTES_REPOSITORY_URL="https://example.org/x/y.git")
    assert ext.repository_url("", bare, environ=environ) == "https://example.org/x/y"
    assert ext.repository_url("https://github.com/a/b", bare, environ=environ) == "https://github.com/a/b"


def test_repeated_inline_scripts_are_dropped_from_the_head_only():
    module = load_extension()
    a, b = "    <script>const A = 1;</script>\n", "    <script>var b = 2;</script>\n"
    page = "<head>\n" + a + b + a + "</head>\n<body>\n" + a + "</body>\n"
    cleaned = module.drop_repeated_inline_scripts(page)
    assert cleaned == "<head>\n" + a + b + "</head>\n<body>\n" + a + "</body>\n"


def test_stream_outputs_are_merged_only_where_consecutive():
    """Text printed between two displays stays between them (nbval's own merger moved it ahead of both)."""
    from nbformat.v4 import new_output
    from nbval.plugin import coalesce_streams

    chapters = load_chapters()
    outputs = [
        new_output("stream", name="stdout", text="a\n"),
        new_output("stream", name="stdout", text="b\n"),
        new_output("display_data", data={"text/plain": "player 1"}),
        new_output("stream", name="stdout", text="c\rC\n"),
        new_output("display_data", data={"text/plain": "player 2"}),
        new_output("stream", name="stderr", text="w\n"),
    ]
    merged = chapters.merge_consecutive_streams(outputs, coalesce_streams)
    assert [(o.output_type, o.get("text", o.get("data", {}).get("text/plain"))) for o in merged] == [
        ("stream", "a\nb\n"),
        ("display_data", "player 1"),
        ("stream", "C\n"),
        ("display_data", "player 2"),
        ("stream", "w\n"),
    ]

