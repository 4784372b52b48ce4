"""Tests of diffnotes.claims: the check that every chapter uses, and the records the Scorecard is built from."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from diffnotes.claims import KINDS, Claim, ClaimError, check

REPO = Path(__file__).resolve().parents[1]
FIELDS = {
    "id", "quantity", "theory", "tolerance", "kind", "measured", "passed", "status", "note", "chapter",
    "category", "run",
}
NOT_VISIBLE = "not visible at this size"


@pytest.fixture(autouse=True)
def _no_recording(monkeypatch):
    """Each test starts outside the book build: nothing is recorded unless the test says so."""
    monkeypatch.delenv("DIFFNOTES_CLAIMS_DIR", raising=False)
    monkeypatch.delenv("DIFFNOTES_CHAPTER", raising=False)


def passes(**kwargs) -> bool:
    """Whether check(...) accepts the measurement (True) or raises ClaimError (False)."""
    try:
        check("T1", "a quantity", **kwargs)
    except ClaimError:
        return False
    return True


# ---------------------------------------------------------------------------------------------- the rules


def test_kinds_are_the_four_rules():
    assert set(KINDS) == {"abs", "rel", "le", "ge"}


@pytest.mark.parametrize(
    ("measured", "expected"),
    [(1.0, True), (1.5, True), (0.5, True), (1.25, True), (1.5000001, False), (0.4999999, False), (-1.0, False)],
)
def test_abs_is_a_two_sided_band(measured, expected):
    # 1.0 +/- 0.5: the end points 0.5 and 1.5 are exactly representable and inside the band.
    assert passes(measured=measured, theory=1.0, tol=0.5, kind="abs") is expected


def test_abs_is_the_default_kind():
    assert check("T1", "q", measured=1.5, theory=1.0, tol=0.5).kind == "abs"
    with pytest.raises(ClaimError):
        check("T1", "q", measured=1.5000001, theory=1.0, tol=0.5)


def test_abs_with_zero_tolerance_accepts_only_equality():
    assert passes(measured=2.0, theory=2.0, tol=0.0)
    assert not passes(measured=math.nextafter(2.0, 3.0), theory=2.0, tol=0.0)


@pytest.mark.parametrize(
    ("measured", "theory", "expected"),
    [
        (2.5, 2.0, True),  # |0.5| <= 0.25 * 2
        (1.5, 2.0, True),
        (2.5000001, 2.0, False),
        (1.4999999, 2.0, False),
        (-2.5, -2.0, True),  # the band scales with |theory|
        (-1.5, -2.0, True),
        (-2.5000001, -2.0, False),
        (2.0, -2.0, False),
    ],
)
def test_rel_band_scales_with_the_theory(measured, theory, expected):
    assert passes(measured=measured, theory=theory, tol=0.25, kind="rel") is expected


def test_rel_against_zero_theory_accepts_only_zero():
    assert passes(measured=0.0, theory=0.0, tol=0.5, kind="rel")
    assert not passes(measured=1e-300, theory=0.0, tol=0.5, kind="rel")


@pytest.mark.parametrize(
    ("measured", "tol", "expected"),
    [(-5.0, 0.0, True), (1.0, 0.0, True), (1.0000001, 0.0, False), (1.5, 0.5, True), (1.5000001, 0.5, False)],
)
def test_le_is_an_upper_bound(measured, tol, expected):
    assert passes(measured=measured, theory=1.0, tol=tol, kind="le") is expected


@pytest.mark.parametrize(
    ("measured", "tol", "expected"),
    [(5.0, 0.0, True), (1.0, 0.0, True), (0.9999999, 0.0, False), (0.5, 0.5, True), (0.4999999, 0.5, False)],
)
def test_ge_is_a_lower_bound(measured, tol, expected):
    assert passes(measured=measured, theory=1.0, tol=tol, kind="ge") is expected


# Property tests against cases whose answer is known by construction, not by evaluating the rule again: every number
# is an integer below 2**40, so sums, differences and products are exact in float64 and "inside" or "outside" the
# band is a fact of the construction (an offset drawn inside [-tol, tol], or beyond it).
INTS = st.integers(-(2**20), 2**20)
TOLS = st.integers(0, 2**20)


def _outcome(**kwargs) -> bool:
    try:
        claim = check("P1", "property", **kwargs)
    except ClaimError:
        return False
    assert claim.passed and claim.status == "reproduced"
    return True


@given(theory=INTS, tol=TOLS, data=st.data())
def test_abs_accepts_every_offset_within_tol_and_no_other(theory, tol, data):
    inside = data.draw(st.integers(-tol, tol))
    outside = data.draw(st.integers(tol + 1, tol + 2**20)) * data.draw(st.sampled_from([-1, 1]))
    assert _outcome(measured=theory + inside, theory=theory, tol=tol, kind="abs")
    assert not _outcome(measured=theory + outside, theory=theory, tol=tol, kind="abs")


@given(theory=INTS.filter(bool), tol=st.integers(0, 2**10), data=st.data())
def test_rel_accepts_every_offset_within_tol_times_theory_and_no_other(theory, tol, data):
    band = tol * abs(theory)  # the width of the band, a product of two integers (exact)
    inside = data.draw(st.integers(-band, band))
    outside = data.draw(st.integers(band + 1, band + 2**20)) * data.draw(st.sampled_from([-1, 1]))
    assert _outcome(measured=theory + inside, theory=theory, tol=tol, kind="rel")
    assert not _outcome(measured=theory + outside, theory=theory, tol=tol, kind="rel")


@given(theory=INTS, tol=TOLS, below=st.integers(0, 2**20), above=st.integers(1, 2**20))
def test_le_accepts_up_to_theory_plus_tol_and_ge_down_to_theory_minus_tol(theory, tol, below, above):
    assert _outcome(measured=theory + tol - below, theory=theory, tol=tol, kind="le")
    assert not _outcome(measured=theory + tol + above, theory=theory, tol=tol, kind="le")
    assert _outcome(measured=theory - tol + below, theory=theory, tol=tol, kind="ge")
    assert not _outcome(measured=theory - tol - above, theory=theory, tol=tol, kind="ge")


@given(measured=INTS, theory=INTS, tol=TOLS)
def test_the_rules_mirror_each_other(measured, theory, tol):
    # abs is symmetric in (measured, theory); le and ge are mirror images under negation; abs is le and ge together.
    a = _outcome(measured=measured, theory=theory, tol=tol, kind="abs")
    assert a == _outcome(measured=theory, theory=measured, tol=tol, kind="abs")
    le = _outcome(measured=measured, theory=theory, tol=tol, kind="le")
    assert le == _outcome(measured=-measured, theory=-theory, tol=tol, kind="ge")
    assert a == (le and _outcome(measured=measured, theory=theory, tol=tol, kind="ge"))


# ---------------------------------------------------------------------------------------------- the result


def test_passing_check_returns_the_record_and_prints_the_verdict(capsys):
    claim = check("T13a", "semilog slope", measured=-0.98, theory=-1.0, tol=0.05, note="n = 4000")
    assert isinstance(claim, Claim)
    assert (claim.id, claim.quantity, claim.kind, claim.note) == ("T13a", "semilog slope", "abs", "n = 4000")
    assert (claim.measured, claim.theory, claim.tolerance) == (-0.98, -1.0, 0.05)
    assert claim.passed is True and claim.status == "reproduced"
    assert claim.chapter == ""
    out = capsys.readouterr().out.strip()
    assert out == claim.verdict()
    # The verdict comes first, on a short line; the quantity follows on its own line.
    first, second = out.splitlines()
    assert first.startswith("reproduced [T13a]: measured -0.98") and len(first) <= 88
    assert second.strip() == "semilog slope"


def test_a_long_quantity_wraps_to_the_column(capsys):
    words = "the ratio of the sampler's error at four hundred steps to its error at one hundred steps " * 3
    claim = check("T13a-long-id", words.strip(), measured=0.25, theory=0.25, tol=0.01)
    lines = claim.verdict().splitlines()
    assert len(lines) > 2 and all(len(line) <= 88 for line in lines)
    assert " ".join(line.strip() for line in lines[1:]) == words.strip()


def test_claim_is_immutable():
    claim = check("T1", "q", measured=1.0, theory=1.0, tol=0.0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        claim.measured = 2.0  # type: ignore[misc]


def test_failure_raises_claim_error_with_the_verdict_and_rule(capsys):
    with pytest.raises(ClaimError) as info:
        check("T7", "error at the end", measured=0.3, theory=0.1, tol=0.05, kind="le")
    message = str(info.value)
    assert "[T7]" in message and "FAILED" in message and KINDS["le"] in message
    assert "FAILED" in capsys.readouterr().out


def test_claim_error_is_an_assertion_error():
    # nbval and plain pytest both report it as a failed check.
    assert issubclass(ClaimError, AssertionError)


def test_invisible_claim_that_holds_is_not_called_reproduced():
    claim = check("T20", "pre-asymptotic slope", measured=-0.4, theory=-0.5, tol=0.15, visible=False)
    assert claim.passed is True
    assert claim.status == NOT_VISIBLE
    assert claim.verdict().startswith(NOT_VISIBLE)


@pytest.mark.parametrize(
    ("category", "status"), [("illustration", "illustration"), ("consistency", "consistency check")]
)
def test_checks_that_are_not_claims_are_never_called_reproduced(category, status):
    claim = check("X1", "identity", measured=1.0, theory=1.0, tol=1e-12, category=category)
    assert claim.passed and claim.status == status and claim.category == category
    with pytest.raises(ClaimError):
        check("X1", "identity", measured=2.0, theory=1.0, tol=1e-12, category=category)


def test_unknown_category_and_invisible_non_claim_are_refused():
    with pytest.raises(ValueError, match="category"):
        check("X1", "q", measured=1.0, theory=1.0, tol=0.0, category="proof")
    with pytest.raises(ValueError, match="visible=False"):
        check("X1", "q", measured=1.0, theory=1.0, tol=0.0, category="consistency", visible=False)


def test_invisible_claim_that_fails_still_fails():
    with pytest.raises(ClaimError):
        check("T20", "pre-asymptotic slope", measured=0.4, theory=-0.5, tol=0.15, visible=False)


def test_numpy_and_torch_scalars_are_accepted():
    torch = pytest.importorskip("torch")
    claim = check("T2", "q", measured=np.float32(0.5), theory=np.float64(0.5), tol=torch.tensor(0.0))
    assert claim.passed
    assert all(type(v) is float for v in (claim.measured, claim.theory, claim.tolerance))


# ---------------------------------------------------------------------------------------------- bad inputs


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, np.nan])
@pytest.mark.parametrize("name", ["measured", "theory", "tol"])
def test_non_finite_numbers_are_refused(name, value):
    kwargs = {"measured": 1.0, "theory": 1.0, "tol": 0.1, name: value}
    with pytest.raises(ValueError, match=name):
        check("T1", "q", **kwargs)


@pytest.mark.parametrize("value", [None, "abc", [1.0], object()])
@pytest.mark.parametrize("name", ["measured", "theory", "tol"])
def test_non_numbers_are_refused(name, value):
    kwargs = {"measured": 1.0, "theory": 1.0, "tol": 0.1, name: value}
    with pytest.raises(TypeError, match=name):
        check("T1", "q", **kwargs)


@pytest.mark.parametrize("tol", [-1e-12, -1.0])
def test_negative_tolerance_is_refused(tol):
    with pytest.raises(ValueError, match="tol"):
        check("T1", "q", measured=1.0, theory=1.0, tol=tol)


@pytest.mark.parametrize("kind", ["", "ABS", "lt", "relative", None])
def test_unknown_kind_is_refused(kind):
    with pytest.raises(ValueError, match="kind"):
        check("T1", "q", measured=1.0, theory=1.0, tol=0.1, kind=kind)


@pytest.mark.parametrize("claim_id", ["", "1", "7T", "T 1", "T1/2", " T1", "T1\n", None, 3])
def test_malformed_id_is_refused(claim_id):
    with pytest.raises(ValueError, match="claim_id"):
        check(claim_id, "q", measured=1.0, theory=1.0, tol=0.1)


@pytest.mark.parametrize("claim_id", ["T1", "T13a", "T2.b", "Fig4-slope", "R_1"])
def test_well_formed_ids_are_accepted(claim_id):
    assert check(claim_id, "q", measured=1.0, theory=1.0, tol=0.1).id == claim_id


def test_bad_input_is_refused_before_anything_is_recorded(monkeypatch, tmp_path):
    monkeypatch.setenv("DIFFNOTES_CLAIMS_DIR", str(tmp_path))
    with pytest.raises(ValueError):
        check("T1", "q", measured=math.nan, theory=1.0, tol=0.1)
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------------- recording


def read_records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_nothing_is_written_outside_the_book_build(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DIFFNOTES_CHAPTER", "book/part2/samplers")
    check("T1", "q", measured=1.0, theory=1.0, tol=0.1)
    assert list(tmp_path.iterdir()) == []


def test_empty_claims_dir_means_no_recording(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DIFFNOTES_CLAIMS_DIR", "")
    check("T1", "q", measured=1.0, theory=1.0, tol=0.1)
    assert list(tmp_path.iterdir()) == []


def test_each_check_appends_one_json_line_per_chapter(monkeypatch, tmp_path):
    folder = tmp_path / "claims" / "nested"  # created on first use
    monkeypatch.setenv("DIFFNOTES_CLAIMS_DIR", str(folder))
    monkeypatch.setenv("DIFFNOTES_CHAPTER", "book/part2/samplers")
    check("T3", "first", measured=1.0, theory=1.0, tol=0.1)
    check("T4", "second", measured=0.2, theory=0.5, tol=0.0, kind="le", visible=False, note="small n")
    monkeypatch.setenv("DIFFNOTES_CHAPTER", "book/part2/forward-backward")
    check("T2", "third", measured=2.0, theory=2.0, tol=0.0, kind="rel")

    files = sorted(p.name for p in folder.iterdir())
    assert files == ["book_part2_forward-backward.jsonl", "book_part2_samplers.jsonl"]
    first, second = read_records(folder / "book_part2_samplers.jsonl")
    assert set(first) == FIELDS
    assert first == {
        "id": "T3",
        "quantity": "first",
        "theory": 1.0,
        "tolerance": 0.1,
        "kind": "abs",
        "measured": 1.0,
        "passed": True,
        "status": "reproduced",
        "note": "",
        "chapter": "book/part2/samplers",
        "category": "claim",
        "run": first["run"],
    }
    assert first["run"] and second["run"] == first["run"]
    assert (second["id"], second["kind"], second["status"], second["note"]) == ("T4", "le", NOT_VISIBLE, "small n")
    (third,) = read_records(folder / "book_part2_forward-backward.jsonl")
    assert third["chapter"] == "book/part2/forward-backward"


def test_failed_claim_is_recorded_before_it_raises(monkeypatch, tmp_path):
    monkeypatch.setenv("DIFFNOTES_CLAIMS_DIR", str(tmp_path))
    monkeypatch.setenv("DIFFNOTES_CHAPTER", "book/part3/rates")
    with pytest.raises(ClaimError):
        check("T9", "rate", measured=3.0, theory=1.0, tol=0.5)
    (record,) = read_records(tmp_path / "book_part3_rates.jsonl")
    assert record["passed"] is False and record["status"] == "FAILED"


def test_claim_without_chapter_goes_to_unnamed(monkeypatch, tmp_path):
    monkeypatch.setenv("DIFFNOTES_CLAIMS_DIR", str(tmp_path))
    check("T1", "q", measured=1.0, theory=1.0, tol=0.1)
    (record,) = read_records(tmp_path / "unnamed.jsonl")
    assert record["chapter"] == ""


# ------------------------------------------------------------------------------ the Scorecard reads them


def load_scorecard_extension():
    spec = importlib.util.spec_from_file_location("scorecard_ext", REPO / "book" / "_ext" / "scorecard.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_scorecard_reads_the_records_in_natural_order(monkeypatch, tmp_path):
    pytest.importorskip("sphinx")
    scorecard = load_scorecard_extension()
    monkeypatch.setenv("DIFFNOTES_CLAIMS_DIR", str(tmp_path))
    for chapter, claim_id in [("b/two", "T10"), ("a/one", "T2"), ("b/two", "T1"), ("a/one", "T13a"), ("a/one", "T13")]:
        monkeypatch.setenv("DIFFNOTES_CHAPTER", chapter)
        check(claim_id, "q", measured=1.0, theory=1.0, tol=0.1)
    records = scorecard.load_claims(tmp_path)
    # Book order: by part (the chapter's folder), then naturally by id.
    assert [r["id"] for r in records] == ["T2", "T13", "T13a", "T1", "T10"]
    assert scorecard.summary_text(records).startswith("5 checks ran during this build. Of the 5 claims of the")
    assert scorecard._record_file(tmp_path, "a/one").exists()


def test_scorecard_keeps_the_latest_run_of_each_chapter(monkeypatch, tmp_path):
    pytest.importorskip("sphinx")
    scorecard = load_scorecard_extension()
    path = tmp_path / "book_part2_x.jsonl"
    old = {"id": "T1", "chapter": "book/part2/x", "passed": True, "status": "reproduced", "run": "1-1"}
    new = [dict(old, id="T2", run="2-2"), dict(old, id="T3", run="2-2", category="consistency",
                                                  status="consistency check")]
    path.write_text("\n".join(json.dumps(r) for r in [old, *new]) + "\n")
    records = scorecard.load_claims(tmp_path)
    assert [r["id"] for r in records] == ["T2", "T3"]
    counts = scorecard.counts(records)
    assert counts["reproduced"] == 1 and counts["consistency check"] == 1 and counts["FAILED"] == 0
    assert scorecard.counts_by_part(records) == {"part2": counts}


def test_scorecard_theory_column_shows_the_rule():
    pytest.importorskip("sphinx")
    scorecard = load_scorecard_extension()
    assert scorecard.theory_text({"kind": "abs", "theory": 0.5, "tolerance": 0.05}) == "0.5 ± 0.05"
    assert scorecard.theory_text({"kind": "rel", "theory": 2.0, "tolerance": 0.1}) == "2 ± 10%"
    assert scorecard.theory_text({"kind": "le", "theory": 1.0, "tolerance": 0.0}) == "≤ 1"
    assert scorecard.theory_text({"kind": "ge", "theory": 1.0, "tolerance": 0.5}) == "≥ 1 (−0.5)"


def test_scorecard_recognises_jupytext_chapters():
    pytest.importorskip("sphinx")
    scorecard = load_scorecard_extension()
    header = "---\njupytext:\n  text_representation: {extension: .md}\nkernelspec: {name: python3}\n---\n# T\n"
    assert scorecard.is_jupytext_source(header)
    assert not scorecard.is_jupytext_source("# A page\n\njupytext: in the body is not a header\n")
    assert not scorecard.is_jupytext_source("---\ntitle: x\n---\njupytext:\n")


def test_downloaded_notebooks_lose_myst_roles():
    pytest.importorskip("sphinx")
    scorecard = load_scorecard_extension()
    text = (
        "See {cite}`a2020,b2021`, {func}`~diffnotes.samplers.ddim`, {doc}`samplers`, {math}`x^2` "
        "and {py:class}`T <x.T>`."
    )
    assert scorecard.plain_markdown(text) == "See [a2020, b2021], `ddim`, samplers, $x^2$ and T."
