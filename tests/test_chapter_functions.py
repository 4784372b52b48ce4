"""No two chapters define a function of the same name: a helper two chapters need belongs in the package."""

import ast
import importlib.util
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("chapters_ext", ROOT / "book" / "_ext" / "chapters.py")
chapters = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(chapters)


def defined_functions(source: str) -> set[str]:
    """Names of the functions a chapter defines at the top level of its code cells."""
    names = set()
    for code in chapters.code_cells(source):
        names |= {n.name for n in ast.parse(code).body if isinstance(n, ast.FunctionDef)}
    return names


def test_no_function_is_defined_in_two_chapters():
    where = defaultdict(list)
    for path in sorted((ROOT / "book").glob("part*/*.md")):
        for name in defined_functions(path.read_text()):
            where[name].append(str(path.relative_to(ROOT)))
    twice = {name: files for name, files in where.items() if len(files) > 1}
    assert not twice, f"functions defined in more than one chapter (move them to diffnotes or rename): {twice}"


def test_the_parser_reads_code_cells_only():
    src = "text def prose():\n```{code-cell} ipython3\n:tags: [hide-input]\ndef f(x):\n    return x\n```\n"
    assert defined_functions(src) == {"f"}
    yaml = (
        "```{code-cell} ipython3\n---\ntags: [hide-input]\nmystnb:\n  figure:\n    name: x\n---\n"
        "def g():\n    pass\n```\n"
    )
    assert defined_functions(src + yaml) == {"f", "g"}
