"""Checking the review's quantitative claims where the book shows them.

Every chapter that reproduces a claim of the review (the inventory's T1-T27, or a rate behind a figure) calls
:func:`check` right after computing it.  The call

* compares the measured value with the theory value under a tolerance,
* prints a one-line verdict the reader sees under the cell,
* raises :class:`ClaimError` when the measurement is out of tolerance, so that a notebook test fails, and
* when the environment variable ``DIFFNOTES_CLAIMS_DIR`` is set (the book build sets it), appends a JSON record
  to ``$DIFFNOTES_CLAIMS_DIR/<chapter>.jsonl``; the Scorecard page of the book is built from these records.

Outside the book build nothing is written: reusing :func:`check` in one's own notebook only prints and raises.

A claim whose asymptotic form is not visible at laptop sizes is checked with ``visible=False``: the assertion is then
about what the computation does show (a pre-asymptotic slope, an ordering), and the scorecard marks the claim
"not visible at this size" rather than "reproduced".

Not every check is a claim of the review. ``category`` says what a check is (:data:`CATEGORIES`): a claim of the
review (the default), an illustration (an effect shown against a stated, arbitrary threshold) or a consistency check
(an identity that holds by construction and fails only on a bug). Only claims can be "reproduced"; the Scorecard
lists the other two apart and does not count them as reproduced.

Each record carries the id of the kernel run that wrote it, so that a chapter executed again replaces its records
(the Scorecard keeps the latest run of each chapter).
"""

from __future__ import annotations

import json
import math
import os
import re
import textwrap
import time
from dataclasses import asdict, dataclass
from pathlib import Path

__all__ = ["Claim", "ClaimError", "check", "KINDS", "CATEGORIES"]

#: How the measurement is compared with the theory value.
KINDS = {
    "abs": "|measured - theory| <= tol",
    "rel": "|measured - theory| <= tol * |theory|",
    "le": "measured <= theory + tol",
    "ge": "measured >= theory - tol",
}

#: What a check is, and the status a passing check of that category earns.
CATEGORIES = {
    "claim": "reproduced",
    "illustration": "illustration",
    "consistency": "consistency check",
}

#: The column the printed verdicts fit (the book's code column).
VERDICT_WIDTH = 88

_ID = re.compile(r"^[A-Za-z][A-Za-z0-9_.\-]*$")


class ClaimError(AssertionError):
    """A measured value lies outside the tolerance of the claim it checks."""


@dataclass(frozen=True)
class Claim:
    """One checked claim, as recorded for the Scorecard.

    Built by :func:`check` (not validated here); ``dataclasses.asdict`` of it is one JSON record.

    Parameters
    ----------
    id : str
        The claim's identifier, e.g. ``"T2"``.
    quantity : str
        What was measured, in words.
    theory : float
        The value the theory predicts.
    tolerance : float
        The tolerance, >= 0 (``tol`` of :func:`check`).
    kind : str
        The comparison, a key of :data:`KINDS`.
    measured : float
        The measured value.
    passed : bool
        Whether the measurement is within tolerance.
    status : str
        ``"FAILED"``, ``"not visible at this size"`` or the passing status of the category (:data:`CATEGORIES`).
    note : str
        A short remark shown on the scorecard.
    chapter : str
        The chapter that made the check (the environment variable ``DIFFNOTES_CHAPTER``; empty outside the build).
    category : str
        A key of :data:`CATEGORIES` (default ``"claim"``).
    run : str
        The id of the kernel run that wrote the record (default empty).
    """

    id: str
    quantity: str
    theory: float
    tolerance: float
    kind: str
    measured: float
    passed: bool
    status: str
    note: str
    chapter: str
    category: str = "claim"
    run: str = ""

    def verdict(self) -> str:
        """The one-line verdict printed under the cell."""
        rule = {
            "abs": f"{_fmt(self.theory)} +/- {_fmt(self.tolerance)}",
            "rel": f"{_fmt(self.theory)} +/- {100 * self.tolerance:.3g}%",
            "le": f"<= {_fmt(self.theory)}" + (f" (+{_fmt(self.tolerance)})" if self.tolerance else ""),
            "ge": f">= {_fmt(self.theory)}" + (f" (-{_fmt(self.tolerance)})" if self.tolerance else ""),
        }[self.kind]
        quantity = textwrap.fill(self.quantity, VERDICT_WIDTH, initial_indent="  ", subsequent_indent="  ",
                                 break_long_words=False, break_on_hyphens=False)
        return f"{self.status} [{self.id}]: measured {_fmt(self.measured)}, theory {rule}\n{quantity}"


def _fmt(v: float) -> str:
    return f"{v:.5g}"


def _finite(name: str, value) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError) as err:
        raise TypeError(f"{name} must be a real number, got {value!r}") from err
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    return value


def check(
    claim_id: str,
    quantity: str,
    *,
    measured: float,
    theory: float,
    tol: float,
    kind: str = "abs",
    visible: bool = True,
    category: str = "claim",
    note: str = "",
) -> Claim:
    """Check a measured value against the theory and record the result.

    Parameters
    ----------
    claim_id
        The claim's identifier, e.g. ``"T2"`` (inventory numbering) or ``"T13a"`` for a part of a claim.
    quantity
        What was measured, in words, e.g. ``"semilog slope of KL(P_T || N(0, I)) against T"``.
    measured, theory, tol
        The measured value, the value the theory predicts, and the tolerance (from the theory and the Monte Carlo
        error, never widened to make a number pass).
    kind
        The comparison, one of :data:`KINDS`: ``"abs"`` (default), ``"rel"``, ``"le"`` (an upper bound) or
        ``"ge"`` (a lower bound).
    visible
        ``False`` when the claim's asymptotic form is not visible at this size; what is then checked is what the
        computation really shows, and the scorecard says "not visible at this size".
    category
        What the check is, one of :data:`CATEGORIES`: ``"claim"`` (a claim of the review, the default),
        ``"illustration"`` (an effect shown against a stated threshold that no theory sets) or ``"consistency"``
        (an identity that holds by construction). Only a claim is counted as reproduced.
    note
        A short remark shown on the scorecard.

    Returns
    -------
    Claim
        The record, also printed as a one-line verdict.

    Raises
    ------
    ClaimError
        When the measurement is out of tolerance.
    ValueError, TypeError
        On a malformed id, an unknown kind or category, a negative tolerance or a non-finite number.
    """
    if not isinstance(claim_id, str) or not _ID.fullmatch(claim_id):
        raise ValueError(f"claim_id must be a short identifier such as 'T2', got {claim_id!r}")
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {sorted(KINDS)}, got {kind!r}")
    if category not in CATEGORIES:
        raise ValueError(f"category must be one of {sorted(CATEGORIES)}, got {category!r}")
    if category != "claim" and not visible:
        raise ValueError("visible=False applies to claims of the review only (category='claim')")
    measured = _finite("measured", measured)
    theory = _finite("theory", theory)
    tol = _finite("tol", tol)
    if tol < 0:
        raise ValueError(f"tol must be >= 0, got {tol}")
    passed = {
        "abs": abs(measured - theory) <= tol,
        "rel": abs(measured - theory) <= tol * abs(theory),
        "le": measured <= theory + tol,
        "ge": measured >= theory - tol,
    }[kind]
    if not passed:
        status = "FAILED"
    elif category == "claim" and not visible:
        status = "not visible at this size"
    else:
        status = CATEGORIES[category]
    chapter = os.environ.get("DIFFNOTES_CHAPTER", "")
    claim = Claim(
        claim_id, quantity, theory, tol, kind, measured, bool(passed), status, note, chapter, category, _RUN
    )
    print(claim.verdict())
    _record(claim)
    if not passed:
        raise ClaimError(claim.verdict() + f" (rule: {KINDS[kind]})")
    return claim


# One id per process (per kernel): the records of a chapter's latest execution replace those of earlier ones.
_RUN = f"{os.getpid()}-{time.time_ns()}"


def _record(claim: Claim) -> None:
    folder = os.environ.get("DIFFNOTES_CLAIMS_DIR")
    if not folder:
        return
    path = Path(folder)
    path.mkdir(parents=True, exist_ok=True)
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", claim.chapter or "unnamed")
    with open(path / f"{name}.jsonl", "a", encoding="utf-8") as fh:
        fh.write(json.dumps(asdict(claim)) + "\n")
