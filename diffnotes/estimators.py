r"""Score estimators that need no network: the empirical optimal score, a kernel score, and a subspace score.

All three provide the package's one protocol, ``score(x, t)``, in float64, and are built from one computation: the
score of a Gaussian mixture with equal weights centred at the (scaled) data points,

.. math::

    \hat p_t(x) = \frac1n\sum_{i=1}^n \mathsf N\big(x;\ \alpha(t)x_i,\ v(t) I\big),\qquad
    \nabla\log\hat p_t(x) = \frac{\alpha(t)\sum_i w_i(x)\,x_i - x}{v(t)},\quad
    w_i \propto \exp\Big(-\frac{\|x-\alpha x_i\|^2}{2v}\Big),

evaluated with log-sum-exp (softmax) weights in row blocks, so memory stays at a few million numbers whatever the
sample sizes (review Section 4.1-4.2; book chapters *Sample complexity of score estimation* and *Memorisation and
early stopping*).

- :class:`EmpiricalScore`: :math:`v = h(t)`.  The score of the diffused empirical measure, which minimises the
  empirical denoising score-matching loss over *all* functions :cite:p:`vincent2011connection`; as
  :math:`t \to 0` it points to the nearest training point (it memorises the training set).
- :class:`KernelScore`: :math:`v = \alpha(t)^2\sigma^2 + h(t)`, the Gaussian kernel density estimate of bandwidth
  :math:`\sigma` diffused by the forward process, with the regularised score
  :math:`\nabla\hat p/\max(\hat p, \varepsilon)` of :cite:t:`wibisono2024optimal`.  It smooths in all D directions.
- :class:`SubspaceScore`: a PCA encoder :math:`\hat V`, a kernel score in the d latent coordinates, and the analytic
  orthogonal term :math:`-(I-\hat V\hat V^\top)x/h(t)`: the linear encoder-decoder of the review's Fig. 5
  :cite:p:`chen2023score`.
- :class:`ConditionalKernelScore`: kernel weights in a condition y times the diffused Gaussian kernel in x, the
  conditional score :math:`\nabla_x\log\hat p_t(x\mid y)` (review Section 5.2, :cite:p:`fu2024unveil`);
  :meth:`ConditionalKernelScore.at` fixes y and returns a :class:`ConditionedScore` with ``score(x, t)``.

The exact backward process driven by any of the mixture scores above (no floor), started from its own diffused
mixture at T, ends at :math:`t_0` in the law :math:`\hat p_{t_0}` itself: :func:`output_law` returns it as a
:class:`~diffnotes.targets.GaussianMixture`, whose distance to the data law
:func:`diffnotes.metrics.density_tv` computes by quadrature in dimension one (book chapter *Distribution estimation*).

:func:`score_error` measures :math:`\mathbb E_{x\sim P_t}\|\hat s(x,t) - s(x,t)\|^2` by Monte Carlo, and
:func:`subspace_angle` the distance :math:`\|\hat V\hat V^\top - AA^\top\|_F` between two subspaces.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch

from . import _checks
from .sde import VPSDE, as_time
from .targets import GaussianMixture

__all__ = [
    "EmpiricalScore",
    "KernelScore",
    "SubspaceScore",
    "ConditionalKernelScore",
    "ConditionedScore",
    "ScoreError",
    "score_error",
    "subspace_angle",
    "output_law",
]

#: Largest number of (evaluation point, data point) pairs held in memory at once (float64: 32 MB).
_BLOCK_ENTRIES = 2**22
_LOG_2PI = math.log(2 * math.pi)


def _nonneg(name: str, value, positive: bool = False) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError) as err:
        raise TypeError(f"{name} must be a number, got {value!r}") from err
    if not math.isfinite(value) or value < 0 or (positive and value == 0):
        raise ValueError(f"{name} must be {'positive' if positive else 'non-negative'} and finite, got {value}")
    return value


def _mixture_score(x, centers, a, v, log_floor=None, log_p_out=False, log_weights=None):
    r"""Score of :math:`\frac1n\sum_i\mathsf N(\cdot;\ a c_i, vI)` at the rows of x, optionally regularised.

    ``a`` and ``v`` are columns (1, 1) or (m, 1).  With ``log_floor`` the score is
    :math:`\nabla\hat p/\max(\hat p, e^{\rm log\_floor})`.  With ``log_weights`` (a function of a row range
    ``(lo, hi)`` returning normalised log-weights of shape (hi - lo, n)) the mixture weights are those, row by row,
    instead of 1/n.  Returns the score (m, D) and, if asked, :math:`\log\hat p`.
    """
    m, D = x.shape
    n = centers.shape[0]
    a = a.expand(m, 1)
    v = v.expand(m, 1)
    c_sq = (centers**2).sum(1)
    rows = max(1, _BLOCK_ENTRIES // n)
    scores, logps = [], []
    for lo in range(0, m, rows):
        xb, ab, vb = x[lo : lo + rows], a[lo : lo + rows], v[lo : lo + rows]
        sq = (xb**2).sum(1, keepdim=True) - 2 * ab * (xb @ centers.T) + ab**2 * c_sq[None, :]
        logits = -torch.clamp(sq, min=0.0) / (2 * vb)
        if log_weights is not None:
            logits = logits + log_weights(lo, lo + xb.shape[0])
        w = torch.softmax(logits, dim=1)
        s = (ab * (w @ centers) - xb) / vb
        log_norm = 0.0 if log_weights is not None else math.log(n)
        logp = torch.logsumexp(logits, dim=1) - log_norm - 0.5 * D * (_LOG_2PI + torch.log(vb[:, 0]))
        if log_floor is not None:
            s = s * torch.exp(torch.clamp(logp - log_floor, max=0.0))[:, None]
        scores.append(s)
        logps.append(logp)
    s = torch.cat(scores)
    return (s, torch.cat(logps)) if log_p_out else s


def _density_rows(x, centers, a: float, v: float, weights) -> torch.Tensor:
    r"""Density :math:`\sum_i w_i\,\mathsf N(x;\ a c_i, vI)` at the rows of x (weights None: uniform)."""
    n, D = centers.shape
    rows = max(1, _BLOCK_ENTRIES // n)
    log_c = -0.5 * D * (_LOG_2PI + math.log(v))
    out = []
    scaled = a * centers
    for lo in range(0, x.shape[0], rows):
        if D == 1:  # the squared distances by broadcasting: three times faster than cdist and exact
            k = (x[lo : lo + rows] - scaled[:, 0]).square_()
        else:
            k = torch.cdist(x[lo : lo + rows], scaled, compute_mode="donot_use_mm_for_euclid_dist").square_()
        k.mul_(-0.5 / v).add_(log_c).exp_()
        out.append(k.mean(1) if weights is None else k @ weights)
    return torch.cat(out)


class _Sample:
    """An estimator built on a sample ``data`` (n, D) with a forward process ``sde``: sizes and the check of x."""

    data: torch.Tensor
    sde: VPSDE

    @property
    def dim(self) -> int:
        """The dimension D of the data."""
        return self.data.shape[1]

    @property
    def n(self) -> int:
        """The number of data points."""
        return self.data.shape[0]

    def _check_x(self, x) -> torch.Tensor:
        return _checks.points(x, "x", self.dim).to(torch.float64)


class _KernelBase(_Sample):
    """Shared evaluation for the estimators built on a Gaussian mixture at the data points."""

    def _coefficients(self, x, t):
        t = self.sde.check_time(t)
        t = _checks.time_column(as_time(t, like=x), x.shape[0])
        return t, self.sde.alpha(t), self.sde.h(t)

    def _variance(self, a, h):
        raise NotImplementedError

    def _log_floor(self):
        return None

    def score(self, x, t) -> torch.Tensor:
        """The estimated score at the rows of x (shape (m, D)); t in (0, T], one time or one per row.

        Parameters
        ----------
        x : torch.Tensor
            Points, shape (m, D): a floating tensor (evaluated in float64).
        t : float or torch.Tensor
            One time for all rows, or one per row (shape (m,) or (m, 1)), in (0, T].

        Returns
        -------
        torch.Tensor
            The estimated score, float64 of shape (m, D).
        """
        x = self._check_x(x)
        _, a, h = self._coefficients(x, t)
        return _mixture_score(x, self.data, a, self._variance(a, h), self._log_floor())

    def log_prob(self, x, t) -> torch.Tensor:
        r"""Log-density :math:`\log\hat p_t(x)` of the smoothed, diffused empirical measure, shape (m,).

        Parameters
        ----------
        x : torch.Tensor
            Points, shape (m, D): a floating tensor (evaluated in float64).
        t : float or torch.Tensor
            One time for all rows, or one per row (shape (m,) or (m, 1)), in (0, T].
        """
        x = self._check_x(x)
        _, a, h = self._coefficients(x, t)
        return _mixture_score(x, self.data, a, self._variance(a, h), None, log_p_out=True)[1]

    def density(self, x, t: float) -> torch.Tensor:
        r"""Density :math:`\hat p_t(x)` at the rows of x, shape (m,), for one time t.

        The same mixture as :meth:`log_prob`, summed directly in blocks of kernel evaluations (no log-sum-exp): about
        three times faster, for tabulating the law on a grid (book chapter *Distribution estimation*).  Far from
        every data point the value underflows to 0, where :meth:`log_prob` stays finite.

        Parameters
        ----------
        x : torch.Tensor
            Points, shape (m, D): a floating tensor (evaluated in float64).
        t : float or torch.Tensor
            One time in (0, T].
        """
        x = self._check_x(x)
        t = self.sde.check_time(t)
        if t.ndim != 0:
            raise ValueError("density() takes one time")
        a, h = self.sde.alpha(t), self.sde.h(t)
        return _density_rows(x, self.data, float(a), float(self._variance(a, h)), None)


class EmpiricalScore(_KernelBase):
    r"""The score of the diffused empirical measure, the optimal score for the empirical DSM loss.

    .. math::

        \hat s(x, t) = \nabla\log\frac1n\sum_{i=1}^n \mathsf N\big(x;\ \alpha(t)x_i,\ h(t)I\big)
        = \frac{\alpha(t)\sum_i w_i(x,t)\,x_i - x}{h(t)}.

    Over all functions of (x, t), the empirical denoising score-matching loss (review Section 4.1) is minimised by
    this score :cite:p:`vincent2011connection`.  Run backward to :math:`t \to 0` it reproduces the training points:
    :math:`t_0` acts as a kernel bandwidth (book chapter *Memorisation and early stopping*).

    Parameters
    ----------
    data : array or tensor of shape (n, D)
        The training sample (n >= 1).
    sde : VPSDE
        The forward process.
    """

    def __init__(self, data, sde: VPSDE):
        self.data = _checks.data(data, min_n=1)
        self.sde = _checks.sde_or_default(sde, default=False)

    def _variance(self, a, h):
        return h

    def __repr__(self) -> str:
        return f"EmpiricalScore(n={self.n}, D={self.dim}, sde={self.sde})"


class KernelScore(_KernelBase):
    r"""The regularised Gaussian-kernel score estimator, diffused by the forward process.

    The kernel density estimate :math:`\hat\rho_\sigma = \frac1n\sum_i\mathsf N(x_i, \sigma^2 I)` of the data, moved by
    the forward process to time t, is the Gaussian mixture

    .. math::

        \hat p_t(x) = \frac1n\sum_{i=1}^n \mathsf N\big(x;\ \alpha(t)x_i,\ (\alpha(t)^2\sigma^2 + h(t))I\big),

    and the estimator is its regularised score :cite:p:`wibisono2024optimal`

    .. math::

        \hat s(x, t) = \frac{\nabla\hat p_t(x)}{\max(\hat p_t(x),\ \varepsilon)}
        = \nabla\log\hat p_t(x)\,\min\big(1,\ \hat p_t(x)/\varepsilon\big),

    which equals :math:`\nabla\log\hat p_t` where the estimated density is above the floor :math:`\varepsilon` and is
    shrunk toward zero where it is not (far from the data, where :math:`\nabla\log\hat p_t` is dominated by a few
    points).  At t -> 0 this is exactly the estimator of Wibisono, Wu and Yang for the score of the data law, whose
    squared :math:`L^2` error attains the minimax rate :math:`\tilde\Theta(n^{-2/(d+4)})` with
    :math:`\sigma \asymp n^{-1/(d+4)}` (review Section 4.2, book chapter *Sample complexity of score estimation*).
    As :math:`\sigma \to 0` with no floor it tends to :class:`EmpiricalScore`.

    Parameters
    ----------
    data : array or tensor of shape (n, D)
        The sample, n >= 2.
    sde : VPSDE
        The forward process.
    bandwidth : float, optional
        :math:`\sigma > 0`; the default is :math:`n^{-1/(D+4)}` (the rate-optimal order for data of unit scale).
        For the score of the diffused empirical measure itself (no kernel) use :class:`EmpiricalScore`.
    floor : float
        The density floor :math:`\varepsilon \ge 0` (0: no regularisation).
    """

    def __init__(self, data, sde: VPSDE, bandwidth: float | None = None, floor: float = 0.0):
        self.data = _checks.data(data, min_n=2)
        self.sde = _checks.sde_or_default(sde, default=False)
        if bandwidth is None:
            bandwidth = self.n ** (-1.0 / (self.dim + 4))
        self.bandwidth = _nonneg("bandwidth", bandwidth, positive=True)
        self.floor = _nonneg("floor", floor)

    def _variance(self, a, h):
        return a**2 * self.bandwidth**2 + h

    def _log_floor(self):
        return math.log(self.floor) if self.floor > 0 else None

    def __repr__(self) -> str:
        return f"KernelScore(n={self.n}, D={self.dim}, bandwidth={self.bandwidth:.4g}, floor={self.floor:.3g})"


class SubspaceScore(_Sample):
    r"""Subspace score estimator: PCA encoder, latent kernel score, analytic orthogonal term.

    For data :math:`x = Az` on a d-dimensional linear subspace the true score splits as
    :math:`A\nabla\log p^{\rm ld}_t(A^\top x) - (I - AA^\top)x/h(t)` (review Section 4.1).  The estimator mirrors it
    with the linear encoder-decoder of the review's Fig. 5 :cite:p:`chen2023score`:

    .. math::

        \hat s(x, t) = \hat V\,\hat s^{\rm ld}(\hat V^\top x, t) - \frac{(I - \hat V\hat V^\top)\,x}{h(t)},

    where :math:`\hat V \in \mathbb R^{D\times d}` holds the top-d eigenvectors of the (uncentred) second-moment
    matrix :math:`\frac1n\sum_i x_ix_i^\top` (PCA of a linear subspace through the origin) and
    :math:`\hat s^{\rm ld}` is a :class:`KernelScore` on the latent codes :math:`\hat V^\top x_i` with its bandwidth
    chosen for dimension d.  Its error depends on d, not on D, once :math:`\hat V` is accurate.

    Parameters
    ----------
    data : array or tensor of shape (n, D)
        The sample, n >= max(d, 2).
    sde : VPSDE
        The forward process.
    d : int
        The subspace dimension, 1 <= d <= D.
    latent_bandwidth : float, optional
        Bandwidth of the latent kernel score (default :math:`n^{-1/(d+4)}`).
    floor : float
        Density floor of the latent kernel score (0: none).
    basis : array of shape (D, d), optional
        Use this orthonormal basis instead of the PCA estimate (for example the true A, to isolate the latent error).
    """

    def __init__(self, data, sde: VPSDE, d: int, latent_bandwidth: float | None = None, floor: float = 0.0,
                 basis=None):
        self.data = _checks.data(data, min_n=1)
        self.sde = _checks.sde_or_default(sde, default=False)
        D = self.data.shape[1]
        if isinstance(d, bool) or int(d) != d or d < 1:
            raise ValueError(f"the subspace dimension d must be a positive integer, got {d!r}")
        d = int(d)
        if d > D:
            raise ValueError(f"the subspace dimension d = {d} cannot exceed the ambient dimension D = {D}")
        n = self.data.shape[0]
        if n < max(d, 2):
            raise ValueError(f"data has n = {n} points; PCA of a {d}-dimensional subspace needs n >= max(d, 2)")
        self.d = d
        if basis is None:
            # Top-d right singular vectors of the data matrix = top eigenvectors of (1/n) X^T X, more accurately.
            V = torch.linalg.svd(self.data, full_matrices=False)[2][:d].T.contiguous()
        else:
            V = _checks.data(basis, "basis")
            if V.shape != (D, d):
                raise ValueError(f"basis must be shaped (D, d) = ({D}, {d}), got {tuple(V.shape)}")
            if not torch.allclose(V.T @ V, torch.eye(d, dtype=torch.float64), atol=1e-8):
                raise ValueError("basis must have orthonormal columns (V^T V = I)")
        self.V = V
        self.latent = KernelScore(self.data @ V, sde, latent_bandwidth, floor)

    def score(self, x, t) -> torch.Tensor:
        """The estimated score at the rows of x (shape (m, D)); t in (0, T], one time or one per row.

        Parameters
        ----------
        x : torch.Tensor
            Points, shape (m, D): a floating tensor (evaluated in float64).
        t : float or torch.Tensor
            One time for all rows, or one per row (shape (m,) or (m, 1)), in (0, T].

        Returns
        -------
        torch.Tensor
            The estimated score, float64 of shape (m, D): the latent term plus the orthogonal term.
        """
        x = self._check_x(x)
        t = self.sde.check_time(t)
        h = self.sde.h(_checks.time_column(as_time(t, like=x), x.shape[0]))
        code = x @ self.V
        return self.latent.score(code, t) @ self.V.T - (x - code @ self.V.T) / h

    def __repr__(self) -> str:
        return f"SubspaceScore(n={self.n}, D={self.dim}, d={self.d}, latent={self.latent})"


class ScoreError(NamedTuple):
    r"""Monte Carlo estimate of :math:`\mathbb E_{x\sim P_t}\|\hat s - s\|^2` (see :func:`score_error`).

    Parameters
    ----------
    mean : float
        The sample mean of :math:`\|\hat s(x_j,t) - s(x_j,t)\|^2` over the m evaluation points.
    stderr : float
        Its standard error (sample standard deviation over :math:`\sqrt m`).
    norm : float
        The sample mean of :math:`\|s(x_j,t)\|^2`, to normalise the error.
    """

    mean: float
    """The sample mean of :math:`\\|\\hat s(x_j,t) - s(x_j,t)\\|^2`."""
    stderr: float
    """Its standard error (sample standard deviation over :math:`\\sqrt m`)."""
    norm: float
    """The sample mean of :math:`\\|s(x_j,t)\\|^2`, to normalise the error."""


def score_error(estimator, target, t: float, n_eval: int = 2000, generator: torch.Generator | None = None,
                points=None) -> ScoreError:
    r"""The squared :math:`L^2(P_t)` score error :math:`\mathbb E_{x\sim P_t}\|\hat s(x,t) - s(x,t)\|^2`.

    Monte Carlo over ``n_eval`` points drawn from the exact diffused law (``target.sample_marginal``) with the given
    generator, or over the given ``points`` (to compare several estimators on the same points).  Returns
    :class:`ScoreError` ``(mean, stderr, norm)``.

    Parameters
    ----------
    estimator, target
        Score functions ``(x, t) -> tensor like x``, or objects with a ``score(x, t)`` method; ``target`` also
        has ``sample_marginal(n, t, generator)`` unless ``points`` is
        given (the exact targets of :mod:`diffnotes.targets`).
    t : float
        One time in (0, T].
    n_eval : int
        Number of Monte Carlo points (at least 2).
    generator : torch.Generator, optional
        Source of the points.
    points : tensor of shape (m, D), optional
        Points drawn from :math:`P_t` by the caller.
    """
    generator = _checks.generator(generator)
    est_score = _checks.score_callable(estimator, "estimator")
    true_score = _checks.score_callable(target, "target")
    t = float(t)
    if points is None:
        n_eval = _checks.positive_int(n_eval, "n_eval", 2, floats=True)
        points = target.sample_marginal(n_eval, t, generator)
    else:
        points = _checks.data(points, "points", min_n=2)
    with torch.no_grad():  # a measurement: no graph through a network's score
        truth = true_score(points, t)
        est = est_score(points, t)
    if est.shape != truth.shape:
        raise ValueError(f"the estimator returned shape {tuple(est.shape)}, the target {tuple(truth.shape)}")
    sq = ((est - truth) ** 2).sum(1)
    m = sq.shape[0]
    return ScoreError(float(sq.mean()), float(sq.std() / math.sqrt(m)), float((truth**2).sum(1).mean()))


def subspace_angle(V, A) -> float:
    r"""The distance :math:`\|VV^\top - AA^\top\|_F` between the spans of two orthonormal D x d bases.

    It is 0 for equal spans and :math:`\sqrt{2d}` for orthogonal ones; it does not depend on the choice of bases.

    Parameters
    ----------
    V : array or tensor of shape (D, d)
        An orthonormal basis, e.g. the PCA estimate ``SubspaceScore.V`` (orthonormality is not checked).
    A : array or tensor of shape (D, d)
        Another, e.g. the true basis of a :class:`~diffnotes.targets.SubspaceMixture`.

    Returns
    -------
    float
        The Frobenius norm of the difference of the two projections.

    Raises
    ------
    ValueError
        If the two shapes differ.
    """
    V, A = _checks.data(V, "V"), _checks.data(A, "A")
    if V.shape != A.shape:
        raise ValueError(f"V and A must have the same shape, got {tuple(V.shape)} and {tuple(A.shape)}")
    return float(torch.linalg.matrix_norm(V @ V.T - A @ A.T))


# -- conditional estimation and the output law of the backward process ------------------------------------------------
def _condition_data(y, n: int) -> torch.Tensor:
    """The conditions of the training pairs as an (n, d_y) float64 tensor; a 1-D array is one condition per row."""
    if np.ndim(y) == 1:
        y = y[:, None] if isinstance(y, (torch.Tensor, np.ndarray)) else [[v] for v in y]
    out = _checks.data(y, "y", shape="(n,) or (n, d_y)")
    if out.shape[0] != n:
        raise ValueError(f"y has {out.shape[0]} rows but x has {n}: give one condition per data point")
    return out


class ConditionalKernelScore(_Sample):
    r"""Conditional kernel score estimator: Nadaraya-Watson weights in y times the diffused Gaussian kernel in x.

    From n pairs :math:`(x_i, y_i)`, :math:`x_i \in \mathbb R^{d_x}`, :math:`y_i \in \mathbb R^{d_y}`, the conditional
    kernel density estimate :math:`\hat\rho(x\mid y) = \sum_i w_i(y)\,\mathsf N(x;\ x_i, \sigma^2 I)` with
    :math:`w_i(y) \propto \exp(-\|y - y_i\|^2/(2b^2))`, moved by the forward process (which noises x only) to time t,
    is the Gaussian mixture

    .. math::

        \hat p_t(x\mid y) = \sum_{i=1}^n w_i(y)\,\mathsf N\big(x;\ \alpha(t)x_i,\ (\alpha(t)^2\sigma^2 + h(t))I\big),
        \qquad
        \hat s(x, y, t) = \nabla_x\log\hat p_t(x\mid y)
        = \frac{\alpha(t)\sum_i \tilde w_i(x, y, t)\,x_i - x}{\alpha(t)^2\sigma^2 + h(t)},

    with posterior weights :math:`\tilde w_i \propto w_i(y)\,\mathsf N(x;\alpha x_i, (\alpha^2\sigma^2+h)I)`, computed
    with log-sum-exp.  It estimates the conditional score :math:`\nabla_x\log p_t(x\mid y)` of the review
    (Section 5.2), whose minimax rate for conditional distribution estimation, :math:`\tilde O(n^{-\beta/(d_x + d_y +
    2\beta)})` in total variation for a conditional density of smoothness :math:`\beta`, is the subject of
    :cite:t:`fu2024unveil`.  A Gaussian kernel is of second order, so this estimator attains that rate with
    :math:`\beta \le 2` only (book chapter *Distribution estimation*).  If all :math:`y_i` are equal, or
    :math:`b \to \infty`, the weights are uniform and it is :class:`KernelScore` (without a floor) on the :math:`x_i`.

    Parameters
    ----------
    x : array or tensor of shape (n, d_x)
        The samples, n >= 2.
    y : array or tensor of shape (n,) or (n, d_y)
        Their conditions.
    sde : VPSDE
        The forward process (acting on x).
    bandwidth : float, optional
        :math:`\sigma > 0` in x; default :math:`n^{-1/(d_x + d_y + 4)}` (the rate-optimal order for
        :math:`\beta = 2` and data of unit scale).
    y_bandwidth : float, optional
        :math:`b > 0` in y; same default.
    """

    def __init__(self, x, y, sde: VPSDE, bandwidth: float | None = None, y_bandwidth: float | None = None):
        self.data = _checks.data(x, "x", min_n=2)
        self.conditions = _condition_data(y, self.data.shape[0])
        self.sde = _checks.sde_or_default(sde, default=False)
        default = self.n ** (-1.0 / (self.dim + self.y_dim + 4))
        self.bandwidth = _nonneg("bandwidth", default if bandwidth is None else bandwidth, positive=True)
        self.y_bandwidth = _nonneg("y_bandwidth", default if y_bandwidth is None else y_bandwidth, positive=True)

    @property
    def y_dim(self) -> int:
        """The dimension d_y of the condition."""
        return self.conditions.shape[1]

    def _check_y(self, y, m: int) -> torch.Tensor:
        """Conditions for m rows: one condition (a number or shape (d_y,)) broadcast, or one per row."""
        if not isinstance(y, torch.Tensor):
            try:
                y = torch.as_tensor(np.asarray(y, dtype=np.float64))
            except (TypeError, ValueError) as err:
                raise TypeError(f"y must be a number or an array of numbers, got {type(y).__name__}") from err
        y = y.to(torch.float64)
        dy = self.y_dim
        if y.ndim == 0 and dy == 1:
            y = y.reshape(1, 1)
        elif y.ndim == 1 and dy == 1:
            y = y[:, None]
        elif y.ndim == 1 and y.shape[0] == dy:
            y = y[None]
        if y.ndim != 2 or y.shape[1] != dy or y.shape[0] not in (1, m):
            raise ValueError(f"y must be one condition (shape ({dy},)) or one per row (shape ({m}, {dy})), "
                             f"got shape {tuple(y.shape)}")
        if not torch.all(torch.isfinite(y)):
            raise ValueError("y must be finite")
        return y.expand(m, dy)

    def _conditions(self, y) -> torch.Tensor:
        """A batch of K conditions shaped (K, d_y): a number or (d_y,) is one; (K,) for d_y = 1 or (K, d_y) are K."""
        shape = tuple(y.shape) if isinstance(y, torch.Tensor) else np.shape(y)
        if len(shape) == 2:
            k = shape[0]
        elif len(shape) == 1 and self.y_dim == 1:
            k = shape[0]
        else:
            k = 1
        return self._check_y(y, k)

    def _log_weight_rows(self, y):
        """A function (lo, hi) -> normalised log-weights log w_i(y_r) of rows lo..hi-1, shape (hi - lo, n)."""
        c, c_sq = self.conditions, (self.conditions**2).sum(1)

        def rows(lo, hi):
            yb = y[lo:hi]
            sq = (yb**2).sum(1, keepdim=True) - 2 * yb @ c.T + c_sq[None, :]
            lw = -torch.clamp(sq, min=0.0) / (2 * self.y_bandwidth**2)
            return lw - torch.logsumexp(lw, dim=1, keepdim=True)

        return rows

    def log_weights(self, y) -> torch.Tensor:
        r"""Normalised log-weights :math:`\log w_i(y)` of the pairs at each condition, shape (K, n).

        Parameters
        ----------
        y : float, array_like or torch.Tensor
            The conditions: one (a number when d_y = 1, or shape (d_y,)) or K of them (shape (K,) when d_y = 1,
            or (K, d_y)).

        Returns
        -------
        torch.Tensor
            Float64 of shape (K, n); each row's exponentials sum to 1.
        """
        y = self._conditions(y)
        return self._log_weight_rows(y)(0, y.shape[0])

    def weights(self, y) -> torch.Tensor:
        r"""Normalised kernel weights :math:`w_i(y)` of the pairs at each condition, shape (K, n).

        Parameters
        ----------
        y : float, array_like or torch.Tensor
            The conditions: one (a number when d_y = 1, or shape (d_y,)) or K of them (shape (K,) when d_y = 1,
            or (K, d_y)).

        Returns
        -------
        torch.Tensor
            Float64 of shape (K, n); each row sums to 1.
        """
        return torch.exp(self.log_weights(y))

    def _evaluate(self, x, y, t, log_p_out):
        x = self._check_x(x)
        y = self._check_y(y, x.shape[0])
        t = self.sde.check_time(t)
        t = _checks.time_column(as_time(t, like=x), x.shape[0])
        a, h = self.sde.alpha(t), self.sde.h(t)
        return _mixture_score(x, self.data, a, a**2 * self.bandwidth**2 + h, None, log_p_out, self._log_weight_rows(y))

    def score(self, x, y, t) -> torch.Tensor:
        r"""The estimated conditional score at the rows of x (m, d_x) given y (one condition or one per row).

        Parameters
        ----------
        x : torch.Tensor
            Points, shape (m, d_x): a floating tensor (evaluated in float64).
        y : float, array_like or torch.Tensor
            One condition for all rows (a number when d_y = 1, or shape (d_y,)), or one per row (shape (m,) when
            d_y = 1, or (m, d_y)).
        t : float or torch.Tensor
            One time for all rows, or one per row (shape (m,) or (m, 1)), in (0, T].

        Returns
        -------
        torch.Tensor
            :math:`\nabla_x\log\hat p_t(x\mid y)`, float64 of shape (m, d_x).
        """
        return self._evaluate(x, y, t, False)

    def log_prob(self, x, y, t) -> torch.Tensor:
        r"""Log-density :math:`\log\hat p_t(x\mid y)` at the rows of x, shape (m,).

        Parameters
        ----------
        x : torch.Tensor
            Points, shape (m, d_x): a floating tensor (evaluated in float64).
        y : float, array_like or torch.Tensor
            One condition for all rows (a number when d_y = 1, or shape (d_y,)), or one per row (shape (m,) when
            d_y = 1, or (m, d_y)).
        t : float or torch.Tensor
            One time for all rows, or one per row (shape (m,) or (m, 1)), in (0, T].
        """
        return self._evaluate(x, y, t, True)[1]

    def density_table(self, x, y, t: float) -> torch.Tensor:
        r"""The density :math:`\hat p_t(x_j\mid y_k)` at every pair of a point and a condition, shape (K, J).

        Computed as the product of the weight matrix (K, n) and the kernel matrix (n, J), which costs n(J + K)
        exponentials instead of nJK: the way to tabulate the conditional law on a grid.  ``t`` is one time.

        Parameters
        ----------
        x : torch.Tensor
            The J points, shape (J, d_x): a floating tensor (evaluated in float64).
        y : float, array_like or torch.Tensor
            The conditions: one (a number when d_y = 1, or shape (d_y,)) or K of them (shape (K,) when d_y = 1,
            or (K, d_y)).
        t : float or torch.Tensor
            One time in (0, T].

        Returns
        -------
        torch.Tensor
            Float64 of shape (K, J): row k is the density given the k-th condition.
        """
        x = self._check_x(x)
        y = self._conditions(y)
        t = self.sde.check_time(t)
        if t.ndim != 0:
            raise ValueError("density_table() takes one time")
        a, h = float(self.sde.alpha(t)), float(self.sde.h(t))
        v = a**2 * self.bandwidth**2 + h
        w = torch.exp(self._log_weight_rows(y)(0, y.shape[0]))  # (K, n)
        return _density_rows(x, self.data, a, v, w.T.contiguous()).T

    def at(self, y) -> ConditionedScore:
        """The estimator with the condition fixed at ``y``: an object with ``score(x, t)`` for the samplers.

        Parameters
        ----------
        y : float, array_like or torch.Tensor
            One condition: a number when d_y = 1, or shape (d_y,).

        Returns
        -------
        ConditionedScore
        """
        return ConditionedScore(self, y)

    def __repr__(self) -> str:
        return (f"ConditionalKernelScore(n={self.n}, d_x={self.dim}, d_y={self.y_dim}, "
                f"bandwidth={self.bandwidth:.4g}, y_bandwidth={self.y_bandwidth:.4g})")


class ConditionedScore:
    r"""A :class:`ConditionalKernelScore` with its condition fixed: :math:`x \mapsto \hat s(x, y, t)`.

    Provides the package's protocol ``score(x, t)``, so any sampler of :mod:`diffnotes.samplers` draws from the
    estimated conditional law :math:`\hat p_{t_0}(\cdot\mid y)` (review Section 5.2; book chapter *Distribution
    estimation*).  Create it with :meth:`ConditionalKernelScore.at`.

    Parameters
    ----------
    estimator : ConditionalKernelScore
        The conditional estimator.
    y : float, array_like or torch.Tensor
        The fixed condition: a number when d_y = 1, or shape (d_y,).  Its kernel weights are computed once, here.
    """

    def __init__(self, estimator: ConditionalKernelScore, y):
        if not isinstance(estimator, ConditionalKernelScore):
            raise TypeError(f"estimator must be a ConditionalKernelScore, got {type(estimator).__name__}")
        self.estimator = estimator
        self.y = estimator._check_y(y, 1)[0]
        self._log_w = estimator.log_weights(self.y)[0]  # the weights do not change with x or t: computed once

    @property
    def sde(self) -> VPSDE:
        """The forward process."""
        return self.estimator.sde

    @property
    def dim(self) -> int:
        """The dimension d_x."""
        return self.estimator.dim

    def weights(self) -> torch.Tensor:
        r"""The kernel weights :math:`w_i(y)` of the pairs at the fixed condition, shape (n,)."""
        return torch.exp(self._log_w)

    def _evaluate(self, x, t, log_p_out):
        est = self.estimator
        x = est._check_x(x)
        t = est.sde.check_time(t)
        t = _checks.time_column(as_time(t, like=x), x.shape[0])
        a, h = est.sde.alpha(t), est.sde.h(t)
        lw = self._log_w
        return _mixture_score(x, est.data, a, a**2 * est.bandwidth**2 + h, None, log_p_out,
                              lambda lo, hi: lw.expand(hi - lo, -1))

    def score(self, x, t) -> torch.Tensor:
        """The estimated conditional score at the rows of x given the fixed y.

        Parameters
        ----------
        x : torch.Tensor
            Points, shape (m, d_x): a floating tensor (evaluated in float64).
        t : float or torch.Tensor
            One time for all rows, or one per row (shape (m,) or (m, 1)), in (0, T].

        Returns
        -------
        torch.Tensor
            Float64 of shape (m, d_x).
        """
        return self._evaluate(x, t, False)

    def log_prob(self, x, t) -> torch.Tensor:
        r"""Log-density :math:`\log\hat p_t(x\mid y)` at the rows of x given the fixed y, shape (m,).

        Parameters
        ----------
        x : torch.Tensor
            Points, shape (m, d_x): a floating tensor (evaluated in float64).
        t : float or torch.Tensor
            One time for all rows, or one per row (shape (m,) or (m, 1)), in (0, T].
        """
        return self._evaluate(x, t, True)[1]

    def density(self, x, t: float) -> torch.Tensor:
        r"""Density :math:`\hat p_t(x\mid y)` at the rows of x given the fixed y, shape (m,), for one time t.

        Parameters
        ----------
        x : torch.Tensor
            Points, shape (m, d_x): a floating tensor (evaluated in float64).
        t : float or torch.Tensor
            One time in (0, T].
        """
        return self.estimator.density_table(x, self.y, t)[0]

    def __repr__(self) -> str:
        return f"ConditionedScore({self.estimator!r}, y={self.y.tolist()})"


def output_law(estimator, t0: float) -> GaussianMixture:
    r"""The law at :math:`t_0` of the exact backward process driven by a kernel-type score estimator.

    :class:`EmpiricalScore`, :class:`KernelScore` without a floor and :class:`ConditionedScore` are exact scores of
    the diffused Gaussian mixture :math:`\hat p_t = \sum_i w_i\,\mathsf N(\alpha(t)x_i, (\alpha(t)^2\sigma^2 + h(t))I)`
    (:math:`\sigma = 0` for the empirical score; :math:`w_i = 1/n` or the kernel weights :math:`w_i(y)`).  The
    backward process driven by the score of a forward-diffused law, started from that law at T, has the forward
    marginals, so it ends at :math:`t_0` in

    .. math::

        \hat P_{t_0} = \sum_{i=1}^n w_i\,\mathsf N\big(\alpha(t_0)x_i,\ (\alpha(t_0)^2\sigma^2 + h(t_0))I\big),

    returned as a :class:`~diffnotes.targets.GaussianMixture` (its ``log_prob(x, t)`` at t = 0, ``data_log_prob``,
    ``cdf`` and ``sample`` describe :math:`\hat P_{t_0}`).  A sampler started from :math:`\mathsf N(0, I)` instead of
    :math:`\hat p_T` adds at most :math:`\mathrm{TV}(\hat p_T, \mathsf N(0, I))`, which decays like :math:`e^{-T}`,
    and its discretisation error.  This is the law whose distance to the data law the review's Theorem 1 bounds
    (Section 4.3.2, :cite:p:`oko2023diffusion`; Section 5.2, :cite:p:`fu2024unveil`; book chapter *Distribution
    estimation*).  For a :class:`SubspaceScore` use ``output_law(score.latent, t0)``: the law of the latent codes
    :math:`\hat V^\top x`; the orthogonal part is then exactly :math:`\mathsf N(0, h(t_0)(I - \hat V\hat V^\top))`.

    The mixture has one component per data point: for tens of thousands of points evaluate the density with the
    estimator's own blocked ``log_prob(x, t0)`` instead.

    Parameters
    ----------
    estimator : EmpiricalScore, KernelScore or ConditionedScore
        The score estimator driving the backward process (a :class:`KernelScore` with ``floor = 0``).
    t0 : float or torch.Tensor
        The early-stopping time, one time in (0, T].

    Returns
    -------
    GaussianMixture
        :math:`\hat P_{t_0}`: n components, weights :math:`1/n` or :math:`w_i(y)`, means :math:`\alpha(t_0)x_i`,
        isotropic variances :math:`\alpha(t_0)^2\sigma^2 + h(t_0)`, with the estimator's forward process.

    Raises
    ------
    TypeError
        For any other estimator.
    ValueError
        For a :class:`KernelScore` with a positive floor, or if t0 is not one time in (0, T].
    """
    if isinstance(estimator, ConditionedScore):
        base, weights, sigma = estimator.estimator, estimator.weights(), estimator.estimator.bandwidth
    elif isinstance(estimator, KernelScore):
        if estimator.floor > 0:
            raise ValueError("a KernelScore with a density floor is not the score of a mixture: its output law is not "
                             "known in closed form; use floor=0")
        base, sigma = estimator, estimator.bandwidth
        weights = torch.full((estimator.n,), 1.0 / estimator.n, dtype=torch.float64)
    elif isinstance(estimator, EmpiricalScore):
        base, sigma = estimator, 0.0
        weights = torch.full((estimator.n,), 1.0 / estimator.n, dtype=torch.float64)
    else:
        raise TypeError("output_law() needs an EmpiricalScore, a KernelScore or a ConditionedScore, got "
                        f"{type(estimator).__name__}")
    t0 = base.sde.check_time(t0, name="t0")
    if t0.ndim != 0:
        raise ValueError("output_law() takes one early-stopping time t0")
    a, h = float(base.sde.alpha(t0)), float(base.sde.h(t0))
    weights = weights / weights.sum()  # exact normalisation after round-off
    return GaussianMixture(weights, a * base.data, torch.full((base.n,), a**2 * sigma**2 + h, dtype=torch.float64),
                           base.sde)
