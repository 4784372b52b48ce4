r"""Exact output laws, per-step laws and path-space divergences of samplers on Gaussian data, without Monte Carlo.

**Output laws.**  For Gaussian data the exact score is affine.  With a diagonal covariance it acts coordinate by
coordinate, so every sampler of :mod:`diffnotes.samplers` is an affine map of its start and of its noise draws:

.. math::

    x_N = c \odot x_0 + d + \sum_{j} b_j \odot \xi_j .

Running the sampler on a few basis inputs identifies :math:`c`, :math:`d` and every :math:`b_j`: a zero start with no
noise gives :math:`d`; a start of ones gives :math:`c + d`; a zero start whose j-th noise draw is ones (all other draws
zero) gives :math:`b_j + d`.  With :math:`x_0 \sim \mathsf N(m_0, v_0)` the output is then exactly

.. math::

    \mathsf N\Big(c\,m_0 + d,\; c^2 v_0 + \sum_j b_j^2\Big)

per coordinate.  This separates the discretisation error from Monte Carlo error completely (book chapters
*Forward and backward processes* and *Samplers*).

**Full covariances.**  The VP forward process and the isotropic noise of every sampler are invariant under rotations,
and each sampler step combines the state and the score with scalar coefficients.  For data
:math:`\mathsf N(\mu, \Sigma)` with :math:`\Sigma = U\,\mathrm{diag}(\lambda)\,U^\top` the sampler therefore
commutes with :math:`U`: in the coordinates :math:`y = U^\top x` the data are
:math:`\mathsf N(U^\top\mu, \mathrm{diag}(\lambda))`, the score is coordinate-wise, and the output law in the
original coordinates is :math:`\mathsf N\big(U m', U S' U^\top\big)` with
:math:`S' = \mathrm{diag}(c)\,U^\top V_0 U\,\mathrm{diag}(c) + \mathrm{diag}(\sum_j b_j^2)`
(:func:`gaussian_output_law_full`).

**Per-step laws.**  For a stochastic sampler whose step depends only on the current state (all those of
:mod:`diffnotes.samplers`), each step :math:`k` is a Gaussian transition
:math:`x_{k+1} \mid x_k \sim \mathsf N(c_k x_k + d_k,\ w_k)`, identified by the same basis trick on a one-step grid.
The laws after every step then follow from the recursion

.. math::

    m_{k+1} = c_k m_k + d_k, \qquad v_{k+1} = c_k^2 v_k + w_k ,

which is also how the output law of a stochastic sampler is computed (in :math:`O(N)` sampler steps rather than the
:math:`O(N^2)` of identifying every noise draw of a whole run at once).  Deterministic samplers (including multistep
ones) are identified on the whole run.  Every identification is verified: one full run from a random start with random
noise must agree with the identified affine map to round-off, otherwise a ``ValueError`` says that the score is not
affine and coordinate-wise (in the eigenbasis of :math:`\Sigma`) or the sampler not Markov.

**Path-space divergence.**  The sampling bounds of the review (Section 4.3; :cite:p:`chen2023sampling`,
:cite:p:`benton2024nearly`) control the Kullback-Leibler divergence between the *path* laws of the exact reverse
process and of the sampler, not only between their final marginals (earlier analyses such as
:cite:p:`lee2022convergence` bound total variation under stronger assumptions).  On the time grid
:math:`T = \tau_0 > \tau_1 > \dots > \tau_N` (the last time is the early-stopping time) both are Gaussian Markov
chains: the exact reverse process read on the grid has the transitions of the forward process reversed,

.. math::

    X_{\tau_{k+1}} \mid X_{\tau_k} = x \;\sim\; \mathsf N\Big(m_{k+1} + \tfrac{\rho_k v_{k+1}}{v_k}(x - m_k),\;
    \Gamma_k\Big),\qquad \Gamma_k = \frac{v_{k+1}(1-\rho_k^2)}{v_k},\quad
    \rho_k = \frac{\alpha(\tau_k)}{\alpha(\tau_{k+1})},

per eigen-coordinate, with :math:`m_k = \alpha(\tau_k)\mu`, :math:`v_k = \alpha(\tau_k)^2\lambda + h(\tau_k)`.
The chain rule of the divergence gives the exact grid path KL (:func:`gaussian_path_kl`)

.. math::

    \mathrm{KL}(P_{\rm path}\,\|\,Q_{\rm path}) = \mathrm{KL}\big(P_T\,\|\,\mathsf N(m_0, V_0)\big)
    + \sum_{k} \mathbb E_{x\sim P_{\tau_k}}\,\mathrm{KL}\big(P(\cdot\mid x)\,\|\,\mathsf N(c_k x + d_k, w_k)\big),

each expectation in closed form.  By the data-processing inequality it lies between the divergence of the final
marginals and the divergence of the continuous-time paths that Girsanov's theorem gives in the proofs of those bounds.

Book chapters: *Forward and backward processes*, *Samplers*, *Sampling theory*.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

from . import _checks
from .metrics import _x_minus_log1p, gaussian_kl
from .samplers import _check_times
from .sde import as_time
from .targets import Gaussian

__all__ = [
    "gaussian_output_law", "gaussian_output_law_full", "gaussian_path_kl", "PathKL", "standard_normal_step_kl",
]

#: Relative tolerance of the verification run (round-off is many orders of magnitude smaller).
_VERIFY_RTOL = 1e-8
_RESERVED = ("noise", "generator", "return_trajectory", "sde")


# -- the identification of an affine, coordinate-wise chain --------------------------------------------------------
class _Overflow(Exception):
    """A one-step call drew more noise than rows were allocated for."""


class _Chain:
    r"""The affine chain of a sampler run, coordinate-wise: after step k, :math:`x_k = C_k x_0 + M_k + \text{noise}`
    with noise variance :math:`W_k` (all of shape (K, D), K = number of recorded states); and for stochastic samplers
    the one-step maps ``c, d, w`` (shape (N, D)) with :math:`x_{k+1} \mid x_k \sim \mathsf N(c_k x_k + d_k, w_k)`."""

    def __init__(self, C, M, W, steps=None):
        self.C, self.M, self.W, self.steps = C, M, W, steps


def _check_options(options):
    bad = [k for k in _RESERVED if k in options]
    if bad:
        raise TypeError(f"the oracle sets {bad} itself; do not pass them as sampler options")


def _chain(sampler, score, times, sde, D, options) -> _Chain:
    """Identify the coordinate-wise affine chain of ``sampler`` driven by ``score`` on ``times``, and verify it."""
    _check_options(options)
    final_denoise = bool(options.get("final_denoise", False))
    gen = torch.Generator().manual_seed(20240411)
    # One run on three rows: a zero start, a start of ones and a random start (the verification row), with random
    # noise.  If the sampler draws no noise, the first two rows identify it; otherwise the third row is replayed
    # through the one-step maps identified below.
    x = torch.zeros(3, D, dtype=torch.float64)
    x[1] = 1.0
    x[2] = torch.randn(D, generator=gen, dtype=torch.float64)
    x_probe = x[2].clone()
    draws = []

    def random_noise(like):
        e = torch.randn(like.shape, generator=gen, dtype=like.dtype)
        draws.append(e[2].clone())
        return e

    out, traj = sampler(score, x, times, sde=sde, noise=random_noise, return_trajectory=True, **options)
    out_probe = out[2]

    if not draws:  # deterministic: the whole run is identified at once (also right for multistep methods)
        M = traj[:, 0]
        chain = _Chain(traj[:, 1] - M, M, torch.zeros_like(M))
        _verify(out_probe, chain.C[-1] * x_probe + chain.M[-1], chain.C[-1].abs() * x_probe.abs() + chain.M[-1].abs())
        return chain

    one_step = {k: v for k, v in options.items() if k != "final_denoise"}
    n_steps = times.numel() - 1
    c, d, b_list = [], [], []
    alloc = 1
    for k in range(n_steps):
        while True:
            try:
                ck, dk, bk = _one_step(sampler, score, times[k:k + 2], sde, D, alloc, one_step)
                break
            except _Overflow:
                alloc *= 2
        c.append(ck)
        d.append(dk)
        b_list.append(bk)
    c, d = torch.stack(c), torch.stack(d)
    w = torch.stack([(bk * bk).sum(0) for bk in b_list])

    # The noise the verification row received at each step, through the identified noise coefficients.
    counts = [bk.shape[0] for bk in b_list]
    if sum(counts) != len(draws):
        raise ValueError(f"the sampler's full run drew {len(draws)} noise variables and its single steps "
                         f"{sum(counts)}: it is not Markov (a step must depend only on the current state)")
    step_of_draw = torch.repeat_interleave(torch.arange(n_steps), torch.tensor(counts))
    b_all, xi = torch.cat(b_list), torch.stack(draws)
    noise = torch.zeros(n_steps, D, dtype=torch.float64).index_add_(0, step_of_draw, b_all * xi)
    noise_scale = torch.zeros(n_steps, D, dtype=torch.float64).index_add_(0, step_of_draw, (b_all * xi).abs())

    C = torch.cat([torch.ones(1, D, dtype=torch.float64), torch.cumprod(c, 0)])
    M = torch.zeros(n_steps + 1, D, dtype=torch.float64)
    W = torch.zeros(n_steps + 1, D, dtype=torch.float64)
    y, scale = x_probe.clone(), x_probe.abs()
    for k in range(n_steps):
        M[k + 1] = c[k] * M[k] + d[k]
        W[k + 1] = c[k] * c[k] * W[k] + w[k]
        y = c[k] * y + d[k] + noise[k]
        scale = c[k].abs() * scale + d[k].abs() + noise_scale[k]
    if final_denoise:
        t_last = float(times[-1])
        xs = torch.zeros(2, D, dtype=torch.float64)
        xs[1] = 1.0
        t_rows = torch.full((2,), t_last, dtype=torch.float64)
        den = sde.denoise(xs, score(xs, t_rows), t_last)
        cf, df = den[1] - den[0], den[0]
        y, scale = cf * y + df, cf.abs() * scale + df.abs()
        C = torch.cat([C, (cf * C[-1])[None]])
        M = torch.cat([M, (cf * M[-1] + df)[None]])
        W = torch.cat([W, (cf * cf * W[-1])[None]])
    _verify(out_probe, y, scale)
    return _Chain(C, M, W, (c, d, w))


def _one_step(sampler, score, sub, sde, D, alloc, options):
    """Identify one step x' = c x + d + sum_j b_j xi_j on the two-point grid ``sub`` with ``alloc`` noise rows."""
    x = torch.zeros(2 + alloc, D, dtype=torch.float64)
    x[1] = 1.0
    count = [0]

    def basis(like):
        j = count[0]
        if j >= alloc:
            raise _Overflow
        e = torch.zeros_like(like)
        e[2 + j] = 1.0
        count[0] += 1
        return e

    out = sampler(score, x, sub, sde=sde, noise=basis, **options)
    d = out[0]
    return out[1] - d, d, out[2:2 + count[0]] - d


def _verify(actual, predicted, scale):
    err = (actual - predicted).abs()
    if not torch.all(err <= _VERIFY_RTOL * (1 + scale)):
        raise ValueError(
            "the sampler is not an affine, coordinate-wise map of its start and noise with this score (largest "
            f"mismatch {float(err.max()):.3g}): the oracle needs an affine score that acts coordinate by coordinate "
            "(in the eigenbasis of the data covariance) and, for a stochastic sampler, a Markov one (each step "
            "depends only on the current state)"
        )


# -- inputs ----------------------------------------------------------------------------------------------------------
def _check_target(target):
    if not isinstance(target, Gaussian):
        raise TypeError(f"target must be a diffnotes.targets.Gaussian, got {type(target).__name__}")


def _vector(name, value, D):
    v = as_time(value)
    try:
        return torch.broadcast_to(v, (D,)).clone()
    except RuntimeError as err:
        raise ValueError(f"{name} must be a number or a vector of length {D}, got shape {tuple(v.shape)}") from err


def _start_cov(value, D):
    """A start covariance given as a number, a (D,) diagonal or a (D, D) symmetric positive semi-definite matrix."""
    V = as_time(value)
    if V.ndim == 0 or (V.ndim == 1 and V.shape[0] == D):
        diag = torch.broadcast_to(V, (D,))
        if torch.any(diag < 0):
            raise ValueError("the start variances must be non-negative")
        return torch.diag(diag)
    if V.shape != (D, D):
        raise ValueError(f"start_cov must be a number, a ({D},) diagonal or a ({D}, {D}) matrix; got {tuple(V.shape)}")
    if not torch.allclose(V, V.T, atol=1e-12 * (1 + float(V.abs().max()))):
        raise ValueError("start_cov must be symmetric")
    if float(torch.linalg.eigvalsh(V).min()) < -1e-12 * (1 + float(V.abs().max())):
        raise ValueError("start_cov must be positive semi-definite")
    return V


class _EigenScore:
    r"""The exact score of :math:`\mathsf N(m, \mathrm{diag}(\lambda))`, :math:`-(y - \alpha m)/(\alpha^2\lambda + h)`.

    Evaluated coordinate-wise in :math:`O(D)` per point (the target's own score multiplies by its eigenvectors).
    """

    def __init__(self, mean, lam, sde):
        self.mean, self.lam, self.sde = mean, lam, sde

    def __call__(self, y, t):
        t = as_time(t, like=y).reshape(-1, 1)
        a, h = self.sde.alpha(t), self.sde.h(t)
        return -(y - a * self.mean) / (a * a * self.lam + h)


def _eigen(target, score):
    """Eigenbasis U of the data covariance, the data in it, and the score in it (original score rotated if given)."""
    lam, U = torch.linalg.eigh(target.covs[0])
    mean = U.T @ target.means[0]
    if score is None:
        return U, lam, mean, _EigenScore(mean, lam, target.sde)
    if not callable(score):
        raise TypeError("score must be a callable score(x, t)")

    def rotated(y, t):
        return score(y @ U.T, t) @ U

    return U, lam, mean, rotated


# -- public functions --------------------------------------------------------------------------------------------------
def gaussian_output_law(sampler, target: Gaussian, times, *, start_mean=0.0, start_var=1.0, score=None,
                        return_trajectory=False, **options):
    r"""Exact mean and variance of a sampler's output when the data are Gaussian with diagonal covariance.

    The sampler's output is the affine image :math:`c \odot x_0 + d + \sum_j b_j \odot \xi_j` of its start and noise,
    hence :math:`\mathsf N(c\,m_0 + d,\ c^2 v_0 + \sum_j b_j^2)` per coordinate (see the module docstring).  For
    full covariances use :func:`gaussian_output_law_full`.

    Parameters
    ----------
    sampler : callable
        Any sampler of :mod:`diffnotes.samplers` (or one with the same signature and an affine step).
    target : Gaussian
        The data law, with a diagonal covariance; its exact score drives the sampler unless ``score`` is given.
    times : tensor
        The decreasing time grid.
    start_mean, start_var : float or array of shape (D,)
        The start law :math:`\mathsf N(m_0, v_0)`, by default the reference :math:`\mathsf N(0, I)`.
    score : callable, optional
        Another affine, coordinate-wise score (e.g. a perturbed exact score).
    return_trajectory : bool
        Also return the exact law after every step (the start first), as the sampler's own ``return_trajectory``.
    **options
        Passed to the sampler (e.g. ``eta`` of DDIM, ``final_denoise``).

    Returns
    -------
    (torch.Tensor, torch.Tensor)
        The exact output mean and variance, each of shape (D,); with ``return_trajectory`` the means and variances
        after every step, each of shape (N + 1, D) (N + 2 with ``final_denoise``), the last row being the output.

    Raises
    ------
    ValueError
        If the covariance is not diagonal, or the sampler with this score is not an affine coordinate-wise map.
    """
    _check_target(target)
    cov = target.covs[0]
    if not torch.equal(cov, torch.diag(torch.diagonal(cov))):
        raise ValueError("the oracle needs a diagonal data covariance (coordinates must decouple); for a full "
                         "covariance use gaussian_output_law_full")
    times = _check_times(times, target.sde)
    D = target.dim
    if score is None:  # the exact score, evaluated coordinate by coordinate (no eigenvector products)
        score = _EigenScore(target.means[0], torch.diagonal(cov), target.sde)
    if not callable(score):
        raise TypeError("score must be a callable score(x, t)")
    m0 = _vector("start_mean", start_mean, D)
    v0 = _vector("start_var", start_var, D)
    if torch.any(v0 < 0):
        raise ValueError("start_var must be non-negative")
    ch = _chain(sampler, score, times, target.sde, D, options)
    means = ch.C * m0 + ch.M
    variances = ch.C**2 * v0 + ch.W
    if return_trajectory:
        return means, variances
    return means[-1], variances[-1]


def gaussian_output_law_full(sampler, target: Gaussian, times, *, start_mean=0.0, start_cov=1.0, score=None,
                             return_trajectory=False, **options):
    r"""Exact mean and full covariance of a sampler's output for Gaussian data :math:`\mathsf N(\mu, \Sigma)`.

    The data covariance is diagonalised, :math:`\Sigma = U\,\mathrm{diag}(\lambda)\,U^\top`; in the coordinates
    :math:`y = U^\top x` the exact score is coordinate-wise and the sampler (isotropic noise, scalar coefficients)
    acts coordinate by coordinate, so its output law is exact for any step count, horizon and dimension:

    .. math::

        m = U\big(c \odot U^\top m_0 + d\big),\qquad
        S = U\Big(\mathrm{diag}(c)\,U^\top V_0 U\,\mathrm{diag}(c)
            + \mathrm{diag}\big(\textstyle\sum_j b_j^2\big)\Big)U^\top .

    Stochastic samplers are identified step by step (:math:`O(N)` sampler steps of a few rows, also for D in the
    hundreds); see the module docstring.  Book chapter *Sampling theory*; :cite:p:`chen2023sampling`.

    Parameters
    ----------
    sampler : callable
        A sampler of :mod:`diffnotes.samplers`.
    target : Gaussian
        The data law (any covariance).
    times : tensor
        The decreasing time grid.
    start_mean : float or array of shape (D,)
        Mean of the start law (default 0).
    start_cov : float, array of shape (D,) or (D, D)
        Covariance of the start law (default the identity).
    score : callable, optional
        The score in the original coordinates, by default the exact one.  It must be affine and, in the eigenbasis of
        :math:`\Sigma`, coordinate-wise: e.g. the exact score plus a constant vector (a constant score error), or
        plus any function of :math:`\Sigma` and t applied to x.  A given score is rotated on every call
        (:math:`O(D^2)` per point); the default is evaluated in the eigenbasis directly.
    return_trajectory : bool
        Also return the laws after every step: means (K, D) and covariances (K, D, D), K = N + 1 (N + 2 with
        ``final_denoise``); mind the memory for large D.
    **options
        Passed to the sampler.

    Returns
    -------
    (torch.Tensor, torch.Tensor)
        Output mean (D,) and covariance (D, D), or their trajectories.
    """
    _check_target(target)
    times = _check_times(times, target.sde)
    D = target.dim
    U, _, _, score_eig = _eigen(target, score)
    m0 = U.T @ _vector("start_mean", start_mean, D)
    V0 = U.T @ _start_cov(start_cov, D) @ U
    ch = _chain(sampler, score_eig, times, target.sde, D, options)
    means = (ch.C * m0 + ch.M) @ U.T
    covs = ch.C[:, :, None] * V0[None] * ch.C[:, None, :] + torch.diag_embed(ch.W)
    covs = U @ covs @ U.T
    covs = 0.5 * (covs + covs.transpose(-1, -2))
    if return_trajectory:
        return means, covs
    return means[-1], covs[-1]


def standard_normal_step_kl(step, dim: int = 1):
    r"""Per-step path KL of the exponential integrator on :math:`\mathsf N(0, I)` data (:math:`g \equiv 1`), exactly.

    For data :math:`\mathsf N(0, I)` the forward process (``ConstantVP``, :math:`g = 1`) is stationary and reversible,
    so the exact reverse step of length :math:`A` is :math:`\mathsf N(e^{-A/2}x,\ (1 - e^{-A})I)`; the exponential
    integrator with the exact score :math:`-x` steps to :math:`\mathsf N\big((2 - e^{A/2})x,\ (e^A - 1)I\big)`.  With
    :math:`x\sim\mathsf N(0, I)` the expected KL between the two is

    .. math::

        D\Big[\tfrac12\big(e^{-A} - 1 + A\big) + \tfrac12\,\frac{(e^{-A/2} + e^{A/2} - 2)^2}{e^A - 1}\Big]
        = \frac{D A^2}{4} + O(A^3),

    the term :func:`gaussian_path_kl` returns for every step in that case (tested) and the bulk rate
    :math:`\approx DA/4` per unit time of the chapter *Sampling theory*.

    Parameters
    ----------
    step : float or array_like
        Step lengths :math:`A > 0`.
    dim : int
        The dimension D, >= 1.

    Returns
    -------
    numpy.ndarray or float
        The expected per-step KL, shaped like ``step``.
    """
    A = np.asarray(step, dtype=np.float64)
    if not (np.all(np.isfinite(A)) and np.all(A > 0)):
        raise ValueError("step lengths must be positive and finite")
    dim = _checks.positive_int(dim, "dim")
    # e^{-A} - 1 + A and e^{-A/2} + e^{A/2} - 2 = 4 sinh(A/4)^2 written without cancellation
    kl = dim * (0.5 * (np.expm1(-A) + A) + 8 * np.sinh(A / 4) ** 4 / np.expm1(A))
    return float(kl) if kl.ndim == 0 else kl

class PathKL(NamedTuple):
    r"""The exact grid path KL of :func:`gaussian_path_kl`, its parts, and the sampler's output law.

    Parameters
    ----------
    total : float
        The whole divergence: ``start + steps.sum()``.
    start : float
        The initialisation term :math:`\mathrm{KL}(P_T \,\|\, \mathsf N(m_0, V_0))`.
    steps : torch.Tensor
        The expected conditional divergence of every step, shape (N,).
    marginal : float
        The divergence of the final marginals, :math:`\mathrm{KL}(P_{\tau_N} \,\|\, Q_N) \le` ``total``.
    mean : torch.Tensor
        Mean (D,) of the sampler's output law :math:`Q_N`.
    cov : torch.Tensor
        Covariance (D, D) of the sampler's output law.
    """

    #: The whole divergence: ``start + steps.sum()``.
    total: float
    #: The initialisation term :math:`\mathrm{KL}(P_T \,\|\, \mathsf N(m_0, V_0))`.
    start: float
    #: The expected conditional divergence of every step, shape (N,).
    steps: torch.Tensor
    #: The divergence of the final marginals, :math:`\mathrm{KL}(P_{\tau_N} \,\|\, Q_N) \le` ``total``.
    marginal: float
    #: Mean (D,) of the sampler's output law :math:`Q_N`.
    mean: torch.Tensor
    #: Covariance (D, D) of the sampler's output law.
    cov: torch.Tensor


def gaussian_path_kl(sampler, target: Gaussian, times, *, start_mean=0.0, start_cov=1.0, score=None,
                     **options) -> PathKL:
    r"""Exact KL divergence between the exact reverse process and a stochastic sampler's chain, on the time grid.

    Let :math:`P` be the law of the forward process read backward on the grid, :math:`(X_{\tau_0}, \dots, X_{\tau_N})`
    with :math:`X_{\tau_0} \sim P_T` (the exact reverse process), and :math:`Q` the law of the sampler's chain
    :math:`(x_0, \dots, x_N)` started at :math:`\mathsf N(m_0, V_0)`.  For Gaussian data both are Gaussian Markov
    chains and the chain rule gives, per eigen-coordinate of the data covariance,

    .. math::

        \mathrm{KL}(P\,\|\,Q) = \mathrm{KL}(P_T\,\|\,\mathsf N(m_0, V_0))
        + \sum_{k=0}^{N-1} \tfrac12\Big[\frac{\Gamma_k}{w_k} - 1 - \log\frac{\Gamma_k}{w_k}
        + \frac{(m_{k+1} - c_k m_k - d_k)^2 + (\beta_k - c_k)^2 v_k}{w_k}\Big],

    where the sampler's step is :math:`x_{k+1} \mid x_k \sim \mathsf N(c_k x_k + d_k, w_k)` (identified exactly),
    the exact reverse transition is :math:`\mathsf N(m_{k+1} + \beta_k(x - m_k), \Gamma_k)` with
    :math:`\beta_k = \rho_k v_{k+1}/v_k`, :math:`\Gamma_k = v_{k+1}(1-\rho_k^2)/v_k`,
    :math:`\rho_k = \alpha(\tau_k)/\alpha(\tau_{k+1})`, and :math:`(m_k, v_k)` are the mean and variance of
    :math:`P_{\tau_k}` in that coordinate.

    This is the quantity that Girsanov-type proofs of the sampling bounds control (:cite:p:`chen2023sampling`,
    :cite:p:`benton2024nearly`).  By data processing it lies between the divergence of the final marginals,
    :math:`\mathrm{KL}(P_{\tau_N}\,\|\,Q_N)`, and the continuous-time path divergence those proofs bound (for
    samplers that are the grid values of a continuous-time process, such as the exponential integrator).  Here
    :math:`T` is the first grid time.
    The start term is exactly the forward (initialisation) error of the review's decomposition (Section 4.3).
    Book chapter *Sampling theory*.

    Parameters
    ----------
    sampler : callable
        A stochastic sampler whose step depends only on the current state: ``euler_maruyama``,
        ``exponential_integrator``, ``ddpm``, ``predictor_corrector`` or ``ddim`` with ``eta > 0``.
    target : Gaussian
        The data law (any covariance).
    times : tensor
        The decreasing time grid.
    start_mean, start_cov, score
        As in :func:`gaussian_output_law_full`.
    **options
        Passed to the sampler (not ``final_denoise``: a deterministic last step makes the divergence infinite).

    Returns
    -------
    PathKL
        ``total``, ``start`` and the per-step terms ``steps``; also ``marginal``, the divergence
        :math:`\mathrm{KL}(P_{\tau_N}\,\|\,Q_N)` of the final marginals (at most ``total``), and the output law
        ``mean``, ``cov`` of the sampler (as :func:`gaussian_output_law_full` returns it).

    Raises
    ------
    ValueError
        For a deterministic sampler (its chain is singular with respect to the reverse process: the divergence is
        infinite), for ``final_denoise``, or a score or sampler the oracle cannot represent.
    """
    _check_target(target)
    if options.get("final_denoise", False):
        raise ValueError("final_denoise ends with a deterministic step: the path divergence is infinite")
    times = _check_times(times, target.sde)
    D = target.dim
    sde = target.sde
    U, lam, mean, score_eig = _eigen(target, score)
    ch = _chain(sampler, score_eig, times, sde, D, options)
    if ch.steps is None:
        raise ValueError("the sampler is deterministic: its path law is singular with respect to the reverse "
                         "process and the path divergence is infinite; use the marginal divergence instead")
    c, d, w = ch.steps
    if torch.any(w <= 0):
        raise ValueError("a step of the sampler injects no noise in some coordinate: the path divergence is infinite")

    a = sde.alpha(times)[:, None]
    h = sde.h(times)[:, None]
    m = a * mean  # (N + 1, D) means of P_{tau_k} in the eigenbasis
    v = a**2 * lam + h  # variances
    G = sde.integral(times)
    one_minus_rho2 = -torch.expm1(-(G[:-1] - G[1:]))[:, None]  # 1 - rho_k^2, rho_k = alpha(tau_k)/alpha(tau_{k+1})
    rho = torch.sqrt(1 - one_minus_rho2)
    beta = rho * v[1:] / v[:-1]
    gamma = v[1:] * one_minus_rho2 / v[:-1]
    ratio_minus_one = (gamma - w) / w
    cov_part = 0.5 * torch.as_tensor(_x_minus_log1p(ratio_minus_one.numpy()))
    mean_part = 0.5 * ((m[1:] - c * m[:-1] - d) ** 2 + (beta - c) ** 2 * v[:-1]) / w
    steps = (cov_part + mean_part).sum(1)

    mT, ST = target.moments(float(times[0]))
    m0 = _vector("start_mean", start_mean, D)
    V0 = _start_cov(start_cov, D)
    start = gaussian_kl(mT.numpy(), ST.numpy(), m0.numpy(), V0.numpy())
    # The output law, as in gaussian_output_law_full, and the divergence of the final marginals.
    m0e, V0e = U.T @ m0, U.T @ V0 @ U
    mean_out = U @ (ch.C[-1] * m0e + ch.M[-1])
    cov_out = U @ (ch.C[-1][:, None] * V0e * ch.C[-1][None, :] + torch.diag(ch.W[-1])) @ U.T
    cov_out = 0.5 * (cov_out + cov_out.T)
    mN, SN = target.moments(float(times[-1]))
    marginal = gaussian_kl(mN.numpy(), SN.numpy(), mean_out.numpy(), cov_out.numpy())
    return PathKL(start + float(steps.sum()), start, steps, marginal, mean_out, cov_out)
