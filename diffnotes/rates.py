r"""Rates read off log-log plots: a least-squares slope with a bootstrap interval.

A rate claim such as "the squared score error decays like :math:`n^{-2/(d+4)}`" (review Section 4.2) is checked
by fitting :math:`\log y = a + b\log x` by least squares and asking whether the theory's exponent lies in the
slope's uncertainty interval.  :func:`loglog_slope` gives the slope with a percentile bootstrap interval, resampling
either the points (one measurement per x) or the repeated measurements at each x (book chapter *Sample complexity of
score estimation*).  :func:`seed_slopes` fits one slope per independent repeat (seed) and gives their mean and
spread, the tolerance of a rate check that is not to come from a fit's own bootstrap interval (chapters
*Distribution estimation*, *Score approximation*).  :func:`local_orders` and :func:`richardson_order` read the
order of convergence of a sampler off its errors at a sequence of step counts (chapters *Samplers*, *Sampling
theory*, *Faster sampling*).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from . import _checks

__all__ = ["Slope", "loglog_slope", "covered_tol", "SeedSlopes", "seed_slopes", "local_orders", "richardson_order"]


class Slope(NamedTuple):
    """A log-log slope with its bootstrap interval (see :func:`loglog_slope`).

    Parameters
    ----------
    slope : float
        Least-squares slope of log y against log x.
    intercept : float
        The fitted intercept, in log y = intercept + slope * log x.
    low, high : float
        Lower and upper ends of the bootstrap interval.
    """

    slope: float
    """Least-squares slope of log y against log x."""
    intercept: float
    """The fitted intercept, in log y = intercept + slope * log x."""
    low: float
    """Lower end of the bootstrap interval."""
    high: float
    """Upper end of the bootstrap interval."""

    def covers(self, value: float) -> bool:
        """Whether ``value`` lies in the interval [low, high].

        Parameters
        ----------
        value : float
            The slope to test, e.g. the theory's.
        """
        return self.low <= value <= self.high

    def __str__(self) -> str:
        return f"slope {self.slope:.3f} [{self.low:.3f}, {self.high:.3f}]"


def _fit(lx: np.ndarray, ly: np.ndarray) -> tuple[float, float]:
    b, a = np.polyfit(lx, ly, 1)
    return float(b), float(a)


def _log_axes(x, y, repeats_only: bool):
    """x (k,) and y (k,) or (k, r) as float64 arrays, checked for a log-log fit: positive, finite, >= 3 distinct x;
    with ``repeats_only`` y must be (k, r) with r >= 2 (one column per independent repeat)."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if x.ndim != 1:
        raise ValueError(f"x must be one-dimensional, got shape {x.shape}")
    if y.ndim not in ((2,) if repeats_only else (1, 2)) or y.shape[0] != x.shape[0]:
        k = x.shape[0]
        shapes = f"({k}, r), one column per repeat" if repeats_only else f"({k},) or ({k}, r)"
        raise ValueError(f"y must be shaped {shapes}, got {y.shape}")
    if repeats_only and y.shape[1] < 2:
        raise ValueError(f"a spread over repeats needs r >= 2 columns, got {y.shape[1]}")
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))) or np.any(x <= 0) or np.any(y <= 0):
        raise ValueError("x and y must be finite and positive (they are plotted on log axes)")
    if np.unique(x).size < 3:
        raise ValueError(f"need at least 3 distinct x values for a slope, got {np.unique(x).size}")
    return x, y


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
    x, y = _log_axes(x, y, repeats_only=False)
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


class SeedSlopes(NamedTuple):
    """Log-log slopes of independent repeats and their spread (see :func:`seed_slopes`).

    Parameters
    ----------
    slopes : numpy.ndarray of shape (r,)
        The least-squares slope of each repeat.
    mean : float
        Their mean.
    sd : float
        Their sample standard deviation (``ddof=1``).
    se : float
        The standard error of the mean, ``sd / sqrt(r)``.
    """

    slopes: np.ndarray
    """The least-squares slope of each repeat."""
    mean: float
    """Their mean."""
    sd: float
    """Their sample standard deviation (ddof = 1)."""
    se: float
    """The standard error of the mean, sd / sqrt(r)."""

    def __str__(self) -> str:
        return f"slope {self.mean:.3f} +- {self.se:.3f} (sd {self.sd:.3f} over {self.slopes.size} seeds)"


def seed_slopes(x, y) -> SeedSlopes:
    r"""One least-squares log-log slope per independent repeat, with the mean and spread over repeats.

    Column :math:`j` of ``y`` holds one independent repeat of the whole measurement (its own seed: data, random
    features, evaluation points); its slope is

    .. math::

        b_j = \frac{\sum_i (\ell_i - \bar\ell)\,\log y_{ij}}{\sum_i (\ell_i - \bar\ell)^2},
        \qquad \ell_i = \log x_i ,

    and the spread of the :math:`b_j` over repeats is the sampling error of the slope, free of any assumption on how
    the errors at different x are correlated within a repeat (the bootstrap of :func:`loglog_slope` resamples points
    or repeats at each x, and treats the x as independent).  The mean of the :math:`b_j` is the slope of the mean of
    :math:`\log y` over repeats.  Chapters *Distribution estimation* (the latent rate of Chen et al.'s theorem) and
    *Score approximation* (the size law of claim T8).

    Parameters
    ----------
    x : array of shape (k,)
        Positive abscissae (sample sizes, parameter counts), at least 3 distinct values.
    y : array of shape (k, r)
        Positive measurements, one column per independent repeat, r >= 2.

    Returns
    -------
    SeedSlopes
        ``(slopes, mean, sd, se)``.
    """
    x, y = _log_axes(x, y, repeats_only=True)
    lx = np.log(x)
    lxc = lx - lx.mean()
    slopes = lxc @ np.log(y) / (lxc @ lxc)
    sd = float(slopes.std(ddof=1))
    return SeedSlopes(slopes, float(slopes.mean()), sd, sd / math.sqrt(slopes.size))


def _errors_and_steps(err, ns) -> tuple[np.ndarray, np.ndarray]:
    err = np.asarray(err, dtype=np.float64)
    ns = np.asarray(ns, dtype=np.float64)
    if err.ndim != 1 or ns.shape != err.shape or err.size < 2:
        raise ValueError(f"err and ns must be 1-D of the same length >= 2, got shapes {err.shape} and {ns.shape}")
    if not (np.all(np.isfinite(err)) and np.all(err > 0)):
        raise ValueError("the errors must be positive and finite")
    if not (np.all(np.isfinite(ns)) and np.all(ns > 0) and np.all(np.diff(ns) > 0)):
        raise ValueError("the step counts must be positive, finite and increasing")
    return err, ns


def local_orders(err, ns) -> np.ndarray:
    r"""Local orders of convergence between consecutive step counts.

    For errors :math:`e_k` at step counts :math:`N_k`,

    .. math::

        s_k = \frac{\log(e_k / e_{k+1})}{\log(N_{k+1} / N_k)},\qquad k = 1, \dots, K - 1 .

    For :math:`e = aN^{-p}(1 + b/N + \dots)` the local order is :math:`p + O(1/N)`: the correction halves with each
    doubling of N.  Chapters *Samplers*, *Sampling theory* and *Faster sampling*.

    Parameters
    ----------
    err : array of shape (K,)
        Positive errors, one per step count.
    ns : array of shape (K,)
        Increasing positive step counts (or numbers of score evaluations).

    Returns
    -------
    numpy.ndarray of shape (K - 1,)
        The local orders :math:`s_1, \dots, s_{K-1}`.
    """
    err, ns = _errors_and_steps(err, ns)
    return np.log(err[:-1] / err[1:]) / np.log(ns[1:] / ns[:-1])


def richardson_order(err, ns) -> tuple[float, float]:
    r"""Richardson estimate of the asymptotic order from the last two local orders, with a tolerance.

    With :math:`s_K \approx p + c/N_K` and step counts doubling, :math:`2s_K - s_{K-1}` removes the :math:`1/N`
    correction; what remains is of order :math:`N^{-2}`, far below the last change :math:`|s_K - s_{K-1}|`, which is
    returned as the tolerance.  Chapter *Sampling theory*.

    Parameters
    ----------
    err : array of shape (K,)
        Positive errors at K >= 3 step counts that double from one to the next.
    ns : array of shape (K,)
        The step counts.

    Returns
    -------
    (float, float)
        The estimate :math:`2s_K - s_{K-1}` and the tolerance :math:`|s_K - s_{K-1}|`.
    """
    s = local_orders(err, ns)
    if s.size < 2:
        raise ValueError("the Richardson estimate needs errors at three or more step counts")
    ns = np.asarray(ns, dtype=np.float64)
    if not np.allclose(ns[-2:] / ns[-3:-1], 2.0):
        raise ValueError("the Richardson estimate assumes that the last three step counts double")
    return float(2 * s[-1] - s[-2]), float(abs(s[-1] - s[-2]))
