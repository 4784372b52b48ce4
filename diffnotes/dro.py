r"""Distributionally robust optimization with diffusion-generated scenarios: the newsvendor (review Section 7.2).

The review's future directions (Section 7.2, :cite:p:`chen2024opportunities`) conjecture a link between diffusion
models and distributionally robust optimization (DRO): a diffusion model fitted to data and stopped early at
:math:`t_0` produces samples from a law *near* the empirical one (the distance grows with :math:`t_0`, cf. Theorem 1),
so sets of generated scenarios at several :math:`t_0` could play the part of nested uncertainty sets around the
empirical law.  This is a conjecture, not a theorem; this module provides the pieces to illustrate it on the
simplest decision problem with a closed form.

**The newsvendor.** Order :math:`q` units before a random demand :math:`\xi`; each unsold unit costs :math:`h`
(holding), each missing unit :math:`b` (backorder):

.. math::

    c(q, \xi) = h\,(q - \xi)^+ + b\,(\xi - q)^+, \qquad
    q^\star = F^{-1}\Big(\frac{b}{b + h}\Big) = \arg\min_q \mathbb E\,c(q, \xi).

* **SAA** (sample average approximation) minimises the empirical mean cost; the minimiser is the empirical
  quantile :math:`\hat\xi_{(\lceil n\kappa\rceil)}`, :math:`\kappa = b/(b+h)`.
* **Wasserstein DRO** :cite:p:`mohajerinesfahani2018data` minimises the worst case over the ball
  :math:`\{Q : W_1(Q, \hat P_n) \le \varepsilon\}` of laws supported in :math:`\Xi = [\ell, u]`.  For the piecewise
  affine cost :math:`c = \max_k (a_k\xi + c_k(q))` its dual is the linear program

  .. math::

      \min_{q,\ \lambda \ge 0,\ s}\ \lambda\varepsilon + \frac1n\sum_{i=1}^n s_i,\qquad
      s_i \ge a_k\zeta + c_k(q) - \lambda|\zeta - \hat\xi_i|\quad
      \forall k,\ \forall \zeta \in \{\hat\xi_i, \ell, u\},

  because a concave piecewise-linear function of :math:`\zeta` attains its supremum over :math:`[\ell, u]` at a
  kink or an end point (the kink :math:`\zeta = q` of the cost never wins: there the cost is 0).  On the whole line
  (:math:`\ell = -\infty`, :math:`u = \infty`) the worst case is the closed form
  :math:`\hat{\mathbb E}\,c + \varepsilon\max(h, b)`, whose minimiser is SAA's.
* **Diffusion scenario sets** (the review's conjecture): a kernel score (:class:`~diffnotes.estimators.KernelScore`)
  fitted to the standardised demand drives the backward sampler; its states at the early-stopping times
  :math:`t_0^{(1)} < t_0^{(2)} < \dots` give, for each :math:`t_0`, M sets of m scenarios
  :math:`\{\xi^{(k)}_j\}`; the decision is the minimax one

  .. math::

      q_{\rm DM}(t_0) = \arg\min_q\ \max_{k \le M}\ \frac1m\sum_{j=1}^m c\big(q, \xi^{(k)}_j\big),

  computed exactly (:func:`minimax_decision`): each set's mean cost is convex and piecewise linear in q, and so is
  their maximum.

Book chapter: *Adversarial robustness and distributionally robust optimization*.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy.optimize import linprog

from . import _checks
from .estimators import KernelScore
from .samplers import ddpm, time_grid
from .sde import ConstantVP

__all__ = [
    "newsvendor_cost",
    "critical_ratio",
    "saa_decision",
    "wasserstein_worst_case",
    "wasserstein_decision",
    "minimax_decision",
    "diffusion_scenarios",
]


# -- checks --------------------------------------------------------------------------------------------------------
def _costs(holding, backorder) -> tuple[float, float]:
    out = []
    for name, value in [("holding", holding), ("backorder", backorder)]:
        try:
            v = float(value)
        except (TypeError, ValueError) as err:
            raise TypeError(f"{name} must be a number, got {value!r}") from err
        if not math.isfinite(v) or v <= 0:
            raise ValueError(f"{name} must be a finite cost > 0, got {value!r}")
        out.append(v)
    return out[0], out[1]


def _demand(demand, name: str = "demand", min_n: int = 1) -> np.ndarray:
    if isinstance(demand, torch.Tensor):
        demand = demand.detach().cpu().numpy()
    try:
        d = np.asarray(demand, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise TypeError(f"{name} must be an array of numbers, got {type(demand).__name__}") from err
    if d.ndim == 2 and d.shape[1] == 1:
        d = d[:, 0]
    if d.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional (n,) or (n, 1), got shape {d.shape}")
    if d.size < min_n:
        raise ValueError(f"{name} must have at least {min_n} values, got {d.size}")
    if not np.all(np.isfinite(d)):
        raise ValueError(f"{name} must be finite")
    return d


def _radius(value) -> float:
    try:
        r = float(value)
    except (TypeError, ValueError) as err:
        raise TypeError(f"radius must be a number, got {value!r}") from err
    if not math.isfinite(r) or r < 0:
        raise ValueError(f"radius must be a finite number >= 0, got {value!r}")
    return r


def _support(support, d: np.ndarray) -> tuple[float, float]:
    try:
        lo, hi = (float(s) for s in support)
    except (TypeError, ValueError) as err:
        raise TypeError(f"support must be a pair (lower, upper), got {support!r}") from err
    if math.isnan(lo) or math.isnan(hi) or not lo < hi:
        raise ValueError(f"support must be a pair lower < upper, got {support!r}")
    if d.min() < lo or d.max() > hi:
        raise ValueError(f"the demand data must lie in the support [{lo:g}, {hi:g}]")
    return lo, hi


# -- the newsvendor ------------------------------------------------------------------------------------------------
def newsvendor_cost(q, demand, holding: float = 1.0, backorder: float = 1.0) -> np.ndarray:
    r"""Mean newsvendor cost :math:`\frac1n\sum_i h(q - \xi_i)^+ + b(\xi_i - q)^+` for each order in ``q``.

    Parameters
    ----------
    q : float or array_like
        Order quantities; the result has the shape of ``q`` (a float for a number).
    demand : array_like, shape (n,)
        Demand values (a sample, or scenarios).
    holding, backorder : float
        The unit costs h > 0 and b > 0.
    """
    h, b = _costs(holding, backorder)
    d = _demand(demand)
    q_arr = np.asarray(q, dtype=np.float64)
    if not np.all(np.isfinite(q_arr)):
        raise ValueError("q must be finite")
    diff = q_arr[..., None] - d
    out = (h * np.maximum(diff, 0) + b * np.maximum(-diff, 0)).mean(-1)
    return float(out) if out.ndim == 0 else out


def critical_ratio(holding: float = 1.0, backorder: float = 1.0) -> float:
    r"""The critical ratio :math:`\kappa = b / (b + h)`: the optimal order is the :math:`\kappa`-quantile.

    Parameters
    ----------
    holding : float
        Holding cost h per unit left over, finite and > 0 (default 1).
    backorder : float
        Backorder cost b per unit short, finite and > 0 (default 1).
    """
    h, b = _costs(holding, backorder)
    return b / (b + h)


def saa_decision(demand, holding: float = 1.0, backorder: float = 1.0) -> float:
    r"""The SAA order: the empirical quantile :math:`\xi_{(\lceil n\kappa\rceil)}`, :math:`\kappa = b/(b+h)`.

    It minimises :func:`newsvendor_cost` over q: the empirical cost is convex and piecewise linear with slope
    :math:`(h\,\#\{\xi_i \le q\} - b\,\#\{\xi_i > q\})/n` between the order statistics, which first becomes
    non-negative at the order statistic of rank :math:`\lceil n\kappa\rceil` (the smallest minimiser when the
    minimum is flat).

    Parameters
    ----------
    demand : array_like or torch.Tensor
        Observed demands, shape (n,) or (n, 1), finite, at least one.
    holding : float
        Holding cost h per unit left over, finite and > 0 (default 1).
    backorder : float
        Backorder cost b per unit short, finite and > 0 (default 1).
    """
    h, b = _costs(holding, backorder)
    d = np.sort(_demand(demand))
    n = d.size
    k = math.ceil(n * b / (b + h) - 1e-12)  # the guard keeps n * kappa = integer on its own rank despite round-off
    return float(d[max(k, 1) - 1])


def _wasserstein_lp(d: np.ndarray, radius: float, h: float, b: float, lo: float, hi: float, q_fixed=None):
    """The dual LP of the worst case over the W1 ball; variables (q, lam, s_1..s_n)."""
    n = d.size
    rows, rhs = [], []
    # pieces of the cost: (a, coefficient of q, constant) with c = a * zeta + cq * q: h (q - zeta) and b (zeta - q)
    pieces = [(-h, h), (b, -b)]
    for i in range(n):
        zetas = [d[i]] + [z for z in (lo, hi) if math.isfinite(z)]
        for zeta in zetas:
            dist = abs(zeta - d[i])
            for a, cq in pieces:
                # a zeta + cq q - lam dist - s_i <= 0
                row = np.zeros(n + 2)
                row[0], row[1], row[2 + i] = cq, -dist, -1.0
                rows.append(row)
                rhs.append(-a * zeta)
    cost = np.concatenate([[0.0, radius], np.full(n, 1.0 / n)])
    lam_lo = 0.0
    # an unbounded side forces lam >= the slope of the cost towards it (otherwise the worst case is infinite)
    if not math.isfinite(hi):
        lam_lo = max(lam_lo, b)
    if not math.isfinite(lo):
        lam_lo = max(lam_lo, h)
    q_bounds = (lo if math.isfinite(lo) else None, hi if math.isfinite(hi) else None)
    if q_fixed is not None:
        q_bounds = (q_fixed, q_fixed)
    bounds = [q_bounds, (lam_lo, None)] + [(None, None)] * n
    res = linprog(cost, A_ub=np.array(rows), b_ub=np.array(rhs), bounds=bounds, method="highs")
    if res.status != 0:
        raise RuntimeError(f"the Wasserstein DRO linear program failed: {res.message}")
    return float(res.x[0]), float(res.fun), float(res.x[1])


def wasserstein_worst_case(q: float, demand, radius: float, holding: float = 1.0, backorder: float = 1.0,
                           support=(0.0, math.inf)) -> float:
    r"""The worst-case mean cost :math:`\sup\{\mathbb E_Q\,c(q, \xi) : W_1(Q, \hat P_n) \le \varepsilon,\
    Q(\Xi) = 1\}` of a fixed order q.

    Computed by the dual linear program of :cite:t:`mohajerinesfahani2018data` (see the module docstring) with q
    fixed; for ``support=(-inf, inf)`` it is the closed form :math:`\hat{\mathbb E}\,c(q, \xi) + \varepsilon\max(h,
    b)`.  Review Section 7.2; book chapter *Adversarial robustness and distributionally robust optimization*.

    Parameters
    ----------
    q : float
        The order.
    demand : array_like, shape (n,)
        The sample defining the empirical law :math:`\hat P_n`.
    radius : float
        The radius :math:`\varepsilon \ge 0` of the Wasserstein-1 ball.
    holding, backorder : float
        Unit costs h, b > 0.
    support : (float, float)
        The support :math:`\Xi = [\ell, u]` of the admissible laws (infinite ends allowed); default :math:`[0,
        \infty)`, demand being non-negative.
    """
    h, b = _costs(holding, backorder)
    d = _demand(demand)
    radius = _radius(radius)
    lo, hi = _support(support, d)
    q = float(q)
    if not math.isfinite(q):
        raise ValueError(f"q must be finite, got {q}")
    if not (math.isfinite(lo) or math.isfinite(hi)):
        return float(newsvendor_cost(q, d, h, b)) + radius * max(h, b)
    return _wasserstein_lp(d, radius, h, b, lo, hi, q_fixed=q)[1]


def wasserstein_decision(demand, radius: float, holding: float = 1.0, backorder: float = 1.0,
                         support=(0.0, math.inf)) -> tuple[float, float]:
    r"""The Wasserstein-1 DRO order and its worst-case cost, :math:`\min_q \sup_{W_1(Q, \hat P_n) \le \varepsilon}
    \mathbb E_Q\,c(q, \xi)`.

    One linear program (SciPy's HiGHS) in :math:`(q, \lambda, s_1, \dots, s_n)` with :math:`2n` constraints per
    point of :math:`\{\hat\xi_i, \ell, u\}` (module docstring; :cite:p:`mohajerinesfahani2018data`).  On the whole
    line the worst case is the SAA cost plus :math:`\varepsilon\max(h, b)`, so the decision is SAA's
    (:func:`saa_decision`).  Review Section 7.2; book chapter *Adversarial robustness and distributionally robust
    optimization*.

    Parameters
    ----------
    demand, radius, holding, backorder, support
        As for :func:`wasserstein_worst_case`.

    Returns
    -------
    (float, float)
        The order :math:`q_\varepsilon` and the optimal worst-case mean cost.
    """
    h, b = _costs(holding, backorder)
    d = _demand(demand)
    radius = _radius(radius)
    lo, hi = _support(support, d)
    if not (math.isfinite(lo) or math.isfinite(hi)):
        q = saa_decision(d, h, b)
        return q, float(newsvendor_cost(q, d, h, b)) + radius * max(h, b)
    q, value, _ = _wasserstein_lp(d, radius, h, b, lo, hi)
    return q, value


def _set_costs(q: np.ndarray, sets: np.ndarray, h: float, b: float) -> np.ndarray:
    """Mean cost of every scenario set (rows of ``sets``, sorted) at every order q: shape (M, len(q))."""
    M, m = sets.shape
    csum = np.concatenate([np.zeros((M, 1)), np.cumsum(sets, axis=1)], axis=1)
    out = np.empty((M, q.size))
    for k in range(M):
        below = np.searchsorted(sets[k], q, side="right")  # #{xi <= q}
        s_below = csum[k, below]
        out[k] = (h * (q * below - s_below) + b * ((csum[k, -1] - s_below) - q * (m - below))) / m
    return out


def minimax_decision(scenario_sets, holding: float = 1.0, backorder: float = 1.0, method: str = "exact"):
    r"""The order that minimises the worst mean cost over scenario sets, :math:`\min_q \max_k \frac1m\sum_j
    c(q, \xi^{(k)}_j)`.

    Each set's mean cost :math:`f_k(q)` is convex and piecewise linear with kinks at its scenarios, so
    :math:`f = \max_k f_k` is too.  ``method="exact"`` evaluates f at every kink (sorted cumulative sums), then on
    the two kink intervals around the best kink, where every :math:`f_k` is affine, minimises the maximum of M
    affine functions exactly (the optimum is an end point or the crossing of two of them).  ``method="lp"`` solves
    the epigraph linear program :math:`\min z` s.t. :math:`z \ge \frac1m\sum_j u_{kj}`,
    :math:`u_{kj} \ge h(q - \xi_{kj})`, :math:`u_{kj} \ge b(\xi_{kj} - q)` with SciPy (slower; the reference).
    With one set it is SAA on that set.  Review Section 7.2 (the DRO conjecture); book chapter *Adversarial
    robustness and distributionally robust optimization*.

    Parameters
    ----------
    scenario_sets : array_like, shape (M, m)
        M sets of m scenarios each.
    holding, backorder : float
        Unit costs h, b > 0.
    method : {"exact", "lp"}
        The solver.

    Returns
    -------
    (float, float)
        The order and the optimal worst-set mean cost.
    """
    h, b = _costs(holding, backorder)
    sets = scenario_sets.detach().cpu().numpy() if isinstance(scenario_sets, torch.Tensor) else scenario_sets
    try:
        sets = np.asarray(sets, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise TypeError("scenario_sets must be an array of numbers shaped (M, m)") from err
    if sets.ndim != 2 or min(sets.shape) < 1:
        raise ValueError(f"scenario_sets must have shape (M, m) with M, m >= 1, got {sets.shape}")
    if not np.all(np.isfinite(sets)):
        raise ValueError("scenario_sets must be finite")
    if method == "lp":
        M, m = sets.shape
        nv = 2 + M * m  # q, z, u
        rows, rhs = [], []
        for k in range(M):
            row = np.zeros(nv)
            row[1] = -1.0
            row[2 + k * m: 2 + (k + 1) * m] = 1.0 / m
            rows.append(row)
            rhs.append(0.0)
        for k in range(M):
            for j in range(m):
                idx = 2 + k * m + j
                for sign, cost in [(1.0, h), (-1.0, b)]:  # cost * sign * (q - xi) - u <= 0
                    row = np.zeros(nv)
                    row[0], row[idx] = cost * sign, -1.0
                    rows.append(row)
                    rhs.append(cost * sign * sets[k, j])
        c = np.zeros(nv)
        c[1] = 1.0
        res = linprog(c, A_ub=np.array(rows), b_ub=np.array(rhs), bounds=[(None, None)] * nv, method="highs")
        if res.status != 0:
            raise RuntimeError(f"the minimax linear program failed: {res.message}")
        return float(res.x[0]), float(res.fun)
    if method != "exact":
        raise ValueError(f"method must be 'exact' or 'lp', got {method!r}")
    sets = np.sort(sets, axis=1)
    kinks = np.unique(sets)
    f_kinks = _set_costs(kinks, sets, h, b)
    worst = f_kinks.max(0)
    j = int(np.argmin(worst))
    best_q, best_val = float(kinks[j]), float(worst[j])
    for lo_i, hi_i in [(j - 1, j), (j, j + 1)]:
        if lo_i < 0 or hi_i >= kinks.size:
            continue
        u, w = kinks[lo_i], kinks[hi_i]
        fu, fw = f_kinks[:, lo_i], f_kinks[:, hi_i]
        slope = (fw - fu) / (w - u)
        # crossings of pairs of affine pieces inside (u, w)
        ds = slope[:, None] - slope[None, :]
        with np.errstate(divide="ignore", invalid="ignore"):
            cross = u + (fu[None, :] - fu[:, None]) / ds
        cand = cross[np.isfinite(cross) & (cross > u) & (cross < w)]
        if cand.size:
            vals = (fu[:, None] + slope[:, None] * (cand[None, :] - u)).max(0)
            i = int(np.argmin(vals))
            if vals[i] < best_val:
                best_q, best_val = float(cand[i]), float(vals[i])
    return best_q, best_val


# -- diffusion scenarios -------------------------------------------------------------------------------------------
def diffusion_scenarios(demand, t0s, n_sets: int, n_per_set: int, *, bandwidth: float | None = None,
                        sde=None, n_steps: int = 100, lower: float | None = 0.0, generator=None) -> dict:
    r"""Scenario sets drawn from a diffusion model fitted to demand data and stopped at several times :math:`t_0`.

    The demand is standardised, :math:`z_i = (\xi_i - \bar\xi)/s`; a
    :class:`~diffnotes.estimators.KernelScore` of bandwidth :math:`\sigma` fitted to the :math:`z_i` drives
    :func:`~diffnotes.samplers.ddpm` from :math:`\mathsf N(0, 1)` at T down to the smallest :math:`t_0`, on a
    log-SNR grid that contains every requested :math:`t_0`; the state at each :math:`t_0` is mapped back,
    :math:`\xi = \bar\xi + s\,z`, and clipped below at ``lower`` (demand is non-negative).  The state at
    :math:`t_0` has (up to discretisation and the prior's :math:`e^{-T}` error) the law
    :math:`\frac1n\sum_i\mathsf N(\alpha(t_0)z_i,\ \alpha(t_0)^2\sigma^2 + h(t_0))`
    (:func:`~diffnotes.estimators.output_law`): the empirical law shrunk by :math:`\alpha(t_0)` and smoothed, a
    neighbourhood of it that widens with :math:`t_0`.  Review Section 7.2 (the DRO conjecture); book chapter
    *Adversarial robustness and distributionally robust optimization*.

    Parameters
    ----------
    demand : array_like, shape (n,)
        The demand data, n >= 2.
    t0s : sequence of float
        Early-stopping times in (0, T).
    n_sets, n_per_set : int
        M sets of m scenarios for each :math:`t_0`.
    bandwidth : float, optional
        Kernel bandwidth in standardised units (default: KernelScore's rule).
    sde : VPSDE, optional
        Forward process (default ``ConstantVP(T=8)``).
    n_steps : int
        Steps of the log-SNR grid (the t0's are added to it).
    lower : float or None
        Clip the scenarios below at this value (None: no clipping).
    generator : None, int, torch.Generator or numpy Generator
        Source of the sampler's randomness.

    Returns
    -------
    dict
        ``{t0: array of shape (n_sets, n_per_set)}``.
    """
    d = _demand(demand, min_n=2)
    n_sets = _checks.positive_int(n_sets, "n_sets")
    n_per_set = _checks.positive_int(n_per_set, "n_per_set")
    n_steps = _checks.positive_int(n_steps, "n_steps")
    sde = ConstantVP(T=8.0) if sde is None else _checks.sde_or_default(sde)
    t0s = [float(t) for t in np.atleast_1d(np.asarray(t0s, dtype=np.float64))]
    if not t0s:
        raise ValueError("t0s must hold at least one early-stopping time")
    for t in t0s:
        if not 0 < t < sde.T:
            raise ValueError(f"every early-stopping time must lie in (0, T) = (0, {sde.T:g}), got {t:g}")
    gen = _checks.generator(generator)
    mean, scale = float(d.mean()), float(d.std())
    if scale == 0:
        raise ValueError("the demand data are all equal: there is no law to fit")
    z = torch.as_tensor((d - mean) / scale)[:, None]
    est = KernelScore(z, sde, bandwidth=bandwidth)
    base = time_grid(sde, min(t0s), n_steps, spacing="logsnr").numpy()
    grid = np.unique(np.concatenate([base, t0s]))[::-1].copy()
    grid = grid[np.concatenate([[True], np.diff(grid) < -1e-12])]  # drop near-duplicates
    n = n_sets * n_per_set
    _, path = ddpm(est.score, (n, 1), torch.as_tensor(grid), sde=sde, generator=gen, return_trajectory=True)
    out = {}
    for t in t0s:
        k = int(np.argmin(np.abs(grid - t)))
        xi = mean + scale * path[k, :, 0].numpy()
        if lower is not None:
            xi = np.maximum(xi, float(lower))
        out[t] = xi.reshape(n_sets, n_per_set)
    return out
