r"""Rates read off log-log plots: a least-squares slope with a bootstrap interval.

A rate claim such as "the squared score error decays like :math:`n^{-2/(d+4)}`" (review Section 4.2.2) is checked
by fitting :math:`\log y = a + b\log x` by least squares and asking whether the theory's exponent lies in the
slope's uncertainty interval.  :func:`loglog_slope` gives the slope with a percentile bootstrap interval, resampling
either the points (one measurement per x) or the repeated measurements at each x (book chapter *Sample complexity of
score estimation*).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from . import _checks

__all__ = ["Slope", "loglog_slope", "covered_tol"]


class Slope(NamedTuple):
    """A log-log slope with its bootstrap interval (see :func:`loglog_slope`)."""

    slope: float
    """Least-squares slope of log y against log x."""
    intercept: float
    """The fitted intercept, in log y = intercept + slope * log x."""
    low: float
    """Lower end of the bootstrap interval."""
    high: float
    """Upper end of the bootstrap interval."""

    def covers(self, value: float) -> bool:
        """Whether ``value`` lies in the interval [low, high]."""
        return self.low <= value <= self.high

    def __str__(self) -> str:
        return f"slope {self.slope:.3f} [{self.low:.3f}, {self.high:.3f}]"


def _fit(lx: np.ndarray, ly: np.ndarray) -> tuple[float, float]:
    b, a = np.polyfit(lx, ly, 1)
    return float(b), float(a)


def loglog_slope(x, y, n_boot: int = 2000, generator=None, level: float = 0.95, *, rng=_checks.UNSET) -> Slope:
    r"""Least-squares slope of :math:`\log y` against :math:`\log x`, with a percentile bootstrap interval.

    Parameters
    ----------
    x : array of shape (k,)
        Positive abscissae (sample sizes, step sizes), at least 3 distinct values.
    y : array of shape (k,) or (k, r)
        Positive measurements.  One per x: the bootstrap resamples the k points (pairs) with replacement.  With r >= 2
        repeated measurements per x: the fit uses the mean over repeats at each x, and the bootstrap resamples the
        repeats within each x (the spread of the slope that the measurement noise causes).
    n_boot : int
        Number of bootstrap resamples (at least 100).
    generator : int, numpy.random.Generator, torch.Generator or None
        Source of randomness for the bootstrap (``None``: fresh entropy).
    level : float
        Coverage of the interval, in (0, 1).
    rng
        Deprecated former name of ``generator``.

    Returns
    -------
    Slope
        ``(slope, intercept, low, high)``.
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if x.ndim != 1:
        raise ValueError(f"x must be one-dimensional, got shape {x.shape}")
    if y.ndim not in (1, 2) or y.shape[0] != x.shape[0]:
        raise ValueError(f"y must be shaped ({x.shape[0]},) or ({x.shape[0]}, r), got {y.shape}")
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))) or np.any(x <= 0) or np.any(y <= 0):
        raise ValueError("x and y must be finite and positive (they are plotted on log axes)")
    if np.unique(x).size < 3:
        raise ValueError(f"need at least 3 distinct x values for a slope with an interval, got {np.unique(x).size}")
    if isinstance(n_boot, bool) or int(n_boot) != n_boot or n_boot < 100:
        raise ValueError(f"n_boot must be an integer >= 100, got {n_boot!r}")
    if not 0 < level < 1:
        raise ValueError(f"level must lie in (0, 1), got {level}")
    if y.ndim == 2 and y.shape[1] < 2:
        y = y[:, 0]
    gen = _checks.numpy_generator(_checks.renamed(generator, rng, "rng"))
    lx = np.log(x)
    k = x.size
    if y.ndim == 1:
        b, a = _fit(lx, np.log(y))
        boots = []
        while len(boots) < n_boot:
            idx = gen.integers(0, k, k)
            if np.unique(lx[idx]).size < 2:
                continue
            boots.append(_fit(lx[idx], np.log(y[idx]))[0])
    else:
        r = y.shape[1]
        b, a = _fit(lx, np.log(y.mean(1)))
        idx = gen.integers(0, r, (n_boot, k, r))
        means = np.take_along_axis(np.broadcast_to(y, (n_boot, k, r)), idx, axis=2).mean(2)  # (n_boot, k)
        ly = np.log(means)
        lxc = lx - lx.mean()
        boots = (ly - ly.mean(1, keepdims=True)) @ lxc / (lxc @ lxc)
    boots = np.asarray(boots)
    q = (1 - level) / 2
    low, high = np.quantile(boots, [q, 1 - q])
    if not (math.isfinite(low) and math.isfinite(high)):
        raise ValueError("the bootstrap produced non-finite slopes")
    return Slope(b, a, float(low), float(high))


def covered_tol(fit: Slope, theory: float) -> float:
    """The tolerance under which a slope's bootstrap interval covers a theory value.

    The distance from the fitted slope to the end of its interval on the theory's side: ``|slope - theory| <= tol``
    exactly when ``fit.low <= theory <= fit.high``. Used by the chapters *Sample complexity of score estimation* and
    *Distribution estimation*.

    Parameters
    ----------
    fit : Slope
        A fit returned by :func:`loglog_slope`.
    theory : float
        The slope the theory predicts.

    Returns
    -------
    float
        ``fit.high - fit.slope`` when the theory lies above the slope, else ``fit.slope - fit.low``.
    """
    theory = float(theory)
    if not math.isfinite(theory):
        raise ValueError(f"theory must be finite, got {theory}")
    return fit.high - fit.slope if theory > fit.slope else fit.slope - fit.low
