r"""Diffusion models and stochastic control: the score as a control, the path KL, and the exact tilted optimum.

Section 7.1 of the review (book chapter *Diffusion models and stochastic control*) reads the backward process

.. math::

    \mathrm dY_t = \big[\tfrac12 g(t) Y_t + g(t)\,u(Y_t, t)\big]\,\mathrm dt + \sqrt{g(t)}\,\mathrm d\bar B_t

as a controlled SDE whose control is the score, :math:`u = s_\theta`.  Three exact statements make this concrete and
are implemented here for Gaussian data, where everything is in closed form:

* **Girsanov**: for two controls started from the same law, the KL divergence of the path laws is
  :math:`\frac12\int g(t)\,\mathbb E\|u_1 - u_2\|^2\,\mathrm dt` (:func:`girsanov_path_kl`); with :math:`u_1` the
  true score it equals the gap of the denoising score-matching loss weighted by :math:`g/2`, so score matching *is*
  minimising a path KL :cite:p:`song2021score,tzen2019theoretical`;
* **a linear control** :class:`LinearGaussianScore` (the exact family for Gaussian data) fitted by score matching
  recovers the exact score;
* **the KL-regularised reward problem** :math:`\max_p \mathbb E_p r - \beta\,\mathrm{KL}(p\,\|\,p_{\rm pre})` has
  the tilted solution :math:`p_\beta \propto p_{\rm pre}\,e^{r/\beta}`; for Gaussian data and a quadratic reward it is
  Gaussian (:class:`TiltedGaussian`), and its score at every t is the pretrained score plus the Doob h-transform
  :math:`\nabla\log h_t`, :math:`h_t(x) = \mathbb E[e^{r(X_0)/\beta}\mid X_t = x]`, in closed form
  :cite:p:`uehara2024fine`.

The fine-tuning methods that approach this optimum from samples are in :mod:`diffnotes.finetune`.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from . import _checks
from .sde import VPSDE
from .targets import Gaussian

__all__ = ["TiltedGaussian", "tilted_frontier", "girsanov_path_kl", "LinearGaussianScore"]


def _beta(beta) -> float:
    beta = float(beta)
    if not (math.isfinite(beta) and beta > 0):
        raise ValueError(f"beta must be a finite number > 0, got {beta!r}")
    return beta


class TiltedGaussian:
    r"""The exact solution of the KL-regularised reward problem for Gaussian data and a quadratic reward.

    With data :math:`p = \mathsf N(m, S)` and the reward :math:`r(x) = b^\top x - \tfrac12 x^\top Q x`, the maximiser
    of :math:`\mathbb E_q r - \beta\,\mathrm{KL}(q\,\|\,p)` over all laws q is :math:`p_\beta \propto p\,e^{r/\beta}`,

    .. math::

        p_\beta = \mathsf N(m_\beta, S_\beta),\qquad S_\beta = (S^{-1} + Q/\beta)^{-1},\qquad
        m_\beta = S_\beta(S^{-1}m + b/\beta),

    and its value is :math:`\beta\log\mathbb E_p e^{r/\beta}`.  Diffused by the forward process,
    :math:`p_{\beta, t} = \mathsf N(\alpha m_\beta, \alpha^2 S_\beta + hI)`, whose score (:meth:`score`) is the
    pretrained score plus the Doob h-transform

    .. math::

        \nabla\log p_{\beta,t}(x) = \nabla\log p_t(x) + \nabla\log h_t(x),\qquad
        h_t(x) = \mathbb E\big[e^{r(X_0)/\beta}\,\big|\,X_t = x\big],

    with :math:`X_0\mid X_t = x \sim \mathsf N(\mu, \Sigma)`, :math:`\Sigma = (S^{-1} + \alpha^2/h\,I)^{-1}`,
    :math:`\mu = \Sigma(S^{-1}m + \alpha x/h)`, so that (:meth:`log_h`)

    .. math::

        \log h_t(x) = -\tfrac12\log\det(I + \Sigma Q/\beta) + \tfrac12 v^\top(\Sigma^{-1} + Q/\beta)^{-1}v
        - \tfrac12\mu^\top\Sigma^{-1}\mu,\qquad v = \Sigma^{-1}\mu + b/\beta .

    Review Section 7.1; book chapter *Diffusion models and stochastic control*; :cite:p:`uehara2024fine`.

    Parameters
    ----------
    target : Gaussian
        The pretrained (data) law :math:`\mathsf N(m, S)` with its forward process.
    b : array_like (D,)
        Linear part of the reward.
    beta : float
        KL weight :math:`\beta > 0`.
    Q : array_like (D, D), optional
        Quadratic part (symmetric; default 0, a linear reward); :math:`S^{-1} + Q/\beta` must be positive definite.
    """

    def __init__(self, target: Gaussian, b, beta: float, Q=None):
        if not isinstance(target, Gaussian):
            raise TypeError(f"target must be a diffnotes.targets.Gaussian, got {type(target).__name__}")
        self.target, self.sde = target, target.sde
        self.beta = _beta(beta)
        D = target.dim
        try:
            self.b = torch.as_tensor(np.asarray(b, dtype=np.float64))
        except (TypeError, ValueError) as err:
            raise TypeError(f"b must be an array of {D} numbers") from err
        if self.b.shape != (D,) or not torch.all(torch.isfinite(self.b)):
            raise ValueError(f"b must be a finite vector of shape ({D},), got shape {tuple(self.b.shape)}")
        if Q is None:
            self.Q = torch.zeros(D, D, dtype=torch.float64)
        else:
            self.Q = torch.as_tensor(np.asarray(Q, dtype=np.float64))
            if self.Q.shape != (D, D) or not torch.allclose(self.Q, self.Q.T) or not torch.all(torch.isfinite(self.Q)):
                raise ValueError(f"Q must be a finite symmetric ({D}, {D}) matrix")
        self.m, self.S = target.mean(), target.covariance()
        self.S_inv = torch.linalg.inv(self.S)
        prec = self.S_inv + self.Q / self.beta
        if float(torch.linalg.eigvalsh(prec).min()) <= 0:
            raise ValueError("S^-1 + Q/beta is not positive definite: the tilted law does not exist (increase beta)")
        self.cov = torch.linalg.inv(prec)
        self.cov = (self.cov + self.cov.T) / 2
        self.mean = self.cov @ (self.S_inv @ self.m + self.b / self.beta)
        self.law = Gaussian(self.mean, self.cov, sde=self.sde)

    def reward(self, x: torch.Tensor) -> torch.Tensor:
        r"""The reward :math:`r(x) = b^\top x - \frac12 x^\top Q x`, (n,); differentiable.

        Parameters
        ----------
        x : torch.Tensor
            Points, shape (n, D).
        """
        x = _checks.points(x, "x", self.target.dim)
        b, Q = self.b.to(x), self.Q.to(x)
        return x @ b - 0.5 * ((x @ Q) * x).sum(dim=1)

    def score(self, x: torch.Tensor, t) -> torch.Tensor:
        """The exact score of the diffused tilted law :math:`p_{\\beta,t}` (the fine-tuned model's target).

        Parameters
        ----------
        x : torch.Tensor
            Points, shape (n, D).
        t : float or torch.Tensor
            One time for all rows or one per row, in (0, T].
        """
        return self.law.score(x, t)

    def control(self, x: torch.Tensor, t) -> torch.Tensor:
        r"""The h-transform :math:`\nabla\log h_t(x) = \nabla\log p_{\beta,t}(x) - \nabla\log p_t(x)`: the optimal
        control added to the pretrained score.

        Parameters
        ----------
        x : torch.Tensor
            Points, shape (n, D).
        t : float or torch.Tensor
            One time for all rows or one per row, in (0, T].
        """
        return self.law.score(x, t) - self.target.score(x, t)

    def log_h(self, x: torch.Tensor, t) -> torch.Tensor:
        r"""The closed form of :math:`\log h_t(x) = \log\mathbb E[e^{r(X_0)/\beta}\mid X_t = x]`, (n,);
        differentiable in x (its gradient is :meth:`control`).

        Parameters
        ----------
        x : torch.Tensor
            Points, shape (n, D).
        t : float or torch.Tensor
            One time for all rows or one per row, in (0, T].
        """
        x = _checks.points(x, "x", self.target.dim)
        tr = _checks.time_rows(t, x.shape[0], x).to(torch.float64)
        if torch.any(tr <= 0):
            raise ValueError("log_h needs t > 0")
        D = self.target.dim
        eye = torch.eye(D, dtype=torch.float64)
        al = self.sde.alpha(tr)
        h = self.sde.h(tr)
        Sigma_inv = self.S_inv[None] + (al**2 / h)[:, None, None] * eye  # (n, D, D)
        rhs = (self.S_inv @ self.m)[None] + (al / h)[:, None] * x.to(torch.float64)
        mu = torch.linalg.solve(Sigma_inv, rhs[:, :, None])[:, :, 0]
        Sigma = torch.linalg.inv(Sigma_inv)
        A = Sigma_inv + self.Q[None] / self.beta
        v = rhs + self.b[None] / self.beta  # Sigma^-1 mu + b / beta
        logdet = torch.logdet(eye[None] + Sigma @ self.Q[None] / self.beta)
        quad = (v * torch.linalg.solve(A, v[:, :, None])[:, :, 0]).sum(1)
        return (-0.5 * logdet + 0.5 * quad - 0.5 * (mu * rhs).sum(1)).to(x.dtype)

    def expected_reward(self, tilted: bool = True) -> float:
        r"""The exact :math:`\mathbb E r` under :math:`p_\beta` (default) or under the pretrained law.

        Parameters
        ----------
        tilted : bool
            True: under the tilted optimum :math:`p_\beta`; False: under the pretrained law.
        """
        m, S = (self.mean, self.cov) if tilted else (self.m, self.S)
        return float(self.b @ m - 0.5 * (torch.trace(self.Q @ S) + m @ self.Q @ m))

    def kl(self) -> float:
        r"""The exact :math:`\mathrm{KL}(p_\beta\,\|\,p)`."""
        D = self.target.dim
        dm = self.m - self.mean
        return 0.5 * float(torch.trace(self.S_inv @ self.cov) + dm @ self.S_inv @ dm - D
                           + torch.logdet(self.S) - torch.logdet(self.cov))

    def value(self) -> float:
        r"""The optimal value :math:`\mathbb E_{p_\beta} r - \beta\,\mathrm{KL}(p_\beta\,\|\,p) =
        \beta\log\mathbb E_p e^{r/\beta}`."""
        return self.expected_reward() - self.beta * self.kl()


def tilted_frontier(target: Gaussian, b, betas, Q=None) -> tuple[np.ndarray, np.ndarray]:
    r"""The reward-KL frontier of the exact optima: ``(kl, reward)`` of :class:`TiltedGaussian` at each beta.

    No law reaches a higher expected reward at the same KL to the pretrained law (the KL-regularised optimum is
    the Lagrangian solution of :math:`\max\mathbb E r` subject to a KL budget).  Book chapter *Diffusion models and
    stochastic control*.

    Parameters
    ----------
    target : Gaussian
        The pretrained (data) law.
    b : array_like
        The linear part of the reward :math:`r(x) = b^\top x - \frac12 x^\top Q x`, shape (D,).
    betas : float or array_like
        The KL weights :math:`\beta > 0` at which to evaluate the optimum.
    Q : array_like, optional
        The quadratic part, (D, D) (default 0: a linear reward).

    Returns
    -------
    (numpy.ndarray, numpy.ndarray)
        The KL to the pretrained law and the expected reward of each optimum.
    """
    laws = [TiltedGaussian(target, b, beta, Q) for beta in np.atleast_1d(np.asarray(betas, dtype=np.float64))]
    return np.array([law.kl() for law in laws]), np.array([law.expected_reward() for law in laws])


def girsanov_path_kl(score_a: Callable, score_b: Callable, target: Gaussian, *, t0: float = 1e-3,
                     T: float | None = None, n_times: int = 64) -> float:
    r"""The Girsanov KL between the path laws of two backward SDEs driven by affine scores, on Gaussian data.

    For :math:`\mathrm dY = [\tfrac12 gY + g\,s_i(Y, t)]\mathrm dt + \sqrt g\,\mathrm d\bar B` (i = a, b) on
    :math:`[t_0, T]` from the same start law, with paths distributed as the one driven by :math:`s_a = \nabla\log p_t`,

    .. math::

        \mathrm{KL}(P^a_{\rm path}\,\|\,P^b_{\rm path}) = \frac12\int_{t_0}^T g(t)\,
        \mathbb E_{x\sim p_t}\big\|s_a(x, t) - s_b(x, t)\big\|^2\,\mathrm dt .

    The expectation is exact for scores affine in x (evaluated at the mean and the mean plus the columns of a
    Cholesky factor of the covariance of :math:`p_t`; a check at a random point refuses scores that are not affine);
    the time integral uses Gauss-Legendre quadrature with ``n_times`` nodes in :math:`\log t`.  With
    :math:`s_a` the true score this is the gap of the :math:`g/2`-weighted score-matching loss over its minimum
    :cite:p:`song2021score,tzen2019theoretical`.  Book chapter *Diffusion models and stochastic control*.

    Parameters
    ----------
    score_a, score_b : callable
        ``score(x, t)``, affine in x.
    target : Gaussian
        The data law (its diffused laws :math:`p_t` weight the expectation).
    t0, T : float
        The time interval (default T: the forward process's horizon).
    n_times : int
        Quadrature nodes.
    """
    if not isinstance(target, Gaussian):
        raise TypeError(f"target must be a diffnotes.targets.Gaussian, got {type(target).__name__}")
    sde: VPSDE = target.sde
    T = sde.T if T is None else float(T)
    t0 = float(t0)
    if not (0 < t0 < T <= sde.T * (1 + 1e-12)):
        raise ValueError(f"need 0 < t0 < T <= {sde.T}, got t0 = {t0}, T = {T}")
    n_times = _checks.positive_int(n_times, "n_times", minimum=2)
    nodes, weights = np.polynomial.legendre.leggauss(n_times)
    lo, hi = math.log(t0), math.log(T)
    u = 0.5 * (hi - lo) * nodes + 0.5 * (hi + lo)
    ts = np.exp(u)
    w = 0.5 * (hi - lo) * weights * ts
    gen = torch.Generator().manual_seed(0)
    total = 0.0
    with torch.no_grad():
        for t, wt in zip(ts.tolist(), w.tolist(), strict=True):
            total += wt * _half_g_expect(score_a, score_b, target, sde, t, gen)
    return total


def _half_g_expect(score_a, score_b, target, sde, t, gen) -> float:
    D = target.dim
    mean, cov = target.moments(t)
    L = torch.linalg.cholesky(cov)
    pts = torch.cat([mean[None], mean[None] + L.T], dim=0)
    tt = torch.full((D + 1,), t, dtype=torch.float64)
    diff = score_a(pts, tt) - score_b(pts, tt)
    f0, cols = diff[0], diff[1:] - diff[0]
    z = torch.randn(D, generator=gen, dtype=torch.float64)
    probe = mean + L @ z
    got = score_a(probe[None], tt[:1]) - score_b(probe[None], tt[:1])
    if not torch.allclose(got[0], f0 + z @ cols, rtol=1e-6, atol=1e-8 * (1 + float(f0.abs().max()))):
        raise ValueError("girsanov_path_kl needs scores that are affine in x")
    expect = float(f0 @ f0 + (cols**2).sum())
    return 0.5 * float(sde.g(torch.tensor(t, dtype=torch.float64))) * expect


class LinearGaussianScore(nn.Module):
    r"""The linear control family :math:`s_\theta(x, t) = -(x - \alpha(t)\mu)/(\alpha(t)^2 v + h(t))`, per coordinate.

    Its parameters are :math:`\mu \in \mathbb R^D` and :math:`\log v \in \mathbb R^D`; at :math:`(\mu, v)` equal to the
    data's mean and (diagonal) variance it is the exact score of Gaussian data, so score matching over this family
    recovers the exact score.  Review Section 7.1; book chapter *Diffusion models and stochastic control*.

    Parameters
    ----------
    dim : int
        Dimension D.
    sde : VPSDE
        The forward process.
    mean, var : float or array_like, optional
        Initial :math:`\mu` (default 0) and :math:`v` (default 1).
    """

    def __init__(self, dim: int, sde: VPSDE, mean=0.0, var=1.0):
        super().__init__()
        dim = _checks.positive_int(dim, "dim")
        self.sde = _checks.sde_or_default(sde)
        m = torch.as_tensor(np.broadcast_to(np.asarray(mean, dtype=np.float64), (dim,)).copy())
        v = torch.as_tensor(np.broadcast_to(np.asarray(var, dtype=np.float64), (dim,)).copy())
        if torch.any(v <= 0):
            raise ValueError("var must be > 0")
        self.mu = nn.Parameter(m)
        self.log_var = nn.Parameter(torch.log(v))

    def forward(self, x: torch.Tensor, t) -> torch.Tensor:
        """The score of the Gaussian with the current mean and variances, diffused to time t, at the rows of x.

        Parameters
        ----------
        x : torch.Tensor
            Points, shape (n, D).
        t : float or torch.Tensor
            One time for all rows or one per row, in (0, T].
        """
        x = _checks.points(x, "x", self.mu.numel())
        tr = _checks.time_rows(t, x.shape[0], x).to(torch.float64)
        al = self.sde.alpha(tr)[:, None]
        h = self.sde.h(tr)[:, None]
        out = -(x.to(torch.float64) - al * self.mu) / (al**2 * torch.exp(self.log_var) + h)
        return out.to(x.dtype)
