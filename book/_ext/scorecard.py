"""The book's Scorecard, and a downloadable notebook for every chapter.

A local Sphinx extension (loaded through ``sphinx: local_extensions`` in ``_config.yml``).

Scorecard
    Chapters check the review's quantitative claims with :func:`diffnotes.claims.check`. When the
    environment variable ``DIFFNOTES_CLAIMS_DIR`` is set, each check appends a JSON record to
    ``$DIFFNOTES_CLAIMS_DIR/<chapter>.jsonl``, where the chapter is read from ``DIFFNOTES_CHAPTER``.
    Chapters execute inside the MyST-NB parser, one at a time, in a kernel started from this process, so the
    kernel inherits :data:`os.environ`. This extension therefore

    * sets ``DIFFNOTES_CLAIMS_DIR`` to ``<outdir>/../claims`` (``_build/claims``) when the builder starts; the
      chapters executed before the build by the notebook tests (``book/_ext/chapters.py``) recorded their claims
      there already;
    * sets ``DIFFNOTES_CHAPTER`` to the docname of each page just before it is parsed (``source-read``), for a
      chapter the build executes itself; the latest run of each chapter replaces its earlier records;
    * replaces each ``{scorecard}`` directive, in the write phase (after every chapter has executed), by a
      table of all recorded claims, and warns when there is none: a scorecard that shows nothing is a defect;
    * writes ``_static/scorecard.json`` into the HTML output when the build finishes.

Repository
    The address of the repository the book was built from, when the build can tell it: ``repository.url`` of
    ``_config.yml`` if set, else ``DIFFNOTES_REPOSITORY_URL``, else the ``GITHUB_SERVER_URL``/``GITHUB_REPOSITORY``
    pair that GitHub Actions sets, else the ``origin`` remote of the checkout (see :func:`repository_url`). It
    becomes the theme's repository button, the address in each download's setup note, and replaces the marker
    comment ``<!-- repository -->`` in the pages (the intro's "clone the repository"). A build that cannot tell it
    (a clone without a remote) shows no button and no address.

Notebooks
    Every page whose source is a MyST Markdown notebook with a jupytext header gets, under its title, a link
    to a Jupyter notebook of that chapter with the outputs the page shows (from the build's jupyter-cache; made
    from the source by jupytext when the cache has none), written to ``_notebooks/<docname>.ipynb`` in the HTML
    output.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

from docutils import nodes
from sphinx.application import Sphinx
from sphinx.environment import BuildEnvironment
from sphinx.util import logging
from sphinx.util.docutils import SphinxDirective
from sphinx.util.osutil import relative_uri

logger = logging.getLogger(__name__)

CLAIMS_ENV = "DIFFNOTES_CLAIMS_DIR"
CHAPTER_ENV = "DIFFNOTES_CHAPTER"
NOTEBOOK_DIR = "_notebooks"
JSON_NAME = "scorecard.json"
# The fields of each record in scorecard.json.
JSON_FIELDS = (
    "id",
    "chapter",
    "quantity",
    "theory",
    "tolerance",
    "kind",
    "measured",
    "passed",
    "status",
    "category",
    "note",
)
DOWNLOAD_TEXT = "Download this chapter as a Jupyter notebook (.ipynb)"

# The YAML front matter at the very top of a MyST source.
_FRONT_MATTER = re.compile(r"\A---[ \t]*\r?\n(.*?)\r?\n---[ \t]*(\r?\n|\Z)", re.DOTALL)

# The comparison rules of diffnotes.claims.KINDS, written for a reader.
_RULES = {
    "abs": "|measured - theory| <= tolerance",
    "rel": "|measured - theory| <= tolerance x |theory|",
    "le": "measured <= theory + tolerance",
    "ge": "measured >= theory - tolerance",
}

REPRODUCED = "reproduced"
NOT_VISIBLE = "not visible at this size"


class scorecard_placeholder(nodes.General, nodes.Element):
    """Where the Scorecard table goes; replaced at ``doctree-resolved``."""


def _skip(self, node) -> None:
    raise nodes.SkipNode


class ScorecardDirective(SphinxDirective):
    """``{scorecard}``: the table of every claim checked while the book was built."""

    has_content = False
    required_arguments = 0
    optional_arguments = 0

    def run(self) -> list[nodes.Node]:
        docs = _scorecard_docs(self.env)
        docs.add(self.env.docname)
        node = scorecard_placeholder()
        self.set_source_info(node)
        return [node]


# --------------------------------------------------------------------------- environment bookkeeping


def _scorecard_docs(env: BuildEnvironment) -> set[str]:
    if not hasattr(env, "diffnotes_scorecard_docs"):
        env.diffnotes_scorecard_docs = set()
    return env.diffnotes_scorecard_docs


def _notebook_docs(env: BuildEnvironment) -> set[str]:
    if not hasattr(env, "diffnotes_notebook_docs"):
        env.diffnotes_notebook_docs = set()
    return env.diffnotes_notebook_docs


def _claims_dir(app: Sphinx) -> Path:
    return Path(app.outdir).resolve().parent / "claims"


def _record_file(claims_dir: Path, docname: str) -> Path:
    # The same file name diffnotes.claims gives the chapter's records.
    return claims_dir / (re.sub(r"[^A-Za-z0-9_.-]", "_", docname or "unnamed") + ".jsonl")


def is_jupytext_source(text: str) -> bool:
    """Whether a MyST source is a jupytext notebook: its front matter has a ``jupytext`` key."""
    match = _FRONT_MATTER.match(text)
    return bool(match) and re.search(r"^jupytext\s*:", match.group(1), re.MULTILINE) is not None


# --------------------------------------------------------------------------- repository

REPOSITORY_ENV = "DIFFNOTES_REPOSITORY_URL"
REPOSITORY_MARKER = "<!-- repository -->"
_SSH_REMOTE = re.compile(r"^(?:ssh://)?git@(?P<host>[^:/]+)[:/](?P<path>.+?)(?:\.git)?/?$")


def normalise_remote(remote: str) -> str:
    """The browsable ``https://`` address of a git remote (``git@host:owner/name.git`` or an https URL); ``""``
    for anything else (a local path, a file:// URL)."""
    remote = remote.strip()
    match = _SSH_REMOTE.match(remote)
    if match:
        return f"https://{match['host']}/{match['path']}"
    if re.match(r"^https?://", remote):
        remote = re.sub(r"^(https?://)[^/@]*@", r"\1", remote)  # drop credentials
        return re.sub(r"(\.git)?/?$", "", remote)
    return ""


def repository_url(configured: str = "", root: Path | None = None, environ=None) -> str:
    """The repository address the book links to: ``configured`` (``repository.url`` of ``_config.yml``), else the
    environment variable ``DIFFNOTES_REPOSITORY_URL``, else GitHub Actions' ``GITHUB_SERVER_URL`` and
    ``GITHUB_REPOSITORY``, else the ``origin`` remote of the git checkout at ``root``; ``""`` when none is known."""
    environ = os.environ if environ is None else environ
    for candidate in (configured, environ.get(REPOSITORY_ENV, "")):
        if candidate:
            return normalise_remote(candidate) or candidate
    if environ.get("GITHUB_SERVER_URL") and environ.get("GITHUB_REPOSITORY"):
        return f"{environ['GITHUB_SERVER_URL'].rstrip('/')}/{environ['GITHUB_REPOSITORY']}"
    try:
        remote = subprocess.run(
            ["git", "remote", "get-url", "origin"], cwd=root or Path.cwd(), capture_output=True, text=True,
            timeout=10, check=False,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return ""
    return normalise_remote(remote)


def on_config_inited(app: Sphinx, config) -> None:
    options = dict(config.html_theme_options or {})
    url = repository_url(options.get("repository_url", ""), Path(app.srcdir))
    if url:
        options["repository_url"] = url
        options["use_repository_button"] = True
    config.html_theme_options = options


# --------------------------------------------------------------------------- claims


def on_builder_inited(app: Sphinx) -> None:
    # The records are kept: chapters executed before the build (make test) recorded theirs here, and a chapter
    # the build executes again appends a newer run, which replaces the older one (load_claims).
    claims_dir = _claims_dir(app)
    claims_dir.mkdir(parents=True, exist_ok=True)
    os.environ[CLAIMS_ENV] = str(claims_dir)


def on_source_read(app: Sphinx, docname: str, source: list[str]) -> None:
    # The kernel that executes this page is started by the parser, right after this event, from this process.
    os.environ[CHAPTER_ENV] = docname
    if REPOSITORY_MARKER in source[0]:
        url = (app.config.html_theme_options or {}).get("repository_url", "")
        source[0] = source[0].replace(REPOSITORY_MARKER, f" (<{url}>)" if url else "")
    notebooks = _notebook_docs(app.env)
    if is_jupytext_source(source[0]):
        notebooks.add(docname)
    else:
        notebooks.discard(docname)


def on_env_purge_doc(app: Sphinx, env: BuildEnvironment, docname: str) -> None:
    _scorecard_docs(env).discard(docname)
    _notebook_docs(env).discard(docname)


def on_env_merge_info(app: Sphinx, env: BuildEnvironment, docnames, other: BuildEnvironment) -> None:
    _scorecard_docs(env).update(_scorecard_docs(other))
    _notebook_docs(env).update(_notebook_docs(other))


def on_env_get_outdated(app: Sphinx, env: BuildEnvironment, added, changed, removed) -> list[str]:
    # When any page is read again its claims may have changed, so the scorecard pages are rebuilt too.
    if added or changed or removed:
        return sorted(_scorecard_docs(env) - set(removed))
    return []


# --------------------------------------------------------------------------- claims


def load_claims(claims_dir: Path) -> list[dict[str, Any]]:
    """Every record under ``claims_dir`` of the latest run of each chapter, in book order.

    A chapter executed more than once (by the notebook tests and again by the build, say) appends the records of
    each run; only those of its latest run (the ``run`` of its last record) are kept. Records are ordered by part
    (the folder of the chapter, ``book/part2/...``), then naturally by id, then by chapter and recording order.
    """
    records = []
    if claims_dir.is_dir():
        for path in sorted(claims_dir.glob("*.jsonl")):
            chapter_records = []
            with open(path, encoding="utf-8") as fh:
                for lineno, line in enumerate(fh, start=1):
                    line = line.strip()
                    if not line:
                        continue
                    try:
                        record = json.loads(line)
                    except json.JSONDecodeError as err:
                        logger.warning("scorecard: %s line %d is not JSON (%s)", path, lineno, err)
                        continue
                    record["_order"] = (path.name, lineno)
                    chapter_records.append(record)
            if chapter_records:
                latest = chapter_records[-1].get("run")
                records += [r for r in chapter_records if r.get("run") == latest]
    records.sort(
        key=lambda r: (
            part_of(str(r.get("chapter", ""))),
            natural_key(str(r.get("id", ""))),
            r.get("chapter", ""),
            r["_order"],
        )
    )
    for record in records:
        del record["_order"]
    return records


def part_of(chapter: str) -> str:
    """The part a chapter belongs to: the folder of its docname (``book/part2/samplers`` -> ``part2``)."""
    parts = chapter.split("/")
    return parts[-2] if len(parts) >= 2 else ""


def natural_key(text: str) -> tuple:
    """Sort key under which T2 comes before T10 and T13a after T13."""
    parts = re.split(r"(\d+)", text)
    return tuple((0, int(part), "") if part.isdigit() else (1, 0, part.lower()) for part in parts)


def _fmt(value: Any) -> str:
    try:
        return f"{float(value):.4g}"
    except (TypeError, ValueError):
        return str(value)


def theory_text(record: dict[str, Any]) -> str:
    """The theory value with its comparison rule and tolerance, e.g. ``0.5 ± 0.05``."""
    kind = record.get("kind", "abs")
    theory, tol = record.get("theory"), record.get("tolerance", 0.0)
    has_tol = bool(tol)
    if kind == "abs":
        return f"{_fmt(theory)} ± {_fmt(tol)}"
    if kind == "rel":
        return f"{_fmt(theory)} ± {100 * float(tol):.3g}%"
    if kind == "le":
        return f"≤ {_fmt(theory)}" + (f" (+{_fmt(tol)})" if has_tol else "")
    if kind == "ge":
        return f"≥ {_fmt(theory)}" + (f" (−{_fmt(tol)})" if has_tol else "")
    return f"{_fmt(theory)} ({kind}, tolerance {_fmt(tol)})"


CATEGORY_TITLES = {
    "claim": "Claims of the review",
    "illustration": "Illustrations (an effect shown against a stated threshold that no theory sets)",
    "consistency": "Consistency checks (identities that hold by construction; they fail only on a bug)",
}


def category_of(record: dict[str, Any]) -> str:
    return str(record.get("category") or "claim")


def counts(records: list[dict[str, Any]]) -> dict[str, int]:
    """How many records are reproduced, not visible, illustrations, consistency checks and failed."""
    out = {REPRODUCED: 0, NOT_VISIBLE: 0, "illustration": 0, "consistency check": 0, "FAILED": 0}
    for record in records:
        status = "FAILED" if not record.get("passed", False) else str(record.get("status"))
        out[status] = out.get(status, 0) + 1
    return out


def summary_text(records: list[dict[str, Any]]) -> str:
    c = counts(records)
    n_claims = sum(1 for r in records if category_of(r) == "claim")
    text = (
        f"{len(records)} checks ran during this build. Of the {n_claims} claims of the review, {c[REPRODUCED]} "
        f"are reproduced and {c[NOT_VISIBLE]} are not visible at this size; besides them, "
        f"{c['illustration']} illustrations and {c['consistency check']} consistency checks"
    )
    if c["FAILED"]:
        text += f"; {c['FAILED']} FAILED"
    return text + "."


def counts_by_part(records: list[dict[str, Any]]) -> dict[str, dict[str, int]]:
    parts: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        parts.setdefault(part_of(str(record.get("chapter", ""))), []).append(record)
    return {part: counts(items) for part, items in parts.items()}


def _para(*children: nodes.Node | str) -> nodes.paragraph:
    para = nodes.paragraph()
    for child in children:
        para += nodes.Text(child) if isinstance(child, str) else child
    return para


def _table(headers: list[str], widths: list[int], rows: list[tuple[list[nodes.Node], list[str]]],
           classes: list[str]) -> nodes.table:
    """A docutils table: header cells, column widths, and rows of (cells, row classes)."""
    table = nodes.table(classes=classes)
    tgroup = nodes.tgroup(cols=len(headers))
    table += tgroup
    for width in widths:
        tgroup += nodes.colspec(colwidth=width)
    thead = nodes.thead()
    tgroup += thead
    row = nodes.row()
    for header in headers:
        row += nodes.entry("", _para(header))
    thead += row
    tbody = nodes.tbody()
    tgroup += tbody
    for cells, row_classes in rows:
        row = nodes.row(classes=row_classes)
        for cell in cells:
            row += nodes.entry("", cell)
        tbody += row
    return table


def _chapter_link(app: Sphinx, fromdocname: str, chapter: str) -> nodes.paragraph:
    if chapter in app.env.titles:
        uri = app.builder.get_relative_uri(fromdocname, chapter)
        return _para(nodes.reference("", app.env.titles[chapter].astext(), internal=True, refuri=uri))
    return _para(chapter or "(no chapter)")


def build_table(app: Sphinx, fromdocname: str, records: list[dict[str, Any]]) -> nodes.table:
    rows = []
    for record in records:
        note = str(record.get("note") or "")
        chapter = _chapter_link(app, fromdocname, str(record.get("chapter", "")))
        quantity = [_para(str(record.get("quantity", ""))), chapter]
        if note:
            quantity.insert(1, _para(nodes.emphasis("", note)))
        cells = [
            _para(nodes.strong("", str(record.get("id", "")))),
            _para(str(record.get("status", ""))),
            nodes.container("", *quantity),
            _para(theory_text(record)),
            _para(_fmt(record.get("measured"))),
        ]
        rows.append((cells, ["diffnotes-" + ("pass" if record.get("passed") else "fail")]))
    return _table(["Check", "Verdict", "Quantity (chapter)", "Theory", "Measured"], [9, 13, 50, 16, 12], rows,
                  ["diffnotes-scorecard"])


def part_names(app: Sphinx) -> dict[str, str]:
    """``part2`` -> "The SDE workflow": each chapter folder named by the caption of its part in the contents."""
    from sphinx import addnodes

    names: dict[str, str] = {}
    try:
        root = app.env.get_doctree(app.config.root_doc)
    except Exception:  # no root doctree yet (a partial build): fall back to the folder names
        return names
    for toctree in root.findall(addnodes.toctree):
        caption = toctree.get("caption")
        for _, doc in toctree.get("entries", []):
            part = part_of(doc or "")
            if caption and part.startswith("part"):
                names.setdefault(part, caption)
    return names


def counts_table(app: Sphinx, records: list[dict[str, Any]]) -> nodes.table:
    """Counts per part: reproduced, not visible, illustrations, consistency checks, failed."""
    headers = ["Part", REPRODUCED, NOT_VISIBLE, "illustration", "consistency check", "FAILED"]
    rows, names = [], part_names(app)
    for part, c in counts_by_part(records).items():
        cells = [_para(names.get(part, part or "(other)"))]
        cells += [_para(str(c.get(header, 0))) for header in headers[1:]]
        rows.append((cells, []))
    return _table(headers, [1] * len(headers), rows, ["diffnotes-scorecard-counts"])


# -- the Execution status page ----------------------------------------------------------------------------------------
class execution_placeholder(nodes.General, nodes.Element):
    """Where the table of chapter executions goes; replaced at ``doctree-resolved``."""


class ExecutionTableDirective(SphinxDirective):
    """``{chapter-executions}``: every executed chapter in reading order, with its run time and status."""

    has_content = False

    def run(self) -> list[nodes.Node]:
        node = execution_placeholder()
        self.set_source_info(node)
        return [node]


def toc_order(env: BuildEnvironment) -> list[str]:
    """Every document in the order of the table of contents (depth first from the root)."""
    order: list[str] = []

    def visit(doc: str) -> None:
        for child in env.toctree_includes.get(doc, []):
            if child not in order:
                order.append(child)
                visit(child)

    visit(env.config.root_doc)
    return order


def execution_rows(app: Sphinx) -> list[dict[str, Any]]:
    """One dict per executed chapter, in reading order: docname, part, seconds, by whom, whether it succeeded."""
    from myst_nb.sphinx_ import NbMetadataCollector

    data = NbMetadataCollector.get_doc_data(app.env)
    executed = Path(app.srcdir) / "_build" / "executed"
    rows = []
    for doc in toc_order(app.env):
        exec_data = data.get(doc, {}).get("exec_data") if doc in data else None
        if not exec_data:
            continue
        seconds = exec_data.get("runtime")
        tested = executed / f"{doc}.ipynb"
        by_tests = False
        if tested.exists() and seconds is not None:
            meta = json.loads(tested.read_text(encoding="utf-8")).get("metadata", {}).get("diffnotes", {})
            by_tests = meta.get("execution_seconds") == seconds
        rows.append({"doc": doc, "part": part_of(doc), "seconds": seconds, "by_tests": by_tests,
                     "succeeded": bool(exec_data.get("succeeded"))})
    return rows


def execution_table(app: Sphinx, fromdocname: str) -> list[nodes.Node]:
    rows, total, names = [], 0.0, part_names(app)
    records = execution_rows(app)
    for r in records:
        total += r["seconds"] or 0.0
        cells = [
            _para(names.get(r["part"], r["part"] or "-")),
            _chapter_link(app, fromdocname, r["doc"]),
            _para("-" if r["seconds"] is None else f"{r['seconds']:.1f}"),
            _para("notebook tests" if r["by_tests"] else "book build"),
            _para("ok" if r["succeeded"] else "FAILED"),
        ]
        rows.append((cells, ["diffnotes-" + ("pass" if r["succeeded"] else "fail")]))
    summary = _para(f"{len(records)} chapters executed, {sum(r['succeeded'] for r in records)} without error; "
                    f"their run times add up to {total:.0f} s (two run at a time).")
    table = _table(["Part", "Chapter", "Seconds", "Executed by", "Status"], [22, 40, 10, 16, 12], rows,
                   ["diffnotes-executions"])
    return [summary, table]


def on_doctree_resolved(app: Sphinx, doctree: nodes.document, docname: str) -> None:
    for node in list(doctree.findall(execution_placeholder)):
        node.replace_self(execution_table(app, docname))
    placeholders = list(doctree.findall(scorecard_placeholder))
    if placeholders:
        records = [r for r in load_claims(_claims_dir(app)) if r.get("chapter") in app.env.all_docs]
        for node in placeholders:
            if not records:
                logger.warning(
                    "scorecard: no claim was recorded during this build (is %s set for the kernels, and "
                    "do the chapters call diffnotes.claims.check?)",
                    CLAIMS_ENV,
                    location=node,
                )
                node.replace_self(_para("No claim was recorded during this build."))
                continue
            content: list[nodes.Node] = [_para(summary_text(records)), counts_table(app, records)]
            for category, title in CATEGORY_TITLES.items():
                chosen = [r for r in records if category_of(r) == category]
                if chosen:
                    content.append(nodes.rubric("", f"{title}: {len(chosen)}"))
                    content.append(build_table(app, docname, chosen))
            if app.builder.format == "html":
                json_uri = relative_uri(app.builder.get_target_uri(docname), f"_static/{JSON_NAME}")
                rules = "; ".join(f"{kind}: {rule}" for kind, rule in _RULES.items())
                content.append(
                    _para(
                        "Comparison rules: ",
                        rules,
                        ". The same records, machine-readable: ",
                        nodes.reference("", JSON_NAME, refuri=json_uri, internal=False),
                        ".",
                    )
                )
            node.replace_self(content)
    if app.builder.format == "html" and docname in _notebook_docs(app.env):
        _insert_download_link(app, doctree, docname)


def _insert_download_link(app: Sphinx, doctree: nodes.document, docname: str) -> None:
    target = f"{NOTEBOOK_DIR}/{docname}.ipynb"
    uri = relative_uri(app.builder.get_target_uri(docname), target)
    link = nodes.reference("", DOWNLOAD_TEXT, refuri=uri, internal=False)
    link["classes"].append("diffnotes-download")
    para = _para(link)
    para["classes"].append("diffnotes-download")
    section = next(iter(doctree.findall(nodes.section)), None)
    if section is not None and section.children and isinstance(section[0], nodes.title):
        section.insert(1, para)
    else:
        doctree.insert(0, para)


# --------------------------------------------------------------------------- outputs


# MyST roles shown as literal text by Jupyter: {cite}`a,b`, {func}`~diffnotes.x.y`, {doc}`page`, {math}`x`, ...
_ROLE = re.compile(r"\{(?P<role>[a-z:]+)\}`(?P<text>[^`]*)`")
SETUP_NOTE = (
    "*This notebook is a chapter of the diffnotes book, downloaded with the outputs of the book's build.* "
    "To run it, clone the repository{repo}, run `make venv` there (Python 3.11+), then start Jupyter from the "
    "environment it creates: `.venv/bin/pip install jupyterlab && .venv/bin/jupyter lab`. Every chapter runs "
    "on a laptop CPU in under a minute."
)


def plain_markdown(text: str) -> str:
    """Markdown with MyST roles replaced by what Jupyter can show: code for API names, brackets for citations."""

    def replace(match: re.Match) -> str:
        role, body = match.group("role"), match.group("text")
        if role == "math":
            return f"${body}$"
        if role.startswith("cite"):
            return "[" + body.replace(",", ", ") + "]"
        label = re.match(r"^(.*?)\s*<([^>]*)>$", body)
        if label:
            return label.group(1)
        if role in ("doc", "ref", "numref", "eq"):
            return body
        name = body.lstrip("~")
        return f"`{name.split('.')[-1] if body.startswith('~') else name}`"

    return _ROLE.sub(replace, text)


def executed_notebook(app: Sphinx, docname: str):
    """The chapter as the page shows it: MyST-NB's reading of the source with the outputs the page was built from,
    taken from the build's jupyter-cache (filled by the notebook tests, or by the build's own executions); ``None``
    when the cache has no entry for it."""
    from jupyter_cache import get_cache
    from myst_nb.core.read import create_nb_reader

    path = Path(app.env.doc2path(docname))
    text = path.read_text(encoding="utf-8")
    config = app.env.mystnb_config
    reader = create_nb_reader(str(path), app.env.myst_config, config, text)
    if reader is None or not config.execution_cache_path:
        return None
    try:
        _, notebook = get_cache(str(config.execution_cache_path)).merge_match_into_notebook(reader.read(text))
    except KeyError:
        return None
    return notebook


def write_notebook(source: Path, destination: Path, executed=None, repository: str = "") -> None:
    """Write the downloadable notebook of a chapter.

    The executed notebook of the build (``executed``, a notebook with outputs) is used when there is one, else the
    source is converted with jupytext. Markdown cells lose their MyST roles, and a first cell says how to run the
    chapter.
    """
    import jupytext
    import nbformat

    notebook = nbformat.from_dict(executed) if executed is not None else jupytext.read(source)
    for cell in notebook.cells:
        if cell.cell_type == "markdown":
            cell.source = plain_markdown(cell.source)
    notebook.metadata.pop("source_map", None)
    repo = f" ({repository})" if repository else ""
    notebook.cells.insert(0, nbformat.v4.new_markdown_cell(SETUP_NOTE.format(repo=repo)))
    destination.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(notebook, destination)


def on_build_finished(app: Sphinx, exception: Exception | None) -> None:
    if exception is not None or app.builder.format != "html":
        return
    outdir = Path(app.outdir)
    for page in outdir.rglob("*.html"):
        text = page.read_text(encoding="utf-8")
        cleaned = drop_repeated_inline_scripts(text)
        if cleaned != text:
            page.write_text(cleaned, encoding="utf-8")
    for docname in sorted(_notebook_docs(app.env)):
        if docname not in app.env.all_docs:
            continue
        destination = outdir / NOTEBOOK_DIR / (docname + ".ipynb")
        repository = (app.config.html_theme_options or {}).get("repository_url", "") or ""
        write_notebook(Path(app.env.doc2path(docname)), destination, executed_notebook(app, docname), repository)
    records = [r for r in load_claims(_claims_dir(app)) if r.get("chapter") in app.env.all_docs]
    static = outdir / "_static"
    static.mkdir(parents=True, exist_ok=True)
    payload = {
        "counts": counts(records),
        "counts_by_part": counts_by_part(records),
        "checks": [{key: record.get(key) for key in JSON_FIELDS} for record in records],
    }
    with open(static / JSON_NAME, "w", encoding="utf-8") as fh:
        json.dump(payload, fh, indent=1)
        fh.write("\n")


def on_html_page_context(app: Sphinx, pagename: str, templatename: str, context: dict, doctree) -> None:
    # A first visit (nothing in the browser's storage) must not log "Got invalid theme mode" to the console: the
    # theme's mode defaults to "auto".
    context["default_mode"] = context.get("default_mode") or "auto"


_INLINE_SCRIPT = re.compile(r"^[ \t]*<script>[^\n]*</script>[ \t]*\n", re.M)


def drop_repeated_inline_scripts(html: str) -> str:
    """Remove the second and later copies of identical one-line inline ``<script>`` elements of a page's head.

    sphinx-thebe's and sphinx-togglebutton's configuration scripts reach every page twice (added by handlers that run
    after any page-context handler of ours could see them), and the second ``const THEBE_JS_URL`` is a console error.
    """
    head_end = html.find("</head>")
    if head_end < 0:
        return html
    seen: set[str] = set()

    def keep_first(match: re.Match) -> str:
        line = match.group(0).strip()
        if line in seen:
            return ""
        seen.add(line)
        return match.group(0)

    return _INLINE_SCRIPT.sub(keep_first, html[:head_end]) + html[head_end:]


def setup(app: Sphinx) -> dict[str, Any]:
    app.add_node(
        scorecard_placeholder,
        html=(_skip, None),
        latex=(_skip, None),
        text=(_skip, None),
        man=(_skip, None),
        texinfo=(_skip, None),
    )
    app.add_directive("scorecard", ScorecardDirective)
    app.add_node(
        execution_placeholder,
        html=(_skip, None),
        latex=(_skip, None),
        text=(_skip, None),
        man=(_skip, None),
        texinfo=(_skip, None),
    )
    app.add_directive("chapter-executions", ExecutionTableDirective)
    # Early: html-page-context stops at the first handler that returns a template.
    app.connect("html-page-context", on_html_page_context, priority=100)
    app.connect("config-inited", on_config_inited)
    app.connect("builder-inited", on_builder_inited)
    app.connect("source-read", on_source_read)
    app.connect("env-purge-doc", on_env_purge_doc)
    app.connect("env-merge-info", on_env_merge_info)
    app.connect("env-get-outdated", on_env_get_outdated)
    app.connect("doctree-resolved", on_doctree_resolved)
    app.connect("build-finished", on_build_finished)
    return {"version": "1.0", "parallel_read_safe": False, "parallel_write_safe": True, "env_version": 1}
