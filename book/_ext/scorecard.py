"""The book's Scorecard, and a downloadable notebook for every chapter.

A local Sphinx extension (loaded through ``sphinx: local_extensions`` in ``_config.yml``).

Scorecard
    Chapters check the review's quantitative claims with :func:`diffnotes.claims.check`. When the
    environment variable ``DIFFNOTES_CLAIMS_DIR`` is set, each check appends a JSON record to
    ``$DIFFNOTES_CLAIMS_DIR/<chapter>.jsonl``, where the chapter is read from ``DIFFNOTES_CHAPTER``.
    Chapters execute inside the MyST-NB parser, one at a time, in a kernel started from this process, so the
    kernel inherits :data:`os.environ`. This extension therefore

    * sets ``DIFFNOTES_CLAIMS_DIR`` to ``<outdir>/../claims`` (``_build/claims``) when the builder starts,
      emptied on a fresh build;
    * sets ``DIFFNOTES_CHAPTER`` to the docname of each page just before it is parsed (``source-read``) and
      drops that page's earlier records, so that a page read again replaces its claims;
    * replaces each ``{scorecard}`` directive, in the write phase (after every chapter has executed), by a
      table of all recorded claims, and warns when there is none: a scorecard that shows nothing is a defect;
    * writes ``_static/scorecard.json`` into the HTML output when the build finishes.

Notebooks
    Every page whose source is a MyST Markdown notebook with a jupytext header gets, under its title, a link
    to a Jupyter notebook made from that source by jupytext, written to ``_notebooks/<docname>.ipynb`` in the
    HTML output.
"""

from __future__ import annotations

import json
import os
import re
import shutil
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


def on_builder_inited(app: Sphinx) -> None:
    claims_dir = _claims_dir(app)
    if not app.env.all_docs and claims_dir.exists():
        # A fresh build: every page is read (and executed) again.
        shutil.rmtree(claims_dir)
    claims_dir.mkdir(parents=True, exist_ok=True)
    os.environ[CLAIMS_ENV] = str(claims_dir)


def on_source_read(app: Sphinx, docname: str, source: list[str]) -> None:
    # The kernel that executes this page is started by the parser, right after this event, from this process.
    os.environ[CHAPTER_ENV] = docname
    _record_file(_claims_dir(app), docname).unlink(missing_ok=True)
    notebooks = _notebook_docs(app.env)
    if is_jupytext_source(source[0]):
        notebooks.add(docname)
    else:
        notebooks.discard(docname)


def on_env_purge_doc(app: Sphinx, env: BuildEnvironment, docname: str) -> None:
    _record_file(_claims_dir(app), docname).unlink(missing_ok=True)
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
    """Every record under ``claims_dir``, sorted naturally by id, then by chapter, then by recording order."""
    records = []
    if claims_dir.is_dir():
        for path in sorted(claims_dir.glob("*.jsonl")):
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
                    records.append(record)
    records.sort(key=lambda r: (natural_key(str(r.get("id", ""))), r.get("chapter", ""), r["_order"]))
    for record in records:
        del record["_order"]
    return records


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


def summary_text(records: list[dict[str, Any]]) -> str:
    counts = {REPRODUCED: 0, NOT_VISIBLE: 0}
    failed = 0
    for record in records:
        if not record.get("passed", False):
            failed += 1
        elif record.get("status") in counts:
            counts[record["status"]] += 1
    n = len(records)
    text = (
        f"{n} claim{'s' if n != 1 else ''} checked during this build: {counts[REPRODUCED]} reproduced, "
        f"{counts[NOT_VISIBLE]} not visible at this size"
    )
    if failed:
        text += f", {failed} FAILED"
    return text + "."


def _para(*children: nodes.Node | str) -> nodes.paragraph:
    para = nodes.paragraph()
    for child in children:
        para += nodes.Text(child) if isinstance(child, str) else child
    return para


def build_table(app: Sphinx, fromdocname: str, records: list[dict[str, Any]]) -> nodes.table:
    env = app.env
    headers = ["Claim", "Chapter", "Quantity", "Theory", "Measured", "Verdict"]
    widths = [6, 18, 36, 14, 10, 16]
    table = nodes.table(classes=["diffnotes-scorecard"])
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
    for record in records:
        chapter = str(record.get("chapter", ""))
        if chapter in env.titles:
            title = env.titles[chapter].astext()
            uri = app.builder.get_relative_uri(fromdocname, chapter)
            ref = nodes.reference("", title, internal=True, refuri=uri)
            chapter_cell = _para(ref)
        else:
            chapter_cell = _para(chapter or "(no chapter)")
        note = str(record.get("note") or "")
        quantity_cell = _para(str(record.get("quantity", "")))
        cells = [
            _para(nodes.strong("", str(record.get("id", "")))),
            chapter_cell,
            quantity_cell,
            _para(theory_text(record)),
            _para(_fmt(record.get("measured"))),
            _para(str(record.get("status", ""))),
        ]
        if note:
            cells[2] = nodes.container("", quantity_cell, _para(nodes.emphasis("", note)))
        row = nodes.row(classes=["diffnotes-" + ("pass" if record.get("passed") else "fail")])
        for cell in cells:
            row += nodes.entry("", cell)
        tbody += row
    return table


def on_doctree_resolved(app: Sphinx, doctree: nodes.document, docname: str) -> None:
    placeholders = list(doctree.findall(scorecard_placeholder))
    if placeholders:
        records = load_claims(_claims_dir(app))
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
            content: list[nodes.Node] = [_para(summary_text(records))]
            content.append(build_table(app, docname, records))
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


def write_notebook(source: Path, destination: Path) -> None:
    """Convert a MyST Markdown notebook to ``.ipynb`` with jupytext."""
    import jupytext

    notebook = jupytext.read(source)
    destination.parent.mkdir(parents=True, exist_ok=True)
    jupytext.write(notebook, destination, fmt="ipynb")


def on_build_finished(app: Sphinx, exception: Exception | None) -> None:
    if exception is not None or app.builder.format != "html":
        return
    outdir = Path(app.outdir)
    for docname in sorted(_notebook_docs(app.env)):
        if docname not in app.env.all_docs:
            continue
        destination = outdir / NOTEBOOK_DIR / (docname + ".ipynb")
        write_notebook(Path(app.env.doc2path(docname)), destination)
    records = load_claims(_claims_dir(app))
    static = outdir / "_static"
    static.mkdir(parents=True, exist_ok=True)
    with open(static / JSON_NAME, "w", encoding="utf-8") as fh:
        json.dump([{key: record.get(key) for key in JSON_FIELDS} for record in records], fh, indent=1)
        fh.write("\n")


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
    app.connect("builder-inited", on_builder_inited)
    app.connect("source-read", on_source_read)
    app.connect("env-purge-doc", on_env_purge_doc)
    app.connect("env-merge-info", on_env_merge_info)
    app.connect("env-get-outdated", on_env_get_outdated)
    app.connect("doctree-resolved", on_doctree_resolved)
    app.connect("build-finished", on_build_finished)
    return {"version": "1.0", "parallel_read_safe": False, "parallel_write_safe": True, "env_version": 1}
