"""Every citation the book renders names one work: no two cited entries share an author-year label."""

import re
from collections import defaultdict
from pathlib import Path

import yaml
from pybtex.database import parse_file

ROOT = Path(__file__).resolve().parents[1]
CITE = re.compile(r"\{cite(?::\w+)?\}`([^`]+)`|:cite:\w*:`([^`]+)`")


def bib_entries() -> dict:
    files = yaml.safe_load((ROOT / "_config.yml").read_text())["bibtex_bibfiles"]
    entries = {}
    for f in files:
        entries.update(parse_file(ROOT / f).entries)
    return entries


def label(entry) -> str:
    """The label of sphinxcontrib-bibtex's author_year style: 'A', 'A and B' or 'A et al.', then the year."""
    people = entry.persons.get("author") or entry.persons.get("editor") or []
    names = [" ".join(p.last_names) for p in people]
    who = names[0] if len(names) == 1 else " and ".join(names) if len(names) == 2 else f"{names[0]} et al."
    return f"{who}, {entry.fields.get('year', '')}"


def cited_keys() -> set[str]:
    keys = set()
    for path in [*ROOT.glob("book/**/*.md"), *ROOT.glob("diffnotes/*.py")]:
        for m in CITE.finditer(path.read_text()):
            keys |= {k.strip() for k in (m.group(1) or m.group(2)).split(",")}
    return keys


def test_every_cited_key_exists_and_labels_are_unambiguous():
    entries = bib_entries()
    cited = cited_keys()
    assert cited <= set(entries), f"cited keys missing from the bibliography: {sorted(cited - set(entries))}"
    by_label = defaultdict(list)
    for key in cited:
        by_label[label(entries[key])].append(key)
    shared = {lab: sorted(keys) for lab, keys in by_label.items() if len(keys) > 1}
    assert not shared, f"one label for several works (add a/b suffixes to the years): {shared}"


def test_the_label_rule():
    from pybtex.database import parse_string

    db = parse_string("@article{x, author = {Song, Yang and Sohl-Dickstein, Jascha and Kingma, Diederik}, "
                      "year = {2021b}, title = {t}}", "bibtex")
    assert label(db.entries["x"]) == "Song et al., 2021b"
