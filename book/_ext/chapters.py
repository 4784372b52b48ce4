"""Execute every chapter once, in parallel, as a test, and hand the executed notebooks to the book.

The chapters are executed once per CI run, by nbval, and the book is assembled from those executed notebooks:

``convert``
    Reads each chapter (``book/**/*.md`` with a jupytext header) with MyST-NB's own reader, the one the book build
    uses, and writes it as ``_build/nbval/<docname>.ipynb``. Because the reader is the same, the notebook MyST-NB
    reads at build time hashes to the same jupyter-cache key as the notebook executed here.
``pytest -p chapters --nbval-lax ... _build/nbval`` (this module is also a pytest plugin)
    nbval executes the chapters, two at a time under pytest-xdist (``--dist loadfile``), and fails on a chapter that
    raises. The plugin

    * sets ``DIFFNOTES_CHAPTER`` to the chapter's docname before its kernel starts, so that the claims the chapter
      checks are recorded for the Scorecard (``diffnotes.claims``, ``DIFFNOTES_CLAIMS_DIR``);
    * executes each cell as Jupyter does (stored in the kernel's history, so that a trailing ``;`` silences its
      result) and keeps its outputs in order (consecutive outputs of a stream merged, as Jupyter shows them);
    * when every cell of a chapter
      has passed, writes the executed notebook and its wall time to ``_build/executed/<docname>.ipynb``.
``fill-cache``
    Stores the executed notebooks in the jupyter-cache that MyST-NB reads in ``cache`` execution mode
    (``_build/.jupyter_cache``). A chapter whose source changed since it was executed no longer matches its cache
    entry; MyST-NB then executes it during the build, as a plain build would.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
NBVAL_DIR = ROOT / "_build" / "nbval"
EXECUTED_DIR = ROOT / "_build" / "executed"
CACHE_DIR = ROOT / "_build" / ".jupyter_cache"
CHAPTER_ENV = "DIFFNOTES_CHAPTER"
_FRONT_MATTER = re.compile(r"\A---[ \t]*\r?\n(.*?)\r?\n---[ \t]*(\r?\n|\Z)", re.DOTALL)


def is_chapter(text: str) -> bool:
    """Whether a MyST source is a notebook chapter: its front matter has a ``jupytext`` key."""
    match = _FRONT_MATTER.match(text)
    return bool(match) and re.search(r"^jupytext\s*:", match.group(1), re.MULTILINE) is not None


def chapter_sources(book: Path = ROOT / "book") -> list[Path]:
    """Every chapter source under ``book/``, sorted."""
    return sorted(
        path
        for path in book.rglob("*.md")
        if "_ext" not in path.parts and ".ipynb_checkpoints" not in path.parts
        and is_chapter(path.read_text(encoding="utf-8"))
    )


def read_chapter(path: Path):
    """A chapter as the notebook MyST-NB's reader makes of it during the build."""
    from myst_nb.core.read import read_myst_markdown_notebook
    from myst_parser.config.main import MdParserConfig

    return read_myst_markdown_notebook(
        path.read_text(encoding="utf-8"), config=MdParserConfig(), add_source_map=True, path=path
    )


def code_cells(text: str) -> list[str]:
    """The code of each code cell of a MyST chapter, as the book's reader sees it (cell options removed, whether
    written as ``:key: value`` lines or as a YAML block)."""
    from myst_nb.core.read import read_myst_markdown_notebook
    from myst_parser.config.main import MdParserConfig

    notebook = read_myst_markdown_notebook(text, config=MdParserConfig())
    return [cell.source for cell in notebook.cells if cell.cell_type == "code"]


def docname(path: Path) -> str:
    """The Sphinx docname of a chapter (or of its converted notebook): ``book/part2/samplers``."""
    path = Path(path).resolve()
    for base in (NBVAL_DIR, EXECUTED_DIR, ROOT):
        try:
            return path.relative_to(base).with_suffix("").as_posix()
        except ValueError:
            continue
    return path.with_suffix("").name


def convert() -> list[Path]:
    """Write every chapter as ``_build/nbval/<docname>.ipynb``; returns the written paths."""
    import nbformat

    written = []
    for source in chapter_sources():
        out = NBVAL_DIR / (docname(source) + ".ipynb")
        out.parent.mkdir(parents=True, exist_ok=True)
        nbformat.write(read_chapter(source), out)
        written.append(out)
    return written


def fill_cache() -> int:
    """Store every executed notebook in MyST-NB's jupyter-cache; returns how many were stored."""
    import nbformat
    from jupyter_cache import get_cache
    from jupyter_cache.base import CacheBundleIn

    cache = get_cache(str(CACHE_DIR))
    stored = 0
    for path in sorted(EXECUTED_DIR.rglob("*.ipynb")):
        notebook = nbformat.read(path, as_version=4)
        seconds = notebook.metadata.get("diffnotes", {}).get("execution_seconds")
        source = ROOT / (docname(path) + ".md")
        cache.cache_notebook_bundle(
            CacheBundleIn(notebook, str(source), data={"execution_seconds": seconds}),
            check_validity=False,
            overwrite=True,
        )
        stored += 1
    return stored


# --------------------------------------------------------------------------- pytest plugin (loaded with -p chapters)

_started: dict[str, float] = {}
_failed: set[str] = set()


def execute_with_history(kernel, cell_input, allow_stdin=None):
    """Execute a cell as a Jupyter front end does, storing it in the kernel's input history.

    IPython decides whether a trailing ``;`` silences a cell's result by reading the cell back from that history;
    nbval executes with ``store_history=False``, so the history is empty or stale and a cell ending in
    ``check(...);`` would show the claim record under its verdict, in the notebooks the book is assembled from.
    """
    return kernel.kc.execute(cell_input, store_history=True, allow_stdin=allow_stdin, stop_on_error=False)


def merge_consecutive_streams(outputs, coalesce):
    """Merge each run of consecutive outputs of one stream (stdout or stderr) with ``coalesce`` (nbval's merger,
    which also resolves ``\\r`` and ``\\b``), keeping every other output where it was.

    nbval's own merger joins *all* outputs of a stream into its first, which moves text printed between two
    displays (an audio player, a figure) ahead of both; Jupyter, and MyST-NB's ``nb_merge_streams``, join only
    consecutive ones.
    """
    merged, run = [], []
    for output in list(outputs or []):
        if run and not (output.get("output_type") == "stream" and output.get("name") == run[0].get("name")):
            merged += coalesce(run)
            run = []
        if output.get("output_type") == "stream":
            run.append(output)
        else:
            merged.append(output)
    return merged + (coalesce(run) if run else [])


def pytest_configure(config):
    try:
        import nbval.plugin
        from nbval.kernel import RunningKernel
    except ImportError:  # the plugin is loaded without nbval (no chapters to run)
        return
    RunningKernel.execute_cell_input = execute_with_history
    coalesce = nbval.plugin.coalesce_streams
    nbval.plugin.coalesce_streams = lambda outputs: merge_consecutive_streams(outputs, coalesce)


def _is_nbval_cell(item) -> bool:
    return type(item).__name__ == "IPyNbCell" and hasattr(item, "cell")


def pytest_runtest_setup(item):
    # Runs before nbval's own setup, which starts the chapter's kernel from this process's environment.
    if _is_nbval_cell(item):
        name = docname(Path(str(item.parent.fspath)))
        if name not in _started:
            os.environ[CHAPTER_ENV] = name
            _started[name] = time.perf_counter()


def pytest_runtest_logreport(report):
    if report.failed and report.when in ("setup", "call"):
        _failed.add(report.nodeid.split("::")[0])


def pytest_runtest_teardown(item, nextitem):
    if not _is_nbval_cell(item):
        return
    cell = item.cell
    if item.test_outputs is not None:
        cell.outputs = item.test_outputs
        cell.execution_count = item.cell_num + 1
        for out in cell.outputs:
            if out.get("output_type") == "execute_result":
                out["execution_count"] = cell.execution_count
    last = nextitem is None or nextitem.parent is not item.parent
    if last:
        _write_executed(item)


def _write_executed(item) -> None:
    import nbformat

    path = Path(str(item.parent.fspath))
    name = docname(path)
    if item.nodeid.split("::")[0] in _failed:
        return
    notebook = item.parent.nb
    seconds = time.perf_counter() - _started.get(name, time.perf_counter())
    notebook.metadata["diffnotes"] = {"execution_seconds": round(seconds, 3)}
    out = EXECUTED_DIR / (name + ".ipynb")
    out.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(notebook, out)


# --------------------------------------------------------------------------- command line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=["convert", "fill-cache", "list", "times"])
    args = parser.parse_args(argv)
    if args.command == "convert":
        for path in convert():
            print(f"chapter -> {path.relative_to(ROOT)}")
    elif args.command == "fill-cache":
        print(f"{fill_cache()} executed chapters stored in {CACHE_DIR.relative_to(ROOT)}")
    elif args.command == "list":
        for path in chapter_sources():
            print(path.relative_to(ROOT))
    else:
        times = {}
        for path in sorted(EXECUTED_DIR.rglob("*.ipynb")):
            meta = json.loads(path.read_text(encoding="utf-8"))["metadata"].get("diffnotes", {})
            times[docname(path)] = meta.get("execution_seconds")
        for name, seconds in times.items():
            print(f"{seconds:8.1f} s  {name}")
        print(f"{sum(times.values()):8.1f} s  in all ({len(times)} chapters)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
