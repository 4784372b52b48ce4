r"""Distances between probability laws and between samples.

How close is a sampler's output to the law it should produce?  The review (Sections 3 and 4) measures the answer in
total variation, Kullback-Leibler divergence and Wasserstein distance; the book's chapters check those rates with the
functions below.  They come in two kinds.

*Exact* distances between two Gaussian laws, in float64:

- :func:`gaussian_kl`: :math:`\mathrm{KL}(\mathsf N(m_0,\Sigma_0)\,\|\,\mathsf N(m_1,\Sigma_1))`, accurate down to
  values of about :math:`10^{-15}`;
- :func:`gaussian_w2`: the 2-Wasserstein (Bures) distance;
- :func:`gaussian_tv_1d`: the total variation distance between two one-dimensional Gaussian laws;
- :func:`density_tv`: the total variation distance between two one-dimensional densities, by quadrature.

*Sample-based* estimates, each a random number with its own Monte Carlo noise:

- :func:`wasserstein_1d`, :func:`wasserstein_1d_to_cdf`: the 1-Wasserstein distance in dimension one;
- :func:`sliced_wasserstein`: Wasserstein distance averaged over random 1-D projections;
- :func:`mmd`: the maximum mean discrepancy with a Gaussian kernel;
- :func:`energy_distance`: the energy distance;
- :func:`tv_histogram`: total variation between histograms (dimension one or two);
- :func:`kl_entropy`: the Kozachenko-Leonenko nearest-neighbour estimate of differential entropy.

A sample-based distance between two samples of the *same* law is not zero: it is of the size of its Monte Carlo noise.
:func:`noise_floor` measures that size, so that a chapter can say whether a sampler's error is visible at all.

Conventions: samples are arrays shaped ``(n, D)`` (numpy arrays or torch tensors, converted to float64 numpy); a 1-D
array of ``n`` numbers is ``n`` samples in dimension one.  Randomness enters only through an explicit ``generator``
argument (an int seed, a :class:`numpy.random.Generator` or a :class:`torch.Generator`; ``None`` draws fresh
entropy, as everywhere in the package).  References: :cite:p:`kozachenko1987sample`, :cite:p:`gretton2012kernel`,
:cite:p:`szekely2013energy`, :cite:p:`bonneel2015sliced`, :cite:p:`flamary2021pot`.
"""

from __future__ import annotations

import math
import numbers
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import ot
import scipy.linalg
import scipy.spatial
import scipy.special
import scipy.stats

from . import _checks

__all__ = [
    "marginal_sampler",
    "gaussian_kl",
    "gaussian_w2",
    "gaussian_tv_1d",
    "density_tv",
    "wasserstein_1d",
    "wasserstein_1d_to_cdf",
    "sliced_wasserstein",
    "mmd",
    "energy_distance",
    "tv_histogram",
    "kl_entropy",
    "noise_floor",
    "energy_permutation_test",
    "PermutationTest",
    "Floor",
]

#: Rows of a pairwise-distance block in :func:`mmd` and :func:`energy_distance` (1024 x n float64 numbers in memory).
_BLOCK = 1024
#: Number of points the median heuristic of :func:`mmd` looks at (a fixed random subset of a larger pooled sample).
_MEDIAN_POINTS = 1000
#: Largest CDF mass :func:`wasserstein_1d_to_cdf` lets the grid leave outside its ends.
_TAIL_TOL = 1e-6


# -- input conversion -------------------------------------------------------------------------------------------
def _to_numpy(a, name: str) -> np.ndarray:
    """Convert a number, sequence, numpy array or torch tensor to a float64 numpy array (copying nothing needlessly)."""
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(a, torch.Tensor):
        a = a.detach().cpu().numpy()
    arr = np.asarray(a)
    if arr.dtype.kind not in "biuf":
        raise TypeError(f"{name} must hold real numbers, got an array of dtype {arr.dtype}")
    arr = arr.astype(np.float64, copy=False)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or infinite values; every entry must be finite")
    return arr


def _as_samples(x, name: str, min_n: int = 1) -> np.ndarray:
    """A sample as a float64 array shaped (n, D); a 1-D array of n numbers is n samples in dimension 1."""
    arr = _to_numpy(x, name)
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2:
        raise ValueError(f"{name} must be shaped (n,) or (n, D), got shape {arr.shape}")
    if arr.shape[1] == 0:
        raise ValueError(f"{name} has dimension D = 0; expected at least one coordinate per sample")
    if arr.shape[0] < min_n:
        raise ValueError(f"{name} has {arr.shape[0]} samples; at least {min_n} are needed")
    return arr


def _two_samples(x, y, min_n: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Two samples of the same dimension."""
    x, y = _as_samples(x, "x", min_n), _as_samples(y, "y", min_n)
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"x and y must have the same dimension, got D = {x.shape[1]} and D = {y.shape[1]}")
    return x, y


def _as_1d_sample(x, name: str) -> np.ndarray:
    """A sample in dimension one as a flat array."""
    arr = _as_samples(x, name)
    if arr.shape[1] != 1:
        raise ValueError(f"{name} must be a sample in dimension 1, shaped (n,) or (n, 1); got shape {arr.shape}")
    return arr[:, 0]


def _gaussian(m, S, name: str, definite: bool) -> tuple[np.ndarray, np.ndarray]:
    """Mean vector (D,) and symmetric covariance (D, D); scalars describe a 1-D Gaussian (S is then a variance)."""
    m = _to_numpy(m, f"the mean m{name}")
    S = _to_numpy(S, f"the covariance S{name}")
    if m.ndim > 1:
        raise ValueError(f"the mean m{name} must be a number or a vector, got shape {m.shape}")
    m = m.reshape(-1)
    if S.ndim == 0 or S.shape == (1,):
        S = S.reshape(1, 1)
    if S.ndim != 2 or S.shape[0] != S.shape[1]:
        raise ValueError(
            f"the covariance S{name} must be a variance (a number, in dimension 1) or a square (D, D) matrix, "
            f"got shape {S.shape}; for a diagonal covariance pass np.diag(v)"
        )
    if S.shape[0] != m.size:
        raise ValueError(f"the mean m{name} has dimension {m.size} but the covariance S{name} is {S.shape}")
    scale = np.max(np.abs(S))
    if np.max(np.abs(S - S.T)) > 1e-10 * scale:
        raise ValueError(f"the covariance S{name} must be symmetric")
    S = 0.5 * (S + S.T)
    if definite:
        try:
            np.linalg.cholesky(S)
        except np.linalg.LinAlgError:
            raise ValueError(
                f"the covariance S{name} must be positive definite; its smallest eigenvalue is "
                f"{np.linalg.eigvalsh(S)[0]:.3g}"
            ) from None
    else:
        lam_min = np.linalg.eigvalsh(S)[0]
        if lam_min < -1e-12 * max(scale, 1e-300):
            raise ValueError(f"the covariance S{name} must be positive semi-definite; it has eigenvalue {lam_min:.3g}")
    return m, S


def _two_gaussians(m0, S0, m1, S1, definite: bool):
    m0, S0 = _gaussian(m0, S0, "0", definite)
    m1, S1 = _gaussian(m1, S1, "1", definite)
    if m0.size != m1.size:
        raise ValueError(f"the two Gaussians must have the same dimension, got D = {m0.size} and D = {m1.size}")
    return m0, S0, m1, S1


# -- exact distances between Gaussians ----------------------------------------------------------------------------
def _x_minus_log1p(x: np.ndarray) -> np.ndarray:
    r""":math:`x - \log(1+x)` for :math:`x > -1`, by its Taylor series :math:`\sum_{k\ge2} (-x)^k/k` where |x| < 0.1.

    Near zero the direct difference loses the leading term :math:`x^2/2` to cancellation; the series (20 terms,
    truncation error below :math:`10^{-20}` relative) does not.
    """
    x = np.asarray(x, dtype=np.float64)
    small = np.abs(x) < 0.1
    series = np.zeros_like(x)
    for k in range(21, 1, -1):  # Horner: x^2 (1/2 - x (1/3 - x (1/4 - ...)))
        series = 1.0 / k - x * series
    series = x * x * series
    return np.where(small, series, x - np.log1p(np.where(small, 0.0, x)))


def gaussian_kl(m0, S0, m1, S1) -> float:
    r"""Kullback-Leibler divergence between two Gaussian laws, exactly, in float64.

    .. math::

        \mathrm{KL}(\mathsf N(m_0,\Sigma_0)\,\|\,\mathsf N(m_1,\Sigma_1))
        = \tfrac12\Big[\operatorname{tr}(\Sigma_1^{-1}\Sigma_0) - D - \log\det(\Sigma_1^{-1}\Sigma_0)
          + (m_1-m_0)^\top\Sigma_1^{-1}(m_1-m_0)\Big].

    With the Cholesky factor :math:`\Sigma_1 = LL^\top` and the eigenvalues :math:`x_i` of
    :math:`L^{-1}(\Sigma_0-\Sigma_1)L^{-\top}` (those of :math:`\Sigma_1^{-1}\Sigma_0` minus one), the covariance part
    is :math:`\tfrac12\sum_i [x_i - \log(1+x_i)]`, evaluated by its Taylor series for small :math:`x_i`.  This keeps
    the full relative precision for nearly equal Gaussians (KL values of :math:`10^{-12}` and below), where the
    textbook formula returns round-off.

    Parameters
    ----------
    m0, S0 : array_like or torch.Tensor
        Mean (a number or a vector of length D) and covariance (a variance in dimension 1, else a (D, D) symmetric
        positive definite matrix) of the first law.
    m1, S1 : array_like or torch.Tensor
        The same for the second law.

    Returns
    -------
    float
        The divergence, :math:`\ge 0`; zero exactly for identical arguments.  Not symmetric in its two laws.

    Raises
    ------
    ValueError
        If shapes disagree, an entry is not finite, or a covariance is not symmetric positive definite.
    """
    m0, S0, m1, S1 = _two_gaussians(m0, S0, m1, S1, definite=True)
    L = np.linalg.cholesky(S1)
    half = scipy.linalg.solve_triangular(L, S0 - S1, lower=True)  # L^{-1} (S0 - S1)
    X = scipy.linalg.solve_triangular(L, half.T, lower=True)  # L^{-1} (S0 - S1) L^{-T}
    x = np.linalg.eigvalsh(0.5 * (X + X.T))
    if x[0] <= -1.0:  # S0 is positive definite, so only round-off can get here
        raise ValueError("the covariance S0 is numerically singular relative to S1; the divergence is not finite")
    z = scipy.linalg.solve_triangular(L, m1 - m0, lower=True)
    return float(0.5 * np.sum(_x_minus_log1p(x)) + 0.5 * np.dot(z, z))


def gaussian_w2(m0, S0, m1, S1) -> float:
    r"""2-Wasserstein distance between two Gaussian laws, exactly (the Bures formula).

    .. math::

        W_2^2(\mathsf N(m_0,\Sigma_0), \mathsf N(m_1,\Sigma_1)) = |m_0-m_1|^2
        + \operatorname{tr}\Big(\Sigma_0 + \Sigma_1 - 2\big(\Sigma_1^{1/2}\Sigma_0\Sigma_1^{1/2}\big)^{1/2}\Big),

    which in dimension one is :math:`(m_0-m_1)^2 + (\sigma_0-\sigma_1)^2`.  The trace of the matrix square root is the
    sum of the square roots of the eigenvalues of the symmetric matrix :math:`\Sigma_1^{1/2}\Sigma_0\Sigma_1^{1/2}`,
    computed with a symmetric eigendecomposition (more robust than a general ``sqrtm`` and always real).  Round-off
    that makes :math:`W_2^2` slightly negative is clipped to zero.  Covariances may be singular (laws on a
    subspace), since the formula holds for all positive semi-definite covariances.

    Parameters
    ----------
    m0, S0, m1, S1 : array_like or torch.Tensor
        Means and covariances as in :func:`gaussian_kl`; the covariances need only be positive semi-definite.

    Returns
    -------
    float
        :math:`W_2` (not squared).  Near-equal laws are resolved down to about :math:`10^{-8}\,\|\Sigma\|^{1/2}`.

    Raises
    ------
    ValueError
        If shapes disagree, an entry is not finite, or a covariance is not symmetric positive semi-definite.
    """
    m0, S0, m1, S1 = _two_gaussians(m0, S0, m1, S1, definite=False)
    mean_part = float(np.sum((m0 - m1) ** 2))
    if m0.size == 1:
        return math.sqrt(mean_part + (math.sqrt(max(S0[0, 0], 0.0)) - math.sqrt(max(S1[0, 0], 0.0))) ** 2)
    lam, V = np.linalg.eigh(S1)
    root1 = (V * np.sqrt(np.clip(lam, 0.0, None))) @ V.T  # Sigma_1^{1/2}
    cross = root1 @ S0 @ root1
    cross_root_trace = np.sum(np.sqrt(np.clip(np.linalg.eigvalsh(0.5 * (cross + cross.T)), 0.0, None)))
    w2_squared = mean_part + np.trace(S0) + np.trace(S1) - 2.0 * cross_root_trace
    return math.sqrt(max(float(w2_squared), 0.0))


# -- Wasserstein distances from samples ----------------------------------------------------------------------------
def gaussian_tv_1d(m0, v0, m1, v1) -> float:
    r"""Exact total variation distance between two one-dimensional Gaussian laws.

    The densities cross where :math:`\log\mathsf N(x; m_0, v_0) = \log\mathsf N(x; m_1, v_1)`, a quadratic equation
    with at most two roots :math:`r_1 \le r_2`; the set where the first density is larger is an interval or the
    complement of one, so

    .. math::

        \mathrm{TV} = \big|\,[\Phi_0(r_2) - \Phi_0(r_1)] - [\Phi_1(r_2) - \Phi_1(r_1)]\,\big|

    with the normal CDFs :math:`\Phi_i` (one root, :math:`r_2 = +\infty`, for equal variances).  The roots come from
    the cancellation-free quadratic formula; the result is exact up to an absolute round-off of about
    :math:`10^{-16}`.  Used for the total-variation rates of the book chapter *Sampling theory*
    (:cite:p:`li2024towards`).

    Parameters
    ----------
    m0, v0, m1, v1 : float
        Means and (positive) variances of the two laws.
    """
    try:
        m0, v0, m1, v1 = (float(z) for z in (m0, v0, m1, v1))
    except (TypeError, ValueError) as err:
        raise TypeError("means and variances must be numbers") from err
    if not all(np.isfinite([m0, v0, m1, v1])):
        raise ValueError("means and variances must be finite")
    if v0 <= 0 or v1 <= 0:
        raise ValueError(f"the variances must be positive, got {v0} and {v1}")
    s0, s1 = np.sqrt(v0), np.sqrt(v1)
    # log N(x; m0, v0) - log N(x; m1, v1) = A x^2 + B x + C
    A = 0.5 * (1 / v1 - 1 / v0)
    B = m0 / v0 - m1 / v1
    C = 0.5 * (m1**2 / v1 - m0**2 / v0) - 0.5 * np.log(v0 / v1)
    if A == 0:
        if B == 0:
            return 0.0
        roots = [-C / B, np.inf]
    else:
        disc = max(B * B - 4 * A * C, 0.0)
        q = -0.5 * (B + np.copysign(np.sqrt(disc), B))
        roots = sorted([q / A, C / q] if q != 0 else [-np.sqrt(-C / A), np.sqrt(-C / A)])

    def mass(m, s):
        lo = scipy.special.ndtr((roots[0] - m) / s)
        hi = 1.0 if np.isinf(roots[1]) else scipy.special.ndtr((roots[1] - m) / s)
        return hi - lo

    return float(abs(mass(m0, s0) - mass(m1, s1)))


def _density_values(f, points: np.ndarray, name: str) -> np.ndarray:
    values = _to_numpy(f(points) if callable(f) else f, name).reshape(-1)
    if values.size != points.size:
        raise ValueError(f"{name} must give one density per cell midpoint ({points.size}), got {values.size}")
    if np.any(values < 0):
        raise ValueError(f"{name} must be non-negative")
    return values


def density_tv(p, q, edges, mass_tol: float = 1e-3) -> float:
    r"""Total variation :math:`\frac12\int|p - q|` between two one-dimensional densities, by the midpoint rule.

    .. math::

        \mathrm{TV}(p, q) \approx \frac12\sum_j |p(m_j) - q(m_j)|\,(e_{j+1} - e_j),\qquad m_j = \tfrac12(e_j + e_{j+1}),

    on the cells of the increasing ``edges``.  The rule never evaluates a density at an edge, so a density with
    jumps (one supported on [0, 1], say) is integrated with an error of order :math:`\Delta^2` per smooth piece when
    its jumps sit on edges.  Each density must put all but ``mass_tol`` of its mass on the grid (checked as
    :math:`|\sum_j p(m_j)\Delta_j - 1| \le` ``mass_tol``): this guards against grids that are too short or too coarse.
    Used for the exact total variation of the output law of a diffusion model
    (:func:`diffnotes.estimators.output_law`) in the book chapter
    *Distribution estimation* (review Section 4.3.2, :cite:p:`oko2023diffusion`).

    Parameters
    ----------
    p, q : callable or array
        ``p(points)`` returning the densities at the cell midpoints (numpy arrays or tensors), or those values.
    edges : array of shape (J + 1,)
        Strictly increasing cell edges.
    mass_tol : float
        Largest allowed deviation of each quadrature mass from 1.
    """
    edges = np.asarray(edges, dtype=np.float64)
    if edges.ndim != 1 or edges.size < 2:
        raise ValueError(f"edges must be a 1-D array of at least 2 points, got shape {edges.shape}")
    if not np.all(np.isfinite(edges)) or np.any(np.diff(edges) <= 0):
        raise ValueError("edges must be finite and strictly increasing")
    mass_tol = float(mass_tol)
    if not 0 < mass_tol < math.inf:
        raise ValueError(f"mass_tol must be positive and finite, got {mass_tol}")
    mid, width = 0.5 * (edges[1:] + edges[:-1]), np.diff(edges)
    pv, qv = _density_values(p, mid, "p"), _density_values(q, mid, "q")
    for name, v in (("p", pv), ("q", qv)):
        mass = float(v @ width)
        if abs(mass - 1) > mass_tol:
            raise ValueError(f"{name} has mass {mass:.6g} on the grid [{edges[0]:.4g}, {edges[-1]:.4g}]; widen or "
                             f"refine the grid until it is within {mass_tol:g} of 1")
    return float(0.5 * np.abs(pv - qv) @ width)


def wasserstein_1d(x, y) -> float:
    r"""Exact 1-Wasserstein distance between the empirical laws of two samples in dimension one.

    .. math:: W_1(\hat\mu_x, \hat\mu_y) = \int_{\mathbb R} |F_x(t) - F_y(t)|\,\mathrm dt,

    with :math:`F_x, F_y` the empirical CDFs (computed by :func:`scipy.stats.wasserstein_distance`).  The sample sizes
    may differ.

    Parameters
    ----------
    x, y : array_like or torch.Tensor
        Samples shaped (n,) or (n, 1).

    Returns
    -------
    float
        The distance between the two empirical laws.
    """
    return float(scipy.stats.wasserstein_distance(_as_1d_sample(x, "x"), _as_1d_sample(y, "y")))


def wasserstein_1d_to_cdf(x, cdf: Callable, grid) -> float:
    r"""1-Wasserstein distance between the empirical law of a 1-D sample and a law given by its CDF.

    .. math:: W_1(\hat\mu_x, \mu) = \int_{\mathbb R} |F_x(t) - F(t)|\,\mathrm dt
              \approx \int_{g_0}^{g_m} |F_x(t) - F(t)|\,\mathrm dt,

    computed by the trapezoidal rule on the grid merged with the sample points.  Merging makes :math:`F_x` constant
    on every sub-interval, so the only discretisation error is that of the trapezoidal rule on the smooth :math:`F`,
    of order :math:`h^2` for a grid step :math:`h`.

    Grid requirement: ``grid`` must be increasing, fine where :math:`F` varies (a few thousand points over the
    bulk of the law are plenty), and wide enough to hold the whole sample and all but :math:`10^{-6}` of the law's
    mass on each side, since the tails beyond its ends, :math:`\int_{-\infty}^{g_0}F + \int_{g_m}^{\infty}(1-F)`,
    are not counted.

    Parameters
    ----------
    x : array_like or torch.Tensor
        Sample shaped (n,) or (n, 1).
    cdf : callable
        Vectorised CDF: ``cdf(t)`` returns an array of values in [0, 1], one per point of the 1-D array ``t``
        (for example ``scipy.stats.norm.cdf``).
    grid : array_like
        Strictly increasing points :math:`g_0 < \dots < g_m`, see the grid requirement above.

    Returns
    -------
    float
        The distance.

    Raises
    ------
    ValueError
        If the grid is not increasing, does not cover the sample or the law's mass, or the CDF returns values
        outside [0, 1] or of the wrong shape.
    """
    x = np.sort(_as_1d_sample(x, "x"))
    if not callable(cdf):
        raise TypeError(f"cdf must be a callable cdf(t) -> values, got {type(cdf).__name__}")
    grid = _to_numpy(grid, "grid")
    if grid.ndim != 1 or grid.size < 2:
        raise ValueError(f"grid must be a 1-D array of at least 2 points, got shape {grid.shape}")
    if np.any(np.diff(grid) <= 0):
        raise ValueError("grid must be strictly increasing")
    if x[0] < grid[0] or x[-1] > grid[-1]:
        raise ValueError(
            f"the grid [{grid[0]:.4g}, {grid[-1]:.4g}] must cover the sample, which spans [{x[0]:.4g}, {x[-1]:.4g}]"
        )
    t = np.union1d(grid, x)
    F = _to_numpy(cdf(t), "cdf(grid)").reshape(-1)
    if F.size != t.size:
        raise ValueError(f"cdf(t) must return one value per point of t: got {F.size} values for {t.size} points")
    if np.any(F < -1e-12) or np.any(F > 1 + 1e-12):
        raise ValueError("cdf(t) must return values in [0, 1]")
    if F[0] > _TAIL_TOL or F[-1] < 1.0 - _TAIL_TOL:
        raise ValueError(
            f"the grid leaves mass F(g_0) = {F[0]:.3g} and 1 - F(g_m) = {1 - F[-1]:.3g} outside its ends; "
            f"widen it so that both are below {_TAIL_TOL:g}"
        )
    Fx = np.searchsorted(x, t[:-1], side="right") / x.size  # F_x, constant on [t_i, t_{i+1})
    gaps = np.abs(Fx - F[:-1]) + np.abs(Fx - F[1:])
    return float(0.5 * np.sum(gaps * np.diff(t)))


def sliced_wasserstein(x, y, n_projections: int = 200, generator=None, p: float = 2, *, rng=_checks.UNSET) -> float:
    r"""Sliced p-Wasserstein distance between the empirical laws of two samples.

    .. math::

        \mathrm{SW}_p(\mu,\nu) = \Big(\mathbb E_{\theta\sim\mathrm{Unif}(S^{D-1})}
        W_p^p(\theta_\#\mu, \theta_\#\nu)\Big)^{1/p},

    the expectation replaced by an average over ``n_projections`` random directions :math:`\theta` (drawn from
    ``generator``), each 1-D distance computed exactly by ``ot.sliced_wasserstein_distance``
    :cite:p:`bonneel2015sliced,flamary2021pot`.  In dimension one the only directions are :math:`\pm1` and the
    result is the exact :math:`W_p`.

    Parameters
    ----------
    x, y : array_like or torch.Tensor
        Samples shaped (n, D) and (m, D) (or (n,), (m,) in dimension one).
    n_projections : int
        Number of random directions.
    generator : int, numpy.random.Generator, torch.Generator or None
        Source of the directions.  ``None`` draws fresh directions (the package's convention; until issue 20 it
        meant seed 0 here); pass a seed for the same number on every call.
    p : float
        Order, :math:`p \ge 1`.
    rng
        Deprecated former name of ``generator``.

    Returns
    -------
    float
        The sliced distance (the :math:`p`-th root taken).
    """
    x, y = _two_samples(x, y)
    n_projections = _checks.positive_int(n_projections, "n_projections", error=TypeError)
    p = float(p)
    if not (math.isfinite(p) and p >= 1):
        raise ValueError(f"the order p must be a finite number >= 1, got {p}")
    gen = _checks.numpy_generator(_checks.renamed(generator, rng, "rng"))
    theta = gen.standard_normal((x.shape[1], n_projections))
    theta /= np.linalg.norm(theta, axis=0, keepdims=True)
    return float(ot.sliced_wasserstein_distance(x, y, n_projections=n_projections, p=p, projections=theta))


# -- kernel and energy distances ----------------------------------------------------------------------------------
def _pairwise_sum(a: np.ndarray, b: np.ndarray, fn: Callable, metric: str) -> float:
    r""":math:`\sum_{i,j} fn(d(a_i, b_j))` over blocks of rows, never holding more than ``_BLOCK`` x len(b) numbers."""
    total = 0.0
    for start in range(0, a.shape[0], _BLOCK):
        total += float(np.sum(fn(scipy.spatial.distance.cdist(a[start : start + _BLOCK], b, metric))))
    return total


def _median_bandwidth(z: np.ndarray) -> float:
    """Median of the pairwise distances of the rows of z (of a fixed random subset of _MEDIAN_POINTS rows if larger)."""
    if z.shape[0] > _MEDIAN_POINTS:
        z = z[np.random.default_rng(0).choice(z.shape[0], _MEDIAN_POINTS, replace=False)]
    bw = float(np.median(scipy.spatial.distance.pdist(z)))
    if bw <= 0:
        raise ValueError("the median heuristic gives bandwidth 0 (most points coincide); pass a positive bandwidth")
    return bw


def mmd(x, y, bandwidth: float | None = None) -> float:
    r"""Unbiased estimate of the squared maximum mean discrepancy with a Gaussian kernel.

    With :math:`k(a,b) = \exp(-|a-b|^2/(2\ell^2))` and samples :math:`x_1..x_m`, :math:`y_1..y_n`
    :cite:p:`gretton2012kernel`,

    .. math::

        \widehat{\mathrm{MMD}}^2_u = \frac{1}{m(m-1)}\sum_{i\ne j} k(x_i,x_j) + \frac{1}{n(n-1)}\sum_{i\ne j}
        k(y_i,y_j) - \frac{2}{mn}\sum_{i,j} k(x_i,y_j).

    Its expectation is the population :math:`\mathrm{MMD}^2`, so for two samples of one law it fluctuates around
    zero and is **negative about half the time**: that is the unbiased estimator working, not an error.  Compare a
    value with :func:`noise_floor` rather than with zero.  Kernel sums are formed in blocks of rows, so
    :math:`n = 5000` takes well under a second and little memory.

    Parameters
    ----------
    x, y : array_like or torch.Tensor
        Samples shaped (m, D) and (n, D), at least 2 each.
    bandwidth : float or None
        Kernel width :math:`\ell > 0`.  ``None`` uses the median heuristic: the median distance between points of the
        pooled sample (of a fixed random subset of 1000 of its points when larger, so the result is deterministic).
        To compare several samplers, fix one bandwidth for all of them.

    Returns
    -------
    float
        :math:`\widehat{\mathrm{MMD}}^2_u` (squared, possibly slightly negative).
    """
    x, y = _two_samples(x, y, min_n=2)
    if bandwidth is None:
        bandwidth = _median_bandwidth(np.concatenate([x, y]))
    if isinstance(bandwidth, bool) or not isinstance(bandwidth, numbers.Real):
        raise TypeError(f"bandwidth must be a positive number or None, got {bandwidth!r}")
    if not (math.isfinite(bandwidth) and bandwidth > 0):
        raise ValueError(f"bandwidth must be a positive finite number, got {bandwidth}")
    gamma = 1.0 / (2.0 * float(bandwidth) ** 2)

    def kernel(d2):
        return np.exp(-gamma * d2)

    m, n = x.shape[0], y.shape[0]
    kxx = (_pairwise_sum(x, x, kernel, "sqeuclidean") - m) / (m * (m - 1))  # diagonal k(x_i, x_i) = 1 removed
    kyy = (_pairwise_sum(y, y, kernel, "sqeuclidean") - n) / (n * (n - 1))
    kxy = _pairwise_sum(x, y, kernel, "sqeuclidean") / (m * n)
    return float(kxx + kyy - 2.0 * kxy)


def energy_distance(x, y) -> float:
    r"""Energy distance between the empirical laws of two samples (the V-statistic).

    .. math::

        \mathcal E(x, y) = \frac{2}{mn}\sum_{i,j}|x_i-y_j| - \frac{1}{m^2}\sum_{i,j}|x_i-x_j|
        - \frac{1}{n^2}\sum_{i,j}|y_i-y_j|,

    the plug-in (V-statistic) estimate of :math:`2\mathbb E|X-Y| - \mathbb E|X-X'| - \mathbb E|Y-Y'|`
    :cite:p:`szekely2013energy`.  It is the exact energy distance between the two empirical laws, hence
    :math:`\ge 0`, and zero only for identical samples; for two samples of one law it has a positive bias of
    order :math:`1/n`, which :func:`noise_floor` measures.  In dimension one it equals
    ``scipy.stats.energy_distance(x, y) ** 2``.  Distance sums are formed in blocks of rows.

    Parameters
    ----------
    x, y : array_like or torch.Tensor
        Samples shaped (m, D) and (n, D).

    Returns
    -------
    float
        The energy distance (a squared quantity: its square root is a metric between laws).
    """
    x, y = _two_samples(x, y)
    m, n = x.shape[0], y.shape[0]
    exy = _pairwise_sum(x, y, np.asarray, "euclidean") / (m * n)
    exx = _pairwise_sum(x, x, np.asarray, "euclidean") / m**2
    eyy = _pairwise_sum(y, y, np.asarray, "euclidean") / n**2
    return max(float(2.0 * exy - exx - eyy), 0.0)  # >= 0 exactly; the clip removes round-off only


# -- total variation and entropy ------------------------------------------------------------------------------------
def _histogram_range(range_, dim: int, pooled: np.ndarray) -> list[tuple[float, float]]:
    if range_ is None:
        lo, hi = pooled.min(axis=0), pooled.max(axis=0)
        edges = [(float(a), float(b)) for a, b in zip(lo, hi, strict=True)]
    else:
        r = _to_numpy(range_, "range")
        if r.shape == (2,):
            r = np.tile(r, (dim, 1))
        if r.shape != (dim, 2):
            raise ValueError(f"range must be a pair (lo, hi) or {dim} such pairs, got shape {r.shape}")
        edges = [(float(a), float(b)) for a, b in r]
    for axis, (a, b) in enumerate(edges):
        if not a < b:
            raise ValueError(
                f"the histogram range on axis {axis} is [{a:.4g}, {b:.4g}], which is empty; "
                "pass range=(lo, hi) with lo < hi"
            )
    return edges


def tv_histogram(x, y, bins: int = 50, range=None) -> float:
    r"""Total variation distance between the histogram laws of two samples, or of a sample and a density (D = 1, 2).

    Both laws are binned on one common grid of ``bins`` equal cells per axis, and

    .. math:: \mathrm{TV}(p, q) = \tfrac12\sum_{\text{cells } c} |p_c - q_c| \in [0, 1].

    Sample mass that falls outside ``range`` counts as one more cell, so nothing is silently dropped.  If ``y`` is a
    density ``pdf(points) -> values`` instead of a sample, its cell probabilities are the density at the cell centres
    times the cell volume, renormalised to sum to one: a midpoint rule, accurate when the density varies little
    across a cell.

    The result estimates the TV between the *binned* laws: it is biased upwards by sampling noise (about
    :math:`\sqrt{\text{cells}/n}`) and downwards by binning, so compare values at one ``bins`` and ``n`` (and with
    :func:`noise_floor`).

    Parameters
    ----------
    x : array_like or torch.Tensor
        Sample shaped (n,), (n, 1) or (n, 2).
    y : array_like, torch.Tensor or callable
        A second sample of the same dimension, or a vectorised density taking points shaped (B, D) and returning B
        values.
    bins : int
        Number of cells per axis.
    range : pair or sequence of D pairs, optional
        Extent of the grid; by default the pooled minimum and maximum of the sample(s) on each axis.

    Returns
    -------
    float
        The total variation, in [0, 1].

    Raises
    ------
    ValueError
        For D > 2, an empty range, a bad ``bins``, or a density returning negative, non-finite or all-zero values.
    """
    x = _as_samples(x, "x")
    dim = x.shape[1]
    if dim > 2:
        raise ValueError(f"tv_histogram works in dimension 1 or 2 (a histogram needs bins^D cells); got D = {dim}")
    bins = _checks.positive_int(bins, "bins", error=TypeError)
    density = callable(y)
    if not density:
        y = _as_samples(y, "y")
        if y.shape[1] != dim:
            raise ValueError(f"x and y must have the same dimension, got D = {dim} and D = {y.shape[1]}")
    edges = _histogram_range(range, dim, x if density else np.concatenate([x, y]))

    def binned(sample):  # cell probabilities, and the mass outside the range
        counts, _ = np.histogramdd(sample, bins=bins, range=edges)
        return counts.ravel() / sample.shape[0], 1.0 - counts.sum() / sample.shape[0]

    p, p_out = binned(x)
    if density:
        axes = [np.linspace(a, b, bins + 1) for a, b in edges]
        centres = [0.5 * (e[1:] + e[:-1]) for e in axes]
        points = np.stack(np.meshgrid(*centres, indexing="ij"), axis=-1).reshape(-1, dim)
        q = _to_numpy(y(points), "pdf(points)").reshape(-1)
        if q.size != points.shape[0]:
            raise ValueError(f"pdf(points) must return one value per point: got {q.size} for {points.shape[0]}")
        if np.any(q < 0) or q.sum() <= 0:
            raise ValueError("pdf(points) must be non-negative and positive somewhere on the grid")
        q, q_out = q / q.sum(), 0.0  # times the (constant) cell volume, renormalised
    else:
        q, q_out = binned(y)
    return float(min(0.5 * (np.sum(np.abs(p - q)) + abs(p_out - q_out)), 1.0))


def kl_entropy(x, k: int = 1) -> float:
    r"""Kozachenko-Leonenko nearest-neighbour estimate of the differential entropy of a sample.

    With :math:`r_i` the distance from :math:`x_i` to its :math:`k`-th nearest neighbour among the other points and
    :math:`V_D = \pi^{D/2}/\Gamma(D/2+1)` the volume of the unit ball :cite:p:`kozachenko1987sample`,

    .. math:: \hat H = \psi(n) - \psi(k) + \log V_D + \frac{D}{n}\sum_{i=1}^n \log r_i,

    (:math:`\psi` the digamma function), an estimate of :math:`H = -\mathbb E\log p(X)` that is consistent for
    continuous laws.  Its standard error is roughly :math:`\sqrt{(\psi'(k) + \mathrm{Var}\log p(X))/n}`.

    Parameters
    ----------
    x : array_like or torch.Tensor
        Sample shaped (n, D) (or (n,) in dimension one) with :math:`n > k` distinct points.
    k : int
        Which neighbour to use; larger :math:`k` lowers the variance and raises the bias.

    Returns
    -------
    float
        The entropy estimate, in nats.

    Raises
    ------
    ValueError
        If :math:`n \le k`, or if some point has its :math:`k`-th neighbour at distance zero (duplicate points: the
        estimator needs a sample from a continuous law; remove duplicates or add a tiny jitter).
    """
    k = _checks.positive_int(k, "k", error=TypeError)
    x = _as_samples(x, "x", min_n=k + 1)
    n, dim = x.shape
    dist, _ = scipy.spatial.cKDTree(x).query(x, k=k + 1)  # column 0 is the point itself
    r = dist[:, k]
    if np.any(r <= 0):
        raise ValueError(
            f"{int(np.sum(r <= 0))} points have their k-th nearest neighbour at distance 0 (duplicate points); "
            "the estimator needs distinct points from a continuous law"
        )
    log_ball = 0.5 * dim * math.log(math.pi) - math.lgamma(0.5 * dim + 1.0)
    return float(scipy.special.digamma(n) - scipy.special.digamma(k) + log_ball + dim * np.mean(np.log(r)))


# -- the noise floor ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Floor:
    """Two-sample noise floor of a Monte Carlo metric (see :func:`noise_floor`).

    Attributes
    ----------
    mean : float
        Mean of the metric between two independent samples of the reference law.
    std : float
        Standard deviation of those values (ddof = 1).
    values : tuple of float
        The individual values, one per repeat.
    """

    mean: float
    std: float
    values: tuple[float, ...]

    def __str__(self) -> str:
        return f"noise floor {self.mean:.3g} +- {self.std:.2g} ({len(self.values)} repeats)"


def noise_floor(metric: Callable, sample: Callable, n: int, repeats: int = 10, generator=None, *,
                rng=_checks.UNSET) -> Floor:
    r"""The two-sample noise floor of a Monte Carlo metric.

    Draws two independent samples ``a = sample(n, gen)``, ``b = sample(n, gen)`` of the reference law, evaluates
    ``metric(a, b)``, and repeats.  The metric's values between two samples of the *same* law are its floor: a
    sampler whose error (the metric between its output and a reference sample, both of size ``n``) lies within
    this floor cannot be told from an exact sampler at this ``n``.

    Parameters
    ----------
    metric : callable
        ``metric(a, b) -> float``, for example :func:`mmd` or
        ``functools.partial(sliced_wasserstein, generator=0)``.
    sample : callable
        ``sample(n, gen) -> samples``; ``gen`` is the :class:`numpy.random.Generator` passed on by this function
        (made from ``generator`` by ``numpy_generator``: a numpy generator given is passed on itself).
    n : int
        Size of each sample (use the size the compared sampler will use: the floor shrinks with ``n``).
    repeats : int
        Number of pairs, at least 2.
    generator : int, numpy.random.Generator, torch.Generator or None
        Source of randomness; ``None`` draws fresh entropy, pass a seed for reproducible numbers.
    rng
        Deprecated former name of ``generator``.

    Returns
    -------
    Floor
        ``Floor(mean, std, values)``.
    """
    if not callable(metric) or not callable(sample):
        raise TypeError("metric and sample must be callables: metric(a, b) -> float and sample(n, rng) -> samples")
    n = _checks.positive_int(n, "n", 2, error=TypeError)
    repeats = _checks.positive_int(repeats, "repeats", 2, error=TypeError)
    gen = _checks.numpy_generator(_checks.renamed(generator, rng, "rng"))
    values = []
    for _ in range(repeats):
        value = metric(sample(n, gen), sample(n, gen))
        value = _to_numpy(value, "metric(a, b)")
        if value.size != 1:
            raise ValueError(f"metric(a, b) must return one number, got an array of shape {value.shape}")
        values.append(float(value.reshape(())))
    arr = np.array(values)
    return Floor(mean=float(arr.mean()), std=float(arr.std(ddof=1)), values=tuple(values))


class PermutationTest(NamedTuple):
    """Result of :func:`energy_permutation_test`: the observed statistic, its permutation null, the p-value.

    Parameters
    ----------
    statistic : float
        The energy distance of the observed labelling.
    null : numpy.ndarray
        The energy distances of the ``n_permutations`` random relabellings, shape (n_permutations,).
    pvalue : float
        The fraction of the ``n_permutations + 1`` distances (the observed one included) at least as large as the
        observed one, in (0, 1].
    """

    statistic: float
    null: np.ndarray
    pvalue: float


def energy_permutation_test(x, y, n_permutations: int = 200, generator=None, *,
                            rng=_checks.UNSET) -> PermutationTest:
    r"""Two-sample permutation test of :math:`P_x = P_y` with the energy distance as statistic.

    The pooled sample is relabelled ``n_permutations`` times at random; the p-value is the fraction of the
    ``n_permutations + 1`` energy distances (the observed labelling included) at least as large as the observed one,
    so it is exact under the null hypothesis and never zero.  All labellings share one pairwise-distance matrix, so
    the cost is one :math:`(n_x+n_y)^2` matrix and one matrix product.  :cite:p:`szekely2013energy`.
    The labellings are drawn from ``generator`` (an int seed, a numpy or torch generator; ``None``: fresh entropy;
    ``rng`` is its deprecated former name).

    Parameters
    ----------
    x, y : array_like or torch.Tensor
        The two samples, shaped (n, D) or (n,) (dimension one), of the same dimension and at least 2 points each.
    n_permutations : int
        Number of random relabellings, a positive integer (default 200).
    generator : int, numpy.random.Generator or torch.Generator, optional
        Source of the relabellings.
    rng : optional
        Deprecated former name of ``generator`` (a DeprecationWarning; passing both is a TypeError).

    Returns
    -------
    PermutationTest
        The observed statistic, the permutation null and the p-value.
    """
    x, y = _two_samples(x, y, min_n=2)
    n_permutations = _checks.positive_int(n_permutations, "n_permutations", error=TypeError)
    rng = _checks.numpy_generator(_checks.renamed(generator, rng, "rng"))
    pooled = np.concatenate([x, y])
    m, n = len(x), len(y)
    D = scipy.spatial.distance.cdist(pooled, pooled)
    labels = np.zeros((m + n, n_permutations + 1))
    labels[:m, 0] = 1.0  # column 0: the observed labelling
    for k in range(1, n_permutations + 1):
        labels[rng.permutation(m + n)[:m], k] = 1.0
    DL, row = D @ labels, D.sum(1)
    within_x = (labels * DL).sum(0) / m**2
    within_y = ((1 - labels) * (row[:, None] - DL)).sum(0) / n**2
    between = ((1 - labels) * DL).sum(0) / (m * n)
    dist = 2 * between - within_x - within_y  # the V-statistic of energy_distance, for every labelling
    return PermutationTest(float(dist[0]), dist[1:], float(np.mean(dist >= dist[0])))


def marginal_sampler(target, t: float) -> Callable:
    """Exact draws of a target's diffused law P_t, as the ``sample(m, rng)`` that :func:`noise_floor` takes.

    Each call seeds a fresh ``torch.Generator`` from the numpy generator ``rng`` and returns
    ``target.sample_marginal(m, t, generator).numpy()``. Used by the chapters *Samplers*, *Learning the score* and
    *Faster sampling* for two-sample floors.

    Parameters
    ----------
    target
        Any object with ``sample_marginal(n, t, generator)`` (the exact targets of :mod:`diffnotes.targets`).
    t : float
        The diffusion time of the law drawn from.

    Returns
    -------
    callable
        ``sample(m, rng) -> numpy.ndarray`` of shape (m, D).
    """
    if not callable(getattr(target, "sample_marginal", None)):
        raise TypeError(f"target must have a sample_marginal(n, t, generator) method, got {type(target).__name__}")

    def sample(m: int, rng: np.random.Generator) -> np.ndarray:
        import torch

        generator = torch.Generator().manual_seed(int(rng.integers(2**31)))
        return target.sample_marginal(m, t, generator).numpy()

    return sample
